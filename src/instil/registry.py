"""The model registry and the promotion gate: which version of a job serves, and the evidence that put it there.

    from instil import registry
    with Store.open(home=home_dir(spec.root)) as store:
        p = registry.promote(spec, store)              # the newest version against production (or the prompted base)
        print(p.summary())                             # each test's estimate, interval, p-values; why it failed
        registry.production(store, spec.name)          # the ModelVersion serving now
        registry.pin(store, spec.name, "stable", 3)    # a named pin; registry.resolve(store, job, "stable")
        registry.rollback(store, spec.name)            # back to the previous production version
        registry.list_versions(store, spec.name)       # what `instil models` shows

How :func:`promote` decides. The candidate is a model version with the prompt it was trained with. The reference
is the job's production version; before the first promotion it is the strongest prompted baseline: the spec's
``eval.endpoints`` that run with the full prompt (the one with the highest primary mean), else the base model with the
full prompt. Both run on the same frozen holdout version through :func:`instil.eval.compare.evaluate` with
``reuse=True`` (results recorded fresh are not generated again), their per-example scores are paired by example id,
and :func:`instil.eval.stats.gate_decision` decides: a significant gain on the primary grader (exact McNemar when
its scores are all 0/1, else the paired bootstrap) and no loss beyond ``gate.non_inferiority_margin`` on every other
grader, Holm-corrected at ``gate.alpha``. Every decision is recorded with all its numbers, promoted or refused.

Statuses of a model version: ``candidate`` (trained, not gated), ``production`` (at most one per job), ``retired``
(replaced by a promotion), ``refused`` (the gate said no; it can be gated again), ``rolled_back``. The production
history is the job's decisions; :func:`rollback` walks it back one promotion at a time.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from instil.errors import DataError, InstilError, NotFoundError
from instil.eval.candidates import Candidate, default_candidates, model_candidate, prompted_baselines
from instil.eval.compare import evaluate
from instil.eval.report import write_report
from instil.eval.results import EvalReport, ExampleResult
from instil.eval.reuse import eval_inputs_sha256
from instil.eval.stats import Comparison, GateDecision, gate_decision
from instil.jobdata import dataset_name, frozen_holdout
from instil.spec import JobSpec
from instil.store import DecisionInfo, ModelVersion, PinInfo, Store

__all__ = [
    "RESERVED_NAMES",
    "Promotion",
    "VersionInfo",
    "decide",
    "find_decision",
    "list_decisions",
    "list_versions",
    "pin",
    "production",
    "production_history",
    "promote",
    "resolve",
    "rollback",
    "unpin",
]

RESERVED_NAMES = ("latest", "production")
"""Names :func:`resolve` gives a meaning of its own; no pin may take them."""

ScoreKind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class Promotion:
    """The promotion gate's verdict on one model version, with every number behind it."""

    job: str
    """The job's name."""
    candidate: str
    """The candidate gated, as evaluation names it (``<job>@<n>+short``)."""
    version: int
    """The candidate's model version."""
    reference: str
    """What it was compared against: ``<job>@<n>+short`` (production), ``base+full``, or an endpoint's name."""
    reference_version: int | None
    """The reference's model version when it is one of the job's models."""
    holdout: str
    """The frozen holdout version both were scored on (``<job>:holdout@<n>``)."""
    decision: GateDecision
    """The gate's tests: estimates, intervals, p-values, pass/fail, reasons, power warnings."""
    promoted: bool
    """Whether the candidate became production (False on a dry run, whatever the verdict)."""
    eval_run_id: int
    """The eval run that scored both sides."""
    decision_id: int | None
    """The recorded decision; None on a dry run."""
    primary: str
    """The primary grader."""
    primary_kind: ScoreKind
    """``binary`` when every primary score was 0 or 1 (exact McNemar), else ``continuous`` (paired bootstrap)."""
    means: dict[str, tuple[float, float]]
    """Each grader's mean score: (reference, candidate)."""
    dry_run: bool = False
    """Decided but not recorded: no decision row, no status changed."""
    holdout_sha256: str = ""
    """Content hash of that holdout version."""
    limit: int | None = None
    """Only the holdout's first ``limit`` examples were used."""
    baselines: dict[str, float] = field(default_factory=dict)
    """When the reference was chosen among several endpoints: each one's primary mean."""

    @property
    def verdict(self) -> str:
        """``promoted``, ``refused``, or on a dry run what the gate would do."""
        if self.dry_run:
            return "would promote" if self.decision.promoted else "would refuse"
        return "promoted" if self.promoted else "refused"

    def report_row(self) -> dict[str, Any]:
        """The decision as the HTML report shows it (:func:`instil.eval.report.write_html`'s ``decisions``)."""
        return {**asdict(self.decision), "candidate": self.candidate, "reference": self.reference}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-safe (NaN and infinities become None)."""
        d = {
            "job": self.job,
            "candidate": self.candidate,
            "version": self.version,
            "reference": self.reference,
            "reference_version": self.reference_version,
            "holdout": self.holdout,
            "holdout_sha256": self.holdout_sha256,
            "limit": self.limit,
            "promoted": self.promoted,
            "dry_run": self.dry_run,
            "eval_run_id": self.eval_run_id,
            "decision_id": self.decision_id,
            "primary": self.primary,
            "primary_kind": self.primary_kind,
            "means": {k: {"reference": a, "candidate": b} for k, (a, b) in self.means.items()},
            "baselines": dict(self.baselines),
            "gate": asdict(self.decision),
        }
        return _json_safe(d)

    @classmethod
    def from_record(cls, info: DecisionInfo) -> Promotion:
        """The promotion a recorded gate decision describes."""
        n = info.numbers
        if info.kind != "gate" or "gate" not in n:
            raise InstilError(f"decision {info.id} is a {info.kind}, not a gate decision")
        gate = dict(n["gate"])
        gate["comparisons"] = [Comparison(**c) for c in gate["comparisons"]]
        return cls(
            job=info.job,
            candidate=n["candidate"],
            version=info.version,
            reference=n["reference"],
            reference_version=info.reference_version,
            holdout=n["holdout"],
            decision=GateDecision(**gate),
            promoted=info.promoted,
            eval_run_id=n["eval_run_id"],
            decision_id=info.id,
            primary=n["primary"],
            primary_kind=n["primary_kind"],
            means={k: (v["reference"], v["candidate"]) for k, v in n["means"].items()},
            holdout_sha256=n.get("holdout_sha256", ""),
            limit=n.get("limit"),
            baselines=n.get("baselines", {}),
        )

    def summary(self) -> str:
        """The verdict and its numbers, as plain text lines (what ``instil promote`` prints)."""
        d = self.decision
        lines = [
            f"{self.candidate} vs {self.reference} on {self.holdout} ({d.n} examples): {self.verdict.upper()}",
            f"gate: alpha {d.alpha:g} (Holm over {len(d.comparisons)} tests), non-inferiority margin {d.margin:g}; "
            f"primary '{self.primary}' ({self.primary_kind})",
        ]
        if self.baselines:
            lines.append(
                "reference chosen as the strongest of: " + ", ".join(f"{k} {v:.3f}" for k, v in self.baselines.items())
            )
        rows = [("grader", "test", "mean A -> B", "B - A", "interval", "must be >", "p", "p Holm", "")]
        for c in d.comparisons:
            a, b = self.means.get(c.name, (math.nan, math.nan))
            level = 1 - 2 * c.level
            rows.append(
                (
                    c.name,
                    f"{c.hypothesis} ({c.test})",
                    f"{a:.3f} -> {b:.3f}",
                    f"{c.estimate:+.4f}",
                    f"[{c.low:+.4f}, {c.high:+.4f}] {level:.1%}",
                    f"{c.threshold:+.4f}",
                    f"{c.p_value:.4g}",
                    f"{c.p_adjusted:.4g}",
                    "pass" if c.passed else "FAIL",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        mde = (
            "none up to the largest possible gain"
            if d.min_detectable_effect is None
            else f"{d.min_detectable_effect:.3f}"
        )
        lines.append(
            f"power {d.power:.2f} to detect a gain of {d.min_effect:g}; smallest gain detectable with power 0.80: {mde}"
        )
        if d.reasons:
            lines.append("refused because:" if not d.promoted else "failed:")
            lines += [f"  - {r}" for r in d.reasons]
        lines += [f"warning: {w}" for w in d.warnings]
        ids = f"eval run {self.eval_run_id}" + (f", decision {self.decision_id}" if self.decision_id else "")
        lines.append(ids + (" (dry run: nothing recorded)" if self.dry_run else ""))
        return "\n".join(lines)


@dataclass(frozen=True)
class VersionInfo:
    """One model version as ``instil models`` shows it."""

    model: ModelVersion
    """The version itself (its ``status``: candidate, production, retired, refused, rolled_back)."""
    pins: tuple[str, ...]
    """Names of the pins pointing at it now."""
    train_dataset: str | None
    """The training dataset version it was trained on (``<job>:train@<n>``)."""
    last_decision: DecisionInfo | None
    """The newest decision about it: a gate verdict on it, or a rollback to or from it."""
    primary_score: float | None
    """Its primary grader's mean in its newest succeeded evaluation."""
    scored_on: str | None
    """The holdout version of that evaluation."""

    @property
    def last_decision_text(self) -> str | None:
        """The last decision in a few words, with id and time (``promoted over base+full (#3, 2026-12-01 10:00)``)."""
        return self.describe_last_decision()

    def describe_last_decision(self, *, when: bool = True) -> str | None:
        """The last decision in a few words; ``when=False`` gives the id alone (``promoted over base+full #3``)."""
        d, m = self.last_decision, self.model
        if d is None:
            return None
        tag = f"(#{d.id}, {d.created_at.strftime('%Y-%m-%d %H:%M')})" if when else f"#{d.id}"
        if d.kind == "rollback":
            if d.model_id == m.id:
                return f"back in production: rollback from {d.job}@{d.reference_version} {tag}"
            return f"rolled back to {d.ref} {tag}"
        verdict = "promoted over" if d.promoted else "refused vs"
        return f"{verdict} {d.reference} {tag}"

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return _json_safe(
            {
                "version": m.version,
                "ref": m.ref,
                "status": m.status,
                "pins": list(self.pins),
                "base_model": m.base_model,
                "revision": m.revision,
                "path": m.path,
                "created_at": m.created_at.isoformat(),
                "train_dataset": self.train_dataset,
                "last_decision": self.last_decision_text,
                "last_decision_id": self.last_decision.id if self.last_decision else None,
                "primary_score": self.primary_score,
                "scored_on": self.scored_on,
            }
        )


