"""Continuous batching (instil.eval.continuous, and the serving engine on it) on tiny random Llama and Qwen2 models:
requests that join a running batch mid-way and leave it early answer as they do alone; sampling, grammars, limits
and cancellation stay per request; a model whose cache cannot be merged falls back to whole batches."""

from __future__ import annotations

import json
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from instil.eval.continuous import RunningBatch, Seq  # noqa: E402
from instil.eval.generate import Row, generate_rows  # noqa: E402
from instil.eval.prefix import PrefixCache, prefix_length  # noqa: E402
from test_generate import SYSTEM, _examples  # noqa: E402
from tiny_models import scaled_tiny  # noqa: E402


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return scaled_tiny(_examples() * 3, tmp_path_factory.mktemp("tiny") / request.param, arch=request.param)


def _prompts(tokenizer, renderer) -> list[list[int]]:
    return [list(tokenizer(renderer.prompt(e), add_special_tokens=False)["input_ids"]) for e in _examples()]


def _alone(tiny, ids: list[int], n: int):
    model, tokenizer, renderer = tiny
    return generate_rows(model, tokenizer, renderer, [Row(ids, n)])[0]


def _run(batch: RunningBatch, arrivals: dict[int, list[Seq]]) -> dict[int, object]:
    """Step ``batch`` until it is empty, adding ``arrivals[step]`` before that step; the answers by id(seq)."""
    out: dict[int, object] = {}
    step = 0
    while batch or any(k >= step for k in arrivals):
        for s, g in batch.add(arrivals.get(step, [])):
            out[id(s)] = g
        for s, g in batch.step():
            out[id(s)] = g
        step += 1
    return out


def test_requests_joining_mid_way_and_leaving_early_answer_as_alone(tiny):
    model, tokenizer, renderer = tiny
    batch = RunningBatch.for_model(model, tokenizer, renderer)
    assert batch is not None
    ids = _prompts(tokenizer, renderer)
    limits = [30, 5, 17, 9, 24, 3, 12]
    seqs = [Seq(Row(i, n)) for i, n in zip(ids, limits, strict=True)]
    # Two at once, one after 2 steps (a longer prompt than theirs: their KV is padded), more as others leave.
    out = _run(batch, {0: seqs[:2], 2: [seqs[4]], 4: seqs[2:4], 9: [seqs[5]], 10: [seqs[6]]})
    assert not batch and batch.width == 0  # everything left the batch, the cache with it
    for s, n in zip(seqs, limits, strict=True):
        g, alone = out[id(s)], _alone(tiny, s.row.ids, n)
        assert (g.text, g.output_tokens, g.finish_reason) == (alone.text, alone.output_tokens, alone.finish_reason)
        assert g.input_tokens == len(s.row.ids) and 0 < g.first_token_s <= g.latency_s
    assert len({out[id(s)].text for s in seqs}) >= 4  # the answers differ: equal by accident is ruled out
    assert max(out[id(s)].batch_size for s in seqs) >= 3


def test_tokens_stream_per_request_and_a_cancelled_one_leaves_at_its_next_token(tiny):
    model, tokenizer, renderer = tiny
    batch = RunningBatch.for_model(model, tokenizer, renderer)
    ids = _prompts(tokenizer, renderer)
    streamed: list[int] = []
    stop = {"now": False}
    kept = Seq(Row(ids[0], 20, on_token=streamed.append))
    gone = Seq(Row(ids[1], 400, cancelled=lambda: stop["now"]))
    batch.add([kept, gone])
    steps, ended = 0, {}
    while batch:
        stop["now"] = steps == 3
        ended.update({id(s): g for s, g in batch.step()})
        steps += 1
    assert ended[id(gone)].output_tokens == 5 and ended[id(gone)].finish_reason == "length"  # 1 + 4 steps
    assert streamed == kept.tokens and len(streamed) == ended[id(kept)].output_tokens
    assert ended[id(kept)].text == _alone(tiny, ids[0], 20).text


