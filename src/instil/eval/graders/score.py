"""What every grader shares: the :class:`Score` it returns, the :class:`Output` it reads, and a few parsing helpers.

    score = grader.grade(example, "the model's answer")     # -> Score(value, passed, reason, details)

A grader never raises on bad *output* (not JSON, a wrong label, None): it returns a failing score whose ``reason``
says why. It raises :class:`GraderError` when the grader itself is broken (a judge endpoint down after retries, a
user function that crashes), and :class:`~instil.errors.DataError` when the *reference* is unusable, because a
silent zero there would be a lie about the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from instil.data.records import Example, Message
from instil.errors import DataError, GraderError

__all__ = [
    "MISSING",
    "NO_OUTPUT",
    "Grader",
    "GraderError",
    "Output",
    "Score",
    "as_output",
    "failed",
    "get_path",
    "parse_json",
    "reference_json",
    "scored",
]


@dataclass(frozen=True)
class Score:
    """One grader's verdict on one output."""

    value: float
    """The score, from 0 (worst) to 1 (best)."""
    passed: bool
    """Whether the output meets the grader's pass rule (``value >= threshold``; never for malformed output)."""
    reason: str | None = None
    """Why the output lost points, such as ``not JSON: Expecting ',' delimiter at line 1 column 17``."""
    details: dict[str, Any] = field(default_factory=dict)
    """Grader-specific facts (per-field tp/fp/fn, the predicted and reference label); aggregates read these."""


def scored(value: float, threshold: float, reason: str | None = None, details: dict[str, Any] | None = None) -> Score:
    """A score whose pass rule is ``value >= threshold``; ``reason`` is kept only when points were lost."""
    if math.isnan(value):
        raise ValueError("a score cannot be NaN")
    value = min(1.0, max(0.0, float(value)))
    return Score(value, value >= threshold, reason if value < 1.0 else None, details or {})


def failed(reason: str, details: dict[str, Any] | None = None) -> Score:
    """A zero score for malformed output: it fails whatever the threshold (even 0)."""
    return Score(0.0, False, reason, details or {})


@dataclass(frozen=True)
class Output:
    """What a model produced: its text and, when it called tools, the calls (OpenAI ``tool_calls`` dicts)."""

    text: str
    """The text, in the form :meth:`instil.data.records.Message.text` gives (tool calls as canonical JSON after
    the content), so that an output compares with its reference like for like."""
    tool_calls: list[dict[str, Any]] | None = None
    """The tool calls, as the model returned them (arguments are JSON strings in OpenAI's shape)."""


def as_output(output: Output | Message | dict | str | None) -> Output | None:
    """Read what a caller passes as a model output; None stays None (graders fail it with a reason)."""
    if output is None or isinstance(output, Output):
        return output
    if isinstance(output, str):
        return Output(output)
    if isinstance(output, dict):
        if "role" not in output:
            raise TypeError(f"an output dict must be a chat message with a 'role'; got keys {sorted(output)}")
        output = Message.from_dict(output)
    if isinstance(output, Message):
        return Output(output.text(), output.tool_calls)
    # Passing an int or a list is a bug in the caller, not something a model produced.
    raise TypeError(f"a model output is a str, an Output or an assistant Message, not {type(output).__name__}")


NO_OUTPUT = "no output (the model returned None)"


@runtime_checkable
class Grader(Protocol):
    """What evaluation and the RL reward need from a grader."""

    name: str
    threshold: float
    primary: bool

    def grade(self, example: Example, output: Output | Message | str | None) -> Score: ...


# ---- JSON helpers shared by the structured graders -------------------------------------------------------------------
def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> tuple[Any, str | None]:
    """Parse strict JSON (no NaN or Infinity). Returns ``(value, None)``, or ``(None, reason)`` when it is not JSON."""
    if not text.strip():
        return None, "not JSON: the output is empty"
    try:
        return json.loads(text, parse_constant=_no_constants), None
    except json.JSONDecodeError as e:
        return None, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except ValueError as e:
        return None, f"not JSON: {e}"
    except RecursionError:
        return None, "not JSON: nested too deeply to parse"


def reference_json(example: Example, grader: str) -> Any:
    """The example's reference output as parsed JSON; a reference that is not JSON is a data problem."""
    value, reason = parse_json(example.output_text())
    if reason is not None:
        raise DataError(
            f"example {example.key()} ({example.source or 'no source'}): grader '{grader}' needs a JSON reference "
            f"output, but it is {reason}. Fix the example's last assistant message, or use a text grader."
        )
    return value


MISSING: Any = object()
"""What :func:`get_path` returns for a path that is absent (None is a JSON value: ``null``)."""


def get_path(value: Any, path: str) -> Any:
    """The value at a dotted path (``a.b.c``) of parsed JSON, or :data:`MISSING` when a step is absent."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value
