"""The side-by-side evaluation (``instil eval``): every candidate on the frozen holdout, graded, summarised, recorded.

    from instil.eval.compare import evaluate
    with Store.open(home=home_dir(spec.root)) as store:
        report = evaluate(spec, store, limit=100)
        again = evaluate(spec, store, reuse=True)   # recorded answers are taken, not generated again
    for c in report.candidates:
        c.name, c.graders["label"].mean, c.graders["label"].low, c.cost_per_success, c.win_rate, c.reused_from
    report.failure_modes["colors@1+short"].flags, report.html_path
    json.dumps(report.to_dict())

It reads top to bottom: load the frozen holdout (refused when there is none), run each candidate
(:mod:`instil.eval.candidates`) or take its recorded results (``reuse``), grade every output with every grader, play
each candidate against the first with the pairwise judge when the spec has one, summarise per candidate (each grader's
mean with a 95% bootstrap interval and its pass rate with a Wilson interval; latency p50/p95; mean tokens in and out;
cost per 1,000 requests and per successful outcome, success being a pass of the primary grader; the primary grader per
tag; the win rate), check the failure modes of each tuned model (:mod:`instil.eval.failure_modes`), then record an
``eval`` run linked to the holdout, one evaluation per candidate, the per-example results as JSONL and
``report.json``. The caller writes the self-contained ``report.html`` once it has all that goes on the page
(:func:`instil.eval.report.write_report`).

Cost: a local request costs its share of its batch's time at ``eval.machine_price_per_hour``; an endpoint request its
tokens at the endpoint's per-million prices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from instil.data.records import Example, sha256_hex
from instil.errors import DataError, InstilError
from instil.eval.candidates import Candidate, default_candidates, run_candidate
from instil.eval.failure_modes import check_failure_modes, failure_settings
from instil.eval.generate import Generation
from instil.eval.graders import Grader, LabelAccuracy, Output, PairwiseJudge, build_graders
from instil.eval.results import CandidateSummary, EvalReport, ExampleResult, GraderSummary, SliceSummary, WinRate
from instil.eval.reuse import ReusableRuns, candidate_identity, eval_inputs_sha256
from instil.eval.stats import bootstrap_ci, wilson_interval
from instil.files import replacing, write_atomic
from instil.jobdata import dataset_name, frozen_holdout
from instil.spec import JobSpec
from instil.store import DatasetVersion, Store

__all__ = ["CONFIDENCE", "evaluate", "select_candidates", "summarise"]

CONFIDENCE = 0.95


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
    reuse: bool = False,
    failure_modes: bool = True,
) -> EvalReport:
    """Run ``candidates`` (default: :func:`default_candidates`) on the frozen holdout, grade, summarise and record.

    ``limit`` evaluates the holdout's first N examples (a quick look; intervals widen). A broken grader raises
    :class:`GraderError` and the run is recorded as failed.

    ``reuse`` takes a candidate's per-example results from the newest succeeded eval run that recorded them under
    the same holdout (sha256), the same :func:`~instil.eval.reuse.eval_inputs_sha256`, the same ``limit`` and
    ``max_new_tokens``, and the same :func:`~instil.eval.reuse.candidate_identity`, instead of generating them
    again; its summary names that run (``reused_from``). A new eval run is recorded all the same, with every
    candidate. A reused tuned candidate's failure-mode checks are reused too when they were recorded under the same
    settings.

    ``failure_modes`` runs :func:`~instil.eval.failure_modes.check_failure_modes` on each tuned candidate (it
    generates on a sample of the training split, and on ``eval.regression_set`` when set). Where the spec has a
    pairwise judge, every candidate after the first plays the first head to head (``win_rate``). The report is
    recorded as ``report.json`` beside ``examples.jsonl``; the caller writes the HTML page once it has everything it
    wants on it (:func:`instil.eval.report.write_report`, with the gate decisions for the loop).
    """
    holdout, examples = _holdout_examples(spec, store, limit)
    candidates = list(candidates) if candidates is not None else default_candidates(spec, store)
    graders = build_graders(spec)
    primary = spec.primary_grader
    identities = [candidate_identity(c, spec, store) for c in candidates]
    config = {
        "candidates": [c.to_dict() for c in candidates],
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "constrained": spec.eval.constrained,
        "holdout": {"ref": holdout.ref, "sha256": holdout.sha256},
        "n_examples": len(examples),
        "inputs_sha256": eval_inputs_sha256(spec),
        "identities": identities,
        "failure_modes": failure_settings(spec) if failure_modes else None,
    }
    earlier = ReusableRuns(store, spec, config, examples) if reuse else None
    run_id = store.start_run(spec.name, "eval", config=config)
    try:
        store.link_run_dataset(run_id, holdout, "eval")
        found = [earlier.find(identity) if earlier is not None else None for identity in identities]
        rows_of = [
            f.rows
            if f is not None
            else _answer_and_grade(c, spec, store, graders, examples, max_new_tokens, batch_size)
            for c, f in zip(candidates, found, strict=True)
        ]
        rows_of, win_rates = _head_to_head(graders, candidates, examples, rows_of, identities, earlier)
        summaries = [
            summarise(c, rows, graders, primary, reused_from=f.origin if f else None, win_rate=w)
            for c, rows, f, w in zip(candidates, rows_of, found, win_rates, strict=True)
        ]
        modes = {
            c.name: (earlier.failure_modes(f, c.name) if earlier is not None and f is not None else None)
            or check_failure_modes(
                spec,
                store,
                c,
                examples,
                [r.output for r in rows],
                [r.scores[primary] for r in rows],
                graders,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            for c, rows, f in zip(candidates, rows_of, found, strict=True)
            if failure_modes and c.model_version is not None and c.kind == "local"
        }
        results = [r for rows in rows_of for r in rows]
        report = EvalReport(
            spec.name,
            run_id,
            holdout.ref,
            primary,
            len(examples),
            max_new_tokens,
            summaries,
            results,
            _write_examples(store, spec, run_id, results),
            failure_modes=modes,
            confusion=_confusion(spec, graders, examples, candidates, rows_of),
            references={e.key(): e.output_text() for e in examples},
            inputs={e.key(): e.input_text() for e in examples},
        )
        _record(store, report, holdout, candidates)
    except BaseException as e:
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        store.finish_run(run_id, status, error=f"{type(e).__name__}: {e}")
        raise
    return report


def _holdout_examples(spec: JobSpec, store: Store, limit: int | None) -> tuple[DatasetVersion, list[Example]]:
    """The frozen holdout and its first ``limit`` examples; refused when there is none, or it is empty."""
    holdout = frozen_holdout(spec, store)
    if holdout is None:
        raise DataError(
            f"job '{spec.name}' has no frozen holdout ({dataset_name(spec, 'holdout')}): there is nothing to "
            "evaluate on",
            hint="run `instil data split` first",
        )
    if limit is not None and limit < 1:
        raise InstilError(f"limit must be at least 1, got {limit}")
    examples = list(store.iter_examples(holdout))[:limit]
    if not examples:
        raise DataError(f"the holdout {holdout.ref} is empty", hint="re-split with `instil data split --refreeze`")
    return holdout, examples


def _answer_and_grade(
    c: Candidate,
    spec: JobSpec,
    store: Store,
    graders: list[Grader],
    examples: list[Example],
    max_new_tokens: int | None,
    batch_size: int | None,
) -> list[ExampleResult]:
    gens = run_candidate(c, spec, store, examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [_grade(c, spec, graders, e, g) for e, g in zip(examples, gens, strict=True)]


def _head_to_head(
    graders: Sequence[Grader],
    candidates: Sequence[Candidate],
    examples: Sequence[Example],
    rows_of: list[list[ExampleResult]],
    identities: list[dict[str, Any]],
    earlier: ReusableRuns | None,
) -> tuple[list[list[ExampleResult]], list[WinRate | None]]:
    """Every candidate after the first against the first, where the spec has a pairwise judge: rows with ``win``
    set, and each one's win rate (None for the first, and for all without a judge)."""
    judge = next((g for g in graders if isinstance(g, PairwiseJudge)), None)
    out, win_rates = [], [None] * len(candidates)
    for i, rows in enumerate(rows_of):
        if i == 0 or judge is None:  # reused rows may carry verdicts from a run that played them otherwise
            out.append([replace(r, win=None) for r in rows])
            continue
        out.append(_judge_pairs(judge, examples, rows_of[0], rows, (identities[0], identities[i]), earlier))
        win_rates[i] = _win_rate(judge.name, candidates[0].name, out[-1])
    return out, win_rates


