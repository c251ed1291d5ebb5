"""The loss curve of a training run as a PNG: training loss and validation loss against the optimizer step.

    from instil.train.plots import plot_loss
    plot_loss(result.history, result.output_dir / "loss_curve.png")   # the history train_sft returns / records

``history`` is the list :func:`instil.train.sft.train_sft` returns and writes to ``loss_history.json``:
``{"step", "epoch", "loss"}`` and ``{"step", "epoch", "eval_loss"}`` entries. The figure is drawn with matplotlib's
Agg canvas on a :class:`~matplotlib.figure.Figure` of its own, never through ``pyplot``: no global figure state, no GUI
backend, safe to call from a server thread. The file is written to a temp name and renamed into place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instil.errors import DataError, DependencyError
from instil.files import replacing

__all__ = ["loss_points", "plot_loss"]


def loss_points(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` (``loss`` or ``eval_loss``) in ``history``, skipping entries without it or NaN."""
    steps, values = [], []
    for i, entry in enumerate(history):
        if key not in entry or entry[key] is None:
            continue
        value = float(entry[key])
        if math.isnan(value):
            continue
        step = entry.get("step")
        steps.append(float(step) if step is not None else float(i))
        values.append(value)
    return steps, values


def plot_loss(history: Sequence[dict[str, Any]], path: Path, *, title: str | None = None) -> Path:
    """Draw the training (and validation, when logged) loss against the step into the PNG ``path``; returns it.

    Raises :class:`DataError` when ``history`` holds no loss at all, and :class:`DependencyError` without matplotlib.
    """
    path = Path(path)
    train_steps, train = loss_points(history, "loss")
    eval_steps, evals = loss_points(history, "eval_loss")
    if not train and not evals:
        raise DataError(
            f"cannot plot {path.name}: the loss history has {len(history)} entries and none holds a 'loss' or "
            "'eval_loss' value",
            hint="pass the history train_sft returns (or the run folder's loss_history.json); a run of 0 steps "
            "logs no loss",
        )
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DependencyError(
            "plotting the loss curve needs matplotlib, which is not installed", hint="pip install matplotlib"
        ) from None

    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attaches the Agg canvas: PNG output without pyplot or a display
    ax = figure.add_subplot()
    if train:
        # A single logged point draws no line: show a marker so the figure is never blank.
        ax.plot(
            train_steps,
            train,
            label="train loss",
            color="#1f77b4",
            linewidth=1.5,
            marker="o" if len(train) == 1 else None,
        )
    if evals:
        ax.plot(
            eval_steps,
            evals,
            label="validation loss",
            color="#d62728",
            linewidth=1.5,
            marker="o",
            markersize=4,
        )
        best = min(range(len(evals)), key=evals.__getitem__)
        ax.annotate(
            f"best {evals[best]:.3f}",
            (eval_steps[best], evals[best]),
            textcoords="offset points",
            xytext=(6, 8),
            fontsize=8,
            color="#d62728",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(True, alpha=0.3)
    ax.legend()

    with replacing(path) as staging:
        figure.savefig(staging, format="png")
    return path
