"""Checkpoints that can be trusted: complete, hashed, recorded in the store, resumed without unpickling anything unsafe.

    folder = checkpoint_folder(store.home, spec.name, key)     # stable per job, resolved settings and dataset
    recorder = CheckpointRecorder(store, run_id)              # marks and records each checkpoint the Trainer writes
    stopper = StopOnInterrupt()                               # Ctrl-C: save a checkpoint, stop, then raise
    with stopper.installed():
        trainer.train(resume_from_checkpoint=...)
    stopper.raise_if_interrupted(recorder.latest)              # TrainingInterrupted (a KeyboardInterrupt)

    checkpoint = find_resumable(folder, recorded_hashes(store, spec.name))   # newest complete and untampered one

How a checkpoint becomes trusted: transformers' Trainer writes ``checkpoint-<step>/`` (the weights in safetensors,
``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``, ``training_args.bin``). Then
:class:`CheckpointRecorder` deletes ``training_args.bin`` (a full pickle; resuming never needs it), refuses any other
pickle it does not know, hashes every file into ``instil_checkpoint.json`` (the completeness marker, written last,
atomically: temp file, fsync, rename) and records the marker's sha256 in the store as a ``checkpoint`` artifact of
the run. A folder without a marker was cut off mid-write and is skipped; one whose files or marker do not match the
hashes is refused. The Trainer loads ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` and ``rng_state*.pth`` with
``torch.load(..., weights_only=True)`` (transformers 5; tested in ``tests/test_checkpoints.py``) and never reads
``training_args.bin`` back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from instil.data.records import canonical_json, sha256_hex
from instil.errors import ModelError, NoCheckpointError
from instil.files import write_atomic
from instil.store import Store
from instil.train.batching import LengthBucketSampler

__all__ = [
    "MARKER",
    "Checkpoint",
    "CheckpointRecorder",
    "StopOnInterrupt",
    "TrainingInterrupted",
    "checkpoint_folder",
    "config_key",
    "find_resumable",
    "make_resumable",
    "mark_checkpoint",
    "read_checkpoint",
    "recorded_hashes",
]

MARKER = "instil_checkpoint.json"
"""The completeness marker: written last, it lists every file of the checkpoint with its sha256."""
NEVER_LOADED = "training_args.bin"
"""A full pickle of the TrainingArguments; deleted when a checkpoint is marked, ignored (never read) on resume."""
_WEIGHTS_ONLY = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")
"""Pickle files the Trainer loads with ``weights_only=True`` (tensors and plain containers only)."""
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_STEP = re.compile(r"^checkpoint-(\d+)$")
ARTIFACT_KIND = "checkpoint"
"""The store artifact kind under which each marked checkpoint is recorded (its sha256 is the marker's)."""


@dataclass(frozen=True)
class Checkpoint:
    """One marked checkpoint folder."""

    path: Path
    """The ``checkpoint-<step>`` folder."""
    step: int
    """The optimizer step it was saved at."""
    files: dict[str, str]
    """Every file in it (path relative to the folder) and its sha256, as the marker lists them."""
    marker_sha256: str
    """sha256 of the marker file's bytes: what the store records for this checkpoint."""
    run_id: int | None = None
    """The run that wrote it."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving a checkpoint; ``instil train --resume`` continues from it.

    A :class:`KeyboardInterrupt`, so the run is recorded as ``cancelled`` and callers that stop on Ctrl-C still stop.
    """

    hint = "run `instil train --resume` (or train_sft(..., resume=True)) to continue from the saved checkpoint"

    def __init__(self, checkpoint: Path | None) -> None:
        self.checkpoint = checkpoint
        """The checkpoint saved on the way out (None when the interrupt came before any step finished)."""
        where = f"a checkpoint was saved at {checkpoint}" if checkpoint else "no step had finished: nothing to save"
        super().__init__(f"training interrupted: {where}")


# ---- where checkpoints live ------------------------------------------------------------------------------------------
def config_key(config: dict[str, Any]) -> str:
    """A short stable hash of a run configuration (resolved settings, dataset hash, base model weights)."""
    return sha256_hex(canonical_json(config))[:16]


def checkpoint_folder(home: Path | str, job: str, key: str) -> Path:
    """``<home>/checkpoints/<job>/<key>``: one folder for every run of the same configuration, so a rerun finds it."""
    return Path(home) / "checkpoints" / job / key


# ---- writing ---------------------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:

    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pickles(folder: Path) -> list[str]:
    """Pickle files in ``folder`` the Trainer would not load with ``weights_only=True``."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and p.name.endswith(_PICKLE_SUFFIXES)
        and not _WEIGHTS_ONLY.match(p.name)
        and p.name != NEVER_LOADED
    )


def mark_checkpoint(folder: Path, *, step: int, run_id: int | None = None) -> Checkpoint:
    """Make a freshly written checkpoint trusted: drop ``training_args.bin``, refuse unknown pickles, hash every
    file and write the marker last, atomically. Returns the marked :class:`Checkpoint`."""
    folder = Path(folder)
    (folder / NEVER_LOADED).unlink(missing_ok=True)
    unexpected = _pickles(folder)
    if unexpected:
        raise ModelError(
            f"checkpoint {folder} holds pickle files {unexpected} that could not be loaded safely "
            "(only optimizer.pt, scheduler.pt, scaler.pt and rng_state*.pth are loaded, with weights_only=True)",
            hint="save the model in safetensors (transformers 5 does by default); remove any training.trl field "
            "that asks for .bin weights",
        )
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MARKER and not p.name.startswith(f".{MARKER}"):
            _fsync(p)  # the marker promises the bytes are on disk, not just in the page cache
            files[p.relative_to(folder).as_posix()] = _sha256_file(p)
    body = json.dumps({"step": step, "run_id": run_id, "files": files}, indent=1, sort_keys=True).encode()
    write_atomic(folder / MARKER, body, durable=True)
    _fsync(folder)
    return Checkpoint(folder, step, files, sha256_hex(body), run_id)


# ---- reading ---------------------------------------------------------------------------------------------------------
def read_checkpoint(folder: Path) -> Checkpoint | None:
    """The marked checkpoint in ``folder``; None when it has no marker (cut off before it was complete)."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    body = marker.read_bytes()
    try:
        data = json.loads(body)
        files = {str(k): str(v) for k, v in data["files"].items()}
        step, run_id = int(data["step"]), data.get("run_id")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(
            f"{marker}: not a valid checkpoint marker ({type(e).__name__}: {e})",
            hint=f"delete {folder} (and train without --resume if no other checkpoint is left)",
        ) from None
    return Checkpoint(Path(folder), step, files, sha256_hex(body), run_id)


def _problems(checkpoint: Checkpoint, recorded: set[str]) -> list[str]:
    """Why ``checkpoint`` cannot be trusted; empty when it can."""
    folder, problems = checkpoint.path, []
    if checkpoint.marker_sha256 not in recorded:
        problems.append(f"its marker {MARKER} (sha256 {checkpoint.marker_sha256[:12]}) is not one instil recorded")
    for name, digest in checkpoint.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif _sha256_file(path) != digest:
            problems.append(f"{name} does not match its recorded sha256")
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (MARKER, NEVER_LOADED) and not p.name.startswith(f".{MARKER}")
    }
    for name in sorted(present - set(checkpoint.files)):
        problems.append(f"{name} was added after the checkpoint was written")
    return problems