# ---- the gate --------------------------------------------------------------------------------------------------------
def promote(
    spec: JobSpec,
    store: Store,
    version: int | None = None,
    *,
    reference: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    dry_run: bool = False,
    rollout_id: int | None = None,
) -> Promotion:
    """Gate model ``version`` of the job (default: the newest) against production, and promote it if it passes.

    ``reference`` overrides what it is compared against: a candidate name (``base+full``, ``base+short``, an
    endpoint's name) or a model version (``3``, ``<job>@3``, a pin name, ``production``; optionally with
    ``+short``/``+full``/``+none``). ``limit`` uses the holdout's first N examples. ``dry_run`` decides without
    recording a decision or changing any status (the evaluation is recorded all the same). ``rollout_id``: the
    running rollout of this version the decision ends; if it ended meanwhile (its guard stopped it), nothing is
    recorded and :class:`~instil.errors.StoreError` says why.
    """
    holdout = frozen_holdout(spec, store)
    if holdout is None:
        raise DataError(
            f"job '{spec.name}' has no frozen holdout ({dataset_name(spec, 'holdout')}): nothing to gate on",
            hint="run `instil data split` first",
        )
    model = _model(store, spec.name, version)
    current = store.production_model(spec.name)
    if current is not None and current.id == model.id:
        raise InstilError(
            f"{model.ref} is already the production model of '{spec.name}'",
            hint="train a new version (`instil train`) and gate that, or `instil rollback` to the previous one",
        )
    candidate = model_candidate(spec, model)
    references = _references(spec, store, current, reference)
    for r in references:
        if r.model_version is not None and r.model_version.id == model.id:
            raise InstilError(f"{model.ref} cannot be gated against itself", hint="pick another --reference")

    report = evaluate(spec, store, [*references, candidate], limit=limit, batch_size=batch_size, reuse=True)
    if report.holdout != holdout.ref:
        raise DataError(
            f"the holdout changed during the gate: evaluated on {report.holdout}, expected {holdout.ref}",
            hint="someone re-split the data meanwhile; run `instil promote` again",
        )
    rows = _results_by_candidate(report)
    baselines: dict[str, float] = {}
    ref = references[0]
    if len(references) > 1:  # several prompted endpoints: the strongest is what the model must beat
        baselines = {r.name: report.candidate(r.name).graders[report.primary].mean for r in references}
        ref = max(references, key=lambda r: baselines[r.name])
    primary = spec.primary_grader
    decision, kind, means = decide(spec, rows[ref.name], rows[candidate.name], primary=primary)

    promotion = Promotion(
        job=spec.name,
        candidate=candidate.name,
        version=model.version,
        reference=ref.name,
        reference_version=ref.model_version.version if ref.model_version is not None else None,
        holdout=holdout.ref,
        decision=decision,
        promoted=False,
        eval_run_id=report.run_id,
        decision_id=None,
        primary=primary,
        primary_kind=kind,
        means=means,
        dry_run=dry_run,
        holdout_sha256=holdout.sha256,
        limit=limit,
        baselines=baselines,
    )
    if dry_run:
        write_report(report, store, decisions=[promotion.report_row()], title=f"{spec.name}: gate (dry run)")
        return promotion
    numbers = promotion.to_dict()
    numbers["eval_inputs_sha256"] = eval_inputs_sha256(spec)
    info = store.record_decision(
        spec.name,
        kind="gate",
        model=model,
        promoted=decision.promoted,
        production_before=current,
        reference=ref.name,
        reference_model=ref.model_version,
        dataset=holdout,
        run_id=report.run_id,
        numbers={**numbers, "promoted": decision.promoted},
        rollout_id=rollout_id,
    )
    recorded = Promotion.from_record(info)
    write_report(report, store, decisions=[recorded.report_row()], title=f"{spec.name}: gate on {holdout.ref}")
    return recorded


