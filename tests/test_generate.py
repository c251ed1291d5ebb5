"""Batched local generation (instil.eval.generate) on a tiny random Llama and Qwen2 built from examples in the test."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from instil.data.records import Example, Message  # noqa: E402
from instil.errors import ModelError  # noqa: E402
from instil.eval.generate import Generation, generate_local, parse_tool_calls, stop_token_ids  # noqa: E402
from tiny_models import scaled_tiny  # noqa: E402

SYSTEM = "Classify the ticket. Answer with JSON."
TICKETS = [
    "Hi",
    "My invoice shows a double charge for March, please refund one of them.",
    "The app crashes on start since the last update. Urgent!",
    "Cannot log in",
    "I would like to change the shipping address of order 1234 to my office, which is on the other side of town, "
    "because nobody is at home during the day and the courier keeps leaving notes.",
    "Where is my parcel?",
    "Please delete my account and every piece of data you hold about me.",
]


def _examples() -> list[Example]:
    return [
        Example(
            messages=[
                Message("system", SYSTEM),
                Message("user", t),
                Message("assistant", '{"category": "other"}'),
            ],
            id=f"ex-{k}",
        )
        for k, t in enumerate(TICKETS)
    ]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    """A tiny model whose random weights are scaled up, so greedy answers vary from token to token (the default
    initialisation repeats one token, which would hide a position or mask error)."""
    return scaled_tiny(_examples() * 3, tmp_path_factory.mktemp("tiny") / request.param, arch=request.param)


def _one_by_one(model, tokenizer, renderer, examples, max_new_tokens, system_prompt=None) -> list[list[int]]:
    """The plain transformers way: one prompt at a time, no padding."""
    stops = stop_token_ids(tokenizer, renderer, model)
    out = []
    for ex in examples:
        prompt = renderer.prompt(ex, system_prompt_override=system_prompt)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            seq = model.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        out.append(seq[0, ids.shape[1] :].tolist())
    return out


def _text(tokenizer, renderer, ids: list[int]) -> str:
    stops = set(stop_token_ids(tokenizer, renderer))
    end = next((k for k, t in enumerate(ids) if t in stops), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=False).strip()


def test_batched_greedy_equals_one_by_one(tiny):
    model, tokenizer, renderer = tiny
    examples = _examples()
    lengths = {len(tokenizer(renderer.prompt(e), add_special_tokens=False)["input_ids"]) for e in examples}
    assert len(lengths) >= 5  # mixed lengths, so batches are left-padded
    singles = _one_by_one(model, tokenizer, renderer, examples, 12)
    batched = generate_local(model, tokenizer, renderer, examples, system_prompt=None, max_new_tokens=12, batch_size=4)
    assert [g.text for g in batched] == [_text(tokenizer, renderer, ids) for ids in singles]
    # The scaled weights make answers differ between prompts: equal outputs are not equal by accident.
    assert len({g.text for g in batched}) >= 3
    # One batch of all seven, and batches of one, give the same again.
    whole = generate_local(model, tokenizer, renderer, examples, system_prompt=None, max_new_tokens=12, batch_size=7)
    alone = generate_local(model, tokenizer, renderer, examples, system_prompt=None, max_new_tokens=12, batch_size=1)
    assert [g.text for g in whole] == [g.text for g in batched] == [g.text for g in alone]
    assert {g.batch_size for g in whole} == {7} and {g.batch_size for g in alone} == {1}
    # A model left in train mode is generated from in eval mode, and handed back in train mode.
    model.train()
    try:
        again = generate_local(model, tokenizer, renderer, examples[:2], system_prompt=None, max_new_tokens=12)
        assert model.training and [g.text for g in again] == [g.text for g in batched[:2]]
    finally:
        model.eval()


def test_order_and_token_counts(tiny):
    model, tokenizer, renderer = tiny
    examples = _examples()
    done: list[tuple[int, int]] = []
    gens = generate_local(
        model,
        tokenizer,
        renderer,
        examples,
        system_prompt=None,
        max_new_tokens=6,
        batch_size=3,
        progress=lambda d, t: done.append((d, t)),
    )
    assert len(gens) == len(examples) and all(isinstance(g, Generation) for g in gens)
    assert done == [(3, 7), (6, 7), (7, 7)]
    for ex, g in zip(examples, gens, strict=True):
        # Input order kept: each input_tokens is its own prompt's length, and those lengths differ.
        assert g.input_tokens == len(tokenizer(renderer.prompt(ex), add_special_tokens=False)["input_ids"])
        assert 1 <= g.output_tokens <= 6
        if g.finish_reason == "length":
            assert g.output_tokens == 6
        assert 0 < g.first_token_s <= g.latency_s
    # Each answer alone matches its place in the batched list.
    for k in (0, 4, 6):
        alone = generate_local(model, tokenizer, renderer, [examples[k]], system_prompt=None, max_new_tokens=6)
        assert alone[0].text == gens[k].text and alone[0].output_tokens == gens[k].output_tokens


class _ForceAfter:
    """A logits processor that forces ``token`` as the ``after``-th new token (1-based): a model that 'ends its
    turn' at a known step, with everything else left to the real model."""

    def __init__(self, prompt_len: int, after: int, token: int) -> None:
        self.prompt_len, self.after, self.token = prompt_len, after, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len == self.after - 1:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.token] = 0.0
        return scores


