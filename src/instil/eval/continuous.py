"""Continuous batching: requests join and leave a running batch between decoding steps.

    batch = RunningBatch(model, tokenizer, renderer)       # None from RunningBatch.for_model when it cannot run
    batch.add([Seq(Row(ids, 64), temperature=0.0)])        # prefilled at once; its first token is chosen
    while batch:
        for seq, generation in batch.step():               # one token for every running request
            ...                                            # those that ended, with their answer

:func:`~instil.eval.generate.generate_rows` runs a batch to its longest answer: a request that ends early waits for
its batch-mates, and one that arrives meanwhile waits for the whole batch. Here a request that ends leaves at once
(its rows are dropped from the KV cache) and one that arrives is prefilled on its own and joins at the next step (its
KV left-padded to the running batch's length, the padding hidden by the attention mask), so the batch stays full
under load. Each request keeps its own sampling (temperature, top-p, a seeded generator), adapter (PEFT's
``adapter_names``), grammar (:mod:`instil.eval.constrain`) and limit, so nothing is grouped.

Greedy answers are the ones ``generate`` gives: the same left padding, position ids counted from the mask, float32
logits, the same stop tokens, and what ``generate`` takes from the model's ``generation_config`` (a repetition
penalty; top-k when sampling). Equal up to the numerics of batch shapes: exactly on CPU in float32 (the tests), to
the last bit not always in bf16 on a GPU. Only models whose cache is transformers' plain ``DynamicCache`` of
``DynamicLayer`` s (full attention: Llama, Qwen2, Mistral without a window, Phi, ...) with static RoPE and no other
generation settings can be batched this way; for the rest :meth:`RunningBatch.for_model` says None (and logs why)
and the caller batches whole requests with ``generate_rows``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from instil.eval.generate import Generation, Row, _device, _finish, parse_tool_calls, stop_token_ids

__all__ = ["RunningBatch", "Seq"]

log = logging.getLogger("instil.generate")


@dataclass(eq=False)
class Seq:
    """One request in a :class:`RunningBatch`: its row (prompt ids, limit, callbacks, grammar) and how to pick its
    tokens."""

    row: Row
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    seed: int | None = None
    """A seeded request draws from its own generator: the same answer whatever its batch-mates."""
    adapter: str | None = None
    """The LoRA adapter of a PEFT model holding several (``__base__``: none); None: the model as it is."""
    prefix_len: int = 0
    """Leading ids shared with other requests (the rendered system turn), whose KV may come from a prefix cache."""
    tokens: list[int] = field(default_factory=list)
    """Generated so far (the stop token included)."""
    joined_at: float = 0.0
    first_at: float | None = None
    batch_size: int = 1
    """The most requests it ran beside (itself included)."""
    _generator: Any = None
    _ended: bool = False
    """Its grammar is done with (a stop token, or the matcher erred): no mask from here."""


class RunningBatch:
    """The requests being generated now, with their KV cache, attention mask and next positions. Used from one
    thread (the engine's)."""

    def __init__(self, model: Any, tokenizer: Any, renderer: Any, *, prefix_cache: Any = None) -> None:
        from instil.eval.prefix import cache_keyword

        self.model, self.tokenizer, self.renderer = model, tokenizer, renderer
        self.prefix_cache = prefix_cache
        self.stops = stop_token_ids(tokenizer, renderer, model)
        self.stop_set = set(self.stops)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        self.device = _device(model)
        self.cache_kw = cache_keyword(model)
        self._logits_to_keep = _takes(model, "logits_to_keep")
        # What `generate` takes from the model's generation_config when a caller leaves it unset (as generate_rows
        # does): a repetition penalty for every row, top-k for sampled ones.
        self.repetition_penalty = float(_generation_field(model, "repetition_penalty", 1.0))
        self.top_k = int(_generation_field(model, "top_k", 50))
        self.seqs: list[Seq] = []
        self.cache: Any = None
        self.mask: Any = None  # (rows, cached length): 1 where a row has a real token
        self.last: Any = None  # (rows,): the token each row feeds next
        self.positions: Any = None  # (rows,): that token's position

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, renderer: Any, *, prefix_cache: Any = None) -> RunningBatch | None:
        """A batch for ``model``, or None when its cache is not one this can merge and split (sliding windows,
        state-space or hybrid layers, quantized caches) or it is a prompt-tuned PEFT model (virtual tokens)."""
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        why = _cannot_batch(model)
        if why is not None:
            log.info("continuous batching is off for this model: %s", why)
            return None
        batch = cls(model, tokenizer, renderer, prefix_cache=prefix_cache)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        try:  # one token through the model shows the cache it really builds
            cache = DynamicCache(config=base.config)
            ids = torch.tensor([[batch.pad_id]], dtype=torch.long, device=batch.device)
            with torch.inference_mode():
                model(input_ids=ids, **{batch.cache_kw: cache, "use_cache": True})
        except Exception as e:
            log.warning("continuous batching is off for this model: a first token failed: %s: %s", type(e).__name__, e)
            return None
        layers = getattr(cache, "layers", None)
        # Plain full-attention layers only, each holding its own KV (a layer sharing another's holds none).
        if not layers or any(type(layer) is not DynamicLayer or layer.keys is None for layer in layers):
            log.info("continuous batching is off for this model: its cache is not one of plain full-attention layers")
            return None
        return batch

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def width(self) -> int:
        """Cached tokens per row (padding included)."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def add(self, seqs: Sequence[Seq]) -> list[tuple[Seq, Generation]]:
        """Prefill ``seqs`` together and join them to the batch, each with its first token chosen (and streamed);
        those already ended (a limit of 1, a stop token first) come back with their answers."""
        import torch

        if not seqs:
            return []
        with torch.inference_mode():  # the cache, the mask and the logits are inference tensors throughout
            return self._add(list(seqs))

    def _add(self, seqs: list[Seq]) -> list[tuple[Seq, Generation]]:
        import torch

        now = time.perf_counter()
        for s in seqs:
            s.joined_at = now
            if s.seed is not None and s.temperature > 0:
                s._generator = torch.Generator(device=self.device).manual_seed(s.seed)
        cache, p = self._prefix(seqs)
        tail = max(len(s.row.ids) - p for s in seqs)
        width = p + tail
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            own = len(s.row.ids) - p
            if p:
                ids[k, :p] = torch.tensor(s.row.ids[:p], dtype=torch.long)
                mask[k, :p] = 1
            ids[k, width - own :] = torch.tensor(s.row.ids[p:], dtype=torch.long)
            mask[k, width - own :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        if cache is None:
            from transformers import DynamicCache

            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            cache = DynamicCache(config=base.config)
        logits = self._forward(ids[:, p:], mask, positions[:, p:], cache, seqs)
        first = self._choose(seqs, logits)
        self._join(seqs, cache, mask, first, positions[:, -1] + 1)
        return self._advance(seqs, first, time.perf_counter())

    def step(self) -> list[tuple[Seq, Generation]]:
        """One token for every running request; those that ended (a stop token, their limit, a cancelled client)
        leave the batch and come back with their answers."""
        import torch

        if not self.seqs:
            return []
        with torch.inference_mode():
            return self._step()

    def _step(self) -> list[tuple[Seq, Generation]]:
        import torch

        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        logits = self._forward(self.last[:, None], self.mask, self.positions[:, None], self.cache, self.seqs)
        chosen = self._choose(self.seqs, logits)
        self.last, self.positions = chosen, self.positions + 1
        return self._advance(self.seqs, chosen, time.perf_counter())

    def discard(self, seqs: Sequence[Seq]) -> None:
        """Take ``seqs`` out of the batch if they are in it (their prefill failed part way); the rest go on."""
        if self.seqs:
            self._drop({id(s) for s in seqs})

    def close(self) -> None:
        """Drop every request and the cache (the caller has answered them)."""
        self.seqs, self.cache, self.mask, self.last, self.positions = [], None, None, None, None

    # ---- the parts --------------------------------------------------------------------------------------------------
    def _prefix(self, seqs: list[Seq]) -> tuple[Any, int]:
        """(a cache holding the shared prefix's KV for each of ``seqs``, its length), or (None, 0)."""
        from instil.eval.generate import _shared_prefix

        p = seqs[0].prefix_len
        if self.prefix_cache is None or any(s.prefix_len != p for s in seqs):
            return None, 0
        rows = [s.row for s in seqs]
        got = _shared_prefix(self.model, rows, _adapters(seqs), self.prefix_cache, p, self.device)
        return (None, 0) if got is None else (got[1], p)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, seqs: list[Seq]) -> Any:
        import torch

        # In the caller's inference mode.
        kwargs: dict[str, Any] = {self.cache_kw: cache, "use_cache": True}
        if (adapters := _adapters(seqs)) is not None:
            kwargs["adapter_names"] = adapters
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # a prefill needs only its last position's logits
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        # On the model's first device (the last layer may sit on another one), in float32, as generate takes them.
        return out.logits[:, -1, :].to(self.device, dtype=torch.float32)

    def _choose(self, seqs: list[Seq], logits: Any) -> Any:
        """Each row's next token: its grammar's mask, then greedy or its own temperature and top-p."""

        import torch

        if self.repetition_penalty != 1.0:  # over the row's own tokens (generate's would also count its padding)
            p = self.repetition_penalty
            for k, s in enumerate(seqs):
                ids = torch.tensor([*s.row.ids, *s.tokens], dtype=torch.long, device=logits.device)
                score = logits[k].gather(0, ids)
                logits[k] = logits[k].scatter(0, ids, torch.where(score < 0, score * p, score / p))
        matchers = [s.row.matcher if s.row.matcher is not None and not s._ended else None for s in seqs]
        if any(m is not None for m in matchers):
            from instil.eval.constrain import apply_masks

            logits = apply_masks(matchers, logits)
        chosen = logits.argmax(dim=-1)
        for k, s in enumerate(seqs):
            if s.temperature > 0:
                chosen[k] = _sample(logits[k], s.temperature, self.top_k, s.top_p, s._generator)
        return chosen

    def _join(self, seqs: list[Seq], cache: Any, mask: Any, first: Any, positions: Any) -> None:
        """Append the prefilled ``seqs`` to the batch: both caches left-padded to the longer one."""
        import torch
        import torch.nn.functional as F

        if not self.seqs:
            self.seqs, self.cache, self.mask, self.last, self.positions = list(seqs), cache, mask, first, positions
            return
        width = max(self.width, int(mask.shape[1]))
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            a, b = width - old.keys.shape[-2], width - new.keys.shape[-2]
            old.keys = torch.cat([F.pad(old.keys, (0, 0, a, 0)), F.pad(new.keys, (0, 0, b, 0))], dim=0)
            old.values = torch.cat([F.pad(old.values, (0, 0, a, 0)), F.pad(new.values, (0, 0, b, 0))], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (width - self.width, 0)), F.pad(mask, (width - mask.shape[1], 0))])
        self.last = torch.cat([self.last, first])
        self.positions = torch.cat([self.positions, positions])
        self.seqs.extend(seqs)

    def _advance(self, seqs: list[Seq], chosen: Any, now: float) -> list[tuple[Seq, Generation]]:
        """Record and stream each row's new token; drop the rows that ended and return their answers."""
        size = len(self.seqs)
        ended: list[int] = []
        for k, (s, token) in enumerate(zip(seqs, chosen.tolist(), strict=True)):
            if s.first_at is None:
                s.first_at = now
            s.tokens.append(token)
            s.batch_size = max(s.batch_size, size)
            if s.row.matcher is not None and not s._ended:
                s.row.matcher.consume_token(token)
                s._ended = token in self.stop_set or s.row.matcher.is_error()
            if s.row.on_token is not None:
                s.row.on_token(token)
            cancelled = s.row.cancelled is not None and s.row.cancelled()
            if token in self.stop_set or len(s.tokens) >= s.row.max_new_tokens or cancelled:
                ended.append(k)
        if not ended:
            return []
        done = [(seqs[k], self._generation(seqs[k], now)) for k in ended]
        self._drop({id(seqs[k]) for k in ended})
        return done

    def _drop(self, gone: set[int]) -> None:
        import torch

        keep = [k for k, s in enumerate(self.seqs) if id(s) not in gone]
        if not keep:
            self.close()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for layer in self.cache.layers:  # each on its own device (a model split over GPUs)
            layer.batch_select_indices(index.to(layer.keys.device))
        self.mask, self.last, self.positions = self.mask[index], self.last[index], self.positions[index]
        self.seqs = [self.seqs[k] for k in keep]
        # Columns that are padding in every row left (the longest request went): cut them from the cache.
        start = int(self.mask.any(dim=0).int().argmax())
        if start > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]
            self.mask = self.mask[:, start:]

    def _generation(self, s: Seq, now: float) -> Generation:
        text, output_tokens, finish = _finish(self.tokenizer, self.renderer, s.tokens, self.stop_set)
        return Generation(
            text=text,
            input_tokens=len(s.row.ids),
            output_tokens=output_tokens,
            latency_s=now - s.joined_at,
            first_token_s=(s.first_at or now) - s.joined_at,
            finish_reason=finish,
            batch_size=s.batch_size,
            tool_calls=parse_tool_calls(text),
        )