def decide(
    spec: JobSpec,
    reference: list[ExampleResult],
    candidate: list[ExampleResult],
    *,
    primary: str | None = None,
) -> tuple[GateDecision, ScoreKind, dict[str, tuple[float, float]]]:
    """The gate on per-example results (:class:`~instil.eval.results.ExampleResult`) of the reference (A) and the
    candidate (B), paired by example id: (decision, the primary's score kind, each grader's (A, B) mean).

    Refuses (:class:`DataError`) results that are not of the same examples, or not scored by the same graders.
    """
    primary = primary or spec.primary_grader
    a_rows, b_rows = _by_example(reference, "the reference"), _by_example(candidate, "the candidate")
    if set(a_rows) != set(b_rows):
        only_a, only_b = sorted(set(a_rows) - set(b_rows)), sorted(set(b_rows) - set(a_rows))
        raise DataError(
            f"the reference and the candidate were not scored on the same holdout examples ({len(only_a)} only in "
            f"the reference, e.g. {only_a[:3]}; {len(only_b)} only in the candidate, e.g. {only_b[:3]})",
            hint="evaluate both on the same frozen holdout version: run `instil promote` again",
        )
    if not a_rows:
        raise DataError("no holdout examples were scored: nothing to decide on", hint="check --limit")
    ids = list(a_rows)
    graders = list(next(iter(a_rows.values())).scores)
    missing = [g for g in [primary, *graders] if any(g not in r.scores for r in (*a_rows.values(), *b_rows.values()))]
    if missing:
        raise DataError(
            f"grader(s) {sorted(set(missing))} did not score every example of both sides",
            hint="the graders changed since one side was evaluated; run `instil promote` again",
        )
    scores = {g: ([a_rows[i].scores[g] for i in ids], [b_rows[i].scores[g] for i in ids]) for g in graders}
    a_p, b_p = scores[primary]
    kind: ScoreKind = "binary" if all(v in (0.0, 1.0) for v in (*a_p, *b_p)) else "continuous"
    others = {g: pair for g, pair in scores.items() if g != primary}
    try:
        decision = gate_decision(
            (a_p, b_p, kind),
            others,
            primary_name=primary,
            alpha=spec.gate.alpha,
            margin=spec.gate.non_inferiority_margin,
            min_effect=spec.gate.min_effect,
        )
    except ValueError as e:
        raise InstilError(f"{spec.file or 'the spec'}: gate: {e}", hint="fix the gate: section of the spec") from None
    means = {g: (sum(a) / len(a), sum(b) / len(b)) for g, (a, b) in scores.items()}
    return decision, kind, means


