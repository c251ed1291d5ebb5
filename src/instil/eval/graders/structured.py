"""Graders for JSON outputs: JSON validity, JSON Schema validity, and field-level precision / recall / F1.

    JsonSchema("schema", schema={...}).grade(example, '{"category": "billing"}')
    FieldF1("fields", fields=("category", "items[]")).grade(example, output).details["fields"]   # per-field tp/fp/fn

Field F1 flattens both JSON values into leaves keyed by path (``a.b``; a list adds ``[]``, so ``items[].sku``) and
compares them as multisets: list order does not matter, repeats do. Strings are compared stripped and case-folded,
numbers by value (``1 == 1.0``), and types are never mixed (``"1"``, ``1`` and ``true`` all differ).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from instil.data.records import Example
from instil.eval.graders.score import NO_OUTPUT, Score, as_output, failed, parse_json, reference_json, scored

__all__ = ["FieldF1", "JsonSchema", "JsonValid", "flatten_json"]


@dataclass(frozen=True)
class JsonValid:
    """The output parses as strict JSON (no NaN, no trailing text, no code fences)."""

    name: str
    """The grader's name, used in reports."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        _, reason = parse_json(out.text)
        return failed(reason) if reason is not None else scored(1.0, self.threshold)


def _json_path(path: Any) -> str:
    s = "$"
    for part in path:
        s += f"[{part}]" if isinstance(part, int) else f".{part}"
    return s


@dataclass(frozen=True)
class JsonSchema:
    """The output is JSON that fits a JSON Schema (the grader's own, or the spec's ``output.schema``)."""

    name: str
    """The grader's name, used in reports."""
    schema: dict[str, Any]
    """The JSON Schema (any draft ``jsonschema`` knows; ``$schema`` picks it, else the latest)."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""

    def grade(self, example: Example, output: Any) -> Score:
        from jsonschema import validators

        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        value, reason = parse_json(out.text)
        if reason is not None:
            return failed(reason)
        validator = validators.validator_for(self.schema)(self.schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: (list(e.absolute_path), e.message))
        if not errors:
            return scored(1.0, self.threshold)
        listed = [f"at {_json_path(e.absolute_path)}: {e.message[:200]}" for e in errors[:10]]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return failed(f"does not fit the schema: {listed[0]}{more}", {"errors": listed, "error_count": len(errors)})


# ---- field F1 --------------------------------------------------------------------------------------------------------
def _leaf(value: Any) -> tuple[str, Any]:
    # Tagged so that Python's True == 1 == 1.0 does not make a boolean match a number.
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        return ("string", value.strip().casefold())
    if value is None:
        return ("null", None)
    return ("empty", "[]" if isinstance(value, list) else "{}")


def flatten_json(value: Any, prefix: str = "") -> Counter[tuple[str, tuple[str, Any]]]:
    """The leaves of a JSON value as a multiset of ``(path, normalised leaf)``; empty lists and objects are leaves.

    ``{"a": {"b": 1}, "tags": ["x", "x"]}`` gives ``{("a.b", ("number", 1.0)): 1, ("tags[]", ("string", "x")): 2}``.
    """
    leaves: Counter[tuple[str, tuple[str, Any]]] = Counter()
    stack = [(prefix, value)]
    # Iterative, so that deeply nested (but valid) output cannot exhaust the recursion limit.
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict) and v:
            stack.extend((f"{path}.{k}" if path else str(k), item) for k, item in v.items())
        elif isinstance(v, list) and v:
            stack.extend((f"{path}[]", item) for item in v)
        else:
            leaves[(path, _leaf(v))] += 1
    return leaves


def _in_field(path: str, field: str) -> bool:
    return path == field or path.startswith(field + ".") or path.startswith(field + "[]")


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    # Nothing predicted and nothing expected is a perfect answer, not 0/0.
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class FieldF1:
    """Field-level precision, recall and F1 of the output JSON against the reference JSON (see the module doc)."""

    name: str
    """The grader's name, used in reports."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    fields: tuple[str, ...] | None = None
    """Paths to compare (``a.b``, ``items[]``, ``items[].sku``), each with everything below it; all when None."""
    metric: str = "f1"
    """Which is the score: ``f1``, ``precision`` or ``recall``."""

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        reference = flatten_json(reference_json(example, self.name))
        value, reason = parse_json(out.text)
        if reason is not None:
            return failed(reason)
        predicted = flatten_json(value)
        groups = (
            self.fields if self.fields is not None else sorted({p for p, _ in reference} | {p for p, _ in predicted})
        )
        per_field: dict[str, dict[str, int]] = {}
        for group in groups:
            ref = Counter({k: n for k, n in reference.items() if _in_field(k[0], group)})
            pred = Counter({k: n for k, n in predicted.items() if _in_field(k[0], group)})
            tp = sum((ref & pred).values())
            per_field[group] = {"tp": tp, "fp": sum(pred.values()) - tp, "fn": sum(ref.values()) - tp}
        tp = sum(c["tp"] for c in per_field.values())
        fp = sum(c["fp"] for c in per_field.values())
        fn = sum(c["fn"] for c in per_field.values())
        precision, recall, f1 = _prf(tp, fp, fn)
        score = {"f1": f1, "precision": precision, "recall": recall}[self.metric]
        wrong = [g for g, c in per_field.items() if c["fp"] or c["fn"]]
        reason = f"fields that differ from the reference: {wrong[:10]}" if wrong else None
        details = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "fields": per_field,
        }
        return scored(score, self.threshold, reason, details)
