"""Tool-call match: the output calls the same tools as the reference, with the same (parsed JSON) arguments.

    ToolCallMatch("calls").grade(example, Message(role="assistant", tool_calls=[...]))

The value is matched calls / max(reference calls, output calls): one right call of two is 0.5, and an extra call
costs as much as a missing one. Calls match as a multiset unless ``order_matters``, then position by position.
Arguments are compared as parsed JSON, so key order and spacing do not matter but types do (``"1"`` is not ``1``).
An output given as plain text counts when the text is the calls as JSON (a list of calls, one call, or
``{"tool_calls": [...]}``), which is how a model trained on instil's canonical text form answers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from instil.data.records import Example
from instil.errors import DataError
from instil.eval.graders.score import NO_OUTPUT, Output, Score, as_output, failed, parse_json, scored

__all__ = ["ToolCallMatch", "read_tool_calls"]

_INVALID_ARGS = ("invalid",)


def _freeze(value: Any) -> Any:
    """A hashable form of parsed JSON in which booleans, numbers and strings never compare equal to each other."""
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("array", tuple(_freeze(v) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return (type(value).__name__, value)


def _one_call(call: Any) -> tuple[str, Any, str | None]:
    """``(name, frozen arguments, problem)`` of one call in OpenAI's shape (or the flat ``{name, arguments}``)."""
    if not isinstance(call, dict):
        return "", _INVALID_ARGS, f"a tool call must be an object, not {type(call).__name__}"
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        return "", _INVALID_ARGS, "a tool call has no function name"
    name, args = fn["name"], fn.get("arguments", {})
    if isinstance(args, str):
        parsed, reason = parse_json(args) if args.strip() else ({}, None)
        if reason is not None:
            return name, _INVALID_ARGS, f"{name}: arguments are {reason}"
        args = parsed
    if not isinstance(args, dict):
        return name, _INVALID_ARGS, f"{name}: arguments must be a JSON object, not {type(args).__name__}"
    return name, _freeze(args), None


def read_tool_calls(output: Output) -> tuple[list[tuple[str, Any]], list[str], str | None]:
    """The calls of an output as ``(name, frozen arguments)``, the problems found in them, and a reason when the
    output holds no readable calls at all."""
    calls: Any = output.tool_calls
    if calls is None:
        text = output.text.strip()
        if not text:
            return [], [], None
        calls, reason = parse_json(text)
        if reason is not None:
            return [], [], f"no tool calls, and the text is {reason}"
        if isinstance(calls, dict):
            calls = calls.get("tool_calls", [calls]) if "tool_calls" in calls else [calls]
        if not isinstance(calls, list):
            return [], [], f"no tool calls, and the text is a JSON {type(calls).__name__}"
    read = [_one_call(c) for c in calls]
    return [(n, a) for n, a, _ in read], [p for _, _, p in read if p], None


@dataclass(frozen=True)
class ToolCallMatch:
    """The output's tool calls match the reference's (names, and arguments with ``check_arguments``)."""

    name: str
    """The grader's name, used in reports."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    check_arguments: bool = True
    """Compare the arguments, not only the tool names."""
    order_matters: bool = False
    """Require the calls in the reference's order."""

    def grade(self, example: Example, output: Any) -> Score:
        ref_msg = example.output_message()
        reference, problems, reason = read_tool_calls(as_output(ref_msg) if ref_msg else Output(""))
        if problems or reason is not None:
            raise DataError(
                f"example {example.key()} ({example.source or 'no source'}): grader '{self.name}' cannot "
                f"read the reference tool calls: {reason or problems[0]}. Fix the example."
            )
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        predicted, problems, reason = read_tool_calls(out)
        if reason is not None:
            return failed(reason)

        def key(call: tuple[str, Any]) -> Any:
            return call if self.check_arguments else call[0]

        # A call with unreadable arguments carries _INVALID_ARGS, which no reference call has: it never matches.
        if self.order_matters:
            matched = sum(key(r) == key(p) for r, p in zip(reference, predicted, strict=False))
        else:
            matched = sum((Counter(map(key, reference)) & Counter(map(key, predicted))).values())
        total = max(len(reference), len(predicted))
        value = matched / total if total else 1.0
        details = {
            "matched": matched,
            "reference_calls": [n for n, _ in reference],
            "output_calls": [n for n, _ in predicted],
            "problems": problems,
        }
        reason = None
        if value < 1.0:
            reason = f"{matched} of {len(reference)} reference call(s) matched by {len(predicted)} output call(s)"
            if problems:
                reason += f"; {problems[0]}"
        return scored(value, self.threshold, reason, details)
