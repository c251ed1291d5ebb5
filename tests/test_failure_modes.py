"""The failure-mode checks: the pure checks on constructed answers with known results, then one real run of all three
on a tiny trained model (overfitting on its own training split, style collapse, forgetting on a regression set)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from instil.errors import DataError
from instil.eval.candidates import default_candidates
from instil.eval.compare import evaluate
from instil.eval.failure_modes import (
    FailureModes,
    distinct_n,
    forgetting,
    overfitting,
    style_collapse,
    token_f1,
)
from instil.eval.report import write_report
from instil.spec import load_spec
from instil.store import Store
from test_eval import COLORS, prepared


# ---- the pure checks -------------------------------------------------------------------------------------------------
def test_token_f1_and_distinct_n_known_values():
    assert token_f1("the cat sat", "the cat") == pytest.approx(0.8)  # p 2/3, r 1: 2pr/(p+r) = 0.8
    assert token_f1("The CAT!", "cat the") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0 and token_f1("dog", "cat") == 0.0
    # "red" -> (<s>,red) (red,</s>); four colours twice: 8 distinct of 16 bigrams.
    assert distinct_n(COLORS * 2) == 0.5
    assert distinct_n(["red"] * 8) == 2 / 16
    assert distinct_n(["a b", "a b"], n=1) == 4 / 8 and distinct_n([]) == 0.0


def test_style_collapse_flags_one_repeated_answer_and_passes_the_references_themselves():
    references = COLORS * 2
    collapsed = style_collapse(["red"] * 8, references)
    assert collapsed.flagged and collapsed.top_share == 1.0 and collapsed.ref_top_share == 0.25
    assert collapsed.distinct2 == 0.125 and collapsed.ref_distinct2 == 0.5
    assert collapsed.length_mean == 3.0 and collapsed.length_sd == 0.0
    assert collapsed.ref_length_mean == pytest.approx(4.5) and collapsed.ref_length_sd == pytest.approx(1.118, abs=1e-3)
    assert "distinct-2 0.12 is under half" in collapsed.explanation and "100%" in collapsed.explanation

    healthy = style_collapse(references, references)
    assert not healthy.flagged and healthy.explanation.startswith("no style collapse")
    # Majority identical but the references are majority identical too (a skewed label set): no collapse.
    skewed = ["red"] * 6 + ["blue", "green"]
    assert not style_collapse(["red"] * 7 + ["blue"], skewed).flagged
    # Long free-text answers that are all the same text: low diversity although each answer is varied.
    texts = [f"ticket {i} is about {w} and needs a reply" for i, w in enumerate("abcdefgh")]
    assert style_collapse([texts[0]] * 8, texts).flagged
    with pytest.raises(DataError):
        style_collapse(["a"], ["a", "b"])


def test_overfitting_gap_and_threshold():
    o = overfitting([1, 1, 1, 0], [0.5, 0.5], threshold=0.1, train_dataset="j:train@1")
    assert o.train_score == 0.75 and o.holdout_score == 0.5 and o.gap == 0.25 and o.flagged
    assert (o.n_train, o.n_holdout, o.train_dataset) == (4, 2, "j:train@1")
    assert "gap +0.250" in o.explanation and o.explanation.startswith("overfitting")
    assert not overfitting([0.5], [0.5]).flagged
    assert not overfitting([0.6], [0.5], threshold=0.2).flagged
    assert not overfitting([0.2], [0.9]).flagged  # better on the holdout is not overfitting


def test_forgetting_against_references_and_against_the_base():
    refs = ["paris is the capital", "four", "blue"]
    base = ["the capital is paris", "four", "blue"]
    tuned = ["red", "red", "red"]
    f = forgetting(base, tuned, refs, threshold=0.25)
    assert f.against == "references" and f.base_score == pytest.approx(1.0) and f.tuned_score == 0.0
    assert f.drop == pytest.approx(1.0) and f.flagged and f.n == 3
    # Without references the base's answers are the target: the base scores 1, the tuned model its overlap.
    g = forgetting(base, ["the capital is paris", "four", "red"], threshold=0.25)
    assert g.against == "base" and g.base_score == 1.0 and g.tuned_score == pytest.approx(2 / 3)
    assert g.flagged and g.drop == pytest.approx(1 / 3)
    assert not forgetting(base, base).flagged
    with pytest.raises(DataError):
        forgetting(base, tuned[:2])


def test_failure_modes_round_trip_and_flags():
    modes = FailureModes("m", style_collapse(["red"] * 4, COLORS), overfitting([1.0], [0.0]), None, ["a note"])
    assert modes.flags == ["overfitting", "style_collapse"]
    d = json.loads(json.dumps(modes.to_dict()))
    assert d["flags"] == modes.flags and FailureModes.from_dict(d) == modes


# ---- one real run ----------------------------------------------------------------------------------------------------
def _regression_set(path: Path, with_references: bool) -> None:
    rows = [
        ("What is the capital of France?", "Paris."),
        ("Add 2 and 2.", "4"),
        ("Say hello in Spanish.", "Hola"),
    ]
    with path.open("w", encoding="utf-8") as f:
        for q, a in rows:
            messages = [{"role": "user", "content": q}] + (
                [{"role": "assistant", "content": a}] if with_references else []
            )
            f.write(json.dumps({"messages": messages}) + "\n")


def test_failure_modes_of_a_tiny_trained_model(tmp_path: Path, store: Store):
    spec = prepared(tmp_path / "job", store)
    _regression_set(tmp_path / "job" / "ood.jsonl", with_references=False)
    spec_file = spec.file
    text = spec_file.read_text(encoding="utf-8")
    spec_file.write_text(text + "eval: {regression_set: ood.jsonl, overfit_sample: 5, seed: 3}\n", encoding="utf-8")
    spec = load_spec(spec_file)
    tuned = [c for c in default_candidates(spec, store) if c.model_version is not None]

    report = evaluate(spec, store, tuned, limit=4, max_new_tokens=3)
    modes = report.failure_modes[tuned[0].name]
    over, collapse, forget = modes.overfitting, modes.style_collapse, modes.forgetting
    train = store.get_dataset("colors:train")
    assert over is not None and over.train_dataset == train.ref and over.n_train == min(5, train.n_examples)
    assert over.n_holdout == 4 and over.holdout_score == report.candidates[0].graders["em"].mean
    assert over.gap == pytest.approx(over.train_score - over.holdout_score)
    assert collapse.n == 4 and collapse.ref_length_mean == pytest.approx(
        sum(len(report.references[r.example_id]) for r in report.examples) / 4
    )
    assert forget is not None and forget.n == 3 and forget.against == "base" and forget.base_score == 1.0
    assert len(forget.tuned_answers) == 3 and forget.regression_set.endswith("ood.jsonl")
    # Recorded with the evaluation and in report.json, and shown in the HTML.
    recorded = store.list_evaluations(run_id=report.run_id)[0].metrics["failure_modes"]
    assert FailureModes.from_dict(recorded) == modes
    saved = json.loads((report.examples_path.with_name("report.json")).read_text(encoding="utf-8"))
    assert saved["failure_modes"][tuned[0].name]["overfitting"]["n_train"] == over.n_train
    assert "Failure modes" in write_report(report, store).read_text(encoding="utf-8")

    # Reused with the answers: with the model folder gone nothing can be generated, and nothing needs to be.
    folder = Path(tuned[0].model_version.path)
    shutil.move(folder, folder.with_name("away"))
    try:
        again = evaluate(spec, store, tuned, limit=4, max_new_tokens=3, reuse=True)
    finally:
        shutil.move(folder.with_name("away"), folder)
    assert again.candidates[0].reused_from == report.run_id and again.failure_modes == report.failure_modes

    # Another regression set is another failure-mode setting: the checks run again (the holdout rows are reused).
    _regression_set(tmp_path / "job" / "ood.jsonl", with_references=True)
    third = evaluate(spec, store, tuned, limit=4, max_new_tokens=3, reuse=True)
    assert third.candidates[0].reused_from == report.run_id
    assert third.failure_modes[tuned[0].name].forgetting.against == "references"


def test_a_missing_regression_set_is_named(tmp_path: Path, store: Store):
    spec = prepared(tmp_path / "job", store, train=False)
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"regression_set": "nope.jsonl"})})
    with pytest.raises(DataError, match="eval.regression_set") as info:
        evaluate(spec, store, limit=2, max_new_tokens=2)
    assert "out-of-domain" in info.value.hint
