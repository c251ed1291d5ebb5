"""Checkpoints: marked, hashed and recorded; resumed runs match uninterrupted ones; Ctrl-C saves; nothing unpickled.

The end-to-end tests train the tiny model with full fine-tuning for 12 steps (8 rows, batch 2: 4 steps an epoch) and
a checkpoint every 3 steps, so the interruptions land mid-epoch and resuming must skip the batches already seen.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import instil.train.sft as sft
from instil.data.records import Example, Message
from instil.errors import InstilError, ModelError
from instil.spec import JobSpec, parse_spec
from instil.store import Store
from instil.train.checkpoints import (
    MARKER,
    TrainingInterrupted,
    find_resumable,
    mark_checkpoint,
    read_checkpoint,
    recorded_hashes,
)

STEPS = 12
BUILD_TRAINER = sft.build_trainer
COLORS = ["red", "green", "blue", "yellow"]


JOB_YAML = """
name: colors
system_prompt: Answer with one colour name.
graders: [{name: em, type: exact_match, primary: true}]
data: [{path: data.jsonl}]
model: {base: tiny}
training: {adapter: full, batch_size: 2, learning_rate: 3.0e-3, trl: {save_steps: 3}}
"""


def job(root: Path) -> JobSpec:
    return parse_spec(JOB_YAML, root=root)


def put_train(store: Store) -> None:
    exs = [
        Example(
            [
                Message("user", f"Colour of item {i}?" + " Quick." * (i % 3)),
                Message("assistant", COLORS[i % 4]),
            ]
        )
        for i in range(8)
    ]  # rows of a few different lengths, so length grouping has an order to get wrong
    store.put_dataset("colors:train", exs, kind="train")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


class At(TrainerCallback):
    """Does ``action()`` at the end of optimizer step ``step``."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.action()


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: TrainerCallback) -> None:
    real = sft.build_trainer
    monkeypatch.setattr(
        sft,
        "build_trainer",
        lambda plan, folder, *, callbacks=(): real(plan, folder, callbacks=[*callbacks, callback]),
    )


