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
    "DecisionInfo",
    "EvaluationInfo",
    "ModelVersion",
    "PinInfo",
    "RunInfo",
    "artifact_info",
    "decision_info",
    "evaluation_info",
    "model_version",
    "pin_info",
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
    """candidate, production, retired (replaced by a promotion), refused (by the gate), rolled_back."""
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


@dataclass(frozen=True)
class DecisionInfo:
    """One registry decision: the promotion gate's verdict on a model version, or a rollback to one."""

    id: int
    job: str
    """The job's name."""
    kind: str
    """``gate`` or ``rollback``."""
    model_id: int
    """The model judged by the gate, or the one a rollback made production."""
    version: int
    """That model's version number within the job."""
    promoted: bool
    """Whether the model became production through this decision (a rollback always makes it production)."""
    created_at: datetime
    """When the decision was recorded (UTC)."""
    reference: str | None = None
    """What the gate compared against: a candidate name (``base+full``, ``<job>@<n>+short``, an endpoint)."""
    reference_model_id: int | None = None
    """The reference's model when it is one; for a rollback, the model rolled back from."""
    reference_version: int | None = None
    """That model's version number."""
    dataset_version_id: int | None = None
    """The frozen holdout version both sides were scored on."""
    run_id: int | None = None
    """The eval run that produced the scores."""
    numbers: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Every number behind the verdict (see :class:`instil.registry.Promotion`)."""

    @property
    def ref(self) -> str:
        """``job@version`` of the model decided on."""
        return f"{self.job}@{self.version}"


@dataclass(frozen=True)
class PinInfo:
    """A named pin of a job pointing at a model version (or, in the history, the removal of one)."""

    id: int
    job: str
    """The job's name."""
    name: str
    """The pin's name (``stable``, ``canary``...)."""
    created_at: datetime
    """When the pin was set or removed (UTC)."""
    model_id: int | None = None
    """The pinned model; None for a row that removed the pin."""
    version: int | None = None
    """That model's version number."""

    @property
    def ref(self) -> str | None:
        """``job@version`` of the pinned model; None for a removal."""
        return f"{self.job}@{self.version}" if self.version is not None else None


# ---- from rows -------------------------------------------------------------------------------------------------------
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


def decision_info(row: m.Decision, version: int, reference_version: int | None) -> DecisionInfo:
    return DecisionInfo(
        id=row.id,
        job=row.job,
        kind=row.kind,
        model_id=row.model_id,
        version=version,
        promoted=bool(row.promoted),
        created_at=utc(row.created_at),
        reference=row.reference,
        reference_model_id=row.reference_model_id,
        reference_version=reference_version,
        dataset_version_id=row.dataset_version_id,
        run_id=row.run_id,
        numbers=dict(row.numbers or {}),
    )


def pin_info(row: m.Pin, version: int | None) -> PinInfo:
    return PinInfo(
        id=row.id,
        job=row.job,
        name=row.name,
        created_at=utc(row.created_at),
        model_id=row.model_id,
        version=version,
    )
