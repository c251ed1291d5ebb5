"""The loop end to end: `instil quickstart` at a small size turns twice, gates twice, and a second run redoes nothing.

One module-scoped run (about a minute on 2 cores) serves the artefact, gate and re-run tests; the error tests use
their own small jobs and stop before training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from instil.cli import main
from instil.errors import InstilError
from instil.examples import copy_example
from instil.examples.triage.generate import generate
from instil.loop import LoopState, quickstart, run
from instil.store import Store

SMALL = {"n_golden": 60, "n_traffic": 60, "n_holdout": 40}
STEPS = 100  # at this size, about what the tiny model needs to beat the random base on label accuracy


def _small_job(dest: Path) -> Path:
    spec = copy_example("triage", dest)
    generate(dest / "data", seed=0, **SMALL)
    return spec


@pytest.fixture(scope="module")
def turned(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart at a small size, run once in its own home."""
    root = tmp_path_factory.mktemp("quickstart")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTIL_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("INSTIL_DB_URL", raising=False)
        _small_job(root / "job")
        seen = []
        result = quickstart(root / "job", on_stage=seen.append, max_steps=STEPS)
    return result, seen, home


def test_every_stage_ran_in_order(turned):
    result, seen, _ = turned
    assert [(s.iteration, s.name) for s in seen] == [
        (1, "validate"),
        (1, "curate"),
        (1, "split"),
        (1, "baseline"),
        (1, "train"),
        (1, "evaluate"),
        (1, "promote"),
        (2, "learn"),
        (2, "split"),
        (2, "train"),
        (2, "evaluate"),
        (2, "promote"),
    ]
    assert not any(s.skipped for s in seen)
    assert all(s.summary for s in seen)


def test_every_stage_left_its_artefacts(turned):
    result, _, home = turned
    job = result.spec.name
    with Store.open(home=home) as store:
        names = {d.name for d in store.list_datasets()}
        for kind in ("raw", "curated", "train", "holdout", "pool", "corrections", "preferences"):
            assert f"{job}:{kind}" in names, kind
        trains = store.list_versions(f"{job}:train")
        assert len(trains) == 2
        second = trains[-1]
        corrections = store.get_dataset(f"{job}:corrections")
        assert second.n_examples == trains[0].n_examples + corrections.n_examples
        assert {p.ref for p in store.lineage(second)} >= {trains[0].ref, corrections.ref}
        pairs = list(store.iter_examples(store.get_dataset(f"{job}:preferences")))
        # One learning turn: a preference pair for each correction, the correction chosen over the model's answer.
        assert len(pairs) == corrections.n_examples > 0 and all(p.rejected for p in pairs)
        assert [p.messages for p in pairs] == [c.messages for c in store.iter_examples(corrections)]
        # The holdout never moved and never entered training.
        holdout = store.get_dataset(f"{job}:holdout")
        assert len(store.list_versions(f"{job}:holdout")) == 1
        held = {e.key() for e in store.iter_examples(holdout)}
        assert not held & {e.key() for e in store.iter_examples(second)}

        models = store.list_models(job)
        assert [m.version for m in models] == [1, 2]
        for m in models:
            assert Path(m.path, "config.json").exists()
        evals = [r for r in store.list_runs(job, kind="eval") if r.status == "succeeded"]
        assert len(evals) == 5  # the baseline, then an evaluate and a promote a turn
        kinds = {a.kind for a in store.list_artifacts(evals[-1].id)}
        assert {"examples", "report"} <= kinds
    report = result.report
    assert Path(report.html_path).exists()
    html = Path(report.html_path).read_text(encoding="utf-8")
    assert "support-triage@2" in html and "support-triage@1" in html
    assert [c.name for c in report.candidates] == [
        "base+full",
        "support-triage@1+short",
        "support-triage@2+short",
    ]
    assert LoopState(home, job).path.exists()


