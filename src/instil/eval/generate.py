"""Batched local generation for evaluation: a candidate's answers to a list of examples, with per-request figures.

    from instil.eval.generate import generate_local
    renderer = ChatRenderer(tokenizer, chat_template=spec.model.chat_template)
    gens = generate_local(model, tokenizer, renderer, examples, system_prompt=candidate_prompt)
    gens[0].text, gens[0].finish_reason, gens[0].input_tokens, gens[0].output_tokens, gens[0].latency_s

Prompts are rendered exactly as in training (:meth:`ChatRenderer.prompt`, so the same template and the example's
``tools``), with the candidate's system prompt in place of the example's own (the full best prompt, a short prompt, or
``system_prompt=None`` to keep the example's messages as they are).

How batching keeps greedy answers identical to one-by-one ``model.generate``: prompts are tokenized without special
tokens (the template already writes BOS), sorted by length so that a batch holds prompts of similar length (less
padding to compute), and left-padded with an attention mask; ``generate`` derives position ids from that mask, so
every prompt sees the positions it would see alone. Generation stops at the end-of-turn token, the EOS token, or the
model's own EOS ids, whichever comes first; results come back in input order.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from instil.data.records import Example
from instil.errors import ModelError

__all__ = [
    "MAX_NEW_TOKENS_CAP",
    "Generation",
    "Row",
    "generate_local",
    "generate_rows",
    "parse_tool_calls",
    "stop_token_ids",
]

FinishReason = Literal["stop", "length"]

MAX_NEW_TOKENS_CAP = 1024
"""The most tokens one answer is generated to unless a caller allows more: evaluation's derived ``max_new_tokens``
never exceeds it, and the server caps a request's ``max_tokens`` at it by default."""


@dataclass(frozen=True, slots=True)
class Generation:
    """One generated answer and what it cost."""

    text: str
    """The answer, without the end-of-turn marker or anything after it, and without surrounding whitespace (the
    trained span is the stripped content, so this is what training's reference looks like)."""
    input_tokens: int
    """Tokens of the rendered prompt (no padding)."""
    output_tokens: int
    """Generated tokens up to and including the stop token; padding after it is not counted."""
    latency_s: float
    """Wall time of the batch this request was generated in. Every request of a batch waits for the whole batch, so
    each is given the batch's full time: what a caller waiting for this answer would have measured."""
    first_token_s: float
    """Wall time from the batch's start to its first generated token (the prefill), shared by the whole batch."""
    finish_reason: FinishReason
    """``stop`` when the model ended its turn (a stop token or stop string), ``length`` when ``max_new_tokens`` ran
    out first."""
    batch_size: int
    """How many requests shared the batch (latency and first-token time are the batch's)."""
    tool_calls: list[dict[str, Any]] | None = None
    """Tool calls found in the text (Hermes-style ``<tool_call>{...}</tool_call>``, as instil's ``chatml`` template
    writes them), in OpenAI's shape; None when the text holds none. The tags stay in ``text``."""


def stop_token_ids(tokenizer: Any, renderer: Any, model: Any = None) -> list[int]:
    """Ids that end a generated turn: the template's end-of-turn token, the tokenizer's EOS, and the EOS ids in the
    model's generation config (a model's authors list there what ends its answers). Sorted, without repeats."""
    ids: set[int] = set()
    for token in renderer.stop_strings:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update([config_eos] if isinstance(config_eos, int) else config_eos)
    if not ids:
        raise ModelError(
            f"no token ends a turn: the end-of-turn marker {renderer.end_of_turn!r} is not a token of this tokenizer "
            "and it has no EOS token, so generation could only stop at max_new_tokens",
            hint="use a tokenizer whose chat template ends turns with a special token (or `model.chat_template: "
            "chatml` with a tokenizer that has <|im_end|>)",
        )
    return sorted(ids)


