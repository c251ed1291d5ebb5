"""What the store hands back: frozen dataclasses detached from any database session.

The ORM rows in ``models.py`` never leave :class:`~instil.store.Store`; callers get these plain values, which stay
valid after the store is closed and can be compared, hashed and pickled. The ``*_info``/``model_version`` functions
at the end turn rows into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from instil.store import models as m

__all__ = [
    "ArtifactInfo",
    "DatasetVersion",
    "DecisionInfo",
    "EvaluationInfo",
    "ModelVersion",
    "PinInfo",
    "ReviewItem",
    "RolloutInfo",
    "RunInfo",
    "Trace",
    "artifact_info",
    "decision_info",
    "evaluation_info",
    "model_version",
    "pin_info",
    "resolve_path",
    "review_item",
    "rollout_info",
    "store_meta",
    "store_path",
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
    """running, succeeded, failed, cancelled, or interrupted (its process died before it could say how it ended)."""
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
    pid: int | None = None
    """The process that ran it, on ``host`` (None for runs recorded before instil kept them)."""
    host: str | None = None
    heartbeat_at: datetime | None = None
    """Its last sign of life."""

    @property
    def resumed_from(self) -> tuple[int | None, int] | None:
        """(run id, step) of the checkpoint a resumed training run continued from; None for a fresh start."""
        resumed = self.config.get("resumed_from")
        if not isinstance(resumed, dict) or not isinstance(resumed.get("step"), int):
            return None
        run_id = resumed.get("run_id")
        return (run_id if isinstance(run_id, int) else None, resumed["step"])


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


@dataclass(frozen=True)
class ReviewItem:
    """An answer in the review queue (see :mod:`instil.review`); ``id`` is None until the store holds it."""

    job: str
    kind: str
    """``failed``, ``disagreement``, ``feedback`` or ``unscored``."""
    key: str
    """What makes it one item: the same key collected twice is one item."""
    messages: list[dict[str, Any]]
    """The conversation up to the answer, as the model saw it."""
    output: str | None = None
    """The answer under review."""
    tool_calls: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    suggestion: str | None = None
    """Another answer on offer: the shadow's, the user's correction, a reference answer."""
    reason: str | None = None
    rating: float | None = None
    trace_id: str | None = None
    other_trace_id: str | None = None
    version: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "open"
    """``open``, ``accepted``, ``corrected`` or ``discarded``."""
    correction: str | None = None
    """The answer decided on."""
    decided_by: str | None = None
    decided_at: datetime | None = None
    created_at: datetime | None = None
    id: int | None = None


@dataclass(frozen=True)
class RolloutInfo:
    """A candidate version put in front of a job's traffic (see :mod:`instil.rollout`)."""

    id: int
    job: str
    model_id: int
    version: int
    """The candidate's version number."""
    mode: str
    """``canary`` (``percent`` of requests answered by the candidate) or ``shadow`` (the candidate also answers
    ``percent`` of them, in the background; callers get production's answer)."""
    percent: float
    status: str
    """``running``, ``promoted``, ``aborted``, ``stopped`` (by the guard), ``refused`` (by the gate), ``replaced``."""
    started_at: datetime
    production_version: int | None = None
    """The production version when it started."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The guard's settings: ``alpha``, ``margin``."""
    reason: str | None = None
    summary: dict[str, Any] | None = None
    ended_at: datetime | None = None

    @property
    def ref(self) -> str:
        """The candidate as ``job@version``."""
        return f"{self.job}@{self.version}"

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class Trace:
    """One answered request, as captured by ``instil serve`` (see :mod:`instil.serve.capture`) and kept in the store.

    ``to_dict``/``from_dict`` are its JSON form: a spool line, ``instil traces --json``, a Parquet row."""

    id: str
    """The response's id (``chatcmpl-...``): the same answer captured twice is one trace."""
    job: str
    created_at: datetime
    """When the request arrived (UTC)."""
    source: str
    """``local`` (a model this server loaded) or ``proxy`` (an upstream answered)."""
    model: str
    """The model name that answered: ``<job>@3``, ``<job>:base``, or the upstream's model."""
    messages: list[dict[str, Any]]
    """The conversation as the model saw it (the default system prompt included when the server added it)."""
    status: int = 200
    """The HTTP status the client got."""
    output: str | None = None
    """The answer's text (tool-call blocks included for a local model; the message content from an upstream)."""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    version: int | None = None
    """The job's model version that answered (None for the base or an upstream)."""
    upstream: str | None = None
    """The named upstream that answered, in proxy mode."""
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """The request's other settings (temperature, max_tokens, response_format...)."""
    error: dict[str, Any] | None = None
    """The error body the client got, for a status other than 200."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    """Seconds from arrival to the last byte of the answer, queueing included."""
    first_token_s: float | None = None
    """Seconds from arrival to the first token (None: no token came)."""
    cost: float | None = None
    """From the spec's prices (None when none apply)."""
    user: str | None = None
    """The request's ``user`` field."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The request's ``metadata`` field."""
    tags: tuple[str, ...] = ()
    grades: dict[str, dict[str, Any]] | None = None
    """The job's graders on the output, ``{name: {"value", "passed", "reason"}}``; None: not graded."""
    passed: bool | None = None
    """Whether every grader passed (None: not graded)."""
    redacted: bool = False
    """Whether PII was masked at capture."""
    rollout_id: int | None = None
    """The rollout that routed the request (None: none was running, or the request named a version itself)."""
    arm: str | None = None
    """Its side of that rollout: ``production``, ``candidate`` (a canary's) or ``shadow``."""
    pair_id: str | None = None
    """Shared by a shadowed request's production trace and its shadow's."""

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["created_at"] = self.created_at.isoformat()
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["created_at"] = utc(datetime.fromisoformat(known["created_at"]))
        known["tags"] = tuple(known.get("tags") or ())
        return cls(**known)