def _record(store: Store, report: EvalReport, holdout: DatasetVersion, candidates: Sequence[Candidate]) -> None:
    """One evaluation per candidate, the examples file and ``report.json`` as artifacts; the run succeeded."""
    for c, summary in zip(candidates, report.candidates, strict=True):
        metrics = summary.to_dict()
        if c.name in report.failure_modes:
            metrics["failure_modes"] = report.failure_modes[c.name].to_dict()
        model = c.model_version.id if c.model_version is not None else None
        store.add_evaluation(report.run_id, candidate=c.name, dataset=holdout, metrics=metrics, model=model)
    path = report.examples_path
    store.add_artifact(report.run_id, "examples", path, sha256=sha256_hex(path.read_bytes()))
    report_path = path.with_name("report.json")
    write_atomic(report_path, json.dumps(report.to_dict(), indent=1))
    store.add_artifact(report.run_id, "report", report_path)
    means = {s.name: s.graders[report.primary].mean for s in report.candidates}
    store.finish_run(report.run_id, "succeeded", metrics=means)


def _judge_pairs(
    judge: PairwiseJudge,
    examples: Sequence[Example],
    first: Sequence[ExampleResult],
    rows: list[ExampleResult],
    identities: tuple[dict[str, Any], dict[str, Any]],
    earlier: ReusableRuns | None,
) -> list[ExampleResult]:
    """``rows`` with ``win`` set: the judge's verdict of each answer against the first candidate's.

    With ``reuse``, verdicts recorded by an earlier run that played the same two candidates, first against the same
    first, with the same answers, are taken instead of asking the judge again (the judge is part of
    :func:`~instil.eval.reuse.eval_inputs_sha256`)."""
    recorded = earlier.verdicts(identities, first, rows) if earlier is not None else None
    if recorded is not None:
        return [replace(r, win=w) for r, w in zip(rows, recorded, strict=True)]
    return [
        replace(r, win=judge.compare(e, Output(r.output), Output(f.output)).value)
        for e, f, r in zip(examples, first, rows, strict=True)
    ]


