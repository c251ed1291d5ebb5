"""LLM judges through any OpenAI-compatible endpoint: a rubric score, and a pairwise preference.

    judge = LlmJudge("helpful", rubric="Answers the question.", base_url="http://127.0.0.1:8000/v1", model="m")
    judge.grade(example, output)            # the judge's 1..scale score mapped to 0..1
    pair = PairwiseJudge("pref", rubric="More helpful wins.", base_url=..., model=...)
    pair.compare(example, output_a, output_b)   # share of the two verdicts A won; grade() plays against the reference
    pair.aggregate(scores)                  # win rate, wins, ties, losses

The judge answers a JSON verdict (``{"score": 4, "reason": ...}`` or ``{"winner": "A", "reason": ...}``). The
``openai`` client retries connection errors, timeouts, 429 and 5xx with exponential backoff (``max_retries``). A judge
still unreachable after them, answering an HTTP error, or answering something that is not a verdict is a broken
grader: :class:`GraderError`, never a silent failing score. The pairwise judge asks twice with the answers swapped, so
a judge that always prefers the first position scores a tie instead of a win.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from instil.data.records import Example
from instil.errors import DependencyError
from instil.eval.graders.score import NO_OUTPUT, GraderError, Output, Score, as_output, failed, scored

__all__ = ["LlmJudge", "PairwiseJudge"]

JUDGE_SYSTEM = (
    "You grade one candidate answer against a rubric. You are given the rubric, the task input, a reference answer "
    "known to be good, and the candidate answer. Reply with one JSON object and nothing else: "
    '{{"score": <an integer from 1 to {scale}>, "reason": "<one sentence>"}}. '
    "{scale} means the candidate fully meets the rubric; 1 means it does not meet it at all."
)
PAIRWISE_SYSTEM = (
    "You compare two answers to the same task input by a rubric. Reply with one JSON object and nothing else: "
    '{"winner": "A" or "B" or "tie", "reason": "<one sentence>"}.'
)


def _require_openai() -> None:
    try:
        import openai  # noqa: F401
    except ImportError:
        raise DependencyError("LLM judges need the openai package", hint="pip install openai") from None


@cache
def _client(base_url: str, api_key: str | None, max_retries: int, timeout: float) -> Any:
    import openai

    # Local OpenAI-compatible servers need no key, but the client refuses to start without one.
    return openai.OpenAI(base_url=base_url, api_key=api_key or "no-key", max_retries=max_retries, timeout=timeout)


def _section(tag: str, text: str) -> str:
    return f"<{tag}>\n{text}\n</{tag}>"


def _error_message(body: object) -> str | None:
    """The ``message`` of an OpenAI-style error body: ``{"error": {"message": ...}}`` or the inner dict itself (what
    the client hands over differs between its versions)."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    return message if isinstance(message, str) and message else None


