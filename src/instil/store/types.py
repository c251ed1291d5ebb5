"""What the store hands back: frozen dataclasses detached from any database session.

The ORM rows in ``models.py`` never leave :class:`~instil.store.Store`; callers get these plain values, which stay
valid after the store is closed and can be compared, hashed and pickled. The ``*_info``/``model_version`` functions
at the end turn rows into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from instil.store import models as m

__all__ = [
    "ArtifactInfo",
    "DatasetVersion",
    "EvaluationInfo",
    "ModelVersion",
    "RunInfo",
    "artifact_info",
    "evaluation_info",
    "model_version",
    "utc",
]


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable version of a named dataset."""

    id: int
    """The version's id in the store (unique across all datasets)."""
    name: str
    """The dataset's name."""
    version: int
    """1, 2, 3... within the dataset."""
    sha256: str
    """Content hash: sha256 of the canonical JSONL, also the name of the blob holding the examples."""
    kind: str
    """raw, curated, train, holdout, pool..."""
    n_examples: int
    """Number of examples."""
    bytes: int
    """Size of the blob file."""
    created_at: datetime
    """When the version was recorded (UTC)."""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Free-form metadata given when it was stored."""
    frozen: bool = False
    """A frozen version (the holdout) must never be handed to training."""
    parents: tuple[int, ...] = ()
    """Ids of the versions it was derived from."""

    @property
    def ref(self) -> str:
        """``name@version``, the form the CLI accepts."""
        return f"{self.name}@{self.version}"

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]


@dataclass(frozen=True)
class RunInfo:
    """One run of a stage of a job."""

    id: int
    job: str
    """The job's name."""
    kind: str
    """curate, split, train, eval..."""
    status: str
    """running, succeeded, failed or cancelled."""
    config: dict[str, Any] = field(hash=False, compare=False)
    """The resolved configuration the run used."""
    created_at: datetime
    """When the run started (UTC)."""
    finished_at: datetime | None = None
    """When it finished; None while running."""
    metrics: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    """Summary metrics recorded when it finished."""
    error: str | None = None
    """What went wrong, for a failed run."""
    datasets: tuple[tuple[int, str], ...] = ()
    """(dataset version id, role) for each dataset version the run read or wrote."""


@dataclass(frozen=True)
class ModelVersion:
    """A trained model version of a job."""

    id: int
    job: str
    """The job the model belongs to."""
    version: int
    """1, 2, 3... within the job."""
    base_model: str
    """The model it was fine-tuned from (Hugging Face id or path)."""
    path: str
    """Where the weights (or adapter) are."""
    status: str
    """candidate, promoted, retired..."""
    created_at: datetime
    run_id: int | None = None
    """The training run that produced it."""
    revision: str | None = None
    """The base model's revision (commit hash)."""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.job}@{self.version}"


@dataclass(frozen=True)
class EvaluationInfo:
    """Metrics of one candidate on one dataset version."""

    id: int
    run_id: int
    candidate: str
    """What was evaluated: ``prompt``, ``base``, ``model:<job>@<version>``..."""
    dataset_version_id: int
    metrics: dict[str, Any] = field(hash=False, compare=False)
    created_at: datetime
    model_id: int | None = None


@dataclass(frozen=True)
class ArtifactInfo:
    """A file a run produced."""

    id: int
    run_id: int
    kind: str
    """checkpoint, report, plot..."""
    path: str
    created_at: datetime
    sha256: str | None = None
    """Hash of the file when it was recorded, if taken."""


# ---- from rows --------------------------------------------------------------------------------------------------
def utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime: SQLite hands back naive ones, and every timestamp the store writes is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def model_version(row: m.Model) -> ModelVersion:
    return ModelVersion(
        id=row.id,
        job=row.job,
        version=row.version,
        base_model=row.base_model,
        path=row.path,
        status=row.status,
        created_at=utc(row.created_at),
        run_id=row.run_id,
        revision=row.revision,
        meta=dict(row.meta or {}),
    )


def evaluation_info(row: m.Evaluation) -> EvaluationInfo:
    return EvaluationInfo(
        id=row.id,
        run_id=row.run_id,
        candidate=row.candidate,
        dataset_version_id=row.dataset_version_id,
        metrics=dict(row.metrics),
        created_at=utc(row.created_at),
        model_id=row.model_id,
    )


def artifact_info(row: m.Artifact) -> ArtifactInfo:
    return ArtifactInfo(
        id=row.id,
        run_id=row.run_id,
        kind=row.kind,
        path=row.path,
        created_at=utc(row.created_at),
        sha256=row.sha256,
    )
