"""The CLI as a user runs it: exit codes, messages on stderr, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from instil.cli import main


def test_init_then_check(tmp_path: Path, capsys):
    spec = tmp_path / "instil.yaml"
    assert main(["init", str(spec)]) == 0
    assert main(["spec", "check", str(spec)]) == 0
    out = capsys.readouterr()
    assert "spec is valid" in out.out
    assert "not found yet" in out.err  # the starter's data file does not exist yet


def test_init_refuses_to_overwrite(tmp_path: Path, capsys):
    spec = tmp_path / "instil.yaml"
    spec.write_text("mine")
    assert main(["init", str(spec)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert spec.read_text() == "mine"


def test_bad_spec_is_one_clear_error(tmp_path: Path, capsys):
    spec = tmp_path / "instil.yaml"
    spec.write_text("name: x\nsystem_prompt: y\ngraders: []\ndata: []\nbogus: 1\n")
    assert main(["spec", "check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{spec}:5: bogus: unknown key" in err
    assert "graders: " in err and "data: " in err


def test_schema_lists_fields(capsys):
    assert main(["spec", "schema"]) == 0
    assert "system_prompt" in capsys.readouterr().out
    assert main(["spec", "schema", "--json"]) == 0
    assert '"system_prompt"' in capsys.readouterr().out


def test_console_script_runs_and_usage_errors_exit_2(tmp_path: Path):
    exe = Path(sys.executable).parent / "instil"
    done = subprocess.run([str(exe), "version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "transformers" in done.stdout
    done = subprocess.run([str(exe), "spec", "check", "--nope"], capture_output=True, text=True, check=False)
    assert done.returncode == 2


def _triage(tmp_path: Path, monkeypatch) -> Path:
    from instil.examples import copy_example

    spec = copy_example("triage", tmp_path / "job")
    monkeypatch.chdir(spec.parent)
    return spec


def test_validate_reports_file_line_field_and_writes_rejects(tmp_path: Path, instil_home: Path, capsys):
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    bad = '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}'
    data = tmp_path / "train.jsonl"
    data.write_text(good + "\n" + bad + "\n{oops\n")
    assert main(["data", "validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"{data}:2: messages[1].role:" in out and "unrecognized_role" in out
    assert f"{data}:3:" in out and "invalid_json" in out
    rejects = instil_home / "rejects" / "train.rejects.jsonl"  # under the home, never beside the input
    assert not (tmp_path / "train.rejects.jsonl").exists()
    rows = [json.loads(x) for x in rejects.read_text().split("\n") if x]
    assert [r["line"] for r in rows] == [2, 3]
    assert rows[0]["raw"] == bad
    assert main(["data", "validate", str(data), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["n_valid"] == 1 and report["n_rejected"] == 2
    data.write_text(good + "\n")
    assert main(["data", "validate", str(data)]) == 0


GOOD = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


def test_validate_never_writes_over_or_beside_its_input(tmp_path: Path, instil_home: Path, capsys):
    # A valid file whose name looks like a rejects file was deleted, reported as "0 records ... ok".
    data = tmp_path / "small.rejects.jsonl"
    data.write_text((GOOD + "\n") * 50)
    before = data.read_bytes()
    assert main(["data", "validate", str(data)]) == 0
    assert "50 records: 50 valid, 0 rejected" in capsys.readouterr().out
    assert data.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p != instil_home] == [data.name]  # nothing written beside it
    # An output named as the input, or as the same file under another name, is refused; the input is kept.
    link = tmp_path / "other-name.jsonl"
    link.hardlink_to(data)
    for target in (data, link):
        assert main(["data", "validate", str(data), "--rejects", str(target)]) == 1
        assert "would overwrite it" in capsys.readouterr().err
        assert data.read_bytes() == before
    # A name with dots keeps its own stem; rejects go under the home.
    dotted = tmp_path / "a.b.c.jsonl"
    dotted.write_text(GOOD + "\n{oops\n")
    assert main(["data", "validate", str(dotted)]) == 1
    rows = (instil_home / "rejects" / "a.b.c.rejects.jsonl").read_text().splitlines()
    assert [json.loads(r)["line"] for r in rows] == [2]


def test_a_spec_pointing_outside_its_folder_is_warned_and_writes_nothing_there(tmp_path: Path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "data.jsonl").write_text(GOOD + "\n{oops\n")
    job = tmp_path / "job"
    job.mkdir()
    spec = job / "instil.yaml"
    spec.write_text(
        "name: demo\nsystem_prompt: Be brief.\noutput: {type: text}\n"
        "graders: [{name: em, type: exact_match, primary: true}]\ndata: [{path: ../elsewhere/data.jsonl}]\n"
    )
    assert main(["spec", "check", str(spec)]) == 0
    assert "data[0].path '../elsewhere/data.jsonl' leads out of the spec's folder" in capsys.readouterr().err
    assert main(["data", "validate", "--spec", str(spec)]) == 1
    assert sorted(p.name for p in outside.iterdir()) == ["data.jsonl"]  # no rejects file beside the input


@pytest.fixture
def read_only_data(tmp_path: Path):
    """A folder mounted read-only (root can write to a chmod-ed folder, not to a read-only mount)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    (mount / "good.jsonl").write_text(GOOD + "\n")
    (mount / "bad.jsonl").write_text(GOOD + "\n{oops\n")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_validation_of_read_only_data_works(read_only_data: Path, instil_home: Path, capsys):
    assert main(["data", "validate", str(read_only_data / "good.jsonl")]) == 0
    assert "1 records: 1 valid, 0 rejected" in capsys.readouterr().out
    assert main(["data", "validate", str(read_only_data / "bad.jsonl")]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "invalid_json" in captured.out
    assert (instil_home / "rejects" / "bad.rejects.jsonl").is_file()
    # Told to write into the read-only folder, it still reports every finding, and says the rejects were not written.
    assert (
        main(["data", "validate", str(read_only_data / "bad.jsonl"), "--rejects", str(read_only_data / "r.jsonl")]) == 1
    )
    out = capsys.readouterr().out
    assert "invalid_json" in out and "rejects_unwritable" in out and "Read-only file system" in out


def test_data_commands_on_the_example_job(tmp_path: Path, monkeypatch, capsys):
    _triage(tmp_path, monkeypatch)
    assert main(["data", "validate"]) == 0  # the spec's sources, checked against its contract
    capsys.readouterr()
    assert main(["data", "curate", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept"] < report["total"] and report["contradiction_groups"]
    assert main(["data", "split"]) == 0
    out = capsys.readouterr().out
    assert "frozen now" in out
    assert main(["data", "split"]) == 0
    assert "kept (frozen)" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    assert "holdout@1" in capsys.readouterr().out
    assert main(["data", "stats", "--dataset", "holdout", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_examples"] == 120 and set(stats["labels"]) == {
        "billing",
        "technical",
        "account",
        "shipping",
        "refund",
        "other",
    }


def test_curate_choose_overrides_the_rule(tmp_path: Path, monkeypatch, capsys):
    _triage(tmp_path, monkeypatch)
    assert main(["data", "curate", "--contradictions", "report", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    group = report["contradiction_groups"][0]
    keep = group["keys"][-1]
    assert main(["data", "curate", "--contradictions", "drop", "--choose", f"{group['id']}={keep}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["resolved"][group["id"]] == [keep]
    assert main(["data", "curate", "--choose", "nonsense"]) == 2


def test_run_names_the_stage_that_failed(tmp_path: Path, monkeypatch, capsys):
    spec = _triage(tmp_path, monkeypatch)
    (spec.parent / "data" / "golden.jsonl").write_text('{"messages": [{"role": "user"}]}\n')
    assert main(["run", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "stage validate" in err and "golden.jsonl" in err


def test_curate_a_plain_file(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sources are shown relative to the cwd
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Where is my parcel?"},
                {"role": "assistant", "content": "shipping"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Where is my parcel?"},
                {"role": "assistant", "content": "shipping"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Mail jane.doe@example.org"},
                {"role": "assistant", "content": "other"},
            ]
        },
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["data", "curate", str(src), "--out", str(out), "--redact"]) == 0
    text = capsys.readouterr().out
    assert "in.jsonl:1" in text and "in.jsonl:2" in text  # the duplicate pair, by file:line
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(kept) == 2 and "[EMAIL]" in kept[1]["messages"][0]["content"]


def test_train_smoke_run_and_mask_preview(tmp_path: Path, monkeypatch, capsys):
    _triage(tmp_path, monkeypatch)
    assert main(["run", "--until", "split"]) == 0
    out = capsys.readouterr().out
    assert "split" in out and "baseline" not in out
    assert main(["train", "--show-mask"]) == 0
    out = capsys.readouterr().out
    assert '{"category":' in out and "<|im_end|>" in out
    assert main(["train", "--max-steps", "2", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "train loss" in out and "model written to" in out
    assert "random" in err  # the tiny preset says plainly that it starts knowing nothing


def test_convert_between_formats_round_trips(tmp_path: Path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Say hi", "input": "", "output": "hi"}) + "\n")
    csv_path = tmp_path / "out.csv"
    assert main(["data", "convert", str(src), str(csv_path), "--to", "csv"]) == 0
    assert "wrote 1 examples" in capsys.readouterr().out
    back = tmp_path / "back.jsonl"
    assert main(["data", "convert", str(csv_path), str(back), "--to", "chat"]) == 0
    row = json.loads(back.read_text())
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][1]["content"] == "hi"
    assert main(["data", "convert", str(src), str(tmp_path / "x.jsonl"), "--to", "nope"]) == 1


def test_runs_lists_interrupted_runs_and_what_resumed_them(tmp_path: Path, instil_home: Path, capsys, monkeypatch):
    from rich.console import Console

    from instil.store import Store

    monkeypatch.setattr("instil.cli.console", Console(width=250, highlight=False))  # one table row per line
    spec = tmp_path / "instil.yaml"
    spec.write_text(
        "name: colors\nsystem_prompt: Name the colour.\ngraders: [{name: em, type: exact_match, primary: true}]\n"
        "data: [{path: train.jsonl}]\n"
    )
    die = (
        "import os\nfrom instil.store import Store\n"
        f"s = Store.open(home={str(instil_home)!r})\nprint(s.start_run('colors', 'train'), flush=True)\nos._exit(9)\n"
    )
    killed, stranded = (
        int(subprocess.run([sys.executable, "-c", die], capture_output=True, text=True, check=False).stdout)
        for _ in range(2)
    )
    with Store.open(home=instil_home) as store:
        resumed = store.start_run("colors", "train", {"resumed_from": {"run_id": killed, "step": 6}})
        store.finish_run(resumed, "succeeded")

    assert main(["runs", str(spec)]) == 0
    out = capsys.readouterr().out
    lines = {int(line.split()[0]): line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert list(lines) == [resumed, stranded, killed]  # newest first
    assert "succeeded" in lines[resumed] and f"resumed from run {killed} at step 6" in lines[resumed]
    assert "interrupted" in lines[killed] and f"resumed by run {resumed}" in lines[killed]
    assert "interrupted" in lines[stranded] and "instil train --resume continues it" in lines[stranded]
    assert "is gone" in lines[stranded]

    assert main(["runs", str(spec), "--status", "interrupted", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["status"], r["resumed_by"]) for r in data["runs"]] == [
        (stranded, "interrupted", None),
        (killed, "interrupted", resumed),
    ]
    assert main(["models", str(spec)]) == 0
    err = capsys.readouterr().err
    assert f"run {stranded} (train) was interrupted" in err and f"run {killed} " not in err