def find_decision(spec: JobSpec, store: Store, decision_id: int) -> Promotion | None:
    """The promotion recorded as gate decision ``decision_id`` of this job; None when there is no such decision."""
    try:
        info = store.get_decision(decision_id)
    except NotFoundError:
        return None
    if info.job != spec.name or info.kind != "gate":
        return None
    return Promotion.from_record(info)


# ---- production, rollback, pins --------------------------------------------------------------------------------------
def production(store: Store, job: str) -> ModelVersion | None:
    """The model version of ``job`` serving now; None before the first promotion."""
    return store.production_model(job)


def production_history(store: Store, job: str) -> list[ModelVersion]:
    """The versions a rollback can walk back through, oldest first; the last is the production version.

    Replays the job's decisions: a promotion puts its model on top; a rollback takes the top off, down to the version
    it went back to.
    """
    stack: list[int] = []
    for d in store.list_decisions(job):
        if d.kind == "gate" and d.promoted:
            stack = [i for i in stack if i != d.model_id] + [d.model_id]
        elif d.kind == "rollback":
            stack = stack[: stack.index(d.model_id) + 1] if d.model_id in stack else [*stack[:-1], d.model_id]
    by_id = {m.id: m for m in store.list_models(job)}
    return [by_id[i] for i in stack if i in by_id]


