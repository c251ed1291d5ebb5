"""The settings of an SFT run, each resolved from the spec, ``training.trl``, an argument, the data or a default.

    s = {"max_length": resolve_max_length(spec, longest=812, context=2048)}
    s.update(resolve_settings(spec, n_train=900, n_val=100, tiny=False, cuda=True, max_steps=None, dtype="auto"))
    s["epochs"].value, s["epochs"].source, s["epochs"].why   # 4, "data", "about 3000 examples seen, 900 training rows"
    train_idx, val_idx = validation_split(1000, seed=0)      # the validation slice of the training split

The defaults (every one overridable, and shown with its source by ``instil train``): ``max_length`` = the longest
example, capped at the model's context; ``epochs`` = about 3,000 examples seen (between 1 and 10 passes); learning
rate by adapter (LoRA/QLoRA 2e-4, full 2e-5, or 1e-3 for a random ``tiny`` model, prompt tuning 3e-2); a validation
slice of the *training* split (10%, at least 1, at most 200; only with 10 or more examples) with early stopping on
its loss (patience 3 evaluations, about 10 evaluations a run); length-sorted batches on CPU, where padding costs
the most. :func:`instil.train.sft.build_trainer` passes them to TRL's ``SFTConfig``, ``training.trl`` last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from instil.env import cuda_available
from instil.spec import JobSpec

__all__ = ["Setting", "resolve_max_length", "resolve_settings", "validation_split"]

LEARNING_RATES = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "prompt_tuning": 3e-2}
"""Default peak learning rate by adapter, for a pretrained base."""
TINY_LEARNING_RATE = 1e-3
"""Default for full fine-tuning of the random ``tiny`` model, which learns from scratch."""
EXAMPLES_SEEN = 3000
"""The default number of epochs aims at about this many examples seen..."""
MAX_EPOCHS = 10
"""...in at most this many passes (small data), and at least one."""
VALIDATION_FRACTION, MIN_FOR_VALIDATION, MAX_VALIDATION = 0.1, 10, 200
"""The validation slice: 10% of the training examples, only with 10 or more of them, at most 200."""
EARLY_STOPPING_PATIENCE = 3
"""Stop after this many evaluations without a better validation loss."""
EVALUATIONS_PER_RUN = 10
"""How many times the validation loss is measured over a run (when nothing sets ``eval_steps``)."""
LOG_POINTS = 200
"""About how many training-loss points the loss history keeps."""
CHECKPOINTS_PER_RUN = 10
"""How many checkpoints a run without validation writes (with validation: one at every evaluation)."""


@dataclass(frozen=True)
class Setting:
    """One resolved training setting and where its value came from."""

    value: Any
    """The value used."""
    source: str
    """``spec`` (the job spec's own field), ``trl`` (``training.trl``), ``argument`` (passed to the API), ``data``
    (derived from the examples or the model) or ``default`` (instil's default)."""
    why: str = ""
    """For a derived value, how it was derived."""


def resolve_max_length(spec: JobSpec, *, longest: int, context: int | None) -> Setting:
    """The spec's ``model.max_length``, else the longest example (in tokens) capped at the model's context."""
    if spec.model.max_length is not None:
        return Setting(spec.model.max_length, "spec")
    if context is not None and longest > context:
        return Setting(context, "data", f"longest example has {longest} tokens: capped at the context")
    return Setting(longest, "data", "the longest example")


def validation_split(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Indexes of (train, validation) rows: a seeded random slice of the training split."""
    if n < MIN_FOR_VALIDATION:
        return list(range(n)), []
    k = min(MAX_VALIDATION, max(1, round(n * VALIDATION_FRACTION)))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(int(i) for i in order[:k])
    taken = set(val)
    return [i for i in range(n) if i not in taken], val


def resolve_settings(
    spec: JobSpec, *, n_train: int, n_val: int, tiny: bool, cuda: bool, max_steps: int | None, dtype: str
) -> dict[str, Setting]:
    """Every setting besides max_length: the spec's value when given, else a default from the data."""
    t, trl = spec.training, spec.training.trl
    s: dict[str, Setting] = {"adapter": Setting(t.adapter, "spec")}
    if t.epochs is not None:
        s["epochs"] = Setting(t.epochs, "spec")
    else:
        epochs = min(MAX_EPOCHS, max(1, math.ceil(EXAMPLES_SEEN / n_train)))
        s["epochs"] = Setting(epochs, "data", f"about {EXAMPLES_SEEN} examples seen, {n_train} training rows")
    if t.learning_rate is not None:
        s["learning_rate"] = Setting(t.learning_rate, "spec")
    elif tiny and t.adapter == "full":
        s["learning_rate"] = Setting(TINY_LEARNING_RATE, "default", "the random tiny model learns from scratch")
    else:
        s["learning_rate"] = Setting(LEARNING_RATES[t.adapter], "default", f"for adapter {t.adapter}")
    s["batch_size"] = Setting(t.batch_size, "spec")
    s["seed"] = Setting(t.seed, "spec")
    if t.adapter in ("lora", "qlora"):
        for name in ("r", "alpha", "dropout", "target_modules"):
            s[f"lora_{name}"] = Setting(getattr(t.lora, name), "spec")
    if t.adapter == "prompt_tuning":
        s["num_virtual_tokens"] = Setting(t.num_virtual_tokens, "spec")
    s["system_prompt"] = Setting(
        "short_prompt" if spec.short_prompt is not None else "none",
        "spec",
        "the tuned model runs with the spec's short_prompt"
        if spec.short_prompt is not None
        else "no short_prompt: system messages are dropped",
    )
    s["train_rows"] = Setting(n_train, "data")
    s["validation_rows"] = Setting(
        n_val,
        "default",
        f"{VALIDATION_FRACTION:.0%} of the training split, at most {MAX_VALIDATION}"
        if n_val
        else f"fewer than {MIN_FOR_VALIDATION} examples: no validation, no early stopping",
    )
    s["dtype"] = Setting(dtype, "default", "the checkpoint's own dtype on GPU, float32 on CPU")

    def pick(name: str, value: Any, why: str) -> None:
        s[name] = Setting(trl[name], "trl") if name in trl else Setting(value, "default", why)

    if max_steps is not None:
        s["max_steps"] = Setting(max_steps, "argument")
    else:
        pick("max_steps", -1, "-1: run the epochs")
    accumulation = trl.get("gradient_accumulation_steps", 1)
    per_epoch = math.ceil(n_train / (t.batch_size * accumulation))
    planned = s["max_steps"].value if s["max_steps"].value > 0 else math.ceil(per_epoch * s["epochs"].value)
    pick("gradient_accumulation_steps", 1, "")
    pick("logging_steps", max(1, planned // LOG_POINTS), f"about {LOG_POINTS} loss points over {planned} steps")
    if n_val:
        pick(
            "eval_steps",
            max(1, math.ceil(planned / EVALUATIONS_PER_RUN)),
            f"{EVALUATIONS_PER_RUN} evaluations a run",
        )
        s["early_stopping_patience"] = Setting(EARLY_STOPPING_PATIENCE, "default", "evaluations without improvement")
    pick(
        "save_steps",
        s["eval_steps"].value if n_val else max(1, math.ceil(planned / CHECKPOINTS_PER_RUN)),
        "at every evaluation (the best model is loaded from a saved step)"
        if n_val
        else f"{CHECKPOINTS_PER_RUN} checkpoints a run, to resume from",
    )
    pick(
        "train_sampling_strategy",
        "random" if cuda else "group_by_length",
        "length buckets (instil's sampler) cut padding on CPU" if not cuda else "random order on GPU",
    )
    pick("bf16", cuda and _bf16_ok(), "bf16 mixed precision where the GPU supports it")
    pick("gradient_checkpointing", cuda, "saves GPU memory; off on CPU, where it only costs time")
    return s


def _bf16_ok() -> bool:
    import torch

    return cuda_available() and bool(torch.cuda.is_bf16_supported())
