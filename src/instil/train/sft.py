"""Supervised fine-tuning (``instil train`` with ``training.method: sft``) on TRL's ``SFTTrainer`` and PEFT.

    spec = instil.load_spec("instil.yaml")
    with Store.open(home=home_dir(spec.root)) as store:
        result = train_sft(spec, store)                  # trains on the latest <job>:train, records run + model
        result.metrics.eval_loss, result.output_dir      # the adapter (or model) with its tokenizer beside it
        for name, value, source in result.rows(): ...    # every resolved setting and where it came from

It reads top to bottom:

1. **Data.** The latest ``<job>:train`` version; every example is checked against the frozen holdout first and the
   run is refused on a match (:class:`HoldoutLeakError`), before anything is recorded. The system prompt is swapped
   for ``spec.short_prompt`` (the tuned model runs with it); with no short prompt the system message is dropped,
   because the tuned model then runs with none, and it must be trained the way it runs.
2. **Model.** The base model and tokenizer (``tiny`` is built from these examples), rendered through the chat template
   (:class:`ChatRenderer`); each example tokenized with loss only on the assistant turns (:func:`tokenize_example`).
3. **Settings.** Defaults from the data, every one overridable and shown with its source (:class:`Setting`; how each
   is derived is in :mod:`instil.train.settings`), with a validation slice of the *training* split and early stopping
   on its loss. ``training.trl`` is passed through to ``SFTConfig`` last.
4. **Train.** TRL's ``SFTTrainer`` with pre-tokenized rows carrying our own ``labels`` (TRL uses a ``labels`` column as
   is), and a PEFT config for ``lora``, ``qlora`` (4-bit NF4 base) or ``prompt_tuning``; none for ``full``. Checkpoints
   (``<home>/checkpoints/<job>/<config key>``, see :mod:`instil.train.checkpoints`) are marked complete, hashed and
   recorded as they are written, kept when a run stops early (``resume=True`` continues from the newest one; Ctrl-C
   saves one first) and deleted after a run succeeds; no pickle (``training_args.bin``) is ever loaded.
5. **Save.** The adapter (or whole model) in safetensors, the tokenizer with the chat template, ``loss_history.json``,
   ``loss_curve.png`` and ``instil_train.json`` (settings and metrics), written to a temp folder then renamed into
   place (:func:`~instil.train.record.save_model`).
6. **Record.** A ``train`` run (the resolved settings as its config, linked to the dataset version), the model
   version (model info, library versions, seed, dataset hash, loss history) and the output folder as an artifact
   (:func:`~instil.train.record.record_run`). A run that fails after it started is finished as ``failed`` (or
   ``cancelled`` on Ctrl-C) with the error, which is then re-raised.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instil.env import cuda_available
from instil.errors import DataError, InstilError
from instil.files import replacing
from instil.jobdata import assert_no_holdout_leak, dataset_name
from instil.spec import JobSpec
from instil.store import DatasetVersion, ModelVersion, Store
from instil.train.chat import ChatRenderer
from instil.train.distributed import all_sum, barrier, distributed_settings
from instil.train.masking import IGNORE_INDEX, tokenize_example
from instil.train.models import ModelInfo, default_dtype, load_model, load_tokenizer, model_info, resolve_base
from instil.train.plan import TrainPlan
from instil.train.record import TrainMetrics, gathered_state, loss_history, measure, record_run, save_model
from instil.train.settings import Setting, resolve_max_length, resolve_settings, validation_split

__all__ = [
    "TrainResult",
    "build_trainer",
    "follow_sft",
    "prepare_sft",
    "train_sft",
]


@dataclass
class TrainResult:
    """What :func:`train_sft` produced and recorded."""

    run_id: int
    """The ``train`` run in the store."""
    model: ModelVersion
    """The registered model version."""
    output_dir: Path
    """The folder holding the adapter (or model), the tokenizer, ``loss_history.json`` and ``instil_train.json``."""
    metrics: TrainMetrics
    resolved: dict[str, Setting]
    """Every setting the run used and where it came from."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The logged losses: ``{"step", "epoch", "loss"}`` and ``{"step", "epoch", "eval_loss"}`` entries."""
    notice: str | None = None
    """A line to show the user (for the ``tiny`` model: that it started knowing nothing)."""
    resumed_from: tuple[int | None, int] | None = None
    """(run id, step) of the checkpoint this run continued from; None when it started afresh."""

    @property
    def resumed(self) -> str | None:
        """``resumed from run N at step S`` for a resumed run, else None."""
        if self.resumed_from is None:
            return None
        run_id, step = self.resumed_from
        return f"resumed from {f'run {run_id}' if run_id is not None else 'a checkpoint'} at step {step}"

    def rows(self) -> list[tuple[str, Any, str]]:
        """(setting, value, source) for the run summary table."""
        return [(name, s.value, s.source) for name, s in self.resolved.items()]