def rollback(store: Store, job: str, to: int | None = None) -> ModelVersion:
    """Put back the production version before the current one (or version ``to``, any earlier production version
    still in the history); recorded as a ``rollback`` decision. Returns the new production version."""
    current = store.production_model(job)
    if current is None:
        raise InstilError(
            f"job '{job}' has no production model: there is nothing to roll back",
            hint="promote a version first: `instil promote`",
        )
    earlier = [m for m in production_history(store, job) if m.id != current.id]
    if not earlier:
        raise InstilError(
            f"{current.ref} is the first production version of '{job}': there is no earlier one to roll back to",
            hint="train and gate another version (`instil train`, then `instil promote`)",
        )
    if to is None:
        target = earlier[-1]
    else:
        found = [m for m in earlier if m.version == to]
        if not found:
            raise InstilError(
                f"cannot roll '{job}' back to version {to}: it is not an earlier production version still in the "
                f"history (those are {[m.version for m in earlier]})",
                hint=f"to serve version {to} again, gate it: `instil promote --version {to}`",
            )
        target = found[0]
    store.record_decision(
        job,
        kind="rollback",
        model=target,
        promoted=True,
        production_before=current,
        reference_model=current,
        numbers={"from": current.ref, "to": target.ref},
    )
    return store.get_model(job, target.version)


def pin(store: Store, job: str, name: str, version: int | str) -> PinInfo:
    """Point pin ``name`` of ``job`` at a model version (a number, ``<job>@<n>``, ``production``, another pin)."""
    if name in RESERVED_NAMES:
        raise InstilError(
            f"'{name}' cannot be a pin name: it already means something to `resolve`",
            hint=f"pick another name; reserved: {', '.join(RESERVED_NAMES)}",
        )
    return store.set_pin(job, name, resolve(store, job, version))


def unpin(store: Store, job: str, name: str) -> PinInfo:
    """Remove pin ``name`` of ``job``; returns the pin as it was."""
    return store.remove_pin(job, name)


_NUMBER = re.compile(r"\d+")


