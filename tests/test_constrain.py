"""Constrained decoding (instil.eval.constrain, llguidance) on tiny random models whose free answers are noise: held to
a grammar, every answer fits it, greedy and sampled, in batches that mix constrained and free rows; and
``eval.constrained`` in ``instil eval``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from colour_jobs import COLORS  # noqa: E402
from instil.errors import SpecError  # noqa: E402
from instil.eval.constrain import (  # noqa: E402
    Constrainer,
    ConstraintError,
    label_grammar,
    output_grammar,
    schema_grammar,
)
from instil.eval.generate import Row, generate_local, generate_rows, stop_token_ids  # noqa: E402
from instil.spec import OutputSpec, load_spec  # noqa: E402
from test_generate import _examples  # noqa: E402
from tiny_models import scaled_tiny  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "other"]},
        "urgent": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["category", "urgent"],
    "additionalProperties": False,
}
ODD_LABELS = ['say "hi"', "back\\slash", "ünïcödé 標籤", "two\nlines", "plain"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return scaled_tiny(_examples() * 3, tmp_path_factory.mktemp("tiny") / request.param, arch=request.param)


def _prompts(tokenizer, renderer) -> list[list[int]]:
    return [list(tokenizer(renderer.prompt(e), add_special_tokens=False)["input_ids"]) for e in _examples()]


@pytest.mark.parametrize("sample", [False, True])
def test_every_constrained_answer_fits_and_free_rows_are_untouched(tiny, sample):
    model, tokenizer, renderer = tiny
    stops = stop_token_ids(tokenizer, renderer, model)
    c = Constrainer.for_model(model, tokenizer, stops)
    assert Constrainer.for_model(model, tokenizer, stops) is c  # built once per tokenizer
    json_g, label_g = schema_grammar(SCHEMA), label_grammar(ODD_LABELS)
    ids = _prompts(tokenizer, renderer)
    rows = [
        Row(ids[0], 80, matcher=c.matcher(json_g)),
        Row(ids[1], 24),
        Row(ids[2], 24, matcher=c.matcher(label_g)),
        Row(ids[3], 80, matcher=c.matcher(json_g)),
        Row(ids[4], 24, matcher=c.matcher(label_g)),
    ]
    torch.manual_seed(3)
    gens = generate_rows(model, tokenizer, renderer, rows, do_sample=sample, temperature=1.5 if sample else 1.0)
    for g in (gens[0], gens[3]):
        assert g.finish_reason == "stop", g.text  # the grammar's end forces the end of the turn
        jsonschema.validate(json.loads(g.text), SCHEMA)
    for g in (gens[2], gens[4]):
        assert g.finish_reason == "stop" and g.text in {x.strip() for x in ODD_LABELS}, g.text
    if not sample:  # a free row in a constrained batch answers as it does alone
        alone = generate_rows(model, tokenizer, renderer, [Row(ids[1], 24)])[0]
        assert gens[1].text == alone.text and gens[1].output_tokens == alone.output_tokens
        free = generate_rows(model, tokenizer, renderer, [Row(ids[0], 80)])[0]
        with pytest.raises(ValueError):  # the random model's own answer is noise: the constraint did the work
            jsonschema.validate(json.loads(free.text), SCHEMA)


def test_a_short_limit_cuts_a_constrained_answer_with_finish_length(tiny):
    model, tokenizer, renderer = tiny
    c = Constrainer.for_model(model, tokenizer, stop_token_ids(tokenizer, renderer, model))
    ids = _prompts(tokenizer, renderer)
    g = generate_rows(model, tokenizer, renderer, [Row(ids[0], 3, matcher=c.matcher(schema_grammar(SCHEMA)))])[0]
    assert g.finish_reason == "length" and g.output_tokens == 3 and g.text.startswith("{")


def test_generate_local_holds_every_example_to_the_grammar(tiny):
    model, tokenizer, renderer = tiny
    gens = generate_local(
        model,
        tokenizer,
        renderer,
        _examples(),
        system_prompt=None,
        max_new_tokens=16,
        batch_size=3,
        grammar=label_grammar(["red", "green", "blue"]),
    )
    assert len(gens) == len(_examples()) and all(g.text in {"red", "green", "blue"} for g in gens)


def test_output_grammar_from_the_spec_and_what_cannot_be_enforced():
    assert output_grammar(OutputSpec(type="text")) is None
    labels = output_grammar(OutputSpec(type="label", labels=["a", "b"]))
    assert labels is not None
    # A json output's label_field is limited to the labels when the schema leaves it open.
    open_schema = {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}
    spec = OutputSpec.model_validate({"type": "json", "schema": open_schema, "labels": ["x"], "label_field": "topic"})
    assert "x" in output_grammar(spec)
    assert open_schema["properties"]["topic"] == {"type": "string"}  # the spec's own schema is left as it was
    with pytest.raises(ConstraintError):
        label_grammar([])


def test_a_schema_llguidance_cannot_enforce_is_refused(tiny):
    model, tokenizer, renderer = tiny
    c = Constrainer.for_model(model, tokenizer, stop_token_ids(tokenizer, renderer, model))
    with pytest.raises(ConstraintError, match="cannot be enforced"):
        c.matcher(schema_grammar({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}))


def _label_job(root: Path, constrained: str) -> Path:
    from test_eval import write_job

    spec = write_job(root)
    text = spec.read_text(encoding="utf-8")
    spec.write_text(
        text + f"output: {{type: label, labels: {json.dumps(COLORS)}}}\neval: {{constrained: {constrained}}}\n",
        encoding="utf-8",
    )
    return spec


def test_eval_constrained_holds_a_local_candidate_to_the_labels(tmp_path: Path, store):
    from instil.eval.candidates import Candidate
    from instil.eval.compare import evaluate
    from instil.jobdata import curate_job, split_job

    answers = {}
    for flag in ("false", "true"):
        spec = load_spec(_label_job(tmp_path / flag, flag))
        curate_job(spec, store)
        split_job(spec, store)
        report = evaluate(
            spec, store, candidates=[Candidate("base+full", "local", "full", "base")], max_new_tokens=6, reuse=False
        )
        answers[flag] = [r.output for r in report.examples]
        assert store.get_run(report.run_id).config["constrained"] is (flag == "true")
    assert all(a in COLORS for a in answers["true"]), answers["true"]
    assert not all(a in COLORS for a in answers["false"])  # the untrained base answers something else when free


def test_eval_constrained_needs_an_output_with_a_grammar(tmp_path: Path):
    spec = _label_job(tmp_path / "job", "true")
    spec.write_text(spec.read_text(encoding="utf-8").replace("type: label", "type: text"), encoding="utf-8")
    with pytest.raises(SpecError, match="eval.constrained"):
        load_spec(spec)
