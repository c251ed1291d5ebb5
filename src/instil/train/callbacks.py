"""What a training run measures while it runs: tokens seen and trained, and a progress bar with tokens/s and ETA.

    tally = TokenTally()
    handle = tally.attach(trainer.model)                  # counts the real batches the model is given in training
    trainer.add_callback(RichProgress(tally))             # a rich progress bar: steps, loss, tokens/s, ETA
    trainer.train()
    handle.remove()
    tally.seen, tally.trained                             # non-pad input tokens, tokens that carried loss
    tally.padding_fraction                                # pad tokens / all tokens of the training batches

Both are plain pieces any method (sft, dpo, grpo) can use with a TRL trainer; neither changes what is trained.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback

from instil.train.masking import IGNORE_INDEX

__all__ = ["RichProgress", "TokenTally"]


class TokenTally:
    """Counts the tokens of every batch the model runs forward in training mode (evaluation batches are left out).

    A forward pre-hook on the model sees exactly what the trainer hands it, after collation, shuffling and
    truncation, so the counts are exact and need nothing from the trainer's internals.
    """

    def __init__(self) -> None:
        self.seen = 0
        """Non-padding input tokens in training batches (``attention_mask`` ones)."""
        self.trained = 0
        """Tokens that carried loss (labels other than -100)."""
        self.positions = 0
        """All input positions in training batches, padding included (``seen`` plus the pad tokens)."""

    @property
    def padding_fraction(self) -> float:
        """The share of training batch positions that were padding: compute spent on nothing."""
        return (self.positions - self.seen) / self.positions if self.positions else 0.0

    def attach(self, model: Any) -> Any:
        """Start counting the batches ``model`` runs; returns the hook handle (call ``.remove()`` when done)."""
        return model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        labels = kwargs.get("labels")
        if ids is not None:
            self.positions += int(ids.numel())
        if mask is not None:
            self.seen += int(mask.sum().item())
        elif ids is not None:  # padding-free batches carry no attention mask: every token is real
            self.seen += int(ids.numel())
        if labels is not None:
            self.trained += int((labels != IGNORE_INDEX).sum().item())


class RichProgress(TrainerCallback):
    """A rich progress bar for a transformers/TRL trainer: steps, latest loss, tokens/s and ETA, on stderr."""

    def __init__(self, tally: TokenTally, *, description: str = "training") -> None:
        self.tally = tally
        self.description = description
        self._progress: Any = None
        self._task: Any = None
        self._start = 0.0
        self._loss: float | None = None
        self._eval_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=state.max_steps, stats="")
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step, stats=self._stats())

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self._loss = float(logs["loss"])
        if "eval_loss" in logs:
            self._eval_loss = float(logs["eval_loss"])
        if self._progress is not None:
            self._progress.update(self._task, stats=self._stats())

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step, stats=self._stats())
            self._progress.stop()
            self._progress = None

    def _stats(self) -> str:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        parts = []
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4f}")
        if self._eval_loss is not None:
            parts.append(f"eval {self._eval_loss:.4f}")
        parts.append(f"{self.tally.seen / elapsed:,.0f} tok/s")
        return "  ".join(parts)