@pytest.fixture
def reference(tmp_path: Path, store: Store) -> dict[str, torch.Tensor]:
    """The weights of the uninterrupted run; its checkpoints are gone afterwards."""
    put_train(store)
    result = sft.train_sft(job(tmp_path), store, max_steps=STEPS, progress=False)
    assert result.metrics.steps == STEPS
    assert not (Path(store.home) / "checkpoints" / "colors").exists()  # a finished run leaves nothing to resume
    artifacts = [a for a in store.list_artifacts(result.run_id) if a.kind == "checkpoint"]
    assert len(artifacts) == STEPS // 3 and all(a.sha256 for a in artifacts)
    return weights(result.output_dir)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path: Path, store: Store, reference):
    # The real test of atomicity: SIGKILL, no chance to clean up; step 7 is mid-epoch, checkpoint-6 is the newest.
    script = f"""
import os, signal
from pathlib import Path
from transformers import TrainerCallback
import instil.train.sft as sft
from instil.spec import parse_spec
from instil.store import Store

class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            os.kill(os.getpid(), signal.SIGKILL)

real = sft.build_trainer
sft.build_trainer = lambda plan, folder, *, callbacks=(): real(plan, folder, callbacks=[*callbacks, Kill()])
spec = parse_spec({JOB_YAML!r}, root=Path({str(tmp_path)!r}))
with Store.open(home={str(store.home)!r}) as store:
    sft.train_sft(spec, store, max_steps={STEPS}, progress=False)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    killed = store.list_runs("colors", kind="train")[-1]
    assert killed.status == "running" and killed.pid is not None  # nothing could record the end...
    with Store.open(home=store.home) as reopened:  # ...until the next open finds its process gone
        marked = reopened.get_run(killed.id)
        assert reopened.mark_interrupted() == []  # open() did it
    assert marked.status == "interrupted"
    assert f"its process (pid {killed.pid} on {killed.host}) is gone" in (marked.error or "")
    assert marked.finished_at is not None and marked.finished_at <= marked.heartbeat_at

    result = sft.train_sft(job(tmp_path), store, max_steps=STEPS, progress=False, resume=True)
    run = store.get_run(result.run_id)
    assert run.config["resumed_from"]["step"] == 6 and run.config["resumed_from"]["run_id"] == killed.id
    assert run.resumed_from == (killed.id, 6) and result.resumed == f"resumed from run {killed.id} at step 6"
    assert run.status == "succeeded" and store.get_run(killed.id).status == "interrupted"
    assert result.metrics.steps == STEPS
    assert max_difference(weights(result.output_dir), reference) <= 1e-6


def test_ctrl_c_saves_a_checkpoint_and_resume_skips_half_written_ones_and_never_unpickles(
    tmp_path: Path, store: Store, reference, monkeypatch: pytest.MonkeyPatch
):
    with_callback(monkeypatch, At(7, lambda: os.kill(os.getpid(), signal.SIGINT)))
    with pytest.raises(TrainingInterrupted) as caught:
        sft.train_sft(job(tmp_path), store, max_steps=STEPS, progress=False)
    saved = caught.value.checkpoint
    assert saved is not None and saved.name == "checkpoint-8"  # step 7 finished, then one more, then saved
    assert store.list_runs("colors", kind="train")[-1].status == "cancelled"
    assert [p.name for p in saved.parent.glob("checkpoint-*")] == [
        "checkpoint-8"
    ]  # older ones rotated out once it was marked
    assert not (saved / "training_args.bin").exists()
    monkeypatch.setattr(sft, "build_trainer", BUILD_TRAINER)

    # A newer checkpoint cut off before its marker, and a training_args.bin that would leave a trace if unpickled.
    half = saved.parent / "checkpoint-10"
    half.mkdir()
    (half / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes()[:1000])
    trace = tmp_path / "unpickled"
    (saved / "training_args.bin").write_bytes(pickle.dumps(Trace(str(trace))))
    loads: list[tuple[str, object]] = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        loads.append((str(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    result = sft.train_sft(job(tmp_path), store, max_steps=STEPS, progress=False, resume=True)
    assert store.get_run(result.run_id).config["resumed_from"]["step"] == 8
    assert max_difference(weights(result.output_dir), reference) <= 1e-6
    assert not trace.exists()
    names = sorted(Path(f).name for f, _ in loads)
    assert names == ["optimizer.pt", "rng_state.pth", "scheduler.pt"], loads
    assert all(weights_only is True for _, weights_only in loads), loads


class Trace:
    """Unpickling this writes a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("unpickled",))


def test_a_tampered_checkpoint_is_refused(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch):
    put_train(store)
    with_callback(monkeypatch, At(4, lambda: os.kill(os.getpid(), signal.SIGINT)))
    with pytest.raises(TrainingInterrupted) as caught:
        sft.train_sft(job(tmp_path), store, max_steps=STEPS, progress=False)
    monkeypatch.setattr(sft, "build_trainer", BUILD_TRAINER)
    optimizer = caught.value.checkpoint / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[-20] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"optimizer\.pt does not match its recorded sha256") as refused:
        sft.train_sft(job(tmp_path), store, max_steps=STEPS, progress=False, resume=True)
    assert "delete" in refused.value.hint
    assert [r.status for r in store.list_runs("colors", kind="train")] == ["cancelled"]  # refused before starting


