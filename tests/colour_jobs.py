"""The colour desk: the small job that the eval, registry and serve tests each build (with their own rows and spec).

Item ``i`` has the colour ``COLORS[i % 4]`` and the input ``ticket(i)`` ("lantern12 orchid40 ...: colour of item 7?");
``PROMPT`` is the job's system prompt.
"""

from __future__ import annotations

COLORS = ["red", "green", "blue", "yellow"]
PROMPT = "You are the colour desk. Answer with one colour name, lower case, nothing else, ever."
"""The job's (long) system prompt; its short prompt is ``Name the colour.``"""

SPEC_HEAD = f"""name: colors
system_prompt: {PROMPT}
short_prompt: Name the colour.
graders:
  - {{name: em, type: exact_match, primary: true}}
  - {{name: short, type: length, max_chars: 8}}
data:
  - {{path: train.jsonl}}
  - {{path: holdout.jsonl, role: holdout}}
model: {{base: tiny}}
"""
"""The spec up to its training settings: name, prompts, graders (``em`` primary), ``train.jsonl`` and the holdout
``holdout.jsonl`` beside it, and the tiny base."""

WORDS = [
    "lantern",
    "orchid",
    "quartz",
    "meadow",
    "harbor",
    "pepper",
    "violin",
    "glacier",
    "saddle",
    "thimble",
    "canyon",
    "biscuit",
    "marble",
    "falcon",
    "juniper",
    "rocket",
]


def words(i: int) -> str:
    """Five numbered words for item ``i``, unlike any other item's: inputs that curation keeps apart (no training
    example counts as a near-duplicate of a holdout one)."""
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] + str((i * 31 + k * 17) % 97) for k in range(5))


def ticket(i: int) -> str:
    """The input of item ``i``; it ends in the item's number (``...: colour of item 101?``)."""
    return f"{words(i)}: colour of item {i}?"


def chat_rows(items: range, answer=lambda i: "red") -> str:
    """JSONL chat examples for ``items``: the prompt, ``ticket(i)``, and ``answer(i)`` (id ``c<i>``)."""
    import json

    from instil.data.records import Example, Message

    return "".join(
        json.dumps(
            Example(
                [Message("system", PROMPT), Message("user", ticket(i)), Message("assistant", answer(i))], id=f"c{i}"
            ).to_dict()
        )
        + "\n"
        for i in items
    )