def test_a_seeded_sampled_request_draws_the_same_whatever_its_batch_mates(tiny):
    model, tokenizer, renderer = tiny
    batch = RunningBatch.for_model(model, tokenizer, renderer)
    ids = _prompts(tokenizer, renderer)

    def sampled() -> Seq:
        return Seq(Row(ids[2], 16), temperature=1.3, top_p=0.9, seed=7)

    alone, beside = sampled(), sampled()
    a = _run(batch, {0: [alone]})[id(alone)]
    mates = [Seq(Row(ids[k], 16), temperature=0.8, seed=k) for k in (0, 1)] + [Seq(Row(ids[5], 8))]
    b = _run(batch, {0: mates[:2], 1: [beside], 3: mates[2:]})[id(beside)]
    assert a.text == b.text
    other = Seq(Row(ids[2], 16), temperature=1.3, top_p=0.9, seed=8)
    texts = {_run(batch, {0: [other]})[id(other)].text, a.text}
    greedy = _alone(tiny, ids[2], 16).text
    assert len(texts | {greedy}) >= 2  # sampling did draw: not the greedy answer every time


def test_grammar_rows_fit_beside_free_rows(tiny):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    from instil.eval.constrain import Constrainer, schema_grammar
    from instil.eval.generate import stop_token_ids
    from test_constrain import SCHEMA

    model, tokenizer, renderer = tiny
    c = Constrainer.for_model(model, tokenizer, stop_token_ids(tokenizer, renderer, model))
    batch = RunningBatch.for_model(model, tokenizer, renderer)
    ids = _prompts(tokenizer, renderer)
    held = [Seq(Row(ids[k], 80, matcher=c.matcher(schema_grammar(SCHEMA)))) for k in (0, 3)]
    free = Seq(Row(ids[1], 24))
    out = _run(batch, {0: [held[0], free], 2: [held[1]]})
    for s in held:
        g = out[id(s)]
        assert g.finish_reason == "stop", g.text
        jsonschema.validate(json.loads(g.text), SCHEMA)
    assert out[id(free)].text == _alone(tiny, ids[1], 24).text


def test_the_shared_system_prompt_comes_from_the_prefix_cache(tiny):
    model, tokenizer, renderer = tiny
    cache = PrefixCache()
    batch = RunningBatch.for_model(model, tokenizer, renderer, prefix_cache=cache)
    system = SYSTEM + " " + " ".join(f"Rule {k}: answer with the category only." for k in range(12))
    p = prefix_length(renderer, tokenizer, system)
    examples = _examples()
    ids = []
    for ex in examples:
        prompt = renderer.prompt(ex, system_prompt_override=system)
        ids.append(list(tokenizer(prompt, add_special_tokens=False)["input_ids"]))
    seqs = [Seq(Row(i, 10), prefix_len=p) for i in ids]
    out = _run(batch, {0: seqs[:3], 2: seqs[3:5], 5: seqs[5:]})
    assert cache.misses == 1 and cache.hits == 2
    for s in seqs:
        assert out[id(s)].text == _alone(tiny, s.row.ids, 10).text


def test_a_model_whose_cache_cannot_be_merged_is_batched_whole(tmp_path):
    """A sliding window (Qwen2's use_sliding_window) makes a cache of sliding layers: not merged, so the engine
    runs whole batches, and still answers as generate does."""
    from transformers import AutoModelForCausalLM

    from instil.serve.engine import Engine, Job

    model, tokenizer, renderer = scaled_tiny(_examples(), tmp_path / "q", arch="qwen2")
    model.save_pretrained(tmp_path / "window")
    config = json.loads((tmp_path / "window" / "config.json").read_text())
    layers = config["num_hidden_layers"]
    config.update(use_sliding_window=True, sliding_window=8, max_window_layers=0)
    config["layer_types"] = ["sliding_attention"] * layers
    (tmp_path / "window" / "config.json").write_text(json.dumps(config))
    windowed = AutoModelForCausalLM.from_pretrained(tmp_path / "window").eval()
    assert RunningBatch.for_model(windowed, tokenizer, renderer) is None
    assert RunningBatch.for_model(model, tokenizer, renderer) is not None
    engine = Engine(windowed, tokenizer, renderer, batch_size=4)
    try:
        ids = _prompts(tokenizer, renderer)
        jobs = [Job(ids[k], max_tokens=6) for k in range(3)]
        for j in jobs:
            engine.submit(j)
        for k, j in enumerate(jobs):
            expected = generate_rows(windowed, tokenizer, renderer, [Row(ids[k], 6)])[0].text
            assert j.future.result(timeout=60).text == expected
    finally:
        engine.stop()