# ---- paths: relative to the home inside it --------------------------------------------------------------------------
def store_path(path: str | Path, home: Path) -> str:
    """How the store records ``path``: relative to ``home`` (POSIX separators) when it lies inside it, so the home
    can be moved, copied or restored and still name its own files; otherwise absolute."""
    absolute = Path(path).expanduser().resolve()
    try:
        return PurePosixPath(*absolute.relative_to(home.expanduser().resolve()).parts).as_posix()
    except ValueError:
        return str(absolute)


def resolve_path(stored: str, home: Path) -> str:
    """The absolute path a recorded path names today: a relative one is inside ``home``, wherever it is now."""
    path = Path(stored)
    return str(path if path.is_absolute() else home.expanduser().resolve() / path)


_IN_HOME = "path_in_home"
"""Set in a stored ``model_info`` whose ``path`` the store made relative to the home (a hub id looks relative too)."""


def store_meta(meta: dict[str, Any], home: Path) -> dict[str, Any]:
    """A model's meta as the store records it: ``model_info.path`` (the base it was trained from; for ``tiny``, a
    folder in the home) relative to the home when it lies inside it."""
    info = meta.get("model_info")
    if isinstance(info, dict) and isinstance(info.get("path"), str) and Path(info["path"]).is_absolute():
        stored = store_path(info["path"], home)
        if not Path(stored).is_absolute():
            return {**meta, "model_info": {**info, "path": stored, _IN_HOME: True}}
    return meta


def _resolve_meta(meta: dict[str, Any], home: Path) -> dict[str, Any]:
    info = meta.get("model_info")
    if isinstance(info, dict) and info.get(_IN_HOME) and isinstance(info.get("path"), str):
        info = {k: v for k, v in info.items() if k != _IN_HOME}
        return {**meta, "model_info": {**info, "path": resolve_path(info["path"], home)}}
    return meta


# ---- from rows -------------------------------------------------------------------------------------------------------
def utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime: SQLite hands back naive ones, and every timestamp the store writes is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def model_version(row: m.Model, home: Path) -> ModelVersion:
    """The row's value, its paths resolved against ``home``."""
    return ModelVersion(
        id=row.id,
        job=row.job,
        version=row.version,
        base_model=row.base_model,
        path=resolve_path(row.path, home),
        status=row.status,
        created_at=utc(row.created_at),
        run_id=row.run_id,
        revision=row.revision,
        meta=_resolve_meta(dict(row.meta or {}), home),
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


def artifact_info(row: m.Artifact, home: Path) -> ArtifactInfo:
    return ArtifactInfo(
        id=row.id,
        run_id=row.run_id,
        kind=row.kind,
        path=resolve_path(row.path, home),
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


def rollout_info(row: m.Rollout, version: int, production_version: int | None) -> RolloutInfo:
    return RolloutInfo(
        id=row.id,
        job=row.job,
        model_id=row.model_id,
        version=version,
        mode=row.mode,
        percent=float(row.percent),
        status=row.status,
        started_at=utc(row.started_at),
        production_version=production_version,
        settings=dict(row.settings or {}),
        reason=row.reason,
        summary=dict(row.summary) if row.summary is not None else None,
        ended_at=utc(row.ended_at) if row.ended_at is not None else None,
    )


def review_item(row: m.ReviewItem) -> ReviewItem:
    return ReviewItem(
        job=row.job,
        kind=row.kind,
        key=row.key,
        messages=list(row.messages or []),
        output=row.output,
        tool_calls=row.tool_calls,
        tools=row.tools,
        suggestion=row.suggestion,
        reason=row.reason,
        rating=row.rating,
        trace_id=row.trace_id,
        other_trace_id=row.other_trace_id,
        version=row.version,
        meta=dict(row.meta or {}),
        status=row.status,
        correction=row.correction,
        decided_by=row.decided_by,
        decided_at=utc(row.decided_at) if row.decided_at is not None else None,
        created_at=utc(row.created_at),
        id=row.id,
    )