def _ask(grader: Any, system: str, user: str, example: Example) -> dict[str, Any]:
    """One judge call; the verdict as a dict. GraderError when the endpoint fails or the verdict is not JSON."""
    import openai

    client = _client(grader.base_url, grader.api_key, grader.max_retries, grader.timeout)
    try:
        response = client.chat.completions.create(
            model=grader.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            temperature=0,
        )
    except openai.APIStatusError as e:
        detail = (_error_message(e.body) or re.sub(r"^Error code: \d+ - ", "", str(e.message)))[:300]
        raise GraderError(
            f"the judge at {grader.base_url} answered HTTP {e.status_code}: {detail}",
            grader=grader.name,
            example_id=example.key(),
            hint="Check the endpoint's model name and API key (api_key_env).",
        ) from e
    except openai.APIError as e:  # connection refused, timeout: after the client's retries
        raise GraderError(
            f"cannot reach the judge at {grader.base_url} after {grader.max_retries} retries: {type(e).__name__}: {e}",
            grader=grader.name,
            example_id=example.key(),
            hint="Start the judge's server, or fix endpoint.base_url in the spec.",
        ) from e
    content = response.choices[0].message.content if response.choices else None
    verdict = _parse_verdict(content or "")
    if verdict is None:
        raise GraderError(
            f"the judge at {grader.base_url} did not answer a JSON verdict: {content!r:.200}",
            grader=grader.name,
            example_id=example.key(),
            hint="Use a model that follows JSON instructions, or reword the rubric.",
        )
    return verdict


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _parse_verdict(text: str) -> dict[str, Any] | None:
    # Judges often wrap the object in a code fence or a sentence: take the outermost braces.
    match = _OBJECT.search(text)
    if match is None:
        return None
    try:
        value = json.loads(match.group(0))
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class LlmJudge:
    """An LLM scores the output from 1 to ``scale`` against a rubric; the value is ``(score - 1) / (scale - 1)``."""

    name: str
    """The grader's name, used in reports."""
    rubric: str
    """What a good answer does; the judge also sees the input, the reference and the output."""
    base_url: str
    """The OpenAI-compatible endpoint, such as ``http://127.0.0.1:8000/v1``."""
    model: str
    """The judge model's name sent in requests."""
    api_key: str | None = field(default=None, repr=False)
    """The API key (read from the spec's ``api_key_env``; never shown in reprs)."""
    threshold: float = 1.0
    """The pass rule: value >= threshold."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    scale: int = 5
    """Scores run from 1 to ``scale``."""
    max_retries: int = 3
    """Retries of a failed request (connection errors, timeouts, 429, 5xx), with exponential backoff."""
    timeout: float = 60.0
    """Seconds to wait for one request."""

    def __post_init__(self) -> None:
        _require_openai()
        if self.scale < 2:
            raise GraderError(f"scale is {self.scale}; it must be at least 2", grader=self.name)

    def grade(self, example: Example, output: Any) -> Score:
        out = as_output(output)
        if out is None:
            return failed(NO_OUTPUT)
        if not out.text.strip():
            return failed("the output is empty")
        user = "\n\n".join(
            [
                _section("rubric", self.rubric),
                _section("input", example.input_text()),
                _section("reference", example.output_text()),
                _section("candidate", out.text),
            ]
        )
        verdict = _ask(self, JUDGE_SYSTEM.format(scale=self.scale), user, example)
        raw = verdict.get("score")
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 1 <= raw <= self.scale:
            raise GraderError(
                f"the judge's verdict has no score from 1 to {self.scale}: {verdict!r:.200}",
                grader=self.name,
                example_id=example.key(),
            )
        reason = verdict.get("reason")
        value = (float(raw) - 1) / (self.scale - 1)
        return scored(
            value,
            self.threshold,
            str(reason) if reason else f"judged {raw:g}/{self.scale}",
            {"judge_score": raw, "judge_reason": reason},
        )


@dataclass(frozen=True)
class PairwiseJudge:
    """An LLM says which of two answers is better; :meth:`grade` plays the output against the reference."""

    name: str
    """The grader's name, used in reports."""
    rubric: str
    """What makes one answer better than another."""
    base_url: str
    """The OpenAI-compatible endpoint, such as ``http://127.0.0.1:8000/v1``."""
    model: str
    """The judge model's name sent in requests."""
    api_key: str | None = field(default=None, repr=False)
    """The API key (read from the spec's ``api_key_env``; never shown in reprs)."""
    threshold: float = 1.0
    """The pass rule: value >= threshold (1.0: the output won both orderings)."""
    primary: bool = False
    """Whether this grader decides promotion (and is the RL reward)."""
    max_retries: int = 3
    """Retries of a failed request (connection errors, timeouts, 429, 5xx), with exponential backoff."""
    timeout: float = 60.0
    """Seconds to wait for one request."""

    def __post_init__(self) -> None:
        _require_openai()

    def _winner(self, example: Example, first: str, second: str, reference: str | None) -> tuple[str, str | None]:
        parts = [_section("rubric", self.rubric), _section("input", example.input_text())]
        if reference is not None:
            parts.append(_section("reference", reference))
        parts += [_section("answer_a", first), _section("answer_b", second)]
        verdict = _ask(self, PAIRWISE_SYSTEM, "\n\n".join(parts), example)
        winner = str(verdict.get("winner", "")).strip().upper()
        if winner not in ("A", "B", "TIE"):
            raise GraderError(
                f"the judge's verdict names no winner A, B or tie: {verdict!r:.200}",
                grader=self.name,
                example_id=example.key(),
            )
        reason = verdict.get("reason")
        return winner, str(reason) if reason else None

    def compare(self, example: Example, a: Any, b: Any, *, show_reference: bool = True) -> Score:
        """How much ``a`` beats ``b``: 1 when it wins in both orders, 0.5 for a tie or a split, 0 when it loses."""
        out_a, out_b = as_output(a), as_output(b)
        if out_a is None:
            return failed(NO_OUTPUT)
        text_b = "" if out_b is None else out_b.text
        reference = example.output_text() if show_reference else None
        first, why_first = self._winner(example, out_a.text, text_b, reference)
        second, why_second = self._winner(example, text_b, out_a.text, reference)
        points = {"A": 1.0, "TIE": 0.5, "B": 0.0}
        value = (points[first] + 1.0 - points[second]) / 2
        details = {"verdicts": [first, second], "reasons": [why_first, why_second]}
        reason = why_first or why_second or f"verdicts {first} / {second} (a first, then b first)"
        return scored(value, self.threshold, reason, details)

    def grade(self, example: Example, output: Any) -> Score:
        # The opponent is the reference itself, so the judge is not also shown it as a "reference".
        return self.compare(example, output, Output(example.output_text()), show_reference=False)

    def aggregate(self, scores: Sequence[Score]) -> dict[str, Any]:
        """Win rate (mean value: a tie counts half) and the counts of wins, ties and losses."""
        n = len(scores)
        return {
            "n": n,
            "win_rate": sum(s.value for s in scores) / n if n else 0.0,
            "wins": sum(s.value > 0.5 for s in scores),
            "ties": sum(s.value == 0.5 for s in scores),
            "losses": sum(s.value < 0.5 for s in scores),
        }