def _folders(root: Path) -> list[tuple[int, Path]]:
    """The ``checkpoint-<step>`` folders under ``root``, newest step first."""
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (m := _STEP.match(p.name)):
                found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def find_resumable(root: Path, recorded: set[str]) -> Checkpoint:
    """The newest complete checkpoint under ``root`` whose marker the store recorded and whose files match it.

    Folders without a marker (cut off mid-write) are skipped. A marked checkpoint that fails the checks is refused
    with :class:`ModelError` rather than passed over: something changed files that are about to be loaded.
    """
    root = Path(root)
    skipped = []
    for _, folder in _folders(root):
        checkpoint = read_checkpoint(folder)
        if checkpoint is None:
            skipped.append(folder.name)
            continue
        problems = _problems(checkpoint, recorded)
        if problems:
            raise ModelError(
                f"checkpoint {folder} cannot be trusted: " + "; ".join(problems),
                hint=f"delete {folder} to resume from an older checkpoint, or train without --resume to start over",
            )
        return checkpoint
    note = f" ({', '.join(skipped)} never finished writing)" if skipped else ""
    raise NoCheckpointError(
        f"no complete checkpoint to resume from in {root}{note}",
        hint="train without --resume to start from the beginning (checkpoints are kept only for runs that stopped "
        "early with the same settings and data)",
    )


