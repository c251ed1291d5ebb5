"""Training anomalies seen while a run trains (NaN, loss spikes, a flat loss), and where else to report the run.

    watch = LossWatch(max_steps=500, vocab_size=32000)
    for anomaly in watch.observe(step=10, loss=2.31, grad_norm=0.8):  # pure: call it on any logged values
        print(anomaly.level, anomaly.message)

    callback = AnomalyCallback(on_anomaly=print)            # the CLI prints them live; the API just collects
    trainer.add_callback(callback)                          # (or build_trainer(plan, dir, callbacks=[callback]))
    trainer.train()                                         # a NaN loss or gradient norm stops training...
    callback.raise_if_stopped()                             # ...and this raises an InstilError naming the step
    callback.anomalies                                      # every Anomaly, for the run's metrics

    resolve_report_to("auto")      # ['tensorboard', 'mlflow'] (those installed); "none" -> []; a named one not
                                   # installed -> DependencyError with the pip command

The detector is pure (no torch, no transformers) so it is tested on hand-written loss sequences; the callback only
feeds it what the Trainer logs. Warnings never stop a run: only a non-finite loss or gradient norm does, because
nothing good follows one (the weights are NaN from then on).
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from instil.errors import DependencyError, InstilError

__all__ = ["REPORTERS", "Anomaly", "AnomalyCallback", "LossWatch", "resolve_report_to"]


@dataclass(frozen=True)
class Anomaly:
    """One thing that looks wrong in a run's logged values."""

    step: int
    """The optimizer step whose logged values showed it."""
    kind: str
    """``nan`` (a non-finite loss or gradient norm), ``spike`` (a loss far above the recent median) or ``flat``
    (the loss has stopped falling early in training, or sits at chance level, ``ln(vocab)``)."""
    message: str
    """What was seen, with the values, and what to try."""
    value: float
    """The value that triggered it (the loss, or the non-finite value)."""
    level: str = "warning"
    """``error`` (training is stopped) or ``warning`` (training goes on)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LossWatch:
    """Watches logged losses for NaN/inf, spikes and a flat loss; :meth:`observe` returns what it found at a step.

    Defaults suit a run that logs about 200 points (instil's ``logging_steps``); every threshold can be changed.
    """

    max_steps: int | None = None
    """The run's planned steps; the flat check applies only to the first ``flat_fraction`` of them (None: always)."""
    vocab_size: int | None = None
    """The model's vocabulary, for the chance-level check (a loss of ``ln(vocab_size)`` is uniform guessing)."""
    spike_factor: float = 3.0
    """A loss above this many times the rolling median of the last ``spike_window`` losses is a spike..."""
    spike_window: int = 20
    """...the number of earlier logged losses the median is taken over..."""
    spike_min_points: int = 5
    """...once at least this many have been logged..."""
    spike_min_delta: float = 0.1
    """...and when it is at least this far above the median (so noise near a loss of 0 is not a spike)."""
    flat_window: int = 20
    """The flat check looks at the last this many logged losses..."""
    flat_eps: float = 0.01
    """...and warns when the median of their second half is not at least this fraction below that of the first."""
    flat_fraction: float = 0.5
    """The share of ``max_steps`` in which a flat loss is suspicious (later, a flat loss is convergence)."""
    chance_tolerance: float = 0.05
    """A loss within this fraction of ``ln(vocab_size)`` for ``flat_window`` logged steps is at chance level."""
    losses: list[tuple[int, float]] = field(default_factory=list)
    """Every finite training loss observed, as ``(step, loss)``."""
    _flat_warned: bool = field(default=False, repr=False)
    _chance_warned: bool = field(default=False, repr=False)

    def observe(
        self,
        step: int,
        loss: float | None = None,
        grad_norm: float | None = None,
        eval_loss: float | None = None,
    ) -> list[Anomaly]:
        """Check the values logged at ``step``; returns the anomalies they show (usually none)."""
        found = [
            self._nan(step, name, value)
            for name, value in (("loss", loss), ("gradient norm", grad_norm), ("validation loss", eval_loss))
            if value is not None and not math.isfinite(value)
        ]
        if found or loss is None:
            return found
        loss = float(loss)
        spike = self._spike(step, loss)
        self.losses.append((step, loss))
        return [a for a in (spike, self._flat(step), self._chance(step)) if a is not None]

    def _nan(self, step: int, name: str, value: float) -> Anomaly:
        return Anomaly(
            step,
            "nan",
            f"step {step}: the {name} is {value}; nothing good trains after that, since the weights are broken "
            "from here on. "
            "Try a lower learning rate (training.learning_rate), or float32 instead of bf16/fp16 "
            "(training.trl: {bf16: false}).",
            float(value),
            "error",
        )

    def _spike(self, step: int, loss: float) -> Anomaly | None:
        recent = [v for _, v in self.losses[-self.spike_window :]]
        if len(recent) < self.spike_min_points:
            return None
        median = statistics.median(recent)
        if loss > self.spike_factor * median and loss - median >= self.spike_min_delta:
            return Anomaly(
                step,
                "spike",
                f"step {step}: the loss jumped to {loss:.4g}, {loss / median:.1f}x the median {median:.4g} of the "
                f"last {len(recent)} logged losses. One spike is often harmless; repeated spikes suggest a lower "
                "learning rate or more warmup (training.trl: {warmup_ratio: 0.1}).",
                loss,
            )
        return None

    def _early(self, step: int) -> bool:
        return self.max_steps is None or self.max_steps <= 0 or step <= self.flat_fraction * self.max_steps

    def _flat(self, step: int) -> Anomaly | None:
        if self._flat_warned or len(self.losses) < self.flat_window or not self._early(step):
            return None
        window = [v for _, v in self.losses[-self.flat_window :]]
        half = len(window) // 2
        # Medians, so one spike inside the window neither hides nor fakes a plateau.
        before, after = statistics.median(window[:half]), statistics.median(window[half:])
        if before <= 0 or (before - after) / before >= self.flat_eps:
            return None
        self._flat_warned = True  # once a run: it stays flat for a while, and one warning says it
        first = self.losses[-self.flat_window][0]
        return Anomaly(
            step,
            "flat",
            f"step {step}: the loss has not fallen over the last {self.flat_window} logged steps (from step "
            f"{first}: median {before:.4g}, then {after:.4g}). Check that the labels train the assistant turns, or try "
            "a higher learning rate.",
            window[-1],
        )

    def _chance(self, step: int) -> Anomaly | None:
        if self._chance_warned or not self.vocab_size or self.vocab_size < 2 or len(self.losses) < self.flat_window:
            return None
        chance = math.log(self.vocab_size)
        window = [v for _, v in self.losses[-self.flat_window :]]
        if any(abs(v - chance) > self.chance_tolerance * chance for v in window):
            return None
        self._chance_warned = True
        return Anomaly(
            step,
            "flat",
            f"step {step}: the loss has stayed at {window[-1]:.4g} for {self.flat_window} logged steps, about "
            f"ln({self.vocab_size}) = {chance:.4g}: the model still guesses uniformly over its vocabulary. Check that "
            "the learning rate is not 0 and that the trained weights are not frozen.",
            window[-1],
        )


class AnomalyCallback(TrainerCallback):
    """Feeds every ``on_log`` of a transformers/TRL trainer into a :class:`LossWatch` and acts on what it finds.

    Each anomaly is kept in :attr:`anomalies` and handed to ``on_anomaly`` as it happens. On a ``nan`` (with
    ``stop_on_nan``) it sets ``control.should_training_stop``, so the trainer ends cleanly (progress bars closed,
    callbacks' ``on_train_end`` run); call :meth:`raise_if_stopped` after ``train()`` to turn that into an error.
    """

    def __init__(
        self,
        on_anomaly: Callable[[Anomaly], Any] | None = None,
        *,
        stop_on_nan: bool = True,
        watch: LossWatch | None = None,
    ) -> None:
        self.on_anomaly = on_anomaly
        """Called with each anomaly as it is found (the CLI prints it; None collects only)."""
        self.stop_on_nan = stop_on_nan
        """Stop training at the first non-finite loss or gradient norm."""
        self.watch = watch
        """The detector; None builds one at train begin from the run's max_steps and the model's vocabulary."""
        self.anomalies: list[Anomaly] = []
        """Every anomaly found, in order."""
        self.stopped: Anomaly | None = None
        """The anomaly that stopped training, if one did."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.watch is None:
            config = getattr(model, "config", None)
            self.watch = LossWatch(max_steps=state.max_steps, vocab_size=getattr(config, "vocab_size", None))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.watch is None:
            self.watch = LossWatch(max_steps=state.max_steps)
        found = self.watch.observe(
            state.global_step,
            loss=_number(logs.get("loss")),
            grad_norm=_number(logs.get("grad_norm")),
            eval_loss=_number(logs.get("eval_loss")),
        )
        for anomaly in found:
            self.anomalies.append(anomaly)
            if self.on_anomaly is not None:
                self.on_anomaly(anomaly)
            if anomaly.kind == "nan" and self.stop_on_nan and self.stopped is None:
                self.stopped = anomaly
                control.should_training_stop = True
        return control

    def raise_if_stopped(self) -> None:
        """Raise an :class:`InstilError` when a NaN stopped training; nothing otherwise."""
        if self.stopped is not None:
            raise InstilError(
                f"training diverged: {self.stopped.message}",
                hint="lower training.learning_rate (try a tenth of it) and train again",
            )

    def to_list(self) -> list[dict[str, Any]]:
        """The anomalies as JSON-ready dicts, for the run's metrics."""
        return [a.to_dict() for a in self.anomalies]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---- report_to -------------------------------------------------------------------------------------------------------
REPORTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "wandb": (("wandb",), "pip install wandb"),
}
"""The experiment trackers instil can report to: name -> (modules any one of which makes it available, install)."""


