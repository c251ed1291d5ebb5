"""Batch layouts never let sequences see each other (logits equal the per-sequence ones), the use_cache hazard is shown
and kept out of training, and the padding fraction is computed from real batches and measured in a real run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from instil.data.records import Example, Message
from instil.spec import parse_spec
from instil.store import Store
from instil.train.batching import (
    LengthBucketSampler,
    batch_padding,
    packed_logits,
    padded_logits,
    padding_fraction,
    padding_free_logits,
    per_sequence_logits,
    sampler_batches,
)
from instil.train.callbacks import TokenTally
from instil.train.sft import build_trainer, prepare_sft, train_sft

LENGTHS = (5, 17, 9, 12)


def tiny_model(arch: str) -> torch.nn.Module:
    common = dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    cls, config = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    model = cls(config(**common))
    return model.float().eval()


def sequences() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 97, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("layout", ["padded", "padding_free", "packed"])
def test_batched_logits_equal_the_per_sequence_logits(arch: str, layout: str):
    model, seqs = tiny_model(arch), sequences()
    reference = per_sequence_logits(model, seqs)
    if layout == "padded":
        got = padded_logits(model, seqs)
    elif layout == "padding_free":
        got = padding_free_logits(model, seqs)
    else:
        got = packed_logits(model, seqs, seq_length=24)  # 17+5 and 12+9 share rows: packing really happens
    for ref, out, n in zip(reference, got, LENGTHS, strict=True):
        assert out.shape == ref.shape == (n, 97)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_flattened_batch_with_use_cache_leaks_across_sequences(arch: str):
    # With a cache, transformers does not split the row by position_ids: later sequences attend to earlier ones.
    model, seqs = tiny_model(arch), sequences()
    reference = per_sequence_logits(model, seqs)
    leaked = padding_free_logits(model, seqs, use_cache=True)
    torch.testing.assert_close(leaked[0], reference[0], atol=1e-5, rtol=0)  # the first sees nothing before it
    for ref, out in zip(reference[1:], leaked[1:], strict=True):
        assert (out - ref).abs().max() > 1e-2


def test_batch_padding_and_padding_fraction_on_known_lengths():
    assert batch_padding([2, 4, 4, 8], [[0, 1], [2, 3]]) == (6, 24)  # (4-2) + (8-4) pad of 2*4 + 2*8
    lengths = [10 + (i * 37) % 391 for i in range(400)]  # 10 to 400 tokens, well spread
    for strategy in ("random", "group_by_length", "buckets"):
        batches = sampler_batches(lengths, 8, strategy, seed=3)
        assert sorted(i for b in batches for i in b) == list(range(400)) and all(len(b) == 8 for b in batches)
        pad, total = batch_padding(lengths, batches)
        assert padding_fraction(lengths, 8, strategy, seed=3) == pad / total
        assert total - pad == sum(lengths)
    grouped, shuffled = (padding_fraction(lengths, 8, s, seed=3) for s in ("group_by_length", "random"))
    assert grouped < 0.1 < 0.3 < shuffled  # grouping removes most of the padding of a shuffled order
    assert padding_fraction(lengths, 8, "padding_free") == 0.0
    assert padding_fraction([7, 7, 7], 2, "random") == 0.0
    with pytest.raises(ValueError, match="unknown batching strategy 'sorted'"):
        padding_fraction(lengths, 8, "sorted")  # type: ignore[arg-type]


def test_length_buckets_pad_less_than_transformers_grouping_and_replay_by_epoch():
    # Long-tailed lengths, as in chat data: mostly short, a few very long (the triage example's shape).
    rng = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in (torch.rand(430, generator=rng) ** 6 * 600 + 40)]
    sampler = LengthBucketSampler(16, lengths, seed=5)
    epochs = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(430))  # every row once per epoch
        epochs.append(order)
    assert epochs[0] == epochs[2] != epochs[1]  # the order is a function of (seed, epoch): a resume replays it
    sampler.set_epoch(0)
    batches = sampler.batches()
    assert [i for b in batches for i in b] == epochs[0]
    assert [len(b) for b in batches] == [16] * 26 + [14]  # the short batch last: the dataloader's cut lines up
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest first: out of memory at step 1
    buckets, grouped = (padding_fraction(lengths, 16, s, seed=5) for s in ("buckets", "group_by_length"))
    assert buckets < grouped / 2, (buckets, grouped)
    with pytest.raises(ValueError, match="batch_size is 0"):
        LengthBucketSampler(0, lengths, seed=0)


def test_token_tally_measures_the_padding_of_the_batches_it_sees():
    model = tiny_model("llama").train()
    tally = TokenTally()
    handle = tally.attach(model)
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    model(input_ids=ids, attention_mask=(ids != 0).long())
    model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]]), position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]]))
    handle.remove()
    assert (tally.positions, tally.seen) == (16, 14)
    assert tally.padding_fraction == pytest.approx(2 / 16)


# ---- in instil's own training ----------------------------------------------------------------------------------------
def job(root: Path, batch_size: int):
    return parse_spec(
        f"""
name: lengths
system_prompt: Repeat the count.
graders: [{{name: em, type: exact_match, primary: true}}]
data: [{{path: data.jsonl}}]
model: {{base: tiny}}
training: {{adapter: full, batch_size: {batch_size}}}
""",
        root=root,
    )


def varied(n: int) -> list[Example]:
    return [
        Example([Message("user", " ".join(["word"] * (1 + 3 * i))), Message("assistant", f"{1 + 3 * i} words")])
        for i in range(n)
    ]


def test_instil_training_runs_every_forward_without_a_cache(tmp_path: Path, store: Store):
    store.put_dataset("lengths:train", varied(6), kind="train")
    plan = prepare_sft(job(tmp_path, 2), store, max_steps=3)
    trainer = build_trainer(plan, tmp_path / "ckpt")
    flags = []
    handle = trainer.model.register_forward_pre_hook(
        lambda m, a, kw: flags.append(kw.get("use_cache")) if m.training else None, with_kwargs=True
    )
    trainer.train()
    handle.remove()
    # TRL's compute_loss passes use_cache=False: flattened batches never leak in training.
    assert flags == [False, False, False]


def test_a_run_reports_the_padding_fraction_it_measured(tmp_path: Path, store: Store):
    store.put_dataset("lengths:train", varied(6), kind="train")
    spec = job(tmp_path, 6)  # one batch holds every row: its padding is known exactly
    lengths = [len(r["input_ids"]) for r in prepare_sft(spec, store).train_rows]
    assert len(set(lengths)) == 6
    result = train_sft(spec, store, max_steps=1, progress=False)
    expected = 1 - sum(lengths) / (6 * max(lengths))
    assert result.metrics.padding_fraction == pytest.approx(expected, abs=1e-4)
    assert store.get_run(result.run_id).metrics["padding_fraction"] == result.metrics.padding_fraction
