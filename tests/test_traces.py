"""From traces to training data: ``instil data import-traces`` (validation, curation, the frozen holdout kept out,
lineage naming the traces), and ``instil traces list/show/export/prune``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from instil.cli import main
from instil.jobdata import curate_job, dataset_name, import_traces, split_job
from instil.serve.capture import capture_graders, grade_trace
from instil.spec import load_spec
from instil.store import Store, Trace, TraceFilter

SPEC = """name: desk
system_prompt: Answer with one label, lower case.
output: {type: label, labels: [billing, bug, shipping]}
graders:
  - {name: label, type: label_accuracy, primary: true}
  - {name: short, type: length, max_chars: 12}
data:
  - {path: train.jsonl}
  - {path: holdout.jsonl, role: holdout}
"""


def row(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


@pytest.fixture
def job(tmp_path: Path, store: Store):
    (tmp_path / "instil.yaml").write_text(SPEC)
    (tmp_path / "train.jsonl").write_text(
        "\n".join(row(f"train question number {i} about my account", "billing") for i in range(6)) + "\n"
    )
    (tmp_path / "holdout.jsonl").write_text(row("the parcel never arrived at my door", "shipping") + "\n")
    spec = load_spec(tmp_path / "instil.yaml")
    curate_job(spec, store)
    split_job(spec, store)
    return spec


def trace(i: int, question: str, output: str, **kw) -> Trace:
    t = Trace(
        id=f"chatcmpl-{i:04d}",
        job="desk",
        created_at=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=i),
        source="proxy",
        model="gpt-4o",
        upstream="openai",
        messages=[{"role": "user", "content": question}],
        output=output,
        prompt_tokens=10,
        completion_tokens=1,
        latency_s=0.2,
        **kw,
    )
    return t


def test_import_traces_validates_curates_keeps_the_holdout_out_and_names_the_traces(job, store: Store) -> None:
    graders = capture_graders(job)
    traces = [
        trace(0, "my invoice is twice what it should be", "billing"),
        trace(1, "the app crashes when I press save", "bug"),
        trace(2, "the parcel never arrived at my door", "shipping"),  # the holdout's own question
        trace(3, "where is my package, it is late", "a long rambling answer that is no label"),  # fails, invalid
        trace(4, "my invoice is twice what it should be", "billing"),  # a duplicate of trace 0
        trace(5, "it says error 500", "bug", status=500),  # an error is never data
        trace(6, "refund me now", "billing", tags=("beta",)),
    ]
    store.add_traces([grade_trace(t, graders) for t in traces])
    assert store.get_trace("chatcmpl-0003").passed is False

    got = import_traces(job, store, passing=False)
    assert (got.read, got.imported, got.invalid, got.duplicates, got.left_out_for_holdout) == (6, 3, 1, 1, 1)
    v = got.version
    assert v.name == dataset_name(job, "traces") and v.kind == "traces" and v.n_examples == 3
    assert sorted(v.meta["traces"]) == ["chatcmpl-0000", "chatcmpl-0001", "chatcmpl-0006"]
    examples = list(store.iter_examples(v))
    assert {e.messages[-1].content for e in examples} == {"billing", "bug"}
    assert all("trace" in e.tags for e in examples) and any("beta" in e.tags for e in examples)

    again = import_traces(job, store)  # nothing new: no new version
    assert again.imported == 0 and again.version == v and again.duplicates == 6 - 1 - 1

    store.add_traces([grade_trace(trace(7, "I was charged for shipping twice", "billing"), graders)])
    more = import_traces(job, store, TraceFilter(since=datetime(2026, 12, 1, 0, 7, tzinfo=UTC)))
    assert more.imported == 1 and more.version.version == 2 and more.version.parents == (v.id,)
    assert more.version.meta["traces"] == ["chatcmpl-0007"] and more.version.n_examples == 4

    # The next curation takes them in with the sources, and the split puts them on the train side.
    curate_job(job, store)
    split = split_job(job, store)
    users = {e.messages[0].content for e in store.iter_examples(split.train)}
    assert "I was charged for shipping twice" in users and "the parcel never arrived at my door" not in users


def test_passing_keeps_only_what_every_grader_passed(job, store: Store) -> None:
    graders = capture_graders(job)
    store.add_traces(
        [grade_trace(trace(0, "my bill is wrong", "billing"), graders),
         grade_trace(trace(1, "the app froze", "bug: the app froze and it will not restart"), graders)]
    )  # fmt: skip
    got = import_traces(job, store, passing=True)
    assert got.read == 1 and got.imported == 1


def test_the_traces_commands_list_show_export_and_import(
    job, store: Store, capsys, tmp_path: Path, monkeypatch
) -> None:
    from rich.console import Console

    monkeypatch.setattr("instil.cli.console", Console(width=250, highlight=False))  # one table row per line
    graders = capture_graders(job)
    store.add_traces(
        [
            grade_trace(trace(0, "my bill is wrong", "billing", user="ana", tags=("beta",)), graders),
            grade_trace(trace(1, "the app froze", "bug: the app froze and it will not restart"), graders),
            trace(2, "hello", "", status=429, error={"error": {"message": "slow down"}}),
        ]
    )
    spec = str(job.file)
    assert main(["traces", "list", spec, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["total"] == 3 and [t["id"] for t in listed["traces"]] == [f"chatcmpl-000{i}" for i in (2, 1, 0)]
    assert main(["traces", "list", spec, "--failed", "--json"]) == 0
    assert [t["id"] for t in json.loads(capsys.readouterr().out)["traces"]] == ["chatcmpl-0001"]
    assert main(["traces", "list", spec, "--tag", "beta", "--user", "ana", "--json"]) == 0
    assert [t["id"] for t in json.loads(capsys.readouterr().out)["traces"]] == ["chatcmpl-0000"]
    assert main(["traces", "list", spec, "--since", "2026-12-01T00:01", "--until", "2026-12-01T00:02", "--json"]) == 0
    assert [t["id"] for t in json.loads(capsys.readouterr().out)["traces"]] == ["chatcmpl-0001"]
    assert main(["traces", "list", spec]) == 0
    out = capsys.readouterr().out
    assert "chatcmpl-0001" in out and "fail: short" in out and "429" in out and "slow down" in out
    assert main(["traces", "list", spec, "--since", "yesterday-ish"]) == 2
    assert "--since" in capsys.readouterr().err

    assert main(["traces", "show", "chatcmpl-0001", spec]) == 0
    out = capsys.readouterr().out
    assert "the app froze" in out and "short: fail" in out and "via upstream openai" in out

    parquet = tmp_path / "out" / "traces.parquet"
    assert main(["traces", "export", str(parquet), spec]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert table.num_rows == 3 and set(table.column("id").to_pylist()) == {f"chatcmpl-000{i}" for i in range(3)}
    assert json.loads(table.column("messages").to_pylist()[0])[0]["role"] == "user"
    assert main(["traces", "export", str(parquet), spec]) == 1  # never written over
    assert "exists" in capsys.readouterr().err

    assert main(["data", "import-traces", spec, "--passing"]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "desk:traces@1" in out
    assert main(["traces", "prune", spec, "--older-than-days", "1"]) == 0  # they are from 2026-12-01 00:0x
    assert "deleted 3 traces" in capsys.readouterr().out