# ---- 2 and 3. model, tokens, settings --------------------------------------------------------------------------------
def prepare_sft(
    spec: JobSpec, store: Store, *, max_steps: int | None = None, dataset: DatasetVersion | None = None
) -> TrainPlan:
    """Load the data and model, tokenize with our masks and resolve every setting; records nothing.

    ``dataset`` is the training version to use (default: the newest version of ``<job>:train``).

    Raises :class:`HoldoutLeakError` when a training example matches the frozen holdout.
    """
    if dataset is None:
        dataset = store.get_dataset(dataset_name(spec, "train"))
    stored = list(store.iter_examples(dataset))
    if not stored:
        raise DataError(f"dataset {dataset.ref} is empty: nothing to train on", hint="add examples, then re-split")
    assert_no_holdout_leak(spec, store, stored)
    examples = [e.with_system_prompt(spec.short_prompt) for e in stored]

    t = spec.training
    cuda = cuda_available()
    source = resolve_base(spec.model, root=spec.root, examples=examples)
    # The resolved folder (or hub id) with the spec's revision, trust setting and chat template.
    local_spec = spec.model.model_copy(update={"base": str(source)})
    tokenizer = load_tokenizer(local_spec, root=spec.root)
    dtype = default_dtype()
    model = load_model(local_spec, root=spec.root, dtype=dtype, quantization="4bit" if t.adapter == "qlora" else None)
    info = model_info(model, base=spec.model.base, revision=spec.model.revision)
    if spec.model.is_tiny:
        info = ModelInfo(**{**info.to_dict(), "is_tiny": True})
    renderer = ChatRenderer(tokenizer, allow_dropped_messages=spec.model.allow_dropped_messages)

    full = [tokenize_example(renderer, e) for e in examples]
    longest = max(len(x.input_ids) for x in full)
    context = getattr(model.config, "max_position_embeddings", None)
    s: dict[str, Setting] = {"max_length": resolve_max_length(spec, longest=longest, context=context)}
    max_length = s["max_length"].value

    rows, dropped, truncated = [], [], 0
    for e, x in zip(examples, full, strict=True):
        ids, labels = x.input_ids[:max_length], x.labels[:max_length]
        truncated += len(x.input_ids) > max_length
        if all(label == IGNORE_INDEX for label in labels):
            dropped.append(e.key())
            continue
        rows.append({"input_ids": ids, "labels": labels})
    if not rows:
        raise DataError(
            f"no example of {dataset.ref} keeps a trained token within max_length={max_length}",
            hint="raise model.max_length, or shorten the prompts before the assistant turns",
        )
    train_idx, val_idx = validation_split(len(rows), t.seed)
    train_rows, eval_rows = [rows[i] for i in train_idx], [rows[i] for i in val_idx]

    s.update(
        resolve_settings(
            spec,
            n_train=len(train_rows),
            n_val=len(eval_rows),
            tiny=info.is_tiny,
            cuda=cuda,
            max_steps=max_steps,
            dtype=dtype,
        )
    )
    s.update(distributed_settings(t.batch_size, cuda=cuda))  # launched on N processes: batch_size / N each
    s["examples"] = Setting(len(stored), "data", f"{dataset.ref} ({dataset.short_hash})")
    s["truncated_examples"] = Setting(truncated, "data", f"longer than max_length={max_length}")
    s["dropped_examples"] = Setting(len(dropped), "data", "no trained token left after truncation")
    return TrainPlan(spec, dataset, model, tokenizer, renderer, info, train_rows, eval_rows, s, dropped)