def _win_rate(judge: str, against: str, rows: Sequence[ExampleResult]) -> WinRate:
    wins = [r.win for r in rows if r.win is not None]
    ci = bootstrap_ci(wins, confidence=CONFIDENCE)
    return WinRate(
        judge,
        against,
        len(wins),
        ci.estimate,
        ci.low,
        ci.high,
        sum(w > 0.5 for w in wins),
        sum(w == 0.5 for w in wins),
        sum(w < 0.5 for w in wins),
    )


def _confusion(
    spec: JobSpec,
    graders: Sequence[Grader],
    examples: Sequence[Example],
    candidates: Sequence[Candidate],
    rows_of: Sequence[Sequence[ExampleResult]],
) -> dict[str, dict[str, Any]]:
    """Each candidate's confusion matrix, by the spec's label grader (or its output labels); empty without labels."""
    grader = next((g for g in graders if isinstance(g, LabelAccuracy)), None)
    if grader is None and spec.output.labels:
        grader = LabelAccuracy("labels", tuple(spec.output.labels), field=spec.output.label_field)
    if grader is None:
        return {}
    try:
        return {
            c.name: {
                "grader": grader.name,
                **grader.aggregate([grader.grade(e, Output(r.output)) for e, r in zip(examples, rows, strict=True)]),
            }
            for c, rows in zip(candidates, rows_of, strict=True)
        }
    except DataError:  # a reference without a readable label: no matrix (the label grader, if any, said so)
        return {}


def _grade(c: Candidate, spec: JobSpec, graders: list[Grader], e: Example, g: Generation) -> ExampleResult:
    output = Output(g.text, g.tool_calls)
    scores = {gr.name: gr.grade(e, output) for gr in graders}
    return ExampleResult(
        example_id=e.key(),
        candidate=c.name,
        output=g.text,
        scores={n: s.value for n, s in scores.items()},
        passed={n: s.passed for n, s in scores.items()},
        reasons={n: s.reason for n, s in scores.items() if s.reason},
        tags=list(e.tags),
        latency_s=g.latency_s,
        input_tokens=g.input_tokens,
        output_tokens=g.output_tokens,
        cost=_cost(c, spec, g),
        finish_reason=g.finish_reason,
    )


def _cost(c: Candidate, spec: JobSpec, g: Generation) -> float:
    if c.endpoint is not None:
        e = c.endpoint
        return (g.input_tokens * e.input_price_per_million + g.output_tokens * e.output_price_per_million) / 1e6
    # A batch's requests share its time: each pays its share of the machine for that time.
    return g.latency_s / g.batch_size * spec.eval.machine_price_per_hour / 3600.0


def summarise(
    c: Candidate,
    rows: Sequence[ExampleResult],
    graders: Sequence[Grader],
    primary: str,
    *,
    reused_from: int | None = None,
    win_rate: WinRate | None = None,
) -> CandidateSummary:
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
        name=c.name,
        candidate=c.to_dict(),
        n=n,
        graders=per_grader,
        success_rate=successes / n,
        latency_p50_s=float(np.percentile(latencies, 50)),
        latency_p95_s=float(np.percentile(latencies, 95)),
        mean_input_tokens=float(np.mean([r.input_tokens for r in rows])),
        mean_output_tokens=float(np.mean([r.output_tokens for r in rows])),
        cost_per_1k=total / n * 1000.0,
        cost_per_success=total / successes if successes else None,
        truncated=sum(r.finish_reason == "length" for r in rows),
        slices=slices,
        reused_from=reused_from,
        win_rate=win_rate,
    )


def _write_examples(store: Store, spec: JobSpec, run_id: int, rows: Sequence[ExampleResult]) -> Path:
    folder = Path(store.home) / "evals" / spec.name / f"run-{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "examples.jsonl"
    with replacing(path) as staging, staging.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    return path
