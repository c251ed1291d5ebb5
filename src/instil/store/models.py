"""The store's tables as SQLAlchemy 2.x ORM classes: metadata and lineage, never the examples themselves.

Examples live in content-addressed blob files (see ``blobs.py``); a dataset version row only names its blob by hash.
The schema is created and changed by the hand-written Alembic migrations in ``migrations/versions/``, never by
``create_all``: a test checks that the migrations produce exactly this metadata. Add a column here and a migration
there, together.

JSON columns use SQLAlchemy's portable ``JSON`` type, so the same code runs on SQLite and PostgreSQL. Timestamps are
written in UTC by the API (not by server defaults) so both databases store the same values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Artifact",
    "Base",
    "Dataset",
    "DatasetParent",
    "DatasetVersionRow",
    "Decision",
    "Evaluation",
    "Model",
    "Pin",
    "ReviewItem",
    "Rollout",
    "Run",
    "RunDataset",
    "Trace",
    "TraceTag",
]

# Named constraints, so later migrations can alter them by name (SQLite's batch mode needs the names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_TS = DateTime(timezone=True)


class Dataset(Base):
    """A named dataset; its content lives in numbered, immutable versions."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    """The user's name for the dataset; a database value only, never part of a file path."""
    created_at: Mapped[datetime] = mapped_column(_TS)


class DatasetVersionRow(Base):
    """One immutable version of a dataset: a content hash, the blob holding its examples, and a few counts."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    """1, 2, 3... per dataset."""
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    """sha256 of the canonical JSONL: the content hash and the blob's name at once."""
    kind: Mapped[str] = mapped_column(String(32))
    """What the version is for: raw, curated, train, holdout, pool..."""
    n_examples: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(Integer)
    """Size of the blob file."""
    created_at: Mapped[datetime] = mapped_column(_TS)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Free-form metadata (source files, curation report summary...)."""
    frozen: Mapped[bool] = mapped_column(Boolean)
    """A frozen version (the holdout) must never be handed to training."""


class DatasetParent(Base):
    """Lineage: ``child`` was derived from ``parent`` (curated from raw, split from curated...)."""

    __tablename__ = "dataset_parents"

    child_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Run(Base):
    """One execution of a stage (curate, split, train, eval...) of a job."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    """running, succeeded, failed, cancelled, or interrupted (its process died without saying how it ended)."""
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The resolved configuration the run used (enough to repeat it)."""
    created_at: Mapped[datetime] = mapped_column(_TS)
    finished_at: Mapped[datetime | None] = mapped_column(_TS)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    """The process that runs it, on ``host``: how a later open tells a run that died from one still going."""
    host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(_TS)
    """The last sign of life of a running run (its process beats every :data:`~instil.store.store.HEARTBEAT_S`)."""


class RunDataset(Base):
    """A dataset version a run read or wrote, and in which role (train, eval, input, output...)."""

    __tablename__ = "run_datasets"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(32), primary_key=True)


class Model(Base):
    """A trained model version of a job: where its weights are and the run that produced them."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("job", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    """1, 2, 3... per job."""
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    revision: Mapped[str | None] = mapped_column(String(128))
    """The base model's revision (commit hash), so the same weights can be fetched again."""
    path: Mapped[str] = mapped_column(Text)
    """Relative to the instil home when the folder lies inside it (so a home can be moved and restored), else
    absolute."""
    status: Mapped[str] = mapped_column(String(16))
    """candidate, production, retired (replaced by a promotion), refused (by the gate), rolled_back."""
    created_at: Mapped[datetime] = mapped_column(_TS)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)


class Evaluation(Base):
    """The metrics of one candidate (a model or the prompt) on one dataset version, from one eval run."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    candidate: Mapped[str] = mapped_column(String(256))
    """What was evaluated: ``prompt``, ``base``, ``model:<job>@<version>``..."""
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), index=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(_TS)


class Artifact(Base):
    """A file a run produced (checkpoint, report, plot), with its hash when it was taken."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    """Relative to the instil home when inside it, else absolute (as :attr:`Model.path`)."""
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(_TS)


class Decision(Base):
    """One registry decision on a job's models: a gate verdict (promoted or refused) or a rollback.

    Append-only: the production history of a job is the sequence of its decisions that made a model production.
    """

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``gate`` (the promotion gate judged ``model_id``) or ``rollback`` (``model_id`` was put back)."""
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    """The model judged by the gate, or the one a rollback made production."""
    promoted: Mapped[bool] = mapped_column(Boolean)
    """Whether ``model_id`` became production through this decision."""
    reference: Mapped[str | None] = mapped_column(String(256))
    """What the gate compared against (a candidate name such as ``base+full`` or ``support@2+short``)."""
    reference_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), index=True)
    """The reference's model version when it is one; for a rollback, the version rolled back from."""
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL"), index=True
    )
    """The frozen holdout version both sides were scored on."""
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    """The eval run that produced the scores."""
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Every number behind the verdict: each test's estimate, interval, p-values, power, the means of both sides."""
    created_at: Mapped[datetime] = mapped_column(_TS)


