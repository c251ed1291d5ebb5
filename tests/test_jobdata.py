"""The data stages of a job end to end on the shipped example: validate, curate, split, the frozen holdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instil.data.records import Example, Message
from instil.errors import DataError, HoldoutLeakError
from instil.examples import copy_example
from instil.jobdata import (
    assert_no_holdout_leak,
    curate_job,
    dataset_name,
    frozen_holdout,
    split_job,
    validate_job,
)
from instil.spec import load_spec
from instil.store import Store


@pytest.fixture
def triage(tmp_path: Path):
    spec = load_spec(copy_example("triage", tmp_path / "job"))
    with Store.open() as store:
        yield spec, store


def test_example_job_validates_clean(triage):
    spec, _ = triage
    reports = validate_job(spec)
    assert [r.source.role for r in reports] == ["train", "pool", "holdout"]
    for r in reports:
        assert r.report.ok, r.report.format_findings(10)
        assert r.report.n_valid == r.report.n_lines > 0


def test_curate_resolves_planted_problems_by_the_documented_rule(triage):
    spec, store = triage
    out = curate_job(spec, store, contradictions="majority")
    assert out.raw.n_examples == 120
    assert out.curated.n_examples == 113  # the example's README: 3 duplicates dropped, 1 majority + 1 tie resolved
    assert [p.id for p in store.lineage(out.curated)] == [out.raw.id]
    assert out.report.dropped["exact"] >= 3
    assert len(out.report.contradiction_groups) == 2
    assert out.pool is not None and out.pool.n_examples == 400
    # Curating the same data again records nothing new.
    again = curate_job(spec, store, contradictions="majority")
    assert again.curated.id == out.curated.id


def test_split_freezes_the_given_holdout_and_guards_training(triage):
    spec, store = triage
    curate_job(spec, store)
    first = split_job(spec, store)
    assert first.holdout.frozen and first.holdout.n_examples == 120
    assert not first.left_out and first.train.n_examples == 113
    holdout = list(store.iter_examples(first.holdout.sha256))
    train = list(store.iter_examples(first.train.sha256))
    assert_no_holdout_leak(spec, store, train)

    copy = holdout[5]
    typo = Example.from_dict(json.loads(json.dumps(holdout[7].to_dict())))
    ticket = typo.messages[1].content
    typo.messages[1] = Message("user", ticket.replace("e", "3", 1) + " thanks")
    typo.id = "typo-copy"
    with pytest.raises(HoldoutLeakError) as info:
        assert_no_holdout_leak(spec, store, [*train[:10], copy, typo])
    assert {m.example_key for m in info.value.matches} == {copy.key(), "typo-copy"}
    assert "typo-copy" in str(info.value)

    # A second split keeps the frozen holdout and reports the same.
    second = split_job(spec, store)
    assert second.reused_holdout and second.holdout.id == first.holdout.id
    assert frozen_holdout(spec, store).id == first.holdout.id


def test_fresh_split_when_no_holdout_source(tmp_path: Path):
    job = tmp_path / "job"
    spec_path = copy_example("triage", job)
    text = spec_path.read_text().replace(
        "  - path: data/holdout.jsonl\n    role: holdout", "  - path: data/holdout.jsonl\n    role: train"
    )
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    with Store.open() as store:
        curate_job(spec, store)
        split = split_job(spec, store)
        assert split.audit is not None and split.audit.clean
        assert not split.reused_holdout
        n = split.train.n_examples + split.holdout.n_examples
        assert n == store.get_dataset(dataset_name(spec, "curated")).n_examples
        assert 0.15 < split.holdout.n_examples / n < 0.25
        train = list(store.iter_examples(split.train.sha256))
        assert_no_holdout_leak(spec, store, train)
        # Every label is on both sides (stratified).
        hold_labels = {e.label("category") for e in store.iter_examples(split.holdout.sha256)}
        assert hold_labels == set(spec.output.labels)


def test_missing_source_names_the_file(tmp_path: Path):
    spec_path = copy_example("triage", tmp_path / "job")
    (tmp_path / "job" / "data" / "golden.jsonl").unlink()
    with pytest.raises(DataError, match="golden.jsonl"):
        validate_job(load_spec(spec_path))
