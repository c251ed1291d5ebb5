"""`instil run --watch`: the loop's next turns by themselves, from production's own traffic.

    from instil.watch import turn, watch
    outcome = turn(spec, store)              # one look, from wherever things stand; outcome.action says what it did
    watch(spec, store, interval_s=300)       # a look every 5 minutes until Ctrl-C

Each look (:func:`turn`) does the one thing that is next:

1. a canary it started is running: once the candidate has answered ``rollout.min_requests`` requests, promote it
   through the gate (:func:`instil.rollout.promote`), otherwise wait (a canary its guard stopped is over: its
   failures are collected like any other); a rollout started by hand is left alone;
2. otherwise collect the review queue (:func:`instil.review.collect`) and run the monitor; when retraining is not
   due (``force`` aside), wait;
3. retraining is due: fold every reviewed correction (:func:`instil.review.corrections`, the holdout kept out) into
   the training data; when that adds nothing the production model did not already learn from, say how many items
   wait in the review queue and wait (unreviewed failures are not training data);
4. train the next version, gate it on the frozen holdout (a dry run: promotion waits for the canary; its evaluation
   is recorded); refused, the turn ends (data a version was trained on is never trained on again); passed, a canary
   of it starts, and a running server routes to it within a second.

Nothing is promoted that the gate did not pass on the frozen holdout and that the canary's guard did not let through.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from instil import registry, review, rollout
from instil.errors import InstilError
from instil.jobdata import dataset_name
from instil.learn import fold_corrections
from instil.monitor import MonitorReport, monitor
from instil.registry import Promotion
from instil.spec import JobSpec
from instil.store import DatasetVersion, ModelVersion, RolloutInfo, Store

__all__ = ["TurnOutcome", "turn", "watch"]


@dataclass(frozen=True)
class TurnOutcome:
    """What one look did."""

    action: str
    """``waiting`` (nothing due), ``nothing to learn``, ``canary running``, ``canary stopped``, ``refused``
    (by the gate), ``canary started``, ``promoted``, ``error`` (said; the next look tries again)."""
    detail: str
    report: MonitorReport | None = None
    model: ModelVersion | None = None
    promotion: Promotion | None = None
    rollout: RolloutInfo | None = None


def turn(
    spec: JobSpec, store: Store, *, force: bool = False, max_steps: int | None = None, progress: bool = False
) -> TurnOutcome:
    """One look (see the module doc); ``force`` retrains whether or not the monitor says it is due, ``max_steps``
    caps the training run."""
    job = spec.name
    running = store.running_rollout(job)
    if running is not None and running.settings.get("started_by") != "watch":
        return TurnOutcome("waiting", f"a rollout of {running.ref} started by hand is running", rollout=running)
    if running is not None:
        s = rollout.status(spec, store, running.id)
        if s.guard.stopped:  # every server's traffic together shows it worse: over, whoever ends it first
            with contextlib.suppress(InstilError):
                store.end_rollout(job, "stopped", "stopped by the guard (all traces): " + s.guard.reason(),
                                  summary=rollout.guard_summary(s.guard), rollout_id=running.id)  # fmt: skip
            return TurnOutcome("canary stopped", f"{running.ref}: {s.guard.reason()}", rollout=running)
        side = s.arm("candidate")
        answered = side.requests if side is not None else 0
        if answered < spec.rollout.min_requests:
            return TurnOutcome(
                "canary running",
                f"{running.ref} has answered {answered} of {spec.rollout.min_requests} requests; {s.guard.reason()}",
                rollout=running,
            )
        done = rollout.promote(spec, store)
        verdict = "promoted" if done.promotion.promoted else "refused"
        return TurnOutcome(verdict, done.promotion.summary().split("\n")[0], promotion=done.promotion,
                           rollout=done.rollout)  # fmt: skip

    review.collect(spec, store)
    report = monitor(spec, store)
    if not report.retrain_due and not force:
        return TurnOutcome("waiting", "no drift and no call to retrain", report=report)

    production = store.production_model(job)
    if production is None:
        return TurnOutcome("waiting", "the job has no production version yet: promote one first", report=report)
    out = review.corrections(spec, store)
    train = _split_train(spec, store)
    merged, _ = (train, 0) if out.corrections is None else fold_corrections(spec, store, train, out.corrections)
    # Data any version was trained on (production, or a candidate refused or stopped) is nothing new.
    learnt = {d.sha256 for m in store.list_models(job) for d in store.trace_model(m)}
    if merged.sha256 in learnt:
        waiting = store.count_review_items(job)["open"]
        return TurnOutcome(
            "nothing to learn",
            f"retraining is due ({'; '.join(report.reasons) or 'forced'}), but no reviewed correction is new: "
            f"{waiting} items wait in the review queue (`instil review`)",
            report=report,
        )

    from instil.train.sft import train_sft  # the training stack loads only when a turn trains

    model = train_sft(spec, store, dataset=merged, max_steps=max_steps, progress=progress).model
    gate = registry.promote(spec, store, model.version, dry_run=True)  # its evaluation is recorded all the same
    if not gate.decision.promoted:
        return TurnOutcome("refused", gate.summary().split("\n")[0], report=report, model=model, promotion=gate)
    started = rollout.start(spec, store, model.version, started_by="watch")
    return TurnOutcome(
        "canary started",
        f"{model.ref} passed the gate on the holdout ({gate.summary().split(chr(10))[0]}); a canary on "
        f"{started.percent:g}% of requests now",
        report=report,
        model=model,
        promotion=gate,
        rollout=started,
    )


def _split_train(spec: JobSpec, store: Store) -> DatasetVersion:
    """The training split itself: the newest training version no corrections were folded into (so a correction
    changed or discarded since is folded in as it stands now, not as it was)."""
    versions = store.list_versions(dataset_name(spec, "train"))
    plain = [v for v in versions if "corrections" not in (v.meta or {})]
    return plain[-1] if plain else versions[-1]


def watch(
    spec: JobSpec,
    store: Store,
    *,
    interval_s: float = 300.0,
    max_turns: int | None = None,
    on_turn: Callable[[TurnOutcome], None] | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> list[TurnOutcome]:
    """Look every ``interval_s`` seconds (at most ``max_turns`` times; None: until interrupted), calling ``on_turn``
    with each outcome; returns them."""
    if interval_s <= 0:
        raise InstilError(f"the interval between looks must be above 0 seconds, not {interval_s}")
    outcomes: list[TurnOutcome] = []
    while max_turns is None or len(outcomes) < max_turns:
        try:
            outcome = turn(spec, store, max_steps=max_steps, progress=progress)
        except InstilError as e:  # a store hiccup, a holdout changed under a gate: said, and the next look retries
            outcome = TurnOutcome("error", f"{e}" + (f" ({e.hint})" if e.hint else ""))
        outcomes.append(outcome)
        if on_turn is not None:
            on_turn(outcome)
        if max_turns is not None and len(outcomes) >= max_turns:
            break
        time.sleep(interval_s)
    return outcomes