class Pin(Base):
    """A named pin of a job (``stable``, ``canary``...) pointing at a model version; append-only history.

    The pin's current target is its newest row; a row with no model means the pin was removed.
    """

    __tablename__ = "pins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    """The pinned model version; None when this row removed the pin."""
    created_at: Mapped[datetime] = mapped_column(_TS)


class Rollout(Base):
    """A candidate version of a job put in front of traffic: a canary (a share of requests) or a shadow (it also
    answers, unseen). At most one runs per job; the row keeps how it ended and why."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    """The candidate."""
    production_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    """The production version when it started (None: there was none)."""
    mode: Mapped[str] = mapped_column(String(16))
    """``canary`` or ``shadow``."""
    percent: Mapped[float] = mapped_column(Float)
    """The share of the job's requests routed to the candidate (canary) or also sent to it (shadow)."""
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The guard's settings (``alpha``, ``margin``) and anything else the rollout was started with."""
    status: Mapped[str] = mapped_column(String(16), index=True)
    """``running``, then ``promoted``, ``aborted``, ``stopped`` (by the guard), ``refused`` (by the gate) or
    ``replaced`` (by another rollout of the same candidate)."""
    reason: Mapped[str | None] = mapped_column(Text)
    """Why it ended, in words."""
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The figures it ended on (each arm's counts, the guard's evidence)."""
    started_at: Mapped[datetime] = mapped_column(_TS)
    ended_at: Mapped[datetime | None] = mapped_column(_TS)


class ReviewItem(Base):
    """An answer a person (or a scripted reviewer) should look at: a failed grader, a shadow that disagreed, user
    feedback, an answer the graders could not score. Deciding it (accept, correct, discard) turns it into training
    data."""

    __tablename__ = "review_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    """``failed`` (a grader failed), ``disagreement`` (a shadow answered otherwise), ``feedback``, ``unscored``."""
    key: Mapped[str] = mapped_column(String(256), unique=True)
    """What makes it one item (``failed:<trace id>``): collecting twice adds nothing."""
    trace_id: Mapped[str | None] = mapped_column(String(128), index=True)
    """The trace it came from (None: an answer from elsewhere, such as the pool)."""
    other_trace_id: Mapped[str | None] = mapped_column(String(128))
    """The other side of a disagreement (the shadow's trace)."""
    version: Mapped[int | None] = mapped_column(Integer)
    """The model version whose answer it is."""
    messages: Mapped[list[Any]] = mapped_column(JSON)
    """The conversation up to the answer, as the model saw it (kept here: traces may be pruned)."""
    tools: Mapped[list[Any] | None] = mapped_column(JSON)
    output: Mapped[str | None] = mapped_column(Text)
    """The answer under review."""
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSON)
    suggestion: Mapped[str | None] = mapped_column(Text)
    """Another answer on offer: the shadow's, the user's correction, a reference answer."""
    reason: Mapped[str | None] = mapped_column(Text)
    """Why it is here: the graders' reasons, the user's comment."""
    rating: Mapped[float | None] = mapped_column(Float)
    """The user's rating, for feedback (0 bad .. 1 good)."""
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    """``open``, then ``accepted`` (the answer was right), ``corrected`` or ``discarded``."""
    correction: Mapped[str | None] = mapped_column(Text)
    """The answer decided on (the output when accepted, the edit when corrected)."""
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None] = mapped_column(_TS)
    created_at: Mapped[datetime] = mapped_column(_TS, index=True)


class Trace(Base):
    """One request answered by ``instil serve`` (a local model, or an upstream behind the proxy), as captured.

    Its id is the response's id (``chatcmpl-...``), so capturing the same answer twice (a spool replayed after a crash)
    keeps one row."""

    __tablename__ = "traces"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    job: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(_TS, index=True)
    """When the request arrived (UTC)."""
    source: Mapped[str] = mapped_column(String(16))
    """``local`` (a model this server loaded) or ``proxy`` (an upstream answered)."""
    model: Mapped[str] = mapped_column(String(256), index=True)
    """The model name that answered: ``<job>@3``, ``<job>:base``, or the upstream's model."""
    version: Mapped[int | None] = mapped_column(Integer)
    """The job's model version that answered (None for the base or an upstream)."""
    upstream: Mapped[str | None] = mapped_column(String(64))
    """The named upstream that answered, in proxy mode."""
    status: Mapped[int] = mapped_column(Integer)
    """The HTTP status the client got."""
    stream: Mapped[bool] = mapped_column(Boolean)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    """The conversation as the model saw it."""
    tools: Mapped[list[Any] | None] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The request's other settings (temperature, max_tokens, response_format...)."""
    output: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSON)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The error body the client got, for a status other than 200."""
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Float)
    """Seconds from arrival to the last byte of the answer."""
    first_token_s: Mapped[float | None] = mapped_column(Float)
    cost: Mapped[float | None] = mapped_column(Float)
    """From the spec's prices (None when none apply)."""
    user: Mapped[str | None] = mapped_column(String(256), index=True)
    """The request's ``user`` field."""
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The request's ``metadata`` field."""
    grades: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The job's graders on the output: ``{name: {"value", "passed", "reason"}}`` (None: not graded)."""
    passed: Mapped[bool | None] = mapped_column(Boolean, index=True)
    """Whether every grader passed (None: not graded)."""
    redacted: Mapped[bool] = mapped_column(Boolean)
    """Whether PII was masked at capture."""
    rollout_id: Mapped[int | None] = mapped_column(Integer, index=True)
    """The rollout that routed the request (no foreign key: a spooled trace replays whatever the store holds)."""
    arm: Mapped[str | None] = mapped_column(String(16))
    """Its side of that rollout: ``production``, ``candidate`` (a canary's) or ``shadow``."""
    pair_id: Mapped[str | None] = mapped_column(String(64), index=True)
    """Shared by a shadowed request's production trace and its shadow's, so the two answers can be compared."""


class TraceTag(Base):
    """A tag of a trace (from the request's ``X-Instil-Tags`` header), one row each so a tag filter is an index."""

    __tablename__ = "trace_tags"

    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