def generate_local(
    model: Any,
    tokenizer: Any,
    renderer: Any,
    examples: Sequence[Example],
    *,
    system_prompt: str | None,
    tools: list[dict[str, Any]] | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    max_batch_tokens: int | None = 4096,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    grammar: str | None = None,
) -> list[Generation]:
    """Generate the next assistant turn for each example, batched; results in the order of ``examples``.

    ``system_prompt`` is the candidate's prompt: it replaces the example's system message (or is added when there is
    none); None leaves the example's messages as they are. ``tools`` replaces every example's own tool definitions
    (the job's tools); None keeps each example's. Greedy by default; ``temperature`` and ``top_p`` apply only with
    ``do_sample=True``. ``progress(done, total)`` is called after each batch. ``max_batch_tokens`` caps a batch's
    padded prompt size (rows x longest prompt): a few long prompts then run in small batches instead of padding 31
    short ones to their length. ``grammar`` (from :mod:`instil.eval.constrain`) holds every answer to it by
    constrained decoding.

    Raises :class:`ModelError` when a prompt plus ``max_new_tokens`` does not fit the model's context.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be at least 1")
    prompts = [renderer.prompt(ex, tools=tools, system_prompt_override=system_prompt) for ex in examples]
    encoded = [list(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    _check_context(model, examples, encoded, max_new_tokens)

    stops = stop_token_ids(tokenizer, renderer, model)
    config = _config(tokenizer, stops, max_new_tokens, do_sample, temperature, top_p)
    stop_set = set(stops)
    device = _device(model)
    matchers: Callable[[], Any] | None = None
    if grammar is not None:
        from instil.eval.constrain import Constrainer

        template = Constrainer.for_model(model, tokenizer, stops).matcher(grammar)  # compiled once, copied per row
        matchers = template.deep_copy
    # A model fresh from training may still be in train mode, where dropout (LoRA's too) would make greedy answers
    # random; evaluation mode for the run, the caller's mode restored after.
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        return _run(
            model,
            tokenizer,
            renderer,
            encoded,
            config,
            stop_set,
            device,
            batch_size,
            max_batch_tokens,
            progress,
            matchers,
        )
    finally:
        model.train(was_training)


def _run(
    model: Any,
    tokenizer: Any,
    renderer: Any,
    encoded: list[list[int]],
    config: Any,
    stop_set: set[int],
    device: Any,
    batch_size: int,
    max_batch_tokens: int | None,
    progress: Callable[[int, int], None] | None,
    matchers: Callable[[], Any] | None = None,
) -> list[Generation]:
    # Longest first: similar lengths share a batch (little padding), and running out of memory shows at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    done = 0
    for batch in _batches(order, [len(e) for e in encoded], batch_size, max_batch_tokens):
        rows = [Row(encoded[i], config.max_new_tokens, matcher=matchers() if matchers else None) for i in batch]
        for i, gen in zip(
            batch, _generate_rows(model, tokenizer, renderer, rows, config, stop_set, device), strict=True
        ):
            results[i] = gen
        done += len(batch)
        if progress is not None:
            progress(done, len(order))
    return [r for r in results if r is not None]


@dataclass
class Row:
    """One prompt of a batch for :func:`generate_rows`, with what the server needs beyond evaluation."""

    ids: list[int]
    """The rendered prompt's token ids (no padding)."""
    max_new_tokens: int
    """This row's own limit; its batch-mates may go on longer."""
    on_token: Callable[[int], None] | None = None
    """Called with each token id as it is generated (from the generating thread), the stop token included."""
    cancelled: Callable[[], bool] | None = None
    """Polled after each token: True stops this row there (its client went away); its batch-mates go on."""
    matcher: Any = None
    """A grammar matcher (:meth:`~instil.eval.constrain.Constrainer.matcher`) the answer is held to; None: free."""


def generate_rows(
    model: Any,
    tokenizer: Any,
    renderer: Any,
    rows: Sequence[Row],
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    adapter_names: Sequence[str] | None = None,
    prefix_cache: Any = None,
    prefix_len: int = 0,
) -> list[Generation]:
    """Generate ``rows`` as one batch, each to its own ``max_new_tokens``, with the settings, padding and stop tokens
    of :func:`generate_local` (so greedy answers are the ones evaluation measured); results in the order of ``rows``.

    ``adapter_names``: for a PEFT model holding several LoRA adapters, the adapter of each row (``__base__`` for
    none), so rows of different versions share one batch (PEFT's mixed-adapter inference).

    ``prefix_cache`` (a :class:`~instil.eval.prefix.PrefixCache`) with ``prefix_len``: when every row starts with the
    same ``prefix_len`` tokens and runs one adapter, their KV comes from the cache instead of being prefilled again.

    The caller checks the context (prompt plus limit within the model's positions). A row stopped by ``cancelled``
    gets the text generated so far, with ``finish_reason`` ``length``."""
    if not rows:
        return []
    if min(r.max_new_tokens for r in rows) < 1:
        raise ValueError("every row's max_new_tokens must be at least 1")
    stops = stop_token_ids(tokenizer, renderer, model)
    config = _config(tokenizer, stops, max(r.max_new_tokens for r in rows), do_sample, temperature, top_p)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        return _generate_rows(
            model,
            tokenizer,
            renderer,
            list(rows),
            config,
            set(stops),
            _device(model),
            adapter_names,
            prefix_cache,
            prefix_len,
        )
    finally:
        model.train(was_training)


