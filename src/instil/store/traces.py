"""The store's traces: writing them exactly once by id, and reading them back through filters.

:class:`~instil.store.Store` calls these inside its transactions; they take a session and never open one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from instil.store import models as m
from instil.store.types import Trace, utc

__all__ = [
    "Outcome",
    "TraceFilter",
    "add_traces",
    "count_traces",
    "delete_traces",
    "query_traces",
    "trace_outcomes",
    "trace_value",
]

_COLUMNS = [c.name for c in m.Trace.__table__.columns]


@dataclass(frozen=True)
class TraceFilter:
    """Which traces to read; every field left None matches everything."""

    job: str | None = None
    model: str | None = None
    """The model name that answered (``<job>@3``, ``<job>:base``, an upstream's model)."""
    version: int | None = None
    source: str | None = None
    """``local`` or ``proxy``."""
    since: datetime | None = None
    until: datetime | None = None
    passed: bool | None = None
    """True: only traces every grader passed; False: only those some grader failed (ungraded ones match neither)."""
    tag: str | None = None
    user: str | None = None
    status: int | None = None
    rollout_id: int | None = None
    arm: str | None = None
    """``production``, ``candidate`` or ``shadow`` (within a rollout)."""
    pair_id: str | None = None
    no_verdict: bool = False
    """True: only traces without a verdict (ungraded, or every grader failed to judge)."""


@dataclass(frozen=True)
class Outcome:
    """What a rollout's figures need of one trace, without its messages."""

    id: str
    created_at: datetime
    arm: str | None
    version: int | None
    status: int
    passed: bool | None
    latency_s: float
    first_token_s: float | None
    cost: float | None
    pair_id: str | None
    output: str | None
    """Only for traces with a ``pair_id`` (a shadow's comparison); None otherwise."""


def trace_outcomes(
    s: Session, f: TraceFilter, after: tuple[datetime, str] | None, before: datetime | None
) -> list[Outcome]:
    """The outcomes of the traces matching ``f`` in arrival order, those after ``(created_at, id)`` and (with
    ``before``) arrived before it."""
    t = m.Trace
    columns = (
        t.id,
        t.created_at,
        t.arm,
        t.version,
        t.status,
        t.passed,
        t.latency_s,
        t.first_token_s,
        t.cost,
        t.pair_id,
    )
    q = _where(select(*columns, t.output), f).order_by(t.created_at.asc(), t.id.asc())
    if after is not None:
        q = q.where((t.created_at > after[0]) | ((t.created_at == after[0]) & (t.id > after[1])))
    if before is not None:
        q = q.where(t.created_at < before)
    out = []
    for row in s.execute(q):
        *head, output = row
        out.append(Outcome(*head, output if head[-1] is not None else None))
    return [dataclasses.replace(o, created_at=utc(o.created_at)) for o in out]


def add_traces(s: Session, traces: Sequence[Trace]) -> int:
    """Insert the traces whose id is not stored yet; returns how many were new. A repeated id is skipped, whether
    it repeats a stored trace or one earlier in ``traces``."""
    fresh: dict[str, Trace] = {}
    for t in traces:
        fresh.setdefault(t.id, t)
    if not fresh:
        return 0
    rows = [_row(t) for t in fresh.values()]
    dialect = s.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    # One statement per batch, duplicates skipped by the database itself: a replay racing a live writer stays exact.
    result = s.execute(insert(m.Trace).on_conflict_do_nothing(index_elements=["id"]).returning(m.Trace.id), rows)
    new = set(result.scalars())
    tags = [{"trace_id": t.id, "tag": tag} for t in fresh.values() if t.id in new for tag in dict.fromkeys(t.tags)]
    if tags:
        s.execute(insert(m.TraceTag).on_conflict_do_nothing(), tags)
    return len(new)


def _row(t: Trace) -> dict[str, Any]:
    d = {c: getattr(t, c) for c in _COLUMNS}
    d["meta"] = dict(t.meta or {})
    return d


def _where(q: Any, f: TraceFilter) -> Any:
    t = m.Trace
    for column, value in (
        (t.job, f.job),
        (t.model, f.model),
        (t.version, f.version),
        (t.source, f.source),
        (t.passed, f.passed),
        (t.user, f.user),
        (t.status, f.status),
        (t.rollout_id, f.rollout_id),
        (t.arm, f.arm),
        (t.pair_id, f.pair_id),
    ):
        if value is not None:
            q = q.where(column == value)
    if f.no_verdict:
        q = q.where(t.passed.is_(None))
    if f.since is not None:
        q = q.where(t.created_at >= f.since)
    if f.until is not None:
        q = q.where(t.created_at < f.until)
    if f.tag is not None:
        q = q.where(t.id.in_(select(m.TraceTag.trace_id).where(m.TraceTag.tag == f.tag)))
    return q


def query_traces(
    s: Session, f: TraceFilter, *, limit: int | None = 100, offset: int = 0, oldest_first: bool = False
) -> list[Trace]:
    order = (m.Trace.created_at.asc(), m.Trace.id.asc()) if oldest_first else (m.Trace.created_at.desc(), m.Trace.id)
    q = _where(select(m.Trace), f).order_by(*order).offset(offset)
    if limit is not None:
        q = q.limit(limit)
    rows = list(s.scalars(q))
    tags: dict[str, list[str]] = {}
    if rows:
        ids = [r.id for r in rows]
        for trace_id, tag in s.execute(
            select(m.TraceTag.trace_id, m.TraceTag.tag).where(m.TraceTag.trace_id.in_(ids)).order_by(m.TraceTag.tag)
        ):
            tags.setdefault(trace_id, []).append(tag)
    return [trace_value(r, tags.get(r.id, ())) for r in rows]


def count_traces(s: Session, f: TraceFilter) -> int:
    return int(s.scalar(_where(select(func.count()).select_from(m.Trace), f)) or 0)


def delete_traces(s: Session, f: TraceFilter) -> int:
    ids = select(m.Trace.id)
    ids = _where(ids, f)
    doomed = list(s.scalars(ids))
    for k in range(0, len(doomed), 500):  # bounded IN lists; tags go with them (no reliance on SQLite's FK pragma)
        chunk = doomed[k : k + 500]
        s.execute(delete(m.TraceTag).where(m.TraceTag.trace_id.in_(chunk)))
        s.execute(delete(m.Trace).where(m.Trace.id.in_(chunk)))
    return len(doomed)


def trace_value(row: m.Trace, tags: Sequence[str] = ()) -> Trace:
    d = {c: getattr(row, c) for c in _COLUMNS}
    d["created_at"] = utc(row.created_at)
    return Trace(**d, tags=tuple(tags))
