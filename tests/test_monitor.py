"""instil monitor: traffic like the training data shows no drift; traffic that changed (longer, other words, other
labels, refusing) does, with p-values; failures since the last training and a failing window call for retraining."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from colour_jobs import PROMPT, chat_rows, ticket
from instil.errors import DataError
from instil.jobdata import curate_job, split_job
from instil.monitor import monitor
from instil.spec import JobSpec, load_spec
from instil.store import Store, Trace

NOW = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)  # traffic after any model the tests register
COLORS = ["red", "green", "blue", "yellow"]


@pytest.fixture
def job(tmp_path: Path, store: Store) -> JobSpec:
    root = tmp_path / "job"
    root.mkdir()

    (root / "train.jsonl").write_text(chat_rows(range(120), lambda i: COLORS[i % 4]), encoding="utf-8")
    (root / "holdout.jsonl").write_text(chat_rows(range(1000, 1008), lambda i: COLORS[i % 4]), encoding="utf-8")
    (root / "instil.yaml").write_text(
        f"""name: colors
system_prompt: {PROMPT}
output: {{type: label, labels: [red, green, blue, yellow]}}
graders:
  - {{name: em, type: exact_match, primary: true}}
  - {{name: short, type: length, max_chars: 8}}
data: [{{path: train.jsonl}}, {{path: holdout.jsonl, role: holdout}}]
model: {{base: tiny}}
monitor: {{min_traces: 40, retrain_after_failures: 30, max_failure_rate: 0.3}}
""",
        encoding="utf-8",
    )
    spec = load_spec(root / "instil.yaml")
    curate_job(spec, store)
    split_job(spec, store)
    return spec


def _traces(n: int, asked, answer, *, passed=lambda k: True, start: int = 0, at: datetime | None = None) -> list[Trace]:
    return [
        Trace(
            id=f"chatcmpl-{start + k:05d}",
            job="colors",
            created_at=(at or NOW - timedelta(hours=1)) + timedelta(milliseconds=k),
            source="local",
            model="colors@1",
            messages=[{"role": "system", "content": "Name the colour."}, {"role": "user", "content": asked(k)}],
            output=answer(k),
            grades={"short": {"value": 1.0, "passed": passed(k), "reason": None}},
            passed=passed(k),
        )
        for k in range(n)
    ]


def test_traffic_like_the_training_data_is_not_drift(job: JobSpec, store: Store):
    store.add_traces(_traces(100, lambda k: ticket((k * 37) % 120), lambda k: COLORS[k % 4]))  # as in training
    report = monitor(job, store, now=NOW)
    assert report.traces == 100 and not report.drifted and not report.retrain_due, report.reasons
    names = [c.name for c in report.checks]
    assert names == ["input length", "input content", "output labels", "refusals", "schema failures"]
    assert all(c.p_value is None or c.p_value > 0.01 for c in report.checks)
    assert report.windows[-1].graded == 100 and report.windows[-1].rate.estimate == 1.0


def test_changed_traffic_is_drift_with_its_p_values_and_calls_for_retraining(job: JobSpec, store: Store):
    store.register_model("colors", base_model="tiny", path="/nowhere")  # trained before the traffic came
    essay = "Please summarise this long report about quarterly shipping volumes, warehouse staffing and fuel costs. "
    store.add_traces(
        _traces(
            100,
            lambda k: essay * 3 + str(k),
            lambda k: "I'm sorry, but I can't help with that." if k % 2 else "blue",
            passed=lambda k: k % 2 == 0,
        )
    )
    report = monitor(job, store, now=NOW)
    by = {c.name: c for c in report.checks}
    assert by["input length"].drifted and by["input length"].p_value < 1e-6
    assert by["input content"].drifted and by["input content"].p_value < 0.01
    assert by["output labels"].drifted and "(other)" in by["output labels"].detail
    assert by["refusals"].drifted and "50.0% of answers refuse now" in by["refusals"].detail
    assert report.failures_since_training == 50
    assert report.retrain_due and any("failed answers since" in r for r in report.reasons)
    assert any("over monitor.max_failure_rate" in r for r in report.reasons)


def test_too_few_traces_are_shown_but_never_judged_and_bad_input_is_said(job: JobSpec, store: Store):
    store.add_traces(_traces(10, lambda k: "x" * (500 + k), lambda k: "no"))
    report = monitor(job, store, now=NOW)
    assert not report.drifted and report.checks[0].p_value is not None  # computed, not judged: below min_traces
    assert monitor(job, store, now=NOW - timedelta(days=30)).traces == 0
    with pytest.raises(DataError, match="longer than 0 hours"):
        monitor(job, store, window_hours=0)


def test_cli_monitor_check_exits_3_when_retraining_is_due(job: JobSpec, store: Store, capsys):
    from instil.cli import main

    store.register_model("colors", base_model="tiny", path="/nowhere")
    at = datetime.now(UTC)  # after the model was trained, before the command's "now"
    store.add_traces(_traces(60, lambda k: ticket(k), lambda k: COLORS[k % 4], passed=lambda k: False, at=at))
    time.sleep(0.1)
    spec = str(job.file)
    assert main(["monitor", spec, "--window-hours", "48"]) == 0
    out = capsys.readouterr().out
    assert "retraining is due" in out and "trained: 60" in out  # failed answers since the newest version
    assert main(["monitor", spec, "--window-hours", "48", "--check"]) == 3
    capsys.readouterr()
    assert main(["monitor", spec, "--json", "--window-hours", "48"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["retrain_due"] and shown["traces"] == 60 and len(shown["windows"]) == 7
