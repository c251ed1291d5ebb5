"""What an evaluation measured: per-example results, per-candidate summaries, and the report that holds them.

    report = evaluate(spec, store)                       # instil.eval.compare
    report.candidate("colors@1+short").graders["label"].mean, report.html_path
    json.dumps(report.to_dict())

Plain dataclasses with a docstring per field, shared by the evaluation (:mod:`instil.eval.compare`), the reuse of
recorded results (:mod:`instil.eval.reuse`), the HTML report (:mod:`instil.eval.report`) and the promotion gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instil.eval.failure_modes import FailureModes

__all__ = ["CandidateSummary", "EvalReport", "ExampleResult", "GraderSummary", "SliceSummary", "WinRate"]


@dataclass(frozen=True)
class ExampleResult:
    """One candidate's answer to one holdout example, and its scores (kept for the promotion gate)."""

    example_id: str
    """The example's key (its id, or a hash of its content)."""
    candidate: str
    """The candidate's name."""
    output: str
    """What the candidate answered."""
    scores: dict[str, float]
    """Each grader's score, 0 to 1."""
    passed: dict[str, bool]
    """Whether each grader's pass rule held."""
    reasons: dict[str, str]
    """Why points were lost, by grader (only graders that gave a reason)."""
    tags: list[str]
    """The example's tags."""
    latency_s: float
    """Wall time the request waited (for a batched local request, its batch's time)."""
    input_tokens: int
    """Tokens of the prompt."""
    output_tokens: int
    """Tokens generated."""
    cost: float
    """What this request cost."""
    finish_reason: str
    """``stop`` or ``length`` (cut off at max_new_tokens)."""
    win: float | None = None
    """The pairwise judge's verdict on this answer against the first candidate's answer to the same example: 1 won
    in both orders, 0.5 a tie or a split, 0 lost; None for the first candidate, or without a pairwise judge."""


@dataclass(frozen=True)
class GraderSummary:
    """One grader's scores of one candidate."""

    mean: float
    """Mean score over the examples."""
    low: float
    """Lower end of the 95% bootstrap interval of the mean."""
    high: float
    """Upper end of that interval."""
    pass_rate: float
    """Share of examples that pass the grader's threshold."""
    pass_low: float
    """Lower end of the 95% Wilson interval of the pass rate."""
    pass_high: float
    """Upper end of that interval."""


@dataclass(frozen=True)
class SliceSummary:
    """The primary grader on the examples of one tag."""

    n: int
    """Examples with the tag."""
    mean: float
    """Mean primary score on them."""
    low: float
    """Lower end of the 95% bootstrap interval."""
    high: float
    """Upper end of that interval."""
    pass_rate: float
    """Share of them that pass the primary grader."""


@dataclass(frozen=True)
class WinRate:
    """Head-to-head against the first candidate (the best-prompt baseline), by the spec's pairwise judge."""

    judge: str
    """The pairwise judge grader."""
    against: str
    """The candidate played against."""
    n: int
    """Examples compared."""
    win_rate: float
    """Share of examples won, a tie or a split verdict counting half."""
    low: float
    """Lower end of the 95% bootstrap interval of the win rate."""
    high: float
    """Upper end of that interval."""
    wins: int
    """Examples won in both orders."""
    ties: int
    """Examples tied (or split between the two orders)."""
    losses: int
    """Examples lost in both orders."""


@dataclass(frozen=True)
class CandidateSummary:
    """Everything the table shows for one candidate."""

    name: str
    """The candidate's name."""
    candidate: dict[str, Any]
    """The candidate itself (kind, prompt, model)."""
    n: int
    """Examples evaluated."""
    graders: dict[str, GraderSummary]
    """Each grader's summary, in the spec's order."""
    success_rate: float
    """Share of examples that pass the primary grader."""
    latency_p50_s: float
    """Median request latency."""
    latency_p95_s: float
    """95th percentile of request latency."""
    mean_input_tokens: float
    """Mean prompt tokens per request."""
    mean_output_tokens: float
    """Mean generated tokens per request."""
    cost_per_1k: float
    """Cost of 1,000 requests like these."""
    cost_per_success: float | None
    """Total cost divided by the successful outcomes; None when nothing succeeded."""
    truncated: int
    """Answers cut off at max_new_tokens."""
    slices: dict[str, SliceSummary] = field(default_factory=dict)
    """The primary grader by example tag."""
    reused_from: int | None = None
    """The eval run that generated these answers and scores, when they were reused (``reuse=True``) instead of
    generated again; None when this run generated them."""
    win_rate: WinRate | None = None
    """Head-to-head against the first candidate where the spec has a pairwise judge; None otherwise (and for the
    first candidate itself)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalReport:
    """What :func:`instil.eval.compare.evaluate` measured and recorded."""

    job: str
    """The job's name."""
    run_id: int
    """The ``eval`` run in the store."""
    holdout: str
    """The holdout version evaluated on (``<job>:holdout@<n>``)."""
    primary: str
    """The primary grader."""
    n_examples: int
    """Holdout examples evaluated (after ``limit``)."""
    max_new_tokens: int | None
    """The cap given (None: each candidate derived its own)."""
    candidates: list[CandidateSummary]
    """One summary per candidate, in the order run."""
    examples: list[ExampleResult]
    """Every (candidate, example) result."""
    examples_path: Path
    """The per-example JSONL file recorded as the run's artifact."""
    failure_modes: dict[str, FailureModes] = field(default_factory=dict)
    """The failure-mode checks of each tuned candidate, by name (empty with ``failure_modes=False``)."""
    confusion: dict[str, dict[str, Any]] = field(default_factory=dict)
    """For a job with labels: each candidate's label accuracy, macro-F1 and confusion matrix
    (:meth:`LabelAccuracy.aggregate`), by name."""
    references: dict[str, str] = field(default_factory=dict)
    """Each holdout example's reference answer, by example id (for the report's worst failures)."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Each holdout example's input as text, by example id."""

    def to_dict(self, *, with_examples: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "job": self.job,
            "run_id": self.run_id,
            "holdout": self.holdout,
            "primary": self.primary,
            "n_examples": self.n_examples,
            "max_new_tokens": self.max_new_tokens,
            "candidates": [c.to_dict() for c in self.candidates],
            "examples_path": str(self.examples_path),
            "failure_modes": {n: m.to_dict() for n, m in self.failure_modes.items()},
            "confusion": self.confusion,
            "html_path": str(self.html_path),
        }
        if with_examples:
            d["examples"] = [asdict(r) for r in self.examples]
            d["references"], d["inputs"] = self.references, self.inputs
        return d

    @property
    def html_path(self) -> Path:
        """Where the self-contained HTML report goes (:func:`instil.eval.report.write_report` writes it there and
        records it as the run's ``report_html`` artifact): ``report.html`` beside the examples file."""
        return self.examples_path.with_name("report.html")

    def candidate(self, name: str) -> CandidateSummary:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"no candidate {name!r} in this report; it has {[c.name for c in self.candidates]}")
