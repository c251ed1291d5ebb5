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
``eval`` run linked to the holdout, one evaluation per candidate, the per-example results as JSONL, ``report.json``
and the self-contained ``report.html`` (:mod:`instil.eval.report`).

Cost: a local request costs its share of its batch's time at ``eval.machine_price_per_hour``; an endpoint request its
tokens at the endpoint's per-million prices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from instil.data.records import Example, sha256_hex
from instil.data.stages import dataset_name, frozen_holdout
from instil.errors import DataError, InstilError
from instil.eval.candidates import Candidate, default_candidates, run_candidate
from instil.eval.failure_modes import FailureModes, check_failure_modes, failure_settings
from instil.eval.generate import Generation
from instil.eval.graders import Grader, LabelAccuracy, Output, PairwiseJudge, build_graders
from instil.eval.stats import bootstrap_ci, wilson_interval
from instil.spec import JobSpec
from instil.store import Store

__all__ = [
    "CandidateSummary",
    "EvalReport",
    "ExampleResult",
    "GraderSummary",
    "SliceSummary",
    "WinRate",
    "candidate_identity",
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
    failure_modes: dict[str, FailureModes] = field(default_factory=dict)
    """The failure-mode checks of each tuned candidate, by name (empty with ``failure_modes=False``)."""
    confusion: dict[str, dict[str, Any]] = field(default_factory=dict)
    """For a job with labels: each candidate's label accuracy, macro-F1 and confusion matrix
    (:meth:`LabelAccuracy.aggregate`), by name."""
    references: dict[str, str] = field(default_factory=dict)
    """Each holdout example's reference answer, by example id (for the report's worst failures)."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Each holdout example's input as text, by example id."""
    html_path: Path | None = None
    """The self-contained HTML report, recorded as the run's ``report_html`` artifact."""

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
            "html_path": str(self.html_path) if self.html_path is not None else None,
        }
        if with_examples:
            d["examples"] = [asdict(r) for r in self.examples]
            d["references"], d["inputs"] = self.references, self.inputs
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
    reuse: bool = False,
    failure_modes: bool = True,
) -> EvalReport:
    """Run ``candidates`` (default: :func:`default_candidates`) on the frozen holdout, grade, summarise and record.

    ``limit`` evaluates the holdout's first N examples (a quick look; intervals widen). A broken grader raises
    :class:`GraderError` and the run is recorded as failed.

    ``reuse`` takes a candidate's per-example results from the newest succeeded eval run that recorded them under
    the same holdout (sha256), the same :func:`eval_inputs_sha256`, the same ``limit`` and ``max_new_tokens``, and
    the same :func:`candidate_identity`, instead of generating them again; its summary names that run
    (``reused_from``). A new eval run is recorded all the same, with every candidate. A reused tuned candidate's
    failure-mode checks are reused too when they were recorded under the same settings.

    ``failure_modes`` runs :func:`~instil.eval.failure_modes.check_failure_modes` on each tuned candidate (it
    generates on a sample of the training split, and on ``eval.regression_set`` when set). Where the spec has a
    pairwise judge, every candidate after the first plays the first head to head (``win_rate``). The report is
    written as ``report.json`` and the self-contained ``report.html`` beside ``examples.jsonl``.
    """
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
    candidates = list(candidates) if candidates is not None else default_candidates(spec, store)
    graders = build_graders(spec)
    primary = spec.primary_grader

    config = {
        "candidates": [c.to_dict() for c in candidates],
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "holdout": {"ref": holdout.ref, "sha256": holdout.sha256},
        "n_examples": len(examples),
        "inputs_sha256": eval_inputs_sha256(spec),
        "identities": [candidate_identity(c, spec, store) for c in candidates],
        "failure_modes": failure_settings(spec) if failure_modes else None,
    }
    earlier = _ReusableRuns(store, spec, config, examples) if reuse else None
    run_id = store.start_run(spec.name, "eval", config=config)
    try:
        store.link_run_dataset(run_id, holdout, "eval")
        found: list[_Found | None] = []
        rows_of: list[list[ExampleResult]] = []
        for c, identity in zip(candidates, config["identities"], strict=True):
            found.append(earlier.find(identity) if earlier is not None else None)
            if found[-1] is not None:
                rows_of.append(found[-1].rows)
            else:
                gens = run_candidate(c, spec, store, examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
                rows_of.append([_grade(c, spec, graders, e, g) for e, g in zip(examples, gens, strict=True)])
        # Head to head against the first candidate, where the spec has a pairwise judge.
        judge = next((g for g in graders if isinstance(g, PairwiseJudge)), None)
        win_rates: list[WinRate | None] = [None] * len(candidates)
        for i in range(len(candidates)):
            if i == 0 or judge is None:  # reused rows may carry verdicts from a run that played them otherwise
                rows_of[i] = [replace(r, win=None) for r in rows_of[i]]
                continue
            pair = (config["identities"][0], config["identities"][i])
            rows_of[i] = _judge_pairs(judge, examples, rows_of[0], rows_of[i], pair, earlier)
            win_rates[i] = _win_rate(judge.name, candidates[0].name, rows_of[i])
        summaries = [
            summarise(c, rows, graders, primary, reused_from=f.origin if f else None, win_rate=w)
            for c, rows, f, w in zip(candidates, rows_of, found, win_rates, strict=True)
        ]
        modes: dict[str, FailureModes] = {}
        for c, rows, f in zip(candidates, rows_of, found, strict=True):
            if failure_modes and c.model_version is not None and c.kind == "local":
                recorded = earlier.failure_modes(f, c.name) if earlier is not None and f is not None else None
                modes[c.name] = recorded or check_failure_modes(
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
        results = [r for rows in rows_of for r in rows]
        path = _write_examples(store, spec, run_id, results)
        for c, summary in zip(candidates, summaries, strict=True):
            metrics = summary.to_dict()
            if c.name in modes:
                metrics["failure_modes"] = modes[c.name].to_dict()
            store.add_evaluation(
                run_id,
                candidate=c.name,
                dataset=holdout,
                metrics=metrics,
                model=c.model_version.id if c.model_version is not None else None,
            )
        store.add_artifact(run_id, "examples", path, sha256=sha256_hex(path.read_bytes()))
        report = EvalReport(
            spec.name,
            run_id,
            holdout.ref,
            primary,
            len(examples),
            max_new_tokens,
            summaries,
            results,
            path,
            failure_modes=modes,
            confusion=_confusion(spec, graders, examples, candidates, rows_of),
            references={e.key(): e.output_text() for e in examples},
            inputs={e.key(): e.input_text() for e in examples},
        )
        from instil.eval.report import write_html

        report.html_path = write_html(
            report, path.with_name("report.html"), store=store, title=f"{spec.name}: eval run {run_id}"
        )
        store.add_artifact(run_id, "report_html", report.html_path, sha256=sha256_hex(report.html_path.read_bytes()))
        report_path = path.with_name("report.json")
        report_path.write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
        store.add_artifact(run_id, "report", report_path)
        store.finish_run(run_id, "succeeded", metrics={s.name: s.graders[primary].mean for s in summaries})
    except BaseException as e:
        store.finish_run(
            run_id,
            "cancelled" if isinstance(e, KeyboardInterrupt) else "failed",
            error=f"{type(e).__name__}: {e}",
        )
        raise
    return report


def eval_inputs_sha256(spec: JobSpec) -> str:
    """A hash of what decides a candidate's scores besides the model and the holdout: graders, prompts, output
    contract and generation settings. Results recorded under another hash are stale."""
    parts = {
        "graders": [g.model_dump(mode="json") for g in spec.graders],
        "system_prompt": spec.system_prompt,
        "short_prompt": spec.short_prompt,
        "output": spec.output.model_dump(mode="json"),
        "max_new_tokens": spec.eval.max_new_tokens,
    }
    return sha256_hex(json.dumps(parts, sort_keys=True).encode())


def candidate_identity(c: Candidate, spec: JobSpec, store: Store) -> dict[str, Any]:
    """What must match for a candidate's recorded results to be reused: :meth:`Candidate.to_dict` (with the model
    version's id for a tuned model), the base model's identity for a base candidate (the latest model's recorded
    base folder and weights hash, else the spec's ``model.base`` and revision), and the prices its costs came from.
    """
    identity = c.to_dict()
    if c.kind == "local" and c.model_version is None:
        models = store.list_models(spec.name)
        info = (models[-1].meta.get("model_info") or {}) if models else {}
        identity["base"] = (
            {
                "path": info.get("path"),
                "weights_sha256": info.get("weights_sha256"),
                "revision": info.get("revision"),
            }
            if info
            else {"base": spec.model.base, "revision": spec.model.revision}
        )
    if c.endpoint is not None:
        identity["endpoint"] = c.endpoint.model_dump(mode="json")
    else:
        identity["machine_price_per_hour"] = spec.eval.machine_price_per_hour
    return identity


@dataclass(frozen=True)
class _Found:
    """A candidate's rows found in an earlier run."""

    origin: int
    """The run that generated them (an earlier run may itself have reused them)."""
    via: int
    """The run whose examples file they were read from."""
    rows: list[ExampleResult]
    """The rows, in the holdout's order."""


class _ReusableRuns:
    """The earlier succeeded eval runs whose settings match this one's, newest first, read lazily."""

    def __init__(self, store: Store, spec: JobSpec, config: dict[str, Any], examples: Sequence[Example]) -> None:
        self.store = store
        self.config = config
        self.keys = [e.key() for e in examples]
        same = ("limit", "max_new_tokens", "inputs_sha256")
        self.runs = [
            r
            for r in reversed(store.list_runs(spec.name, "eval"))
            if r.status == "succeeded"
            and all(r.config.get(k) == config[k] for k in same)
            and (r.config.get("holdout") or {}).get("sha256") == config["holdout"]["sha256"]
        ]
        self._rows: dict[int, list[ExampleResult] | None] = {}

    def find(self, identity: dict[str, Any]) -> _Found | None:
        """The newest matching run's rows of this candidate."""
        for run in self.runs:
            if identity not in (run.config.get("identities") or []):
                continue
            rows = self.rows(run.id, identity["name"])
            if [r.example_id for r in rows] != self.keys:
                continue
            # Reused rows keep naming the run that generated them, however many times they are reused.
            recorded = next(
                (e.metrics for e in self.store.list_evaluations(run_id=run.id) if e.candidate == identity["name"]),
                {},
            )
            return _Found(recorded.get("reused_from") or run.id, run.id, rows)
        return None

    def verdicts(
        self,
        identities: tuple[dict[str, Any], dict[str, Any]],
        first: Sequence[ExampleResult],
        rows: Sequence[ExampleResult],
    ) -> list[float] | None:
        """The pairwise verdicts of the newest run that played ``identities[1]`` against ``identities[0]`` as its
        first candidate, on the very answers given."""
        for run in self.runs:
            played = run.config.get("identities") or []
            if not played or played[0] != identities[0] or identities[1] not in played:
                continue
            then_first, then = (
                self.rows(run.id, identities[0]["name"]),
                self.rows(run.id, identities[1]["name"]),
            )
            if (
                [r.output for r in then_first] == [r.output for r in first]
                and [r.output for r in then] == [r.output for r in rows]
                and all(r.win is not None for r in then)
            ):
                return [r.win for r in then]  # type: ignore[misc]
        return None

    def failure_modes(self, found: _Found, name: str) -> FailureModes | None:
        """The failure modes recorded for ``name`` in the run its rows came from, under the same settings."""
        run = next(r for r in self.runs if r.id == found.via)
        if run.config.get("failure_modes") != self.config["failure_modes"]:
            return None
        recorded = next(
            (e.metrics.get("failure_modes") for e in self.store.list_evaluations(run_id=run.id) if e.candidate == name),
            None,
        )
        return FailureModes.from_dict(recorded) if recorded else None

    def rows(self, run_id: int, name: str) -> list[ExampleResult]:
        if run_id not in self._rows:
            self._rows[run_id] = None
            artifact = next((a for a in self.store.list_artifacts(run_id) if a.kind == "examples"), None)
            if artifact is not None and Path(artifact.path).is_file():
                data = Path(artifact.path).read_bytes()
                # A file changed since it was recorded is not what that run measured: generate afresh instead.
                if artifact.sha256 is None or sha256_hex(data) == artifact.sha256:
                    lines = data.decode("utf-8").splitlines()
                    self._rows[run_id] = [ExampleResult(**json.loads(line)) for line in lines if line.strip()]
        return [r for r in self._rows[run_id] or [] if r.candidate == name]


def _judge_pairs(
    judge: PairwiseJudge,
    examples: Sequence[Example],
    first: Sequence[ExampleResult],
    rows: list[ExampleResult],
    identities: tuple[dict[str, Any], dict[str, Any]],
    earlier: _ReusableRuns | None,
) -> list[ExampleResult]:
    """``rows`` with ``win`` set: the judge's verdict of each answer against the first candidate's.

    With ``reuse``, verdicts recorded by an earlier run that played the same two candidates, first against the same
    first, with the same answers, are taken instead of asking the judge again (the judge is part of
    :func:`eval_inputs_sha256`)."""
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
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    return path
