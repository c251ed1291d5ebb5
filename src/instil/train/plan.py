"""What a training method prepares before it trains, and the spine of checkpoints and records reads.

plan = prepare_sft(spec, store)      # instil.train.sft; dpo and grpo prepare the same shape
plan.settings["learning_rate"].value, plan.dataset.ref, plan.config()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from instil.spec import JobSpec
from instil.store import DatasetVersion
from instil.train.chat import ChatRenderer
from instil.train.models import ModelInfo
from instil.train.settings import Setting

__all__ = ["TrainPlan"]


@dataclass
class TrainPlan:
    """Everything prepared before training: data, model, tokenized rows and resolved settings.

    Shared by the training methods: each prepares its own rows (``input_ids`` and ``labels`` for SFT), and the
    checkpoint and record spine (:mod:`instil.train.checkpoints`, :mod:`instil.train.record`) reads the rest."""

    spec: JobSpec
    dataset: DatasetVersion
    """The ``<job>:train`` version trained on."""
    model: Any
    """The loaded base model (not yet wrapped by PEFT)."""
    tokenizer: Any
    renderer: ChatRenderer
    info: ModelInfo
    train_rows: list[dict[str, list[int]]]
    """Pre-tokenized training rows; for SFT ``input_ids`` and ``labels`` (-100 outside the trained turns)."""
    eval_rows: list[dict[str, list[int]]]
    """The validation slice, taken from the training split (never the holdout)."""
    settings: dict[str, Setting]
    dropped: list[str] = field(default_factory=list)
    """Keys of examples left out because nothing trainable was left after truncation."""

    def config(self) -> dict[str, Any]:
        """The resolved settings as JSON, recorded as the run's config."""
        return {
            "settings": {k: {"value": s.value, "source": s.source, "why": s.why} for k, s in self.settings.items()},
            "dataset": {"ref": self.dataset.ref, "sha256": self.dataset.sha256},
            "base_model": self.info.to_dict(),
        }
