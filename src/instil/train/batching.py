"""How training batches are laid out, measured: the padding they carry, forwards that prove no sequence sees another.

    padding_fraction([12, 400, 35, 390], batch_size=2, strategy="buckets")  # from the sampler's real batches
    LengthBucketSampler(16, lengths, seed=0)  # what instil's trainer draws batches with where TRL would group by length
    per_sequence_logits(model, seqs)      # the reference: each sequence alone, shape [len, vocab] each
    padded_logits(model, seqs)            # one right-padded batch with an attention mask (the TRL default collator)
    padding_free_logits(model, seqs)      # one flattened row, position_ids restarting per sequence (padding_free=True)
    packed_logits(model, seqs, seq_length=64)  # TRL's bfd packing, then its padding-free collator

Which layout is fastest depends on the hardware. On CPU (sdpa attention) a flattened row gets a dense block-diagonal
mask, which costs more than the padding it saves, so instil sorts batches by length there (:class:`LengthBucketSampler`
in place of transformers' ``group_by_length`` sampler, whose small megabatches leave much padding on long-tailed data);
where flash-attention's varlen kernels exist, padding-free batches cost nothing extra. Whatever the layout, the logits
of each sequence must equal those of the sequence run alone: the ``*_logits`` helpers return each sequence's logits on
its real tokens, so a test can compare them (``tests/test_batching.py``).

One hazard: a flattened batch is only split into its sequences when the forward runs *without* a cache. transformers
detects packed sequences from ``position_ids`` only when there is no attention mask and no cache, so a forward with
``use_cache=True`` (a model config's default) attends across sequence boundaries. TRL's ``SFTTrainer.compute_loss``
passes ``use_cache=False`` in training; :func:`padding_free_logits` takes ``use_cache`` so a test can show both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch.utils.data import Sampler

__all__ = [
    "Strategy",
    "batch_padding",
    "padded_logits",
    "packed_logits",
    "padding_fraction",
    "padding_free_logits",
    "per_sequence_logits",
    "LengthBucketSampler",
    "sampler_batches",
]

Strategy = Literal["random", "group_by_length", "buckets", "padding_free"]
"""How the trainer orders rows into batches: a shuffled order, length-grouped megabatches (transformers'
``LengthGroupedSampler``, what plain TRL's ``train_sampling_strategy="group_by_length"`` uses), instil's length buckets
(:class:`LengthBucketSampler`, what instil's trainer uses in place of the former), or flattened rows with no padding."""

BUCKET_BATCHES = 64
"""Batches per sorted bucket in :class:`LengthBucketSampler`: rows are sorted by length within spans of this many
batches (an epoch of up to 64 batches is sorted whole)."""


class LengthBucketSampler(Sampler):
    """Length-sorted batches in a shuffled order: little padding, random batch order, the same order on resume.

    Each epoch (seeded with ``seed + epoch``, so a run resumed mid-epoch draws the same order): shuffle the rows, cut
    them into buckets of :data:`BUCKET_BATCHES` batches, sort each bucket by length, cut it into batches, shuffle the
    batches, and put the one holding the longest row first (an out-of-memory error comes at step 1, not hours in).
    A short last batch stays last, so the dataloader's cut into ``batch_size`` rows lines up with these batches.

    transformers' ``LengthGroupedSampler`` sorts within megabatches of at most 50 batches, and fewer on small data
    (a quarter of the epoch), so long-tailed lengths still pad a lot: on the triage example (416 rows, batch 16) it
    leaves about 40% padding where this leaves about 10%.
    """

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int, *, bucket_batches: int = BUCKET_BATCHES):
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}; it must be 1 or more")
        self.batch_size, self.lengths, self.seed = batch_size, list(lengths), seed
        self.bucket_batches = bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """This epoch's batches of row indexes."""
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.bucket_batches
        full: list[list[int]] = []
        short: list[int] = []
        for start in range(0, len(order), span):
            bucket = sorted(order[start : start + span], key=lambda i: self.lengths[i], reverse=True)
            for b in range(0, len(bucket), self.batch_size):
                batch = bucket[b : b + self.batch_size]
                if len(batch) == self.batch_size:
                    full.append(batch)
                else:
                    short = batch  # only the epoch's last bucket can leave one
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        if shuffled:
            longest = max(range(len(shuffled)), key=lambda k: self.lengths[shuffled[k][0]])
            shuffled[0], shuffled[longest] = shuffled[longest], shuffled[0]
        return shuffled + ([short] if short else [])

    def __iter__(self):
        return iter([i for batch in self.batches() for i in batch])


