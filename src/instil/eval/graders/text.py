"""Graders that read the output as text: exact match, contains / not-contains, regex, numeric tolerance, length.

    ExactMatch("answer", normalize=("strip", "lower")).grade(example, "  Paris ")   # Score(1.0, passed=True)
    Numeric("total", tolerance=0.01, relative=True).grade(example, "about 1,204.5 EUR")

Each is a frozen dataclass with ``name``, ``threshold``, ``primary`` and its own fields (the same as the spec's), and
one ``grade(example, output) -> Score``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from instil.data.records import Example, canonical_json
from instil.errors import DataError
from instil.eval.graders.score import (
    MISSING,
    NO_OUTPUT,
    Score,
    as_output,
    failed,
    get_path,
    parse_json,
    reference_json,
    scored,
)

__all__ = ["Contains", "ExactMatch", "Length", "Numeric", "Regex"]

_WS = re.compile(r"\s+")


def _normalize(text: str, steps: tuple[str, ...]) -> str:
    # A fixed order whatever the spec lists, so ["strip", "lower"] and ["lower", "strip"] agree.
    if "lower" in steps:
        text = text.casefold()
    if "punctuation" in steps:
        text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    if "whitespace" in steps:
        text = _WS.sub(" ", text)
    if "strip" in steps or "whitespace" in steps:
        text = text.strip()
    return text


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"differs from the reference at character {i}: got {a[i : i + 30]!r}, expected {b[i : i + 30]!r}"


@dataclass(frozen=True)
class ExactMatch:
    """The output equals the reference, after the chosen normalisations."""

    name: str
    """The grader's name, used in reports."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    normalize: tuple[str, ...] = ("strip",)
    """``strip``, ``lower`` (case-folded), ``whitespace`` (runs collapsed), ``punctuation`` (removed), ``json``
    (compare parsed JSON values: key order and spacing do not matter)."""

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        reference = example.output_text()
        if "json" in self.normalize:
            ref_value = reference_json(example, self.name)
            value, reason = parse_json(out.text)
            if reason is not None:
                return failed(reason)
            got, want = canonical_json(value), canonical_json(ref_value)
        else:
            got, want = _normalize(out.text, self.normalize), _normalize(reference, self.normalize)
        if got == want:
            return scored(1.0, self.threshold)
        return scored(0.0, self.threshold, _first_difference(got, want))


@dataclass(frozen=True)
class Contains:
    """The output contains every given string (or, with ``negate``, none of them); the value is the share met."""

    name: str
    """The grader's name, used in reports."""
    values: tuple[str, ...]
    """The strings to look for."""
    threshold: float = 1.0
    """The pass rule: value >= threshold (1.0: every string)."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    case_sensitive: bool = False
    """Match case exactly."""
    negate: bool = False
    """``not_contains``: the output must contain none of the strings."""

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        text = out.text if self.case_sensitive else out.text.casefold()
        found = [v for v in self.values if (v if self.case_sensitive else v.casefold()) in text]
        if self.negate:
            value = 1.0 - len(found) / len(self.values) if self.values else 1.0
            reason = f"contains {found}" if found else None
        else:
            missing = [v for v in self.values if v not in found]
            value = 1.0 - len(missing) / len(self.values) if self.values else 1.0
            reason = f"missing {missing}" if missing else None
        return scored(value, self.threshold, reason, {"found": found})


@dataclass(frozen=True)
class Regex:
    """The output matches a regular expression (anywhere, or the whole output with ``full_match``)."""

    name: str
    """The grader's name, used in reports."""
    pattern: str
    """A Python regular expression."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    full_match: bool = False
    """Require the whole output to match."""

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        # re keeps compiled patterns in its own cache, so a frozen dataclass need not hold one.
        match = re.fullmatch(self.pattern, out.text) if self.full_match else re.search(self.pattern, out.text)
        if match is None:
            how = "does not match" if self.full_match else "has no match for"
            return scored(0.0, self.threshold, f"the output {how} /{self.pattern}/")
        return scored(1.0, self.threshold, details={"match": match.group(0)[:200]})


# A number as people and models write it: optional sign, thousands commas, decimals, exponent.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _read_number(value: Any) -> float | None:
    """A finite number from a JSON number, or from text: the whole text, else the last number in it."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    found = [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    candidates = [text, *reversed(found)]
    for c in candidates:
        try:
            number = float(c.replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(number):
            return number
    return None


@dataclass(frozen=True)
class Numeric:
    """A number in the output is within ``tolerance`` of the reference's.

    Without ``field`` the number is the whole output, or else the last number written in it (``The total is 42.``);
    with ``field`` it is the value at that dotted path of the JSON output (a number or a numeric string).
    """

    name: str
    """The grader's name, used in reports."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    field: str | None = None
    """Dotted path of the number inside a JSON output."""
    tolerance: float = 0.0
    """Allowed absolute difference, or a fraction of the reference with ``relative``."""
    relative: bool = False
    """Read ``tolerance`` as a fraction of the reference's magnitude."""

    def _number(self, text: str) -> tuple[float | None, str | None]:
        if self.field is None:
            number = _read_number(text)
            return number, None if number is not None else f"no number in the output {text[:60]!r}"
        parsed, reason = parse_json(text)
        if reason is not None:
            return None, reason
        value = get_path(parsed, self.field)
        if value is MISSING:
            return None, f"field '{self.field}' is missing"
        number = _read_number(value)
        return number, None if number is not None else f"field '{self.field}' is not a number: {value!r:.60}"

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        reference, why = self._number(example.output_text())
        if reference is None:
            raise DataError(
                f"example {example.key()} ({example.source or 'no source'}): grader '{self.name}' found "
                f"no reference number: {why}. Fix the example's last assistant message."
            )
        got, reason = self._number(out.text)
        if got is None:
            return failed(reason or "no number", {"reference": reference})
        difference = abs(got - reference)
        allowed = self.tolerance * abs(reference) if self.relative else self.tolerance
        details = {"output": got, "reference": reference, "difference": difference}
        if difference <= allowed + 1e-12 * max(1.0, abs(reference)):  # float noise is not an error
            return scored(1.0, self.threshold, details=details)
        return scored(
            0.0,
            self.threshold,
            f"{got:g} is {difference:g} from the reference {reference:g} (allowed {allowed:g})",
            details,
        )


@dataclass(frozen=True)
class Length:
    """The output's length in characters and words (whitespace-separated) is within bounds."""

    name: str
    """The grader's name, used in reports."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    min_chars: int | None = None
    """Fewest characters allowed."""
    max_chars: int | None = None
    """Most characters allowed."""
    min_words: int | None = None
    """Fewest words allowed."""
    max_words: int | None = None
    """Most words allowed."""

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        chars, words = len(out.text), len(out.text.split())
        problems = []
        if self.min_chars is not None and chars < self.min_chars:
            problems.append(f"{chars} characters, fewer than min_chars {self.min_chars}")
        if self.max_chars is not None and chars > self.max_chars:
            problems.append(f"{chars} characters, more than max_chars {self.max_chars}")
        if self.min_words is not None and words < self.min_words:
            problems.append(f"{words} words, fewer than min_words {self.min_words}")
        if self.max_words is not None and words > self.max_words:
            problems.append(f"{words} words, more than max_words {self.max_words}")
        details = {"chars": chars, "words": words}
        return scored(0.0 if problems else 1.0, self.threshold, "; ".join(problems) or None, details)