def test_gate_decisions_agree_with_their_numbers(turned):
    result, _, _ = turned
    first, second = result.promotions
    assert first.reference == "base+full" and first.candidate == "support-triage@1+short"
    assert first.promoted, first.summary()
    assert second.reference == "support-triage@1+short" and second.candidate == "support-triage@2+short"
    for p in (first, second):
        d = p.decision
        assert p.promoted == d.promoted == all(c.passed for c in d.comparisons)
        for c in d.comparisons:
            assert c.passed == (c.p_adjusted < d.alpha)
        assert bool(d.reasons) == (not d.promoted)
        assert (p.holdout, d.n) == ("support-triage:holdout@1", 40)  # the one frozen holdout, whole
        assert p.summary().startswith(
            f"{p.candidate} vs {p.reference} on {p.holdout} ({d.n} examples): {p.verdict.upper()}\n"
        )


def test_a_second_run_skips_every_unchanged_stage(turned, monkeypatch):
    result, _, home = turned
    monkeypatch.setenv("INSTIL_HOME", str(home))
    with Store.open(home=home) as store:
        runs = len(store.list_runs(result.spec.name, kind="train"))
    seen = []
    again = quickstart(result.spec.root, on_stage=seen.append, max_steps=STEPS)
    assert [s.name for s in seen] == [s.name for s in result.stages]
    assert all(s.skipped for s in seen), [s.name for s in seen if not s.skipped]
    with Store.open(home=home) as store:
        assert len(store.list_runs(result.spec.name, kind="train")) == runs
    assert [p.promoted for p in again.promotions] == [p.promoted for p in result.promotions]


def test_the_cli_quickstart_prints_stages_table_gates_and_report(turned, monkeypatch, capsys):
    # Over the fixture's home every stage is unchanged: this checks what the command shows, in seconds.
    result, _, home = turned
    monkeypatch.setenv("INSTIL_HOME", str(home))
    assert main(["quickstart", str(result.spec.root), "--max-steps", str(STEPS)]) == 0
    out = capsys.readouterr().out
    for turn, stage in [(1, "validate"), (1, "promote"), (2, "learn"), (2, "promote")]:
        assert f"{turn} {stage}" in out
    assert "unchanged, skipped" in out
    for name in (
        "base+full",
        "support-triage@1+short",
        "support-triage@2+short",
        "$ / success",
        "overfitting",
    ):
        assert name in out
    first, second = result.promotions
    assert f"gate: {first.candidate} promoted over base+full" in out
    verdict = "promoted" if second.promoted else "refused"
    assert f"gate: {second.candidate} {verdict} over {second.reference}" in out
    assert "random-initialised" in out and "HTML report:" in out and str(result.report.html_path.name) in out


def test_each_eval_run_has_one_page_and_stopping_after_evaluate_still_writes_it(turned, monkeypatch):
    result, _, home = turned
    monkeypatch.setenv("INSTIL_HOME", str(home))
    stopped = run(result.spec.root / "instil.yaml", iterations=2, until="evaluate")
    assert [s.name for s in stopped.stages][-1] == "evaluate"
    assert "promote" not in {s.name for s in stopped.stages} and not stopped.promotions
    with Store.open(home=home) as store:
        runs = store.list_runs(result.spec.name, kind="eval")
        pages = {r.id: [a for a in store.list_artifacts(r.id) if a.kind == "report_html"] for r in runs}
    # The baseline, each turn's evaluation (written after its gate) and each gate's own run: one page each.
    assert all(len(p) == 1 for p in pages.values()), {k: len(v) for k, v in pages.items()}
    assert Path(pages[stopped.report.run_id][0].path) == stopped.report.html_path
    assert stopped.report.html_path.is_file()