def resolve(store: Store, job: str, ref: int | str) -> ModelVersion:
    """The model version ``ref`` names: a number (``3``), ``<job>@3``, ``production``, ``latest`` or a pin name."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return store.get_model(job, ref)
    text = str(ref).strip()
    if "@" in text:
        prefix, _, text = text.partition("@")
        if prefix != job:
            raise NotFoundError(
                f"'{ref}' names a model of job '{prefix}', not of '{job}'",
                hint=f"write {job}@<version>, or just the version number",
            )
    if _NUMBER.fullmatch(text):
        return store.get_model(job, int(text))
    if text == "production":
        current = store.production_model(job)
        if current is None:
            raise NotFoundError(f"job '{job}' has no production model yet", hint="promote one: `instil promote`")
        return current
    if text == "latest":
        return _model(store, job, None)
    pins = {p.name: p for p in store.list_pins(job)}
    if text in pins:
        return store.get_model(job, pins[text].version)
    raise NotFoundError(
        f"'{ref}' names no model version of '{job}'",
        hint="give a version number, <job>@<n>, production, latest"
        + (f" or a pin ({', '.join(sorted(pins))})" if pins else " (the job has no pins)"),
    )


def list_decisions(store: Store, job: str) -> list[DecisionInfo]:
    """Every gate decision and rollback of ``job``, oldest first."""
    return store.list_decisions(job)


def list_versions(store: Store, job: str) -> list[VersionInfo]:
    """Every model version of ``job``, oldest first, with its pins, training data, last decision and score."""
    decisions = store.list_decisions(job)
    pins: dict[int, list[str]] = {}
    for p in store.list_pins(job):
        pins.setdefault(p.model_id or 0, []).append(p.name)
    runs: dict[int, Any] = {}
    out = []
    for m in store.list_models(job):
        about = [d for d in decisions if d.model_id == m.id or (d.kind == "rollback" and d.reference_model_id == m.id)]
        last = about[-1] if about else None
        score, scored_on = None, None
        for e in reversed(store.list_evaluations(model=m)):
            run = runs.setdefault(e.run_id, store.get_run(e.run_id))
            if run.status == "succeeded" and isinstance((run.metrics or {}).get(e.candidate), int | float):
                score, scored_on = (
                    float(run.metrics[e.candidate]),
                    store.get_version(e.dataset_version_id).ref,
                )
                break
        out.append(
            VersionInfo(
                m,
                tuple(pins.get(m.id, ())),
                _train_dataset(store, m),
                last,
                score,
                scored_on,
            )
        )
    return out


# ---- helpers ---------------------------------------------------------------------------------------------------------
def _model(store: Store, job: str, version: int | None) -> ModelVersion:
    if version is None and not store.list_models(job):
        raise NotFoundError(f"job '{job}' has no model trained yet", hint="run `instil train` first")
    return store.get_model(job, version)


def _references(spec: JobSpec, store: Store, current: ModelVersion | None, name: str | None) -> list[Candidate]:
    if name is None:
        return [model_candidate(spec, current)] if current is not None else prompted_baselines(spec)
    by_name = {c.name: c for c in default_candidates(spec, store)}
    if name in by_name:
        return [by_name[name]]
    base, plus, prompt = name.rpartition("+")
    try:
        if plus and prompt in ("full", "short", "none"):
            m = resolve(store, spec.name, base)
            return [Candidate(f"{m.ref}+{prompt}", "local", prompt, f"model:{m.ref}", model_version=m)]  # type: ignore[arg-type]
        return [model_candidate(spec, resolve(store, spec.name, name))]
    except NotFoundError as e:
        raise InstilError(
            f"--reference {name!r} names no candidate of '{spec.name}' ({e})",
            hint=f"use one of {', '.join(n for n in by_name if '@' not in n)}, or a model version (3, "
            f"{spec.name}@3, production, a pin), optionally with +short, +full or +none",
        ) from None


def _results_by_candidate(report: EvalReport) -> dict[str, list[ExampleResult]]:
    out: dict[str, list[ExampleResult]] = {}
    for r in report.examples:
        out.setdefault(r.candidate, []).append(r)
    return out


def _by_example(rows: list[ExampleResult], what: str) -> dict[str, ExampleResult]:
    out: dict[str, ExampleResult] = {}
    for r in rows:
        if r.example_id in out:
            raise DataError(
                f"{what} has two results for holdout example {r.example_id}: they cannot be paired",
                hint="give the holdout's examples distinct ids and re-split (`instil data split --refreeze`)",
            )
        out[r.example_id] = r
    return out


def _train_dataset(store: Store, m: ModelVersion) -> str | None:
    recorded = m.meta.get("dataset")
    if isinstance(recorded, dict) and recorded.get("ref"):
        return str(recorded["ref"])
    if m.run_id is None:
        return None
    for version_id, role in store.get_run(m.run_id).datasets:
        if role == "train":
            return store.get_version(version_id).ref
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