# ---- the pieces, without training ------------------------------------------------------------------------------------
def fake_checkpoint(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights %d" % step)
    torch.save({"state": {}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text("{}", encoding="utf-8")
    (folder / "training_args.bin").write_bytes(b"a pickle")
    return folder


def test_marking_drops_training_args_and_hashes_every_file(tmp_path: Path):
    folder = fake_checkpoint(tmp_path, 3)
    marked = mark_checkpoint(folder, step=3, run_id=1)
    assert set(marked.files) == {"model.safetensors", "optimizer.pt", "trainer_state.json"}
    assert not (folder / "training_args.bin").exists()
    assert read_checkpoint(folder) == marked
    assert find_resumable(tmp_path, {marked.marker_sha256}) == marked


def test_an_unknown_pickle_is_refused_when_marking(tmp_path: Path):
    folder = fake_checkpoint(tmp_path, 3)
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pytorch_model.bin"):
        mark_checkpoint(folder, step=3)
    assert not (folder / MARKER).exists()


def test_resume_picks_the_newest_complete_checkpoint_and_refuses_what_changed(tmp_path: Path):
    old = mark_checkpoint(fake_checkpoint(tmp_path, 3), step=3)
    new = mark_checkpoint(fake_checkpoint(tmp_path, 6), step=6)
    fake_checkpoint(tmp_path, 9)  # no marker: the process died while writing it
    recorded = {old.marker_sha256, new.marker_sha256}
    assert find_resumable(tmp_path, recorded).step == 6

    with pytest.raises(ModelError, match="not one instil recorded"):
        find_resumable(tmp_path, {old.marker_sha256})
    (new.path / "extra.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="extra.pt was added"):
        find_resumable(tmp_path, recorded)
    (new.path / "extra.pt").unlink()
    (new.path / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ModelError, match="model.safetensors does not match"):
        find_resumable(tmp_path, recorded)


def test_resume_with_nothing_to_resume_from_says_so(tmp_path: Path, store: Store):
    fake_checkpoint(tmp_path, 2)
    with pytest.raises(InstilError, match="no complete checkpoint.*checkpoint-2 never finished") as caught:
        find_resumable(tmp_path, recorded_hashes(store, "colors"))
    assert "without --resume" in caught.value.hint


def test_the_cli_exits_130_on_ctrl_c_and_resume_continues(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, capsys
):
    from instil.cli import main

    put_train(store)
    (tmp_path / "instil.yaml").write_text(JOB_YAML, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with_callback(monkeypatch, At(2, lambda: os.kill(os.getpid(), signal.SIGINT)))
    assert main(["train", "--max-steps", "6", "--no-progress"]) == 130
    assert "instil train --resume" in capsys.readouterr().err
    monkeypatch.setattr(sft, "build_trainer", BUILD_TRAINER)
    assert main(["train", "--max-steps", "6", "--no-progress", "--resume"]) == 0
    assert "model written to" in capsys.readouterr().out
    runs = store.list_runs("colors", kind="train")
    assert [r.status for r in runs] == ["cancelled", "succeeded"]
    assert runs[-1].config["resumed_from"]["step"] == 3


def test_a_moved_home_serves_its_own_weights_not_the_original_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from instil.train.models import job_base, load_for_inference, trained_base

    project = tmp_path / "project"
    home = project / ".instil"
    monkeypatch.setenv("INSTIL_HOME", str(home))
    spec = parse_spec(JOB_YAML.replace("adapter: full", "adapter: lora"), root=project)
    with Store.open(home=home) as store:
        put_train(store)
        trained = sft.train_sft(spec, store, max_steps=2, progress=False).model
    assert str(home) in trained.path and str(home) in trained.meta["model_info"]["path"]

    copy = tmp_path / "restored"
    shutil.copytree(project, copy)  # a backup restored elsewhere; the original is gone
    shutil.rmtree(project)
    monkeypatch.setenv("INSTIL_HOME", str(copy / ".instil"))
    with Store.open(home=copy / ".instil") as store:
        version = store.get_model("colors")
        assert Path(version.path).is_relative_to(copy.resolve())
        assert Path(trained_base(version)).is_relative_to(copy.resolve())
        assert Path(job_base(parse_spec(JOB_YAML, root=copy), store)).is_relative_to(copy.resolve())
        loaded = load_for_inference(version)
        assert loaded.model is not None
        artifacts = store.list_artifacts(version.run_id)
        assert artifacts and all(Path(a.path).is_relative_to(copy.resolve()) for a in artifacts)