def test_a_broken_data_file_stops_at_validate_and_keeps_earlier_work(tmp_path):
    spec = _small_job(tmp_path / "job")
    data = tmp_path / "job" / "data" / "golden.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text("".join(lines[:3]) + "{not json\n" + "".join(lines[3:]), encoding="utf-8")
    with pytest.raises(InstilError, match=r"stage validate: .*golden.jsonl") as e:
        run(spec)
    assert e.value.hint and "instil data validate" in e.value.hint
    # The bad line went to a rejects file (line 4, with its text and why), the good ones stay where they are.
    rejects = Path(os.environ["INSTIL_HOME"]) / "rejects" / "golden.rejects.jsonl"
    rows = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["raw"]) for r in rows] == [(4, "{not json")]
    assert [x["code"] for x in rows[0]["errors"]] == ["invalid_json"]
    assert len(data.read_text(encoding="utf-8").splitlines()) == len(lines) + 1


def test_a_missing_model_path_stops_at_its_stage_and_keeps_earlier_work(tmp_path, capsys):
    spec = _small_job(tmp_path / "job")
    assert main(["run", str(spec), "--until", "split"]) == 0
    home = Path(os.environ["INSTIL_HOME"])
    with Store.open(home=home) as store:
        before = {d.name: [v.sha256 for v in store.list_versions(d.name)] for d in store.list_datasets()}
    text = spec.read_text(encoding="utf-8").replace("  base: tiny", "  base: ./no-such-model")
    spec.write_text(text, encoding="utf-8")
    capsys.readouterr()
    code = main(["run", str(spec)])
    err = capsys.readouterr().err
    assert code == 1
    # Validation is the first stage that needs the model (lengths are checked with its tokenizer).
    assert "stage validate" in err and "model folder not found" in err and "no-such-model" in err
    assert "Traceback" not in err
    with Store.open(home=home) as store:
        after = {d.name: [v.sha256 for v in store.list_versions(d.name)] for d in store.list_datasets()}
    assert after == before  # every earlier dataset version is still there, unchanged


def test_a_torn_state_file_only_costs_a_rerun(tmp_path):
    state = LoopState(tmp_path, "a/b:c")
    state.mark("validate@1", "abc", "finished", summary="ok")
    assert LoopState(tmp_path, "a/b:c").done("validate@1", "abc")["summary"] == "ok"
    assert LoopState(tmp_path, "a/b:c").done("validate@1", "other") is None
    state.path.write_text("{torn", encoding="utf-8")
    assert LoopState(tmp_path, "a/b:c").done("validate@1", "abc") is None
    assert LoopState(tmp_path, "a/b:c").path != LoopState(tmp_path, "a_b_c").path


def test_set_base_model_points_the_copied_spec_at_another_model(tmp_path):
    from instil.loop import _set_base_model
    from instil.spec import load_spec

    spec = copy_example("triage", tmp_path / "job")
    _set_base_model(spec, "Qwen/Qwen2.5-0.5B-Instruct")
    job = load_spec(spec)
    assert job.model.base == "Qwen/Qwen2.5-0.5B-Instruct"
    # A pretrained base is steered with LoRA at a LoRA learning rate, not retrained from scratch like the tiny one.
    assert job.training.adapter == "lora" and job.training.learning_rate == 2e-4 and job.training.epochs == 3
    assert (tmp_path / "job" / "instil.yaml.orig").read_text(encoding="utf-8").count("base: tiny") == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs: room for the data stages' store (about 1.5 MB), not for the tiny model's weights (3 MB)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_at_its_stage_with_one_clear_message(tmp_path, small_disk, monkeypatch, capsys):
    spec = _small_job(tmp_path / "job")
    monkeypatch.setenv("INSTIL_HOME", str(small_disk / "home"))
    assert main(["run", str(spec), "--until", "split"]) == 0
    capsys.readouterr()
    code = main(["run", str(spec)])
    err = capsys.readouterr().err
    assert code == 1
    assert "stage baseline" in err and "No space left on device" in err and "free disk space" in err
    assert "Traceback" not in err
    with Store.open(home=small_disk / "home") as store:  # what the data stages wrote is intact
        train = store.get_dataset("support-triage:train")
        assert len(list(store.iter_examples(train))) == train.n_examples