def recorded_hashes(store: Store, job: str) -> set[str]:
    """The marker hashes of every checkpoint instil recorded for ``job``'s training runs."""
    return {
        a.sha256
        for run in store.list_runs(job, kind="train")
        for a in store.list_artifacts(run.id)
        if a.kind == ARTIFACT_KIND and a.sha256
    }


# ---- a data order that can be resumed --------------------------------------------------------------------------------
def make_resumable(trainer: Any, seed: int) -> None:
    """Make ``trainer``'s training order resumable mid-epoch: ``group_by_length`` becomes instil's
    :class:`~instil.train.batching.LengthBucketSampler`, seeded by epoch.

    The stock length-grouped sampler shuffles with the global torch RNG at the start of each epoch; a checkpoint saved
    mid-epoch holds the RNG state of that moment, not of the epoch's start, so a resumed run would draw a different
    order. Seeded per epoch (the Trainer calls ``set_epoch`` before every pass, resumed ones included), it is the same.
    The random order (``train_sampling_strategy: random``) already is resumable: accelerate seeds it by epoch.
    """
    stock = trainer._get_train_sampler

    def sampler(train_dataset: Any = None) -> Any:
        made = stock(train_dataset)
        if type(made) is LengthGroupedSampler:
            return LengthBucketSampler(made.batch_size, made.lengths, seed)
        return made

    trainer._get_train_sampler = sampler  # on this instance only: no Trainer subclass for one method


# ---- the callbacks ---------------------------------------------------------------------------------------------------
class CheckpointRecorder(TrainerCallback):
    """After each checkpoint the Trainer writes: mark it, record it in the store, delete the older ones.

    The Trainer's own rotation (``save_total_limit``) must be off: it deletes the previous checkpoint before the new
    one is marked, which would leave nothing to resume from if the process died in between. Here the previous one is
    deleted only once the new one is complete; the best checkpoint (``load_best_model_at_end``) is always kept.
    """

    def __init__(self, store: Store | None, run_id: int | None) -> None:
        self.store = store
        self.run_id = run_id
        self.latest: Checkpoint | None = None
        """The last checkpoint marked by this run."""

    def on_save(self, args, state, control, **kwargs):
        _wait_for_everyone(args)  # every process's rng_state_<i>.pth must be on disk before it is hashed
        if not state.is_world_process_zero:
            return
        root = Path(args.output_dir)
        folder = root / f"checkpoint-{state.global_step}"
        self.latest = mark_checkpoint(folder, step=state.global_step, run_id=self.run_id)
        if self.store is not None and self.run_id is not None:
            self.store.add_artifact(self.run_id, ARTIFACT_KIND, folder, sha256=self.latest.marker_sha256)
        keep = {folder.resolve()}
        if state.best_model_checkpoint:
            keep.add(Path(state.best_model_checkpoint).resolve())
        for _, old in _folders(root):
            if old.resolve() not in keep and read_checkpoint(old) is not None:
                shutil.rmtree(old)


def _wait_for_everyone(args: Any) -> None:
    if getattr(args, "world_size", 1) > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C during training: finish the current step, save a checkpoint, stop; then raise TrainingInterrupted.

    A second Ctrl-C interrupts at once (the previous handler is back after the first).
    """

    def __init__(self) -> None:
        self.requested = threading.Event()

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Catch SIGINT while the block runs (only in the main thread, where Python delivers signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handle(signum: int, frame: Any) -> None:
            self.requested.set()
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested.is_set():
            control.should_save = True
            control.should_training_stop = True

    def raise_if_interrupted(self, latest: Checkpoint | None) -> None:
        if self.requested.is_set():
            raise TrainingInterrupted(latest.path if latest else None)
