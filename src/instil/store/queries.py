"""Queries shared by the store's methods, each run inside the caller's session: rows in, frozen values out.

with session_factory() as s:
    version = dataset_version(s, row)          # with its dataset's name and its parents' ids
    ancestors(s, [version.id])                 # every ancestor, nearest first
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from instil.store import models as m
from instil.store.types import DatasetVersion, RunInfo, utc

__all__ = ["ancestors", "dataset_version", "run_info", "version_listing"]


def ancestors(s: Session, start: list[int]) -> list[DatasetVersion]:
    """Every ancestor of the versions ``start`` (parents, their parents...), nearest first, each once."""
    seen: set[int] = set(start)
    order: list[int] = []
    frontier = list(start)
    while frontier:  # breadth first: one query per generation, not per version
        parents = s.scalars(
            select(m.DatasetParent.parent_id)
            .where(m.DatasetParent.child_id.in_(frontier))
            .order_by(m.DatasetParent.parent_id)
        )
        frontier = [p for p in dict.fromkeys(parents) if p not in seen]
        seen.update(frontier)
        order.extend(frontier)
    return [dataset_version(s, s.get_one(m.DatasetVersionRow, i)) for i in order]


def dataset_version(s: Session, row: m.DatasetVersionRow, name: str | None = None) -> DatasetVersion:
    """The frozen value of a version row; ``name`` saves a lookup when the caller knows it."""
    if name is None:
        name = s.get_one(m.Dataset, row.dataset_id).name
    parents = s.scalars(
        select(m.DatasetParent.parent_id).where(m.DatasetParent.child_id == row.id).order_by(m.DatasetParent.parent_id)
    )
    return DatasetVersion(
        id=row.id,
        name=name,
        version=row.version,
        sha256=row.sha256,
        kind=row.kind,
        n_examples=row.n_examples,
        bytes=row.bytes,
        created_at=utc(row.created_at),
        meta=dict(row.meta or {}),
        frozen=bool(row.frozen),
        parents=tuple(parents),
    )


def version_listing(s: Session, dataset_id: int) -> str:
    """The last ten versions of a dataset, one phrase each, for error hints."""
    rows = list(
        s.scalars(
            select(m.DatasetVersionRow)
            .where(m.DatasetVersionRow.dataset_id == dataset_id)
            .order_by(m.DatasetVersionRow.version.desc())
            .limit(10)
        )
    )
    return ", ".join(f"{r.version} ({r.sha256[:12]}, {r.kind}, {r.n_examples} examples)" for r in reversed(rows))


def run_info(s: Session, run: m.Run) -> RunInfo:
    """The frozen value of a run row, with the dataset versions linked to it."""
    links = s.execute(
        select(m.RunDataset.dataset_version_id, m.RunDataset.role)
        .where(m.RunDataset.run_id == run.id)
        .order_by(m.RunDataset.dataset_version_id, m.RunDataset.role)
    ).all()
    return RunInfo(
        id=run.id,
        job=run.job,
        kind=run.kind,
        status=run.status,
        config=dict(run.config or {}),
        created_at=utc(run.created_at),
        finished_at=utc(run.finished_at) if run.finished_at else None,
        metrics=dict(run.metrics) if run.metrics is not None else None,
        error=run.error,
        datasets=tuple((v, r) for v, r in links),
        pid=run.pid,
        host=run.host,
        heartbeat_at=utc(run.heartbeat_at) if run.heartbeat_at else None,
    )
