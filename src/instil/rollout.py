"""Rolling a new version out: a canary or a shadow in front of real traffic, its online figures, an automatic guard,
then promotion through the gate (or an abort).

    from instil import rollout
    with Store.open(home=home_dir(spec.root)) as store:
        rollout.start(spec, store, 3)                       # a canary on the spec's rollout.canary_percent
        rollout.start(spec, store, 3, mode="shadow")        # the same version as a shadow instead
        s = rollout.status(spec, store)                      # per arm: pass rate, agreement, latency, cost; the guard
        print(s.table())
        rollout.promote(spec, store)                         # the offline gate on the frozen holdout, then production
        rollout.abort(store, spec.name, "looked wrong")

A running server applies a change within a second, without a restart (:mod:`instil.serve.router`). While a rollout
runs, a request naming the job itself (``model: "<job>"``, what clients of production send) is routed:

- **canary**: ``percent`` of requests go to the candidate; which ones is decided by the request's ``user`` (a hash
  of it), so one person stays on one version; requests without a ``user`` are split at random;
- **shadow**: production answers every request; ``percent`` of them are also sent to the candidate, in the
  background, and its answer is traced (never returned). The two traces share a ``pair_id``, so their answers are
  compared (agreement) and a disagreement can go to review.

A request naming a version (``<job>@3``, ``<job>@stable``) is never routed. Every routed trace records the rollout, its
arm (``production``, ``candidate``, ``shadow``) and the version that answered.

**The guard** (:class:`~instil.eval.sequential.CanaryGuard`): while a canary runs, the server feeds it each routed
request's outcome in arrival order (failed: a grader failed, or the server erred; requests the client got wrong,
4xx, are left out) and stops the canary by itself, saying why, once the candidate is worse than production with the
spec's ``rollout.alpha`` confidence; the test stays valid however often it is looked at. :func:`status` computes the
same test from the traces. Its figures come from the job's reference-free graders, computed at capture (a job with
none has only server errors to go on; ``status`` says so).

:func:`promote` needs at least ``rollout.min_requests`` canary answers and a guard that has not stopped, then runs
the promotion gate (:func:`instil.registry.promote`) on the frozen holdout: the version becomes production only if it
is provably better offline and was not shown worse online. A promotion or rollback made any other way ends a running
rollout too (its comparison would no longer mean anything).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instil import registry
from instil.errors import InstilError, NotFoundError
from instil.eval.sequential import CanaryGuard
from instil.eval.stats import Interval, wilson_interval
from instil.spec import JobSpec
from instil.store import Outcome, RolloutInfo, Store, Trace, TraceFilter

__all__ = [
    "ArmFigures",
    "RolloutPromotion",
    "RolloutStatus",
    "abort",
    "failed",
    "feed",
    "guard_for",
    "guard_summary",
    "promote",
    "same_answer",
    "start",
    "status",
]

MODES = ("canary", "shadow")


def start(
    spec: JobSpec,
    store: Store,
    version: int | str,
    *,
    mode: str = "canary",
    percent: float | None = None,
    alpha: float | None = None,
    margin: float | None = None,
    force: bool = False,
    started_by: str | None = None,
) -> RolloutInfo:
    """Start rolling ``version`` (anything :func:`instil.registry.resolve` reads) out as a ``canary`` or a ``shadow``
    on ``percent`` of the job's requests (default: the spec's ``rollout.canary_percent`` / ``shadow_percent``);
    ``alpha`` and ``margin`` override the guard's. A running rollout of the same version is replaced (turning a
    shadow into a canary); one of another version is refused, and so is a version whose canary the guard stopped
    (unless ``force``). ``started_by`` is kept with it (``watch`` for the watch loop's own canaries)."""
    if mode not in MODES:
        raise InstilError(f"unknown rollout mode {mode!r}", hint="use canary or shadow")
    r = spec.rollout
    share = percent if percent is not None else (r.canary_percent if mode == "canary" else r.shadow_percent)
    if not 0 < share <= 100:
        raise InstilError(f"the rollout's share must be above 0% and at most 100%, not {share}%")
    settings: dict[str, Any] = {
        "alpha": r.alpha if alpha is None else alpha,
        "margin": r.margin if margin is None else margin,
    }
    CanaryGuard(**settings)  # refuses a bad alpha or margin before anything is recorded
    if started_by is not None:
        settings["started_by"] = started_by
    model = registry.resolve(store, spec.name, version)
    stopped = [r for r in store.list_rollouts(spec.name) if r.model_id == model.id and r.status == "stopped"]
    if stopped and not force:
        last = stopped[-1]
        raise InstilError(
            f"the guard stopped {model.ref}'s canary on {last.ended_at:%Y-%m-%d %H:%M} UTC: {last.reason}",
            hint="train a new version from its failures; to put it in front of traffic again anyway, pass force",
        )
    if store.production_model(spec.name) is None:
        raise InstilError(
            f"job {spec.name!r} has no production version to roll {model.ref} out against",
            hint=f"promote the first version through the gate instead: `instil promote --version {model.version}`",
        )
    return store.start_rollout(spec.name, model, mode=mode, percent=share, settings=settings)


def abort(store: Store, job: str, reason: str = "aborted") -> RolloutInfo:
    """End the job's running rollout; production keeps answering everything."""
    return store.end_rollout(job, "aborted", reason)


def failed(o: Outcome | Trace) -> bool | None:
    """A routed request's outcome for the guard: True (a grader failed, or the server erred), False, or None (the
    request itself was wrong or refused, 4xx: it says nothing of the model)."""
    if o.status >= 500:
        return True
    if o.status != 200:
        return None
    return o.passed is False


def guard_for(rollout: RolloutInfo) -> CanaryGuard:
    """A fresh guard with the rollout's settings."""
    s = rollout.settings
    return CanaryGuard(alpha=float(s.get("alpha", 0.05)), margin=float(s.get("margin", 0.0)))


def feed(guard: CanaryGuard, outcomes: list[Outcome]) -> bool:
    """Feed a canary's outcomes (in arrival order) to its guard; returns whether it has stopped."""
    for o in outcomes:
        verdict = failed(o)
        if verdict is not None and o.arm in ("candidate", "production"):
            guard.update(o.arm, verdict)
    return guard.stopped


@dataclass(frozen=True)
class ArmFigures:
    """One arm of a rollout, from its traces."""

    arm: str
    """``production``, ``candidate`` or ``shadow``."""
    versions: tuple[int | None, ...]
    """The versions that answered on this arm (production's may change if it was promoted meanwhile)."""
    requests: int
    errors: int
    """Answers that were server errors (5xx)."""
    graded: int
    """Answers the graders scored."""
    passed: int
    pass_rate: Interval | None
    """Among graded answers, with a 95% Wilson interval (a fixed-sample interval: for reading, not for stopping)."""
    latency_p50_s: float | None
    latency_p95_s: float | None
    first_token_p50_s: float | None
    cost_per_1k: float | None
    """The cost of a thousand requests, from the spec's prices (None when none apply)."""
    cost_per_success: float | None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["versions"] = list(self.versions)
        d["pass_rate"] = (
            {"estimate": self.pass_rate.estimate, "low": self.pass_rate.low, "high": self.pass_rate.high}
            if self.pass_rate is not None
            else None
        )
        return d


@dataclass(frozen=True)
class RolloutStatus:
    """Where a rollout stands: its arms' figures, agreement with production (a shadow), and the guard."""

    rollout: RolloutInfo
    arms: list[ArmFigures]
    pairs: int
    """Shadowed requests with both answers traced."""
    agreed: int
    """Of those, the ones whose two answers are the same (whitespace aside)."""
    guard: CanaryGuard
    graded: bool
    """Whether any trace was graded (False: the job has no reference-free graders, and the guard sees only errors)."""
    disagreements: list[tuple[str, str]] = field(default_factory=list)
    """(production's trace id, the shadow's) of the first pairs that disagree (at most 20)."""

    @property
    def agreement(self) -> Interval | None:
        return wilson_interval(self.agreed, self.pairs) if self.pairs else None

    def arm(self, name: str) -> ArmFigures | None:
        return next((a for a in self.arms if a.arm == name), None)

    def to_dict(self) -> dict[str, Any]:
        r = self.rollout
        a = self.agreement
        return {
            "id": r.id,
            "job": r.job,
            "candidate": r.ref,
            "mode": r.mode,
            "percent": r.percent,
            "status": r.status,
            "reason": r.reason,
            "started_at": r.started_at.isoformat(),
            "ended_at": r.ended_at.isoformat() if r.ended_at is not None else None,
            "production_version": r.production_version,
            "arms": [x.to_dict() for x in self.arms],
            "pairs": self.pairs,
            "agreed": self.agreed,
            "agreement": {"estimate": a.estimate, "low": a.low, "high": a.high} if a is not None else None,
            "disagreements": [list(p) for p in self.disagreements],
            "graded": self.graded,
            "guard": guard_summary(self.guard),
        }


def guard_summary(g: CanaryGuard) -> dict[str, Any]:
    """The guard's figures, as a rollout's ``summary`` keeps them."""
    return {
        "alpha": g.alpha,
        "margin": g.margin,
        "evidence": g.wealth,
        "threshold": g.threshold,
        "stopped": g.stopped,
        "stopped_at": g.stopped_at,
        "requests": dict(g.n),
        "failures": dict(g.failures),
        "reason": g.reason(),
    }


def _rollout(store: Store, job: str, rollout_id: int | None) -> RolloutInfo:
    rollouts = store.list_rollouts(job)
    if rollout_id is not None:
        found = [r for r in rollouts if r.id == rollout_id]
        if not found:
            raise NotFoundError(f"job {job!r} has no rollout {rollout_id}", hint="`instil rollout status` lists them")
        return found[0]
    if not rollouts:
        raise NotFoundError(
            f"job {job!r} has never been rolled out", hint="start one: `instil rollout start --version N`"
        )
    running = [r for r in rollouts if r.running]
    return running[-1] if running else rollouts[-1]


def status(spec: JobSpec, store: Store, rollout_id: int | None = None) -> RolloutStatus:
    """The job's running rollout (else its latest; or rollout ``rollout_id``), figured from its traces."""
    r = _rollout(store, spec.name, rollout_id)
    outcomes = store.trace_outcomes(TraceFilter(job=spec.name, rollout_id=r.id))
    guard = guard_for(r)
    if r.mode == "canary":
        feed(guard, outcomes)
    arms = [_figures(name, [o for o in outcomes if o.arm == name]) for name in _arms(r)]
    by_pair: dict[str, dict[str, Outcome]] = {}
    for o in outcomes:
        if o.pair_id is not None and o.arm is not None:
            by_pair.setdefault(o.pair_id, {})[o.arm] = o
    pairs = agreed = 0
    disagreements: list[tuple[str, str]] = []
    for both in by_pair.values():
        prod, shadow = both.get("production"), both.get("shadow")
        if prod is None or shadow is None or prod.status != 200 or shadow.status != 200:
            continue
        pairs += 1
        if same_answer(prod.output, shadow.output):
            agreed += 1
        elif len(disagreements) < 20:
            disagreements.append((prod.id, shadow.id))
    graded = any(o.passed is not None for o in outcomes)
    return RolloutStatus(r, arms, pairs, agreed, guard, graded, disagreements)


def same_answer(a: str | None, b: str | None) -> bool:
    """Two answers agree when their words are the same (spacing and line breaks aside)."""
    return (a or "").split() == (b or "").split()


def _arms(r: RolloutInfo) -> tuple[str, ...]:
    return ("production", "candidate") if r.mode == "canary" else ("production", "shadow")


def _figures(arm: str, rows: list[Outcome]) -> ArmFigures:
    answered = [o for o in rows if o.status == 200]
    graded = [o for o in answered if o.passed is not None]
    passed = sum(1 for o in graded if o.passed)
    lat = np.array([o.latency_s for o in answered]) if answered else None
    first = [o.first_token_s for o in answered if o.first_token_s is not None]
    costs = [o.cost for o in rows if o.cost is not None]
    total = float(sum(costs)) if costs else None
    successes = passed if graded else len(answered)
    return ArmFigures(
        arm=arm,
        versions=tuple(sorted({o.version for o in rows}, key=lambda v: (v is None, v or 0))),
        requests=len(rows),
        errors=sum(1 for o in rows if o.status >= 500),
        graded=len(graded),
        passed=passed,
        pass_rate=wilson_interval(passed, len(graded)) if graded else None,
        latency_p50_s=float(np.percentile(lat, 50)) if lat is not None else None,
        latency_p95_s=float(np.percentile(lat, 95)) if lat is not None else None,
        first_token_p50_s=float(np.percentile(first, 50)) if first else None,
        cost_per_1k=total / len(rows) * 1000 if total is not None and rows else None,
        cost_per_success=total / successes if total is not None and successes else None,
    )


@dataclass(frozen=True)
class RolloutPromotion:
    """What :func:`promote` did: the gate's promotion and the rollout as it ended."""

    promotion: registry.Promotion
    rollout: RolloutInfo
    online: RolloutStatus


def promote(spec: JobSpec, store: Store, *, min_requests: int | None = None, **gate: Any) -> RolloutPromotion:
    """Promote the running rollout's candidate: it must have answered at least ``min_requests`` canary requests
    (default: the spec's ``rollout.min_requests``; a shadow's answers count too) with the guard not stopping it,
    then pass the promotion gate on the frozen holdout (``gate`` goes to :func:`instil.registry.promote`). The
    rollout ends as ``promoted`` or ``refused`` either way."""
    running = store.running_rollout(spec.name)
    if running is None:
        raise NotFoundError(
            f"job {spec.name!r} has no running rollout to promote",
            hint="start one (`instil rollout start --version N`), or gate directly: `instil promote`",
        )
    online = status(spec, store, running.id)
    if online.guard.stopped:
        ended = store.end_rollout(
            spec.name, "stopped", online.guard.reason(), summary=guard_summary(online.guard), rollout_id=running.id
        )
        raise InstilError(
            f"{ended.ref} was stopped by the guard: {online.guard.reason()}",
            hint="look at its failures (`instil traces list --failed`), train again, and roll the new version out",
        )
    need = spec.rollout.min_requests if min_requests is None else min_requests
    side = online.arm("candidate" if running.mode == "canary" else "shadow")
    answered = side.requests if side is not None else 0
    if answered < need:
        raise InstilError(
            f"{running.ref} has answered {answered} of the {need} requests its {running.mode} needs before promotion",
            hint="let it run longer (`instil rollout status`), or pass --min-requests to accept less evidence",
        )
    model = registry.resolve(store, spec.name, running.version)
    promotion = registry.promote(spec, store, model.version, rollout_id=running.id, **gate)
    ended = next(r for r in store.list_rollouts(spec.name) if r.id == running.id)
    return RolloutPromotion(promotion, ended, online)
