"""The store's review queue: adding items once by key, reading them, recording decisions.

:class:`~instil.store.Store` calls these inside its transactions; they take a session and never open one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from instil.errors import InstilError, NotFoundError
from instil.store import models as m
from instil.store.types import ReviewItem, review_item

__all__ = ["REVIEW_KINDS", "REVIEW_STATUSES", "add_review_items", "count_review_items", "decide_review_items",
           "list_review_items"]  # fmt: skip

REVIEW_KINDS = ("failed", "disagreement", "feedback", "unscored")
REVIEW_STATUSES = ("open", "accepted", "corrected", "discarded")


def add_review_items(s: Session, items: Sequence[ReviewItem], replace: bool = False) -> list[ReviewItem]:
    """Insert the items whose key is new; returns those inserted (an item collected again is not). With
    ``replace``, an item whose key is known replaces what it says (and is open again), and is returned too."""
    fresh: dict[str, ReviewItem] = {}
    for it in items:
        if it.kind not in REVIEW_KINDS:
            raise InstilError(f"unknown review item kind {it.kind!r}", hint=f"one of: {', '.join(REVIEW_KINDS)}")
        fresh.setdefault(it.key, it)
    if not fresh:
        return []
    known: set[str] = set()
    keys = list(fresh)
    for k in range(0, len(keys), 500):
        known.update(s.scalars(select(m.ReviewItem.key).where(m.ReviewItem.key.in_(keys[k : k + 500]))))
    now = datetime.now(UTC)
    rows = []
    if replace and known:
        for row in s.scalars(select(m.ReviewItem).where(m.ReviewItem.key.in_(list(known)))):
            it = fresh[row.key]
            if (row.suggestion, row.reason, row.rating) == (it.suggestion, it.reason, it.rating):
                rows.append(row)  # the same said again (a retry): the decision on it stands
                continue
            row.output, row.tool_calls, row.suggestion = it.output, it.tool_calls, it.suggestion
            row.reason, row.rating, row.meta = it.reason, it.rating, dict(it.meta)
            row.status, row.correction, row.decided_by, row.decided_at = "open", None, None, None
            row.created_at = it.created_at or now
            rows.append(row)
    for it in fresh.values():
        if it.key in known:
            continue
        row = m.ReviewItem(
            job=it.job, kind=it.kind, key=it.key, trace_id=it.trace_id, other_trace_id=it.other_trace_id,
            version=it.version, messages=list(it.messages), tools=it.tools, output=it.output, tool_calls=it.tool_calls,
            suggestion=it.suggestion, reason=it.reason, rating=it.rating, meta=dict(it.meta), status="open",
            created_at=it.created_at or now,
        )  # fmt: skip
        s.add(row)
        rows.append(row)
    s.flush()
    return [review_item(r) for r in rows]


def list_review_items(
    s: Session,
    job: str,
    *,
    status: str | None = None,
    kind: str | None = None,
    ids: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[ReviewItem]:
    q = select(m.ReviewItem).where(m.ReviewItem.job == job)
    if status is not None:
        q = q.where(m.ReviewItem.status == status)
    if kind is not None:
        q = q.where(m.ReviewItem.kind == kind)
    if ids is not None:
        wanted = list(ids)
        if len(wanted) > 500:  # bounded IN lists: the rest filtered here
            chosen = set(wanted)
            return [i for i in list_review_items(s, job, status=status, kind=kind, limit=None) if i.id in chosen][
                : limit if limit is not None else None
            ]
        q = q.where(m.ReviewItem.id.in_(wanted))
    q = q.order_by(m.ReviewItem.id)
    if limit is not None:
        q = q.limit(limit)
    return [review_item(r) for r in s.scalars(q)]


def count_review_items(s: Session, job: str) -> dict[str, int]:
    q = select(m.ReviewItem.status, func.count()).where(m.ReviewItem.job == job).group_by(m.ReviewItem.status)
    counts = dict.fromkeys(REVIEW_STATUSES, 0)
    counts.update({status: int(n) for status, n in s.execute(q)})
    return counts


def decide_review_items(
    s: Session, job: str, decisions: dict[int, tuple[str, str | None]], by: str
) -> list[ReviewItem]:
    """Record ``{item id: (status, correction)}`` for the job's items, by ``by``, now."""
    if not by.strip():
        raise InstilError("a review decision needs a reviewer's name", hint="pass who decided (by=...)")
    wanted = list(decisions)
    rows: dict[int, m.ReviewItem] = {}
    for k in range(0, len(wanted), 500):  # bounded IN lists
        rows.update({r.id: r for r in s.scalars(select(m.ReviewItem).where(m.ReviewItem.id.in_(wanted[k : k + 500])))})
    missing = [i for i in decisions if i not in rows or rows[i].job != job]
    if missing:
        raise NotFoundError(f"job {job!r} has no review items {missing}", hint="`instil review --list` shows them")
    now = datetime.now(UTC)
    for i, (status, correction) in decisions.items():
        if status not in REVIEW_STATUSES:
            raise InstilError(f"unknown review status {status!r}", hint=f"one of: {', '.join(REVIEW_STATUSES)}")
        row = rows[i]
        row.status, row.correction = status, correction
        row.decided_by, row.decided_at = (by[:128], now) if status != "open" else (None, None)
    s.flush()
    return [review_item(rows[i]) for i in decisions]
