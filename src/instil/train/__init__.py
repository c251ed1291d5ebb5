"""Training: chat rendering through the model's real chat template, and loss masks.

from instil.train import ChatRenderer, tokenize_example
renderer = ChatRenderer(tokenizer)
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

__all__ = [
    "BUILTIN_TEMPLATES",
    "CHATML_TEMPLATE",
    "IGNORE_INDEX",
    "ChatRenderer",
    "ChatTemplateError",
    "Rendering",
    "TokenizedExample",
    "TurnSpan",
    "mask_preview",
    "tokenize_example",
    "trained_segments",
]
