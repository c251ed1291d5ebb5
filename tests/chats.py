"""The two-turn chat that the chat-rendering and loss-masking tests render: it trains ``Paris.`` and ``Berlin.``."""

from __future__ import annotations

from instil.data.records import Example


def chat(first_weight: int | None = None, system: str = "You are terse.") -> Example:
    """A system message and two questions, each answered; ``first_weight`` (when given) weights the first answer."""
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Germany?"},
        {"role": "assistant", "content": "Berlin."},
    ]
    if first_weight is not None:
        messages[2]["weight"] = first_weight
    return Example.from_dict({"messages": messages})
