"""The side-by-side evaluation (``instil eval``): every candidate on the frozen holdout, graded, summarised, recorded.

    from instil.eval.compare import evaluate
    with Store.open(home=home_dir(spec.root)) as store:
        report = evaluate(spec, store, limit=100)
    for c in report.candidates:
        c.name, c.graders["label"].mean, c.graders["label"].low, c.cost_per_success
    json.dumps(report.to_dict())

It reads top to bottom: load the frozen holdout (refused when there is none), run each candidate
(:mod:`instil.eval.candidates`), grade every output with every grader, summarise per candidate (each grader's mean with
a 95% bootstrap interval and its pass rate with a Wilson interval; latency p50/p95; mean tokens in and out; cost per
1,000 requests and per successful outcome, success being a pass of the primary grader; the primary grader per tag),
then record an ``eval`` run linked to the holdout, one evaluation per candidate and the per-example results as JSONL.

Cost: a local request costs its share of its batch's time at ``eval.machine_price_per_hour``; an endpoint request its
tokens at the endpoint's per-million prices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instil.data.records import Example, sha256_hex
from instil.data.stages import dataset_name, frozen_holdout
from instil.errors import DataError, InstilError
from instil.eval.candidates import Candidate, default_candidates, run_candidate
from instil.eval.generate import Generation
from instil.eval.graders import Grader, Output, build_graders
from instil.eval.stats import bootstrap_ci, wilson_interval
from instil.spec import JobSpec
from instil.store import Store

__all__ = [
    "CandidateSummary",
    "EvalReport",
    "ExampleResult",
    "GraderSummary",
    "SliceSummary",
    "eval_inputs_sha256",
    "evaluate",
    "select_candidates",
]

CONFIDENCE = 0.95


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalReport:
    """What :func:`evaluate` measured and recorded."""

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

    def to_dict(self, *, with_examples: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "job": self.job, "run_id": self.run_id, "holdout": self.holdout, "primary": self.primary,
            "n_examples": self.n_examples, "max_new_tokens": self.max_new_tokens,
            "candidates": [c.to_dict() for c in self.candidates], "examples_path": str(self.examples_path),
        }  # fmt: skip
        if with_examples:
            d["examples"] = [asdict(r) for r in self.examples]
        return d

    def candidate(self, name: str) -> CandidateSummary:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"no candidate {name!r} in this report; it has {[c.name for c in self.candidates]}")


def select_candidates(spec: JobSpec, store: Store, names: Sequence[str] | None) -> list[Candidate]:
    """The default candidates, or those of them named (in the order given)."""
    available = default_candidates(spec, store)
    if not names:
        return available
    by_name = {c.name: c for c in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InstilError(
            f"no candidate named {unknown}; this job has {list(by_name)}",
            hint="pick names from that list (the tuned model appears once `instil train` has run; endpoints come "
            "from eval.endpoints)",
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def evaluate(
    spec: JobSpec,
    store: Store,
    candidates: Sequence[Candidate] | None = None,
    *,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
) -> EvalReport:
    """Run ``candidates`` (default: :func:`default_candidates`) on the frozen holdout, grade, summarise and record.

    ``limit`` evaluates the holdout's first N examples (a quick look; intervals widen). A broken grader raises
    :class:`GraderError` and the run is recorded as failed.
    """
    holdout = frozen_holdout(spec, store)
    if holdout is None:
        raise DataError(
            f"job '{spec.name}' has no frozen holdout ({dataset_name(spec, 'holdout')}): there is nothing to "
            "evaluate on", hint="run `instil data split` first",
        )  # fmt: skip
    if limit is not None and limit < 1:
        raise InstilError(f"limit must be at least 1, got {limit}")
    examples = list(store.iter_examples(holdout))[:limit]
    if not examples:
        raise DataError(f"the holdout {holdout.ref} is empty", hint="re-split with `instil data split --refreeze`")
    candidates = list(candidates) if candidates is not None else default_candidates(spec, store)
    graders = build_graders(spec)
    primary = spec.primary_grader

    config = {"candidates": [c.to_dict() for c in candidates], "limit": limit, "max_new_tokens": max_new_tokens,
              "holdout": {"ref": holdout.ref, "sha256": holdout.sha256}, "n_examples": len(examples),
              "inputs_sha256": eval_inputs_sha256(spec)}  # fmt: skip
    run_id = store.start_run(spec.name, "eval", config=config)
    try:
        store.link_run_dataset(run_id, holdout, "eval")
        results: list[ExampleResult] = []
        summaries: list[CandidateSummary] = []
        for c in candidates:
            gens = run_candidate(c, spec, store, examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
            rows = [_grade(c, spec, graders, e, g) for e, g in zip(examples, gens, strict=True)]
            summary = summarise(c, rows, graders, primary)
            results.extend(rows)
            summaries.append(summary)
        path = _write_examples(store, spec, run_id, results)
        for c, summary in zip(candidates, summaries, strict=True):
            store.add_evaluation(run_id, candidate=c.name, dataset=holdout, metrics=summary.to_dict(),
                                 model=c.model_version.id if c.model_version is not None else None)  # fmt: skip
        store.add_artifact(run_id, "examples", path, sha256=sha256_hex(path.read_bytes()))
        report = EvalReport(spec.name, run_id, holdout.ref, primary, len(examples), max_new_tokens, summaries,
                            results, path)  # fmt: skip
        report_path = path.with_name("report.json")
        report_path.write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
        store.add_artifact(run_id, "report", report_path)
        store.finish_run(run_id, "succeeded", metrics={s.name: s.graders[primary].mean for s in summaries})
    except BaseException as e:
        store.finish_run(run_id, "cancelled" if isinstance(e, KeyboardInterrupt) else "failed",
                         error=f"{type(e).__name__}: {e}")  # fmt: skip
        raise
    return report


def eval_inputs_sha256(spec: JobSpec) -> str:
    """A hash of what decides a candidate's scores besides the model and the holdout: graders, prompts, output
    contract and generation settings. Results recorded under another hash are stale."""
    parts = {
        "graders": [g.model_dump(mode="json") for g in spec.graders],
        "system_prompt": spec.system_prompt, "short_prompt": spec.short_prompt,
        "output": spec.output.model_dump(mode="json"), "max_new_tokens": spec.eval.max_new_tokens,
    }  # fmt: skip
    return sha256_hex(json.dumps(parts, sort_keys=True).encode())


def _grade(c: Candidate, spec: JobSpec, graders: list[Grader], e: Example, g: Generation) -> ExampleResult:
    output = Output(g.text, g.tool_calls)
    scores = {gr.name: gr.grade(e, output) for gr in graders}
    return ExampleResult(
        example_id=e.key(), candidate=c.name, output=g.text,
        scores={n: s.value for n, s in scores.items()}, passed={n: s.passed for n, s in scores.items()},
        reasons={n: s.reason for n, s in scores.items() if s.reason}, tags=list(e.tags), latency_s=g.latency_s,
        input_tokens=g.input_tokens, output_tokens=g.output_tokens, cost=_cost(c, spec, g),
        finish_reason=g.finish_reason,
    )  # fmt: skip


def _cost(c: Candidate, spec: JobSpec, g: Generation) -> float:
    if c.endpoint is not None:
        e = c.endpoint
        return (g.input_tokens * e.input_price_per_million + g.output_tokens * e.output_price_per_million) / 1e6
    # A batch's requests share its time: each pays its share of the machine for that time.
    return g.latency_s / g.batch_size * spec.eval.machine_price_per_hour / 3600.0


def summarise(c: Candidate, rows: Sequence[ExampleResult], graders: Sequence[Grader], primary: str) -> CandidateSummary:
    """The table row of one candidate from its per-example results."""
    n = len(rows)
    per_grader: dict[str, GraderSummary] = {}
    for gr in graders:
        values = [r.scores[gr.name] for r in rows]
        ci = bootstrap_ci(values, confidence=CONFIDENCE)
        passed = sum(r.passed[gr.name] for r in rows)
        w = wilson_interval(passed, n, confidence=CONFIDENCE)
        # wilson_interval's bounds can miss 0 or 1 by float rounding (2.8e-17 at 0 of 6): the rate stays inside.
        rate = passed / n
        per_grader[gr.name] = GraderSummary(ci.estimate, ci.low, ci.high, rate, min(w.low, rate), max(w.high, rate))
    successes = sum(r.passed[primary] for r in rows)
    latencies = np.array([r.latency_s for r in rows])
    total = sum(r.cost for r in rows)
    slices: dict[str, SliceSummary] = {}
    for tag in sorted({t for r in rows for t in r.tags}):
        tagged = [r for r in rows if tag in r.tags]
        ci = bootstrap_ci([r.scores[primary] for r in tagged], confidence=CONFIDENCE)
        pass_rate = sum(r.passed[primary] for r in tagged) / len(tagged)
        slices[tag] = SliceSummary(len(tagged), ci.estimate, ci.low, ci.high, pass_rate)
    return CandidateSummary(
        name=c.name, candidate=c.to_dict(), n=n, graders=per_grader, success_rate=successes / n,
        latency_p50_s=float(np.percentile(latencies, 50)), latency_p95_s=float(np.percentile(latencies, 95)),
        mean_input_tokens=float(np.mean([r.input_tokens for r in rows])),
        mean_output_tokens=float(np.mean([r.output_tokens for r in rows])),
        cost_per_1k=total / n * 1000.0, cost_per_success=total / successes if successes else None,
        truncated=sum(r.finish_reason == "length" for r in rows), slices=slices,
    )  # fmt: skip


def _write_examples(store: Store, spec: JobSpec, run_id: int, rows: Sequence[ExampleResult]) -> Path:
    folder = Path(store.home) / "evals" / spec.name / f"run-{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "examples.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    return path