def sampler_batches(lengths: Sequence[int], batch_size: int, strategy: Strategy, *, seed: int = 0) -> list[list[int]]:
    """The row indexes of each batch of one epoch, drawn by the sampler the Trainer uses for ``strategy``."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; it must be 1 or more")
    generator = torch.Generator().manual_seed(seed)
    if strategy == "buckets":
        return LengthBucketSampler(batch_size, lengths, seed).batches()
    if strategy == "group_by_length":
        order = list(LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator))
    elif strategy in ("random", "padding_free"):
        order = torch.randperm(len(lengths), generator=generator).tolist()
    else:
        raise ValueError(
            f"unknown batching strategy {strategy!r}; use random, group_by_length, buckets or padding_free"
        )
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_padding(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(pad tokens, total tokens) of right-padded batches: each batch is as long as its longest row."""
    pad = total = 0
    for batch in batches:
        if not batch:
            continue
        longest = max(lengths[i] for i in batch)
        total += longest * len(batch)
        pad += sum(longest - lengths[i] for i in batch)
    return pad, total


def padding_fraction(lengths: Sequence[int], batch_size: int, strategy: Strategy, *, seed: int = 0) -> float:
    """The share of the tokens in one epoch's training batches that are padding, for rows of these lengths.

    Computed from the batches the sampler really makes (seeded); ``padding_free`` batches carry none. The measured
    figure of a run is :attr:`instil.train.callbacks.TokenTally.padding_fraction`.
    """
    if strategy == "padding_free":
        return 0.0
    pad, total = batch_padding(lengths, sampler_batches(lengths, batch_size, strategy, seed=seed))
    return pad / total if total else 0.0


# ---- forwards for the equality test ----------------------------------------------------------------------------------
def per_sequence_logits(model: Any, sequences: Sequence[Sequence[int]]) -> list[Any]:
    """Each sequence run alone (no padding, no cache): the reference logits, ``[len, vocab]`` per sequence."""
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([list(s)]), use_cache=False).logits[0] for s in sequences]


def padded_logits(model: Any, sequences: Sequence[Sequence[int]], *, pad_token_id: int = 0) -> list[Any]:
    """One right-padded batch through TRL's default collator (attention mask, no position_ids); real tokens only."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)([{"input_ids": list(s)} for s in sequences])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return [logits[i, : len(s)] for i, s in enumerate(sequences)]


def padding_free_logits(
    model: Any, sequences: Sequence[Sequence[int]], *, pad_token_id: int = 0, use_cache: bool = False
) -> list[Any]:
    """One flattened row through TRL's ``padding_free=True`` collator, its whole output passed on as the trainer does
    (position_ids restarting at 0 per sequence, ``cu_seq_lens_*``, no attention mask); each sequence's logits.

    ``use_cache=True`` shows the hazard in the module docstring: the sequences then attend to each other.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
    batch = collator([{"input_ids": list(s)} for s in sequences])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch, use_cache=use_cache).logits[0]
    out, start = [], 0
    for s in sequences:
        out.append(logits[start : start + len(s)])
        start += len(s)
    return out


def packed_logits(
    model: Any, sequences: Sequence[Sequence[int]], *, seq_length: int, pad_token_id: int = 0
) -> list[Any]:
    """TRL's bfd packing (``packing=True``) into rows of at most ``seq_length`` tokens, each row through the
    padding-free collator; the logits of every input sequence, found back through an index column packed beside
    the tokens.

    Sequences must be no longer than ``seq_length``: bfd truncates longer ones.
    """
    import torch
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if any(len(s) > seq_length for s in sequences):
        raise ValueError(f"a sequence is longer than seq_length={seq_length}: bfd packing would truncate it")
    # The index rides along as a column of its own, packed like the tokens: each position knows its sequence.
    rows = [{"input_ids": list(s), "owner": [i] * len(s)} for i, s in enumerate(sequences)]
    packed = pack_dataset(Dataset.from_list(rows), seq_length=seq_length, strategy="bfd")
    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
    found: dict[int, Any] = {}
    for row in packed:
        batch = collator([{"input_ids": row["input_ids"], "seq_lengths": row["seq_lengths"]}])
        batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch, use_cache=False).logits[0]
        owner = torch.tensor(row["owner"])
        for i in owner.unique().tolist():
            found[i] = logits[owner == i]
    return [found[i] for i in range(len(sequences))]