def _peft_config(spec: JobSpec) -> Any:
    t = spec.training
    if t.adapter == "full":
        return None
    if t.adapter in ("lora", "qlora"):
        from peft import LoraConfig

        return LoraConfig(
            r=t.lora.r,
            lora_alpha=t.lora.alpha,
            lora_dropout=t.lora.dropout,
            target_modules=t.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=t.num_virtual_tokens)


# ---- 4. train --------------------------------------------------------------------------------------------------------
def build_trainer(plan: TrainPlan, checkpoint_dir: Path, *, callbacks: list[Any] = ()) -> Any:
    """TRL's ``SFTTrainer`` for the plan: our rows and labels as they are, the PEFT config, early stopping."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from instil.train.anomalies import resolve_report_to  # these import transformers: only when training
    from instil.train.checkpoints import make_resumable

    s, has_eval = plan.settings, bool(plan.eval_rows)
    managed = {"output_dir", "num_train_epochs", "learning_rate", "per_device_train_batch_size", "seed"}
    derived = {k: v.value for k, v in s.items() if v.source != "trl" and k in _CONFIG_FIELDS}
    kwargs: dict[str, Any] = {
        **derived,
        "output_dir": str(checkpoint_dir),
        "num_train_epochs": s["epochs"].value,
        "learning_rate": s["learning_rate"].value,
        "per_device_train_batch_size": s.get("per_device_batch_size", s["batch_size"]).value,
        "per_device_eval_batch_size": s.get("per_device_batch_size", s["batch_size"]).value,
        "seed": s["seed"].value,
        "data_seed": s["seed"].value,
        "report_to": resolve_report_to(plan.spec.training.report_to),
        "disable_tqdm": True,  # our own progress bar, or none
        "logging_first_step": True,
        # Optimizer, scheduler and RNG state too, so a run resumes exactly; the Trainer loads them weights_only, and
        # CheckpointRecorder rotates (the Trainer's own rotation deletes the last good one before the new one is
        # marked).
        "save_only_model": False,
        "save_total_limit": None,
        "dataloader_pin_memory": cuda_available(),
        "eval_strategy": "steps" if has_eval else "no",
        "save_strategy": "steps",
        "load_best_model_at_end": has_eval,  # reads the best checkpoint's safetensors, never training_args.bin
        "metric_for_best_model": "eval_loss" if has_eval else None,
        "greater_is_better": False if has_eval else None,
    }
    kwargs.update({k: v for k, v in plan.spec.training.trl.items() if k not in managed})
    try:
        config = SFTConfig(**kwargs)
    except (ValueError, TypeError) as e:
        given = ", ".join(sorted(plan.spec.training.trl)) or "none"
        raise InstilError(
            f"{plan.spec.file or 'the spec'}: SFTConfig refused the resolved settings (training.trl fields: "
            f"{given}): {e}",
            hint="fix or remove the training.trl field it names (see TRL's SFTConfig for the allowed values)",
        ) from None
    trainer = SFTTrainer(
        model=plan.model,
        args=config,
        train_dataset=Dataset.from_list(plan.train_rows),
        eval_dataset=Dataset.from_list(plan.eval_rows) if has_eval else None,
        processing_class=plan.tokenizer,
        peft_config=_peft_config(plan.spec),
        callbacks=[
            *([EarlyStoppingCallback(s["early_stopping_patience"].value)] if has_eval else []),
            *callbacks,
        ],
    )
    trainer.remove_callback(PrinterCallback)  # the API prints nothing; the CLI renders the summary
    make_resumable(trainer, s["seed"].value)  # the same batch order after a resume from mid-epoch
    return trainer


_CONFIG_FIELDS = {
    "max_length",
    "max_steps",
    "gradient_accumulation_steps",
    "logging_steps",
    "eval_steps",
    "train_sampling_strategy",
    "bf16",
    "gradient_checkpointing",
    "save_steps",
    "use_cpu",
    "ddp_backend",
}
"""Resolved settings that are ``SFTConfig`` fields of the same name."""


# ---- the run: 4. train, 5. save, 6. record ---------------------------------------------------------------------------
def train_sft(
    spec: JobSpec,
    store: Store,
    *,
    output_dir: Path | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    resume: bool = False,
    dataset: DatasetVersion | None = None,
) -> TrainResult:
    """Fine-tune the job's base model on its training split with SFT and record the run and the model.

    ``dataset`` is the training version to learn from (default: the newest version of ``<job>:train``).
    ``output_dir`` defaults to ``<home>/models/<job>/run-<run id>`` and must not exist yet. ``max_steps`` caps the
    optimizer steps (overrides the epochs). ``progress`` shows a progress bar on stderr. ``resume`` continues from the
    newest complete checkpoint of an earlier run with the same settings and data (refused when there is none, or when
    it fails its hash checks); without it, checkpoints left by such a run are deleted and training starts over.
    Ctrl-C saves a checkpoint and raises :class:`~instil.train.checkpoints.TrainingInterrupted` (a KeyboardInterrupt).
    """
    if spec.training.method != "sft":
        raise InstilError(
            f"training.method is {spec.training.method!r}, but train_sft runs supervised fine-tuning",
            hint="set training.method: sft (dpo and grpo are not available yet)",
        )
    if output_dir is not None and Path(output_dir).exists():
        raise InstilError(f"output folder {output_dir} exists already", hint="pick a new folder or remove it")
    plan = prepare_sft(spec, store, max_steps=max_steps, dataset=dataset)
    from instil.train.checkpoints import checkpoint_folder, config_key, find_resumable, recorded_hashes

    checkpoints = checkpoint_folder(store.home, spec.name, config_key(_checkpoint_identity(plan)))
    resume_from = find_resumable(checkpoints, recorded_hashes(store, spec.name)) if resume else None
    config = plan.config()
    if resume_from is not None:
        config["resumed_from"] = {
            "path": str(resume_from.path),
            "step": resume_from.step,
            "run_id": resume_from.run_id,
            "marker_sha256": resume_from.marker_sha256,
        }
    run_id = store.start_run(spec.name, "train", config=config)
    try:
        store.link_run_dataset(run_id, plan.dataset, "train")
        target = (
            Path(output_dir) if output_dir is not None else Path(store.home) / "models" / spec.name / f"run-{run_id}"
        )
        if target.exists():
            raise InstilError(f"output folder {target} exists already", hint="remove it, or pass another output_dir")
        metrics, history = _train_and_save(
            plan,
            target,
            progress=progress,
            store=store,
            run_id=run_id,
            checkpoints=checkpoints,
            resume_from=resume_from.path if resume_from is not None else None,
        )
        model = record_run(store, run_id, plan, target, metrics, history)  # 6. register; run succeeded
    except BaseException as e:
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        store.finish_run(run_id, status, error=f"{type(e).__name__}: {e}")
        raise
    resumed = (resume_from.run_id, resume_from.step) if resume_from is not None else None
    return TrainResult(run_id, model, target, metrics, plan.settings, history, plan.info.notice, resumed)


def follow_sft(
    spec: JobSpec,
    store: Store,
    *,
    output_dir: Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
) -> None:
    """Train as a non-zero rank of a launched run (``instil train --processes N``, :mod:`instil.train.launch`).

    Rank 0 runs :func:`train_sft` with the same arguments and alone records the run and saves the model; this process
    trains its shard of each batch and writes nothing to the store.
    """
    from instil.train.checkpoints import checkpoint_folder, config_key, find_resumable, recorded_hashes

    plan = prepare_sft(spec, store, max_steps=max_steps)
    checkpoints = checkpoint_folder(store.home, spec.name, config_key(_checkpoint_identity(plan)))
    resume_from = find_resumable(checkpoints, recorded_hashes(store, spec.name)) if resume else None
    _train_and_save(
        plan,
        None,
        progress=False,
        store=None,
        run_id=None,
        checkpoints=checkpoints,
        resume_from=resume_from.path if resume_from is not None else None,
    )


def _checkpoint_identity(plan: TrainPlan) -> dict[str, Any]:
    """What makes two runs the same run, for finding the checkpoints to resume from: settings, data, base weights."""
    return {
        "settings": {k: s.value for k, s in plan.settings.items()},
        "dataset": plan.dataset.sha256,
        "base": [plan.info.base, plan.info.revision, plan.info.weights_sha256],
    }


def _train_and_save(
    plan: TrainPlan,
    target: Path | None,
    *,
    progress: bool,
    store: Store | None,
    run_id: int | None,
    checkpoints: Path,
    resume_from: Path | None,
) -> tuple[TrainMetrics, list[dict[str, Any]]]:
    """Train, then save into ``target``; with ``target`` None (a follower rank, see :func:`follow_sft`) train only."""
    from instil.train.anomalies import AnomalyCallback  # these import transformers: only when training
    from instil.train.callbacks import RichProgress, TokenTally
    from instil.train.checkpoints import CheckpointRecorder, StopOnInterrupt

    if resume_from is None and target is not None and checkpoints.exists():
        shutil.rmtree(checkpoints)  # a fresh start: an earlier run's would mix with this one's
    tally = TokenTally()
    recorder, stopper = CheckpointRecorder(store, run_id), StopOnInterrupt()
    anomalies = AnomalyCallback()  # a NaN stops training; spikes and flat loss are recorded in the metrics
    callbacks = [recorder, stopper, anomalies, *([RichProgress(tally)] if progress else [])]
    with _quiet():
        trainer = build_trainer(plan, checkpoints, callbacks=callbacks)
        handle = tally.attach(trainer.model)
        start = time.perf_counter()
        try:
            with stopper.installed():
                trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            handle.remove()
        stopper.raise_if_interrupted(recorder.latest)  # checkpoints are kept for --resume
        anomalies.raise_if_stopped()  # diverged: the run is recorded as failed, with the step
        seconds = time.perf_counter() - start
        barrier()  # nobody deletes the checkpoints while another rank still loads the best one from them
        # Each rank counted its own shard.
        seen, trained, positions = all_sum(tally.seen, tally.trained, tally.positions)
        state_dict = gathered_state(trainer)
        history = loss_history(trainer.state.log_history)
        metrics = measure(
            trainer.state,
            history,
            seconds=seconds,
            seen=seen,
            trained=trained,
            positions=positions,
            anomalies=anomalies.to_list(),
        )
        if target is None:
            return metrics, history  # a follower: rank 0 saves, records and cleans up
        with replacing(target) as staging:  # a crash mid-save never leaves a model that looks complete
            save_model(plan, trainer.model, staging, metrics, history, state_dict=state_dict)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the run is done: nothing left to resume
    if checkpoints.parent.is_dir() and not any(checkpoints.parent.iterdir()):
        checkpoints.parent.rmdir()
    return metrics, history


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence what datasets and transformers print on their own (the API prints nothing itself): progress bars,
    the deprecation of the ``gradient_checkpointing`` field TRL's config still carries, and the load-time note that a
    tied ``lm_head.weight`` has no tensor of its own in a checkpoint."""
    import datasets
    from transformers.utils import logging as hf_logging

    was_datasets, was_hf = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning
            )
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_datasets:
            datasets.enable_progress_bars()
        if was_hf:
            hf_logging.enable_progress_bar()