def test_stops_at_end_of_turn_and_strips_marker(tiny, monkeypatch):
    model, tokenizer, renderer = tiny
    examples = _examples()[:3]
    eot = tokenizer.convert_tokens_to_ids(renderer.end_of_turn)
    free = generate_local(model, tokenizer, renderer, examples, system_prompt=None, max_new_tokens=10, batch_size=3)
    # Force the end-of-turn token as the 4th new token of every request in the batch, through the real generate.
    real_generate = model.generate

    def forced(**kwargs):
        width = kwargs["input_ids"].shape[1]
        return real_generate(**kwargs, logits_processor=[_ForceAfter(width, 4, eot)])

    monkeypatch.setattr(model, "generate", forced)
    gens = generate_local(model, tokenizer, renderer, examples, system_prompt=None, max_new_tokens=10, batch_size=3)
    for g, f in zip(gens, free, strict=True):
        if f.output_tokens < 4:  # the model stopped on its own before the forced token
            assert g.text == f.text and g.finish_reason == "stop"
            continue
        assert g.finish_reason == "stop"
        assert g.output_tokens == 4  # three answer tokens and the end-of-turn token
        assert renderer.end_of_turn not in g.text
        # The three tokens before the marker are the free run's first three (greedy, same prompt).
        assert f.text.startswith(g.text)
    assert any(f.output_tokens >= 4 for f in free)  # the forced stop was exercised
    assert any(f.finish_reason == "length" and f.output_tokens == 10 for f in free)


def test_system_prompt_override_changes_the_prompt(tiny):
    model, tokenizer, renderer = tiny
    examples = _examples()[:2]
    short = "Reply in JSON."
    base = generate_local(model, tokenizer, renderer, examples, system_prompt=None, max_new_tokens=8)
    over = generate_local(model, tokenizer, renderer, examples, system_prompt=short, max_new_tokens=8)
    for ex, b, o in zip(examples, base, over, strict=True):
        assert b.input_tokens == len(tokenizer(renderer.prompt(ex), add_special_tokens=False)["input_ids"])
        expected = renderer.prompt(ex, system_prompt_override=short)
        assert short in expected and SYSTEM not in expected
        assert o.input_tokens == len(tokenizer(expected, add_special_tokens=False)["input_ids"])
        assert o.input_tokens != b.input_tokens
    # The answers are those of the overridden prompt, one by one.
    singles = _one_by_one(model, tokenizer, renderer, examples, 8, system_prompt=short)
    assert [g.text for g in over] == [_text(tokenizer, renderer, ids) for ids in singles]


def test_prompt_past_the_context_raises(tiny):
    model, tokenizer, renderer = tiny
    ex = _examples()[1]
    ex.source = "golden.jsonl:2"
    with pytest.raises(ModelError, match=r"golden.jsonl:2: the prompt is \d+ tokens.*max_new_tokens=4096"):
        generate_local(model, tokenizer, renderer, [ex], system_prompt=None, max_new_tokens=4096)


def test_empty_input_and_bad_arguments(tiny):
    model, tokenizer, renderer = tiny
    assert generate_local(model, tokenizer, renderer, [], system_prompt=None) == []
    with pytest.raises(ValueError, match="batch_size"):
        generate_local(model, tokenizer, renderer, _examples(), system_prompt=None, batch_size=0)


def test_parse_tool_calls():
    text = 'Checking.\n<tool_call>{"name": "lookup", "arguments": {"order": 12}}</tool_call><tool_call>oops</tool_call>'
    calls = parse_tool_calls(text)
    assert calls == [
        {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": '{"order": 12}'}},
        {"id": "call_1", "type": "function", "function": {"name": "", "arguments": "oops"}},
    ]
    assert parse_tool_calls("no calls here") is None


def test_batches_respect_rows_and_the_padded_token_budget():
    from instil.eval.generate import _batches

    lengths = [700, 90, 80, 80, 70, 60, 10]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    # 700 alone: a second row would pad to 1400 > 1000; then 90-wide rows, at most 3 a batch.
    assert _batches(order, lengths, 3, 1000) == [[0], [1, 2, 3], [4, 5, 6]]
    assert _batches(order, lengths, 32, None) == [order]
    assert [len(b) for b in _batches(order, lengths, 2, None)] == [2, 2, 2, 1]


def test_a_cached_system_prompt_gives_the_answers_of_a_full_prefill(tiny):
    from instil.eval.generate import Row, generate_rows
    from instil.eval.prefix import PrefixCache, prefix_length

    model, tokenizer, renderer = tiny
    system = "You are the triage desk of a large shop; read the ticket, weigh it and answer in JSON. " * 6
    prompts = [renderer.prompt(ex.with_system_prompt(system)) for ex in _examples()]
    ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    n = prefix_length(renderer, tokenizer, system)
    assert n >= 32 and all(i[:n] == ids[0][:n] for i in ids)
    assert prefix_length(renderer, tokenizer, None) == 0

    def rows() -> list[Row]:
        return [Row(list(i), 12) for i in ids]

    plain = generate_rows(model, tokenizer, renderer, rows())
    cache = PrefixCache()
    for _ in range(2):  # computed once, then reused
        cached = generate_rows(model, tokenizer, renderer, rows(), prefix_cache=cache, prefix_len=n)
        assert [g.text for g in cached] == [g.text for g in plain]
        assert [g.output_tokens for g in cached] == [g.output_tokens for g in plain]
        assert [g.input_tokens for g in cached] == [len(i) for i in ids]
    assert (cache.misses, cache.hits) == (1, 1)
    # Rows that do not share the prefix are prefilled whole, and answer the same.
    other = list(tokenizer(renderer.prompt(_examples()[0]), add_special_tokens=False)["input_ids"])
    mixed = generate_rows(model, tokenizer, renderer, [*rows()[:2], Row(other, 12)], prefix_cache=cache, prefix_len=n)
    assert [g.text for g in mixed[:2]] == [g.text for g in plain[:2]] and cache.hits == 1
