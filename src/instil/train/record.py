"""Saving and recording a finished SFT run: the output folder, the model version, the artifacts and the metrics.

    history = loss_history(trainer.state.log_history)
    metrics = measure(trainer.state, history, seconds=12.5, seen=40_960, trained=9_120, positions=45_000,
                      anomalies=[])
    save_model(plan, trainer.model, staging, metrics, history)          # then renamed into place by train_sft
    model = record_run(store, run_id, plan, target, metrics, history)   # the model version; the run succeeded

**Save.** The adapter (or whole model) in safetensors, the tokenizer with the chat template training rendered with,
``loss_history.json``, ``loss_curve.png`` and ``instil_train.json`` (settings and metrics); a pickle in the folder is
refused. **Record.** The model version (model info, library versions, seed, dataset hash, loss history), the output
folder, loss history and curve as artifacts of the ``train`` run, and the run finished as ``succeeded`` with its
metrics. Only rank 0 of a launched run saves and records (:func:`instil.train.sft.follow_sft` trains only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instil.env import library_versions
from instil.errors import ModelError
from instil.store import ModelVersion, Store
from instil.train.models import weights_sha256
from instil.train.plan import TrainPlan
from instil.train.plots import plot_loss

__all__ = ["TrainMetrics", "gathered_state", "loss_history", "measure", "record_run", "save_model"]


@dataclass
class TrainMetrics:
    """What a training run measured."""

    train_loss: float | None
    """The last logged training loss."""
    eval_loss: float | None
    """The best validation loss (of the saved model); None without a validation slice."""
    steps: int
    """Optimizer steps taken."""
    epochs: float
    """Passes over the training rows taken."""
    tokens_seen: int
    """Non-padding tokens in the training batches."""
    trained_tokens: int
    """Tokens that carried loss (assistant turns and their end-of-turn markers)."""
    seconds: float
    """Wall time of the training loop."""
    tokens_per_second: float
    """``tokens_seen / seconds``."""
    stopped_early: bool
    """True when early stopping ended the run before its planned steps."""
    padding_fraction: float = 0.0
    """Pad tokens / all tokens of the training batches, measured on the batches the model ran (0 when padding-free)."""
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    """Anomalies seen while training (loss spikes, a flat or chance-level loss); a NaN stops the run instead."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Trainer's log reduced to ``{"step", "epoch", "loss"}`` and ``{"step", "epoch", "eval_loss"}`` entries."""
    out = []
    for entry in log_history:
        for key in ("loss", "eval_loss"):
            if key in entry:
                out.append({"step": entry.get("step"), "epoch": entry.get("epoch"), key: float(entry[key])})
    return out


def measure(
    state: Any,
    history: list[dict[str, Any]],
    *,
    seconds: float,
    seen: int,
    trained: int,
    positions: int,
    anomalies: list[dict[str, Any]],
) -> TrainMetrics:
    """The metrics of a run from the Trainer's final ``state``, its loss history and the token tallies (all ranks)."""
    train_losses = [h["loss"] for h in history if "loss" in h]
    return TrainMetrics(
        train_loss=train_losses[-1] if train_losses else None,
        eval_loss=float(state.best_metric) if state.best_metric is not None else None,
        steps=int(state.global_step),
        epochs=float(state.epoch or 0.0),
        tokens_seen=seen,
        trained_tokens=trained,
        seconds=round(seconds, 3),
        tokens_per_second=round(seen / seconds, 1) if seconds > 0 else 0.0,
        stopped_early=bool(state.global_step < state.max_steps),
        padding_fraction=round((positions - seen) / positions, 4) if positions else 0.0,
        anomalies=anomalies,
    )


def gathered_state(trainer: Any) -> dict[str, Any] | None:
    """The full state dict of a sharded model (DeepSpeed ZeRO, FSDP), gathered on every rank; None otherwise."""
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)  # a collective: every rank calls it
    return None


def save_model(
    plan: TrainPlan,
    model: Any,
    folder: Path,
    metrics: TrainMetrics,
    history: list[dict[str, Any]],
    *,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """The model (or adapter) in safetensors, the tokenizer with its chat template, the history and the settings."""
    from peft import PeftModel

    folder.mkdir(parents=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    else:
        model.save_pretrained(folder, state_dict=state_dict)  # transformers 5 writes safetensors only
    plan.tokenizer.chat_template = plan.renderer.template  # serving renders exactly what training rendered
    plan.tokenizer.save_pretrained(folder)
    (folder / "loss_history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    if any("loss" in h or "eval_loss" in h for h in history):
        plot_loss(history, folder / "loss_curve.png")
    summary = {**plan.config(), "metrics": metrics.to_dict(), "end_of_turn": plan.renderer.end_of_turn}
    (folder / "instil_train.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    if pickles:
        raise ModelError(f"saving wrote pickle files {pickles} to {folder}; instil ships safetensors only")


def record_run(
    store: Store,
    run_id: int,
    plan: TrainPlan,
    target: Path,
    metrics: TrainMetrics,
    history: list[dict[str, Any]],
) -> ModelVersion:
    """Register the saved folder ``target`` as a model version, add it as artifacts and finish the run succeeded."""
    spec = plan.spec
    meta = {
        "model_info": plan.info.to_dict(),
        "library_versions": library_versions(),
        "seed": spec.training.seed,
        "dataset": {"ref": plan.dataset.ref, "sha256": plan.dataset.sha256},
        "adapter": spec.training.adapter,
        "method": "sft",
        "loss_history": history,
    }
    model = store.register_model(
        spec.name,
        base_model=spec.model.base,
        path=target,
        run_id=run_id,
        revision=plan.info.revision,
        meta=meta,
    )
    store.add_artifact(run_id, "model", target, sha256=weights_sha256(target))
    store.add_artifact(run_id, "history", target / "loss_history.json")
    if (target / "loss_curve.png").is_file():
        store.add_artifact(run_id, "loss_curve", target / "loss_curve.png")
    store.finish_run(run_id, "succeeded", metrics=metrics.to_dict())
    return model