def _sample(logits: Any, temperature: float, top_k: int, top_p: float, generator: Any) -> Any:
    """One token drawn from ``logits`` (one row) as ``generate``'s temperature, top-k and top-p warpers then
    multinomial sampling draw it."""
    import torch

    scores = logits / temperature
    if 0 < top_k < scores.shape[-1]:
        scores = scores.masked_fill(scores < torch.topk(scores, top_k)[0][-1], float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[-1] = False  # the most likely token always stays
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[0]


_NEUTRAL: dict[str, Any] = {
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "exponential_decay_length_penalty": None,
    "encoder_repetition_penalty": 1.0,
    "guidance_scale": None,
}
"""Generation settings a model's generation_config may carry that ``generate`` would apply and this does not: a model
setting any of them is batched whole, so its answers stay the evaluated ones."""


def _generation_field(model: Any, name: str, default: Any) -> Any:
    value = getattr(getattr(model, "generation_config", None), name, None)
    return default if value is None else value


def _cannot_batch(model: Any) -> str | None:
    """Why ``model`` cannot be batched continuously (None: it can, as far as its settings tell)."""
    peft = getattr(model, "peft_config", None)
    if peft and any(getattr(c, "is_prompt_learning", False) for c in peft.values()):
        return "prompt tuning prepends virtual tokens"
    for name, neutral in _NEUTRAL.items():
        value = _generation_field(model, name, neutral)
        if value != neutral and value not in ([], (), {}):
            return f"its generation_config sets {name}={value!r}"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    for key in ("rope_scaling", "rope_parameters"):
        rope = getattr(config, key, None)
        if isinstance(rope, dict) and (rope.get("rope_type") or rope.get("type")) in ("dynamic", "longrope"):
            # Their frequencies follow the longest position in the forward pass: batch-mates would change a row.
            return f"its {key} is {rope.get('rope_type') or rope.get('type')}"
    return None


def _adapters(seqs: Sequence[Seq]) -> list[str] | None:
    """Each row's adapter for PEFT's ``adapter_names`` (``__base__``: none), or None when no row names one."""
    return [s.adapter or "__base__" for s in seqs] if any(s.adapter for s in seqs) else None


def _takes(model: Any, name: str) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(type(base).forward).parameters