def _config(
    tokenizer: Any, stops: list[int], max_new_tokens: int, do_sample: bool, temperature: float, top_p: float
) -> Any:
    from transformers import GenerationConfig

    # Padding never reaches the model's attention (the mask hides it); without a pad token any id does, EOS is usual.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=None,
        use_cache=True,
        eos_token_id=stops,
        pad_token_id=pad_id,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
    )


def _generate_rows(
    model: Any,
    tokenizer: Any,
    renderer: Any,
    rows: list[Row],
    config: Any,
    stop_set: set[int],
    device: Any,
    adapter_names: Sequence[str] | None = None,
    prefix_cache: Any = None,
    prefix_len: int = 0,
) -> list[Generation]:
    import torch
    from transformers import StoppingCriteriaList

    extra: dict[str, Any] = {}
    cached = _shared_prefix(model, rows, adapter_names, prefix_cache, prefix_len, device)
    p = 0
    if cached is not None:
        p, extra[cached[0]] = prefix_len, cached[1]
    # [prefix | left padding | the row's own tokens]: the mask hides the padding, so positions run on unbroken.
    tail = max(len(r.ids) - p for r in rows)
    width = p + tail
    input_ids = torch.full((len(rows), width), config.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        own = len(r.ids) - p
        if p:
            input_ids[k, :p] = torch.tensor(r.ids[:p], dtype=torch.long)
            attention[k, :p] = 1
        input_ids[k, width - own :] = torch.tensor(r.ids[p:], dtype=torch.long)
        attention[k, width - own :] = 1
    steps = _Steps(rows, stop_set)
    if any(r.matcher is not None for r in rows):
        from transformers import LogitsProcessorList

        from instil.eval.constrain import GrammarMask

        extra["logits_processor"] = LogitsProcessorList([GrammarMask([r.matcher for r in rows], stop_set)])
    if adapter_names is not None:
        if len(adapter_names) != len(rows):
            raise ValueError(f"{len(adapter_names)} adapter names for {len(rows)} rows")
        extra["adapter_names"] = list(adapter_names)
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([steps]),
            **extra,
        )
    elapsed = time.perf_counter() - began
    first_token_s = (steps.first_at - began) if steps.first_at is not None else elapsed
    new_tokens = out[:, width:].tolist()
    results = []
    for k, r in enumerate(rows):
        # A row stopped before the batch's end runs on with padding: only its own tokens are its answer.
        text, output_tokens, finish_reason = _finish(tokenizer, renderer, new_tokens[k][: steps.lengths[k]], stop_set)
        results.append(
            Generation(
                text=text,
                input_tokens=len(r.ids),
                output_tokens=output_tokens,
                latency_s=elapsed,
                first_token_s=first_token_s,
                finish_reason=finish_reason,
                batch_size=len(rows),
                tool_calls=parse_tool_calls(text),
            )
        )
    return results


def _shared_prefix(
    model: Any,
    rows: list[Row],
    adapter_names: Sequence[str] | None,
    prefix_cache: Any,
    prefix_len: int,
    device: Any,
) -> tuple[str, Any] | None:
    """(the cache keyword, a cache of the rows' shared first ``prefix_len`` tokens) when the batch can use one: all
    rows start with those tokens and have at least one more, and run the same adapter."""
    from instil.eval.prefix import MIN_PREFIX_TOKENS, cache_keyword

    if prefix_cache is None or prefix_len < MIN_PREFIX_TOKENS:
        return None
    first = rows[0].ids[:prefix_len]
    if any(len(r.ids) <= prefix_len or r.ids[:prefix_len] != first for r in rows):
        return None
    adapters = set(adapter_names) if adapter_names is not None else {None}
    if len(adapters) != 1:
        return None
    cache = prefix_cache.batch_cache(model, first, len(rows), next(iter(adapters)), device)
    return None if cache is None else (cache_keyword(model), cache)


