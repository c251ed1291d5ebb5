"""The store's rollouts: starting one (at most one runs per job), ending it, reading them back.

:class:`~instil.store.Store` calls these inside its transactions; they take a session and never open one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from instil.errors import InstilError, NotFoundError
from instil.store import models as m
from instil.store.types import RolloutInfo, rollout_info

__all__ = ["ROLLOUT_ENDINGS", "ROLLOUT_MODES", "end_rollout", "list_rollouts", "rollout_value", "start_rollout"]

ROLLOUT_MODES = ("canary", "shadow")
ROLLOUT_ENDINGS = ("promoted", "aborted", "stopped", "refused", "replaced")


def rollout_value(s: Session, row: m.Rollout) -> RolloutInfo:
    ids = [i for i in (row.model_id, row.production_model_id) if i is not None]
    versions = {i: v for i, v in s.execute(select(m.Model.id, m.Model.version).where(m.Model.id.in_(ids)))}
    production = versions.get(row.production_model_id) if row.production_model_id is not None else None
    return rollout_info(row, versions[row.model_id], production)


def _running(s: Session, job: str) -> m.Rollout | None:
    q = select(m.Rollout).where(m.Rollout.job == job, m.Rollout.status == "running").order_by(m.Rollout.id.desc())
    return s.scalars(q.limit(1)).first()


def start_rollout(
    s: Session,
    job: str,
    model: m.Model,
    production: m.Model | None,
    mode: str,
    percent: float,
    settings: dict[str, Any],
) -> RolloutInfo:
    """Start a rollout of ``model``. A running rollout of the same model is replaced (a canary turned into a shadow,
    a new share); one of another model is refused."""
    if mode not in ROLLOUT_MODES:
        raise InstilError(f"unknown rollout mode {mode!r}", hint=f"use one of: {', '.join(ROLLOUT_MODES)}")
    if not 0 < percent <= 100:
        raise InstilError(f"the rollout's share ({percent}%) must be above 0 and at most 100")
    now = datetime.now(UTC)
    running = _running(s, job)
    if running is not None:
        if running.model_id != model.id:
            other = rollout_value(s, running)
            raise InstilError(
                f"{other.ref} is already being rolled out ({other.mode}, since {other.started_at:%Y-%m-%d %H:%M} "
                "UTC); one rollout runs per job",
                hint="end it first: `instil rollout abort` (or `instil rollout promote`)",
            )
        running.status, running.ended_at = "replaced", now
        running.reason = f"replaced by a {mode} at {percent:g}%"
    row = m.Rollout(
        job=job,
        model_id=model.id,
        production_model_id=production.id if production is not None else None,
        mode=mode,
        percent=float(percent),
        settings=dict(settings),
        status="running",
        started_at=now,
    )
    s.add(row)
    s.flush()
    return rollout_value(s, row)


def end_rollout(
    s: Session, job: str, status: str, reason: str, summary: dict[str, Any] | None, rollout_id: int | None
) -> RolloutInfo:
    """End the job's running rollout (only if it is ``rollout_id``, when given: a guard never ends a newer one)."""
    if status not in ROLLOUT_ENDINGS:
        raise InstilError(f"a rollout cannot end as {status!r}", hint=f"one of: {', '.join(ROLLOUT_ENDINGS)}")
    row = _running(s, job)
    if row is None or (rollout_id is not None and row.id != rollout_id):
        raise NotFoundError(
            f"job {job!r} has no running rollout" + (f" {rollout_id}" if rollout_id is not None else ""),
            hint="`instil rollout status` shows its rollouts; start one with `instil rollout start`",
        )
    row.status, row.reason, row.ended_at = status, reason, datetime.now(UTC)
    row.summary = dict(summary) if summary is not None else None
    s.flush()
    return rollout_value(s, row)


def list_rollouts(s: Session, job: str, *, running: bool = False) -> list[RolloutInfo]:
    q = select(m.Rollout).where(m.Rollout.job == job)
    if running:
        q = q.where(m.Rollout.status == "running")
    return [rollout_value(s, r) for r in s.scalars(q.order_by(m.Rollout.id))]