def resolve_report_to(value: str | Iterable[str] | None) -> list[str]:
    """The trackers to pass as ``report_to``: ``auto``, ``none``/None, or names (a list or a comma-separated string).

    ``auto`` picks the installed ones (wandb only when it has credentials or runs offline, since it would otherwise
    stop to ask for a login). A named tracker that is unknown or not installed raises, with what to do.
    """
    if value is None:
        return []
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n).strip() for n in value]
    names = [n for n in names if n]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return [n for n in REPORTERS if _installed(n) and (n != "wandb" or _wandb_configured())]
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise InstilError(
            f"training.report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; instil reports to "
            f"{', '.join(REPORTERS)}",
            hint="use one of those names, 'auto' (the installed ones) or 'none'",
        )
    missing = [n for n in names if not _installed(n)]
    if missing:
        install = "; ".join(REPORTERS[n][1] for n in missing)
        raise DependencyError(
            f"training.report_to names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            "installed",
            hint=f"{install} (or set training.report_to: auto to use only what is installed)",
        )
    return list(dict.fromkeys(names))


def _installed(name: str) -> bool:
    # find_spec looks the module up without importing it: importing mlflow or wandb takes seconds.
    return any(importlib.util.find_spec(module) is not None for module in REPORTERS[name][0])


def _wandb_configured() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