def _batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Cut ``order`` (longest first) into batches of at most ``batch_size`` rows and ``max_tokens`` padded tokens."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]  # longest first: the first row sets the width
        full = len(batch) >= batch_size or (max_tokens is not None and (len(batch) + 1) * width > max_tokens)
        if batch and full:
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


class _Steps:
    """A stopping criterion that generate calls after each new token: it marks the first token's time, hands each
    row its new token, and stops a row at its own limit, at a stop token or when it is cancelled. Duck-typed
    (``StoppingCriteriaList`` only calls it), so this module imports no torch at import time."""

    def __init__(self, rows: list[Row], stops: set[int]) -> None:
        import torch

        self.rows = rows
        self.first_at: float | None = None
        self.steps = 0
        self.limits = torch.tensor([r.max_new_tokens for r in rows])
        self.stops = torch.tensor(sorted(stops))
        self.done = torch.zeros(len(rows), dtype=torch.bool)
        self._lengths = torch.zeros(len(rows), dtype=torch.long)
        self.listening = [k for k, r in enumerate(rows) if r.on_token is not None]
        self.cancels = [r.cancelled for r in rows] if any(r.cancelled for r in rows) else None

    @property
    def lengths(self) -> list[int]:
        """Tokens each row generated before it stopped (its stop token included)."""
        return self._lengths.tolist()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.steps += 1
        last = input_ids[:, -1].cpu()
        running = ~self.done
        self._lengths += running
        if self.listening:
            tokens = last.tolist()
            for k in self.listening:
                if running[k]:
                    self.rows[k].on_token(tokens[k])  # type: ignore[misc]
        ended = torch.isin(last, self.stops) | (self.steps >= self.limits)
        if self.cancels is not None:
            ended |= torch.tensor([bool(c and c()) for c in self.cancels])
        self.done |= ended
        return self.done.to(input_ids.device)


def _finish(tokenizer: Any, renderer: Any, new_ids: list[int], stops: set[int]) -> tuple[str, int, FinishReason]:
    """One request's (text, output tokens, finish reason) from its generated ids, which run on with padding after
    its own stop token while its batch-mates go on."""
    end = next((k for k, tid in enumerate(new_ids) if tid in stops), None)
    text = tokenizer.decode(new_ids if end is None else new_ids[:end], skip_special_tokens=False)
    # A stop string may also come out as ordinary tokens ("<|" "im" "_end|>"): the turn ends there too.
    cut = min((at for s in renderer.stop_strings if (at := text.find(s)) >= 0), default=None)
    if cut is not None:
        text = text[:cut]
    output_tokens = len(new_ids) if end is None else end + 1
    return text.strip(), output_tokens, "stop" if end is not None or cut is not None else "length"


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """Hermes-style tool calls in ``text`` as OpenAI ``tool_calls`` (``{"type": "function", "function": {"name",
    "arguments"}}``, arguments as a JSON string); None when there are none. A block that is not a JSON object with a
    ``name`` is kept with its raw text under ``function.arguments`` and ``name`` empty, so a grader can fail it."""
    blocks = _TOOL_CALL.findall(text)
    if not blocks:
        return None
    calls: list[dict[str, Any]] = []
    for k, raw in enumerate(blocks):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            args = obj.get("arguments", {})
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            fn = {"name": obj["name"], "arguments": arguments}
        else:
            fn = {"name": "", "arguments": raw}
        calls.append({"id": f"call_{k}", "type": "function", "function": fn})
    return calls


def _device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


def _check_context(model: Any, examples: Sequence[Example], encoded: list[list[int]], max_new_tokens: int) -> None:
    """Raise when a prompt and its answer would run past the model's positions: RoPE models do not refuse longer
    inputs, they silently answer worse."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit:
        return
    too_long = [(k, len(ids)) for k, ids in enumerate(encoded) if len(ids) + max_new_tokens > limit]
    if not too_long:
        return
    k, n = too_long[0]
    where = examples[k].source or (f"id {examples[k].id}" if examples[k].id else f"example #{k}")
    raise ModelError(
        f"{where}: the prompt is {n} tokens, and with max_new_tokens={max_new_tokens} the answer would run past the "
        f"model's {limit} positions ({len(too_long)} of {len(encoded)} prompts are too long)",
        hint="lower max_new_tokens, shorten or drop the long examples, or use a model with a longer context",
    )