def test_the_engine_answers_a_short_request_while_a_long_one_runs(tiny):
    from instil.serve.engine import Engine, Job

    model, tokenizer, renderer = tiny
    ids = _prompts(tokenizer, renderer)
    # A prompt the model answers past 300 tokens without ending its turn: the long request surely runs on.
    k = next(k for k in (4, 2, 6, 0) if _alone(tiny, ids[k], 300).finish_reason == "length")
    engine = Engine(model, tokenizer, renderer, batch_size=4)
    try:
        long = Job(ids[k], max_tokens=300)
        engine.submit(long)
        time.sleep(0.05)  # it is generating
        short = Job(ids[1], max_tokens=4)
        engine.submit(short)
        g = short.future.result(timeout=60)
        assert not long.future.done()  # joined the running batch and left it: no wait for the long one
        assert g.text == _alone(tiny, ids[1], 4).text and short.batch_size == 2
        assert long.future.result(timeout=120).output_tokens == 300
        assert engine.stats.generated == 2
    finally:
        engine.stop()


def test_the_models_repetition_penalty_and_top_k_apply_as_generate_applies_them(tiny, tmp_path):
    """Settings from the model's generation_config that generate applies: a repetition penalty answers as generate
    does; one this cannot apply (no_repeat_ngram_size) makes the model batched whole."""
    model, tokenizer, renderer = tiny
    ids = _prompts(tokenizer, renderer)
    before = _alone(tiny, ids[0], 24).text
    model.generation_config.repetition_penalty = 1.8
    try:
        batch = RunningBatch.for_model(model, tokenizer, renderer)
        assert batch is not None and batch.repetition_penalty == 1.8 and batch.top_k == 50
        seqs = [Seq(Row(ids[k], 24)) for k in (0, 1, 3)]
        out = _run(batch, {0: seqs[:2], 3: seqs[2:]})
        for s in seqs:
            assert out[id(s)].text == _alone(tiny, s.row.ids, 24).text
        assert out[id(seqs[0])].text != before  # the penalty changed the answer: it was applied, here and there
        model.generation_config.no_repeat_ngram_size = 3
        assert RunningBatch.for_model(model, tokenizer, renderer) is None
    finally:
        model.generation_config.repetition_penalty = None
        model.generation_config.no_repeat_ngram_size = None


def test_a_request_whose_prefill_fails_fails_alone(tiny):
    """A prompt the model cannot read (a token id past its vocabulary) fails its own request; the requests already
    generating, and the next ones, go on."""
    from instil.serve.engine import Engine, Job

    model, tokenizer, renderer = tiny
    ids = _prompts(tokenizer, renderer)
    k = next(k for k in (4, 2, 6, 0) if _alone(tiny, ids[k], 300).finish_reason == "length")
    expected = _alone(tiny, ids[k], 300).text
    engine = Engine(model, tokenizer, renderer, batch_size=4)
    try:
        running = Job(ids[k], max_tokens=300)
        engine.submit(running)
        time.sleep(0.02)
        bad = Job([*ids[1], model.config.vocab_size + 7], max_tokens=4)
        engine.submit(bad)
        with pytest.raises(IndexError):
            bad.future.result(timeout=60)
        assert not running.future.done()  # it was generating when the bad one failed beside it
        after = Job(ids[2], max_tokens=6)
        engine.submit(after)
        assert running.future.result(timeout=60).text == expected
        assert after.future.result(timeout=60).text == _alone(tiny, ids[2], 6).text
        assert engine.stats.failed == 1 and engine.stats.generated == 2
    finally:
        engine.stop()
