"""Training: base models (hub id, local folder, or the `tiny` preset), chat rendering through the model's real
chat template, and loss masks.

    from instil.train import ChatRenderer, load_model, load_tokenizer, tokenize_example
    renderer = ChatRenderer(load_tokenizer("path/to/model"))
    tokenize_example(renderer, example).labels
"""

from __future__ import annotations

from instil.train.chat import (
    BUILTIN_TEMPLATES,
    CHATML_TEMPLATE,
    ChatRenderer,
    ChatTemplateError,
    Rendering,
    TurnSpan,
)
from instil.train.masking import (
    IGNORE_INDEX,
    TokenizedExample,
    mask_preview,
    tokenize_example,
    trained_segments,
)
from instil.train.models import (
    ModelInfo,
    load_model,
    load_tokenizer,
    model_info,
    resolve_base,
)
from instil.train.plan import TrainPlan
from instil.train.record import TrainMetrics
from instil.train.settings import Setting
from instil.train.sft import TrainResult, train_sft
from instil.train.tiny import TINY_NOTICE, build_tiny

__all__ = [
    "BUILTIN_TEMPLATES",
    "CHATML_TEMPLATE",
    "IGNORE_INDEX",
    "TINY_NOTICE",
    "ChatRenderer",
    "ChatTemplateError",
    "ModelInfo",
    "Rendering",
    "Setting",
    "TokenizedExample",
    "TrainMetrics",
    "TrainPlan",
    "TrainResult",
    "TurnSpan",
    "build_tiny",
    "load_model",
    "load_tokenizer",
    "mask_preview",
    "model_info",
    "resolve_base",
    "tokenize_example",
    "train_sft",
    "trained_segments",
]
