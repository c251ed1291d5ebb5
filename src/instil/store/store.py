"""The store: metadata and lineage in a database, examples in content-addressed files beside it.

    with Store.open() as store:                                  # $INSTIL_HOME or ./.instil; $INSTIL_DB_URL or SQLite
        raw = store.put_dataset("support/raw", examples)         # idempotent: same content, same version
        train = store.put_dataset("support/train", train_examples, kind="train", parents=[raw])
        run = store.start_run("support", "train", config)
        store.link_run_dataset(run, train, "train")
        store.finish_run(run, "succeeded", metrics={"loss": 0.4})
        model = store.register_model("support", base_model="Qwen/Qwen3-0.6B", path="...", run_id=run)
        store.trace_model(model)                                 # every dataset version the model descends from
        store.record_decision("support", kind="gate", model=model, promoted=True, production_before=None)
        store.production_model("support")                        # the model the last promotion or rollback chose
        store.set_pin("support", "stable", model)                # named pins, with their history

Every write is one short transaction (``BEGIN IMMEDIATE`` on SQLite), so many processes can write one store at once
without losing a row. Values come back as frozen dataclasses (``types.py``), detached from the database.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from instil.data.records import Example
from instil.env import home_dir
from instil.errors import InstilError, NotFoundError, StoreError
from instil.store import models as m
from instil.store.blobs import BlobInfo, BlobStore
from instil.store.checks import as_id, check_json, check_name, check_word
from instil.store.db import WRITE, create_store_engine, migrate, resolve_url, safe_url
from instil.store.queries import ancestors, dataset_version, run_info, version_listing
from instil.store.review import add_review_items, count_review_items, decide_review_items, list_review_items
from instil.store.rollouts import end_rollout, list_rollouts, start_rollout
from instil.store.traces import (
    Outcome,
    TraceFilter,
    add_traces,
    count_traces,
    delete_traces,
    query_traces,
    trace_outcomes,
    trace_value,
)
from instil.store.types import (
    ArtifactInfo,
    DatasetVersion,
    DecisionInfo,
    EvaluationInfo,
    ModelVersion,
    PinInfo,
    ReviewItem,
    RolloutInfo,
    RunInfo,
    Trace,
    artifact_info,
    decision_info,
    evaluation_info,
    model_version,
    pin_info,
    store_meta,
    store_path,
    utc,
)

__all__ = ["DECISION_KINDS", "FINAL_STATUSES", "HEARTBEAT_S", "INTERRUPTED", "STALE_AFTER_S", "Store"]

T = TypeVar("T")

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
"""The statuses a run can finish with."""

INTERRUPTED = "interrupted"
"""The status of a run whose process died (killed, crashed, the machine went down) before it could say how it ended:
given by the next :meth:`Store.open` that finds it gone. A run that turns out to be alive after all beats itself back
to ``running``, and may still finish normally."""

HEARTBEAT_S = 30.0
"""How often a process writes the heartbeat of the runs it has going."""

STALE_AFTER_S = 300.0
"""A running run with no heartbeat for this long is taken as interrupted, whichever host it ran on. On the host that
ran it, a run whose process is gone is interrupted at once."""

DECISION_KINDS = ("gate", "rollback")
"""What a registry decision is: the promotion gate's verdict, or a rollback."""

_HEX_PREFIX = re.compile(r"[0-9a-f]{4,64}")
_RETRIES = 8


def _now() -> datetime:
    return datetime.now(UTC)


_HOST = socket.gethostname()[:255]


def _process_alive(pid: int, started: datetime) -> bool:
    """Whether process ``pid`` of this host exists and is the one that was there at ``started`` (not a later
    process that was given the same pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= started.timestamp() + 1.0  # a reused pid was created after the run
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # there, but not ours to inspect: not known to be gone


class Store:
    """Datasets and their lineage, runs, models, evaluations and artifacts of one instil home."""

    def __init__(self, engine: Engine, home: Path) -> None:
        """Use :meth:`open`; this takes an engine whose schema is already migrated."""
        self.engine = engine
        self.home = home
        self.blobs = BlobStore(home / "blobs")
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**WRITE), expire_on_commit=False)
        self._live: set[int] = set()  # the runs this store started and has not finished: it beats for them
        self._beat_lock = threading.Lock()
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None

    # ---- opening and closing -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | None = None, *, home: Path | str | None = None) -> Store:
        """Open (creating and migrating as needed) the store.

        ``home`` defaults to ``$INSTIL_HOME``, else ``./.instil``; the database to ``url``, else ``$INSTIL_DB_URL``,
        else ``sqlite:///<home>/instil.db``. Blobs always live under ``<home>/blobs``.
        """
        home_path = Path(home).expanduser() if home is not None else home_dir()
        try:
            home_path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the instil home folder {home_path}: {e.strerror}",
                hint="Set INSTIL_HOME to a writable folder.",
            ) from None
        engine = create_store_engine(resolve_url(url, home_path))
        try:
            migrate(engine, home_path)
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, home_path)
        with suppress(StoreError):  # a store open for reading only (or briefly locked) still opens
            store.mark_interrupted()
        return store

    def close(self) -> None:
        self._beat_stop.set()
        if self._beater is not None and self._beater is not threading.current_thread():
            self._beater.join(timeout=5)
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({safe_url(self.engine.url)!r}, home={str(self.home)!r})"

    # ---- transactions ------------------------------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as e:
            raise StoreError(
                f"the store database {safe_url(self.engine.url)} failed: {e.orig}",
                hint="If it says 'locked', another process held the write lock too long; retry. Otherwise check "
                "that the database server is reachable.",
            ) from None

    def _tx(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one write transaction, retrying when a concurrent writer won a race on a unique key."""
        with self._errors():
            for attempt in range(_RETRIES):
                try:
                    with self._write() as session, session.begin():
                        return fn(session)
                except IntegrityError as e:
                    # A concurrent writer won a race on a unique key that no lock covered; the loser tries again
                    # and then sees the winner's row.
                    if attempt == _RETRIES - 1:
                        raise StoreError(
                            f"a write to the store {safe_url(self.engine.url)} kept conflicting: {e.orig}",
                            hint="Many processes are writing the same dataset or job at once; retry.",
                        ) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _serialize(s: Session, key: str) -> None:
        """Serialise writers that assign the next number under ``key``. SQLite's BEGIN IMMEDIATE already does;
        PostgreSQL takes a transaction-scoped advisory lock, so concurrent writers wait instead of colliding."""
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})

    def _query(self, fn: Callable[[Session], T]) -> T:
        with self._errors(), self._read() as session:
            return fn(session)

    # ---- blobs -------------------------------------------------------------------------------------------------------
    def put_examples(self, examples: Iterable[Example]) -> BlobInfo:
        """Stream ``examples`` into a content-addressed blob; returns its hash, count, path and size."""
        return self.blobs.put_examples(examples)

    def iter_examples(self, dataset: DatasetVersion | str) -> Iterator[Example]:
        """The examples of a dataset version (or of a blob named by its sha256), streamed from disk."""
        sha256 = dataset.sha256 if isinstance(dataset, DatasetVersion) else dataset
        return self.blobs.iter_examples(sha256)

    def blob_path(self, sha256: str) -> Path:
        return self.blobs.path(sha256)

    # ---- datasets ----------------------------------------------------------------------------------------------------
    def put_dataset(
        self,
        name: str,
        examples: Iterable[Example],
        *,
        kind: str = "raw",
        parents: Sequence[DatasetVersion | int] = (),
        meta: dict[str, Any] | None = None,
        frozen: bool = False,
    ) -> DatasetVersion:
        """Store ``examples`` as the next version of dataset ``name``, recording the versions it came from.

        Idempotent: when ``name`` already has a version with exactly this content, that version is returned and
        nothing new is recorded (its kind, meta and parents stay as first stored).
        """
        check_name(name, "dataset name")
        check_word(kind, "dataset kind")
        parent_ids = list(dict.fromkeys(as_id(p, "a dataset parent") for p in parents))
        meta = check_json(dict(meta or {}), f"meta of dataset {name!r}")
        blob = self.blobs.put_examples(examples)

        def write(s: Session) -> DatasetVersion:
            self._serialize(s, f"dataset:{name}")
            dataset = s.scalar(select(m.Dataset).where(m.Dataset.name == name))
            if dataset is None:
                dataset = m.Dataset(name=name, created_at=_now())
                s.add(dataset)
                s.flush()
            same = s.scalar(
                select(m.DatasetVersionRow).where(
                    m.DatasetVersionRow.dataset_id == dataset.id, m.DatasetVersionRow.sha256 == blob.sha256
                )
            )
            if same is not None:
                return dataset_version(s, same, name)
            known = set(s.scalars(select(m.DatasetVersionRow.id).where(m.DatasetVersionRow.id.in_(parent_ids))))
            missing = [p for p in parent_ids if p not in known]
            if missing:
                raise NotFoundError(
                    f"cannot record dataset {name!r}: parent dataset version id(s) {missing} do not exist",
                    hint="Pass parents as DatasetVersion values returned by this store (put_dataset/get_dataset).",
                )
            latest = s.scalar(
                select(func.max(m.DatasetVersionRow.version)).where(m.DatasetVersionRow.dataset_id == dataset.id)
            )
            row = m.DatasetVersionRow(
                dataset_id=dataset.id,
                version=(latest or 0) + 1,
                sha256=blob.sha256,
                kind=kind,
                n_examples=blob.n_examples,
                bytes=blob.bytes,
                created_at=_now(),
                meta=meta,
                frozen=frozen,
            )
            s.add(row)
            s.flush()
            s.add_all(m.DatasetParent(child_id=row.id, parent_id=p) for p in parent_ids)
            s.flush()
            return dataset_version(s, row, name)

        return self._tx(write)

    def get_dataset(self, name: str, version: int | str | None = None) -> DatasetVersion:
        """A version of dataset ``name``: the latest (None), a version number (int) or a content-hash prefix (str)."""

        def read(s: Session) -> DatasetVersion:
            dataset = s.scalar(select(m.Dataset).where(m.Dataset.name == name))
            if dataset is None:
                names = list(s.scalars(select(m.Dataset.name).order_by(m.Dataset.name).limit(20)))
                raise NotFoundError(
                    f"no dataset named {name!r} in the store {safe_url(self.engine.url)}",
                    hint=f"Datasets here: {', '.join(names)}."
                    if names
                    else "The store holds no datasets yet: run the job's data stage first.",
                )
            q = select(m.DatasetVersionRow).where(m.DatasetVersionRow.dataset_id == dataset.id)
            if version is None:
                rows = list(s.scalars(q.order_by(m.DatasetVersionRow.version.desc()).limit(1)))
            elif isinstance(version, int) and not isinstance(version, bool):
                rows = list(s.scalars(q.where(m.DatasetVersionRow.version == version)))
            elif isinstance(version, str) and _HEX_PREFIX.fullmatch(version):
                rows = list(s.scalars(q.where(m.DatasetVersionRow.sha256.startswith(version, autoescape=True))))
            else:
                raise StoreError(
                    f"invalid version {version!r} of dataset {name!r}",
                    hint="Give a version number (1, 2...) or at least 4 lowercase hex digits of its content hash.",
                )
            if len(rows) == 1:
                return dataset_version(s, rows[0], name)
            listing = version_listing(s, dataset.id)
            if rows:
                raise StoreError(
                    f"hash prefix {version!r} matches {len(rows)} versions of dataset {name!r}",
                    hint=f"Give more hex digits. Versions: {listing}.",
                )
            raise NotFoundError(
                f"dataset {name!r} has no version {version!r}",
                hint=f"Versions: {listing}." if listing else "It has no versions yet.",
            )

        return self._query(read)

    def get_version(self, version_id: int) -> DatasetVersion:
        """The dataset version with this id."""

        def read(s: Session) -> DatasetVersion:
            row = s.get(m.DatasetVersionRow, version_id)
            if row is None:
                raise NotFoundError(f"no dataset version with id {version_id} in the store")
            return dataset_version(s, row)

        return self._query(read)

    def list_datasets(self) -> list[DatasetVersion]:
        """The latest version of every dataset, by name."""

        def read(s: Session) -> list[DatasetVersion]:
            latest = (
                select(m.DatasetVersionRow.dataset_id, func.max(m.DatasetVersionRow.version).label("v"))
                .group_by(m.DatasetVersionRow.dataset_id)
                .subquery()
            )
            rows = s.execute(
                select(m.DatasetVersionRow, m.Dataset.name)
                .join(m.Dataset, m.Dataset.id == m.DatasetVersionRow.dataset_id)
                .join(
                    latest,
                    (latest.c.dataset_id == m.DatasetVersionRow.dataset_id)
                    & (latest.c.v == m.DatasetVersionRow.version),
                )
                .order_by(m.Dataset.name)
            ).all()
            return [dataset_version(s, row, name) for row, name in rows]

        return self._query(read)

    def list_versions(self, name: str) -> list[DatasetVersion]:
        """Every version of dataset ``name``, oldest first (empty when it does not exist)."""

        def read(s: Session) -> list[DatasetVersion]:
            rows = s.scalars(
                select(m.DatasetVersionRow)
                .join(m.Dataset, m.Dataset.id == m.DatasetVersionRow.dataset_id)
                .where(m.Dataset.name == name)
                .order_by(m.DatasetVersionRow.version)
            )
            return [dataset_version(s, row, name) for row in rows]

        return self._query(read)

    def lineage(self, version: DatasetVersion | int) -> list[DatasetVersion]:
        """Every ancestor of a dataset version (parents, their parents...), nearest first, each once."""
        return self._query(lambda s: ancestors(s, [as_id(version, "version")]))

    # ---- runs --------------------------------------------------------------------------------------------------------
    def start_run(self, job: str, kind: str, config: dict[str, Any] | None = None) -> int:
        """Record that a run of ``kind`` (curate, split, train, eval...) of ``job`` started; returns its id."""
        check_name(job, "job name")
        check_word(kind, "run kind")
        config = check_json(dict(config or {}), f"config of the {kind} run of {job!r}")

        def write(s: Session) -> int:
            now = _now()
            run = m.Run(
                job=job,
                kind=kind,
                status="running",
                config=config,
                created_at=now,
                pid=os.getpid(),
                host=_HOST,
                heartbeat_at=now,
            )
            s.add(run)
            s.flush()
            return run.id

        run_id = self._tx(write)
        self._keep_alive(run_id)
        return run_id

    def finish_run(
        self,
        run_id: int,
        status: str = "succeeded",
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> RunInfo:
        """Record how a running run ended (succeeded, failed or cancelled), with its metrics or error."""
        if status not in FINAL_STATUSES:
            raise StoreError(
                f"cannot finish run {run_id} as {status!r}",
                hint=f"A run finishes as one of: {', '.join(FINAL_STATUSES)}.",
            )
        metrics = check_json(metrics, f"metrics of run {run_id}") if metrics is not None else None

        def write(s: Session) -> RunInfo:
            run = self._run_row(s, run_id)
            if run.status not in ("running", INTERRUPTED):  # an interrupted run that was alive after all may end
                raise StoreError(
                    f"run {run_id} already finished ({run.status}); it cannot be finished again",
                    hint="Start a new run with start_run() to record another attempt.",
                )
            run.status, run.metrics, run.error, run.finished_at = status, metrics, error, _now()
            s.flush()
            return run_info(s, run)

        info = self._tx(write)
        with self._beat_lock:
            self._live.discard(run_id)
        return info

    # ---- liveness: heartbeats, and runs whose process died ----------------------------------------------------------
    def _keep_alive(self, run_id: int) -> None:
        with self._beat_lock:
            self._live.add(run_id)
            if self._beater is None:
                self._beater = threading.Thread(target=self._beat_loop, name="instil-store-heartbeat", daemon=True)
                self._beater.start()

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except Exception:  # noqa: BLE001  a missed beat is harmless; the next one may get through
                continue

    def beat(self) -> None:
        """Write the heartbeat of every run this store started and has not finished (a thread does every
        :data:`HEARTBEAT_S`). A run marked interrupted meanwhile (its heartbeats were late) is running again."""
        with self._beat_lock:
            ids = sorted(self._live)
        if not ids:
            return

        def write(s: Session) -> None:
            for run in s.scalars(select(m.Run).where(m.Run.id.in_(ids))):
                if run.status == INTERRUPTED:
                    run.status, run.error, run.finished_at = "running", None, None
                if run.status == "running":
                    run.heartbeat_at = _now()

        self._tx(write)

    def mark_interrupted(self, *, stale_after_s: float | None = None) -> list[RunInfo]:
        """Mark as ``interrupted`` every running run whose process is gone: on this host, by its pid (and that pid's
        start time, so a reused pid does not count as alive); on any host, after ``stale_after_s`` (default
        :data:`STALE_AFTER_S`) without a heartbeat. Returns the runs it marked. :meth:`open` calls it."""
        stale = timedelta(seconds=STALE_AFTER_S if stale_after_s is None else stale_after_s)

        def why_gone(run: m.Run, now: datetime) -> str | None:
            beat = utc(run.heartbeat_at or run.created_at)
            when = f"last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC"
            if run.host == _HOST and run.pid is not None:
                if run.pid == os.getpid():
                    if run.id in self._live:
                        return None  # this very store is beating for it
                elif not _process_alive(run.pid, utc(run.created_at)):
                    return f"its process (pid {run.pid} on {run.host}) is gone; {when}"
            # Another host, an older instil that kept no pid, or a process that stopped beating: the heartbeat says.
            if now - beat > stale:
                where = f" (pid {run.pid} on {run.host})" if run.host else ""
                return f"no heartbeat for {(now - beat).total_seconds() / 60:.0f} min{where}; {when}"
            return None

        def any_gone(s: Session) -> bool:  # a read first, so an open with nothing to mark takes no write lock
            now = _now()
            return any(why_gone(r, now) for r in s.scalars(select(m.Run).where(m.Run.status == "running")))

        if not self._query(any_gone):
            return []

        def write(s: Session) -> list[RunInfo]:
            now, marked = _now(), []
            for run in s.scalars(select(m.Run).where(m.Run.status == "running").order_by(m.Run.id)):
                reason = why_gone(run, now)
                if reason:
                    run.status, run.error = INTERRUPTED, reason
                    run.finished_at = utc(run.heartbeat_at or run.created_at)
                    marked.append(run)
            s.flush()
            return [run_info(s, r) for r in marked]

        return self._tx(write)

    def link_run_dataset(self, run_id: int, version: DatasetVersion | int, role: str) -> None:
        """Record that run ``run_id`` read or wrote a dataset version, in ``role`` (train, eval, input, output...)."""
        check_word(role, "dataset role")
        version_id = as_id(version, "version")

        def write(s: Session) -> None:
            self._run_row(s, run_id)
            if s.get(m.DatasetVersionRow, version_id) is None:
                raise NotFoundError(f"cannot link run {run_id}: no dataset version with id {version_id}")
            if s.get(m.RunDataset, (run_id, version_id, role)) is None:
                s.add(m.RunDataset(run_id=run_id, dataset_version_id=version_id, role=role))

        self._tx(write)

    def get_run(self, run_id: int) -> RunInfo:
        return self._query(lambda s: run_info(s, self._run_row(s, run_id)))

    def list_runs(self, job: str | None = None, kind: str | None = None) -> list[RunInfo]:
        """Runs, oldest first; only those of ``job`` and/or ``kind`` when given."""

        def read(s: Session) -> list[RunInfo]:
            q = select(m.Run).order_by(m.Run.id)
            if job is not None:
                q = q.where(m.Run.job == job)
            if kind is not None:
                q = q.where(m.Run.kind == kind)
            return [run_info(s, r) for r in s.scalars(q)]

        return self._query(read)

    def _run_row(self, s: Session, run_id: int) -> m.Run:
        run = s.get(m.Run, as_id(run_id, "run"))
        if run is None:
            raise NotFoundError(f"no run with id {run_id} in the store {safe_url(self.engine.url)}")
        return run

    # ---- models ------------------------------------------------------------------------------------------------------
    def register_model(
        self,
        job: str,
        *,
        base_model: str,
        path: str | Path,
        run_id: int | None = None,
        revision: str | None = None,
        status: str = "candidate",
        meta: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Record a trained model as the next version of ``job``'s models."""
        check_name(job, "job name")
        check_word(status, "model status")
        meta = check_json(dict(meta or {}), f"meta of the model of {job!r}")

        def write(s: Session) -> ModelVersion:
            self._serialize(s, f"model:{job}")
            if run_id is not None:
                self._run_row(s, run_id)
            latest = s.scalar(select(func.max(m.Model.version)).where(m.Model.job == job))
            row = m.Model(
                job=job,
                version=(latest or 0) + 1,
                run_id=run_id,
                base_model=base_model,
                revision=revision,
                path=store_path(path, self.home),
                status=status,
                created_at=_now(),
                meta=store_meta(meta, self.home),
            )
            s.add(row)
            s.flush()
            return model_version(row, self.home)

        return self._tx(write)

    def get_model(self, job: str, version: int | None = None) -> ModelVersion:
        """A model version of ``job``: the latest when ``version`` is None."""

        def read(s: Session) -> ModelVersion:
            q = select(m.Model).where(m.Model.job == job)
            q = q.where(m.Model.version == version) if version is not None else q.order_by(m.Model.version.desc())
            row = s.scalars(q.limit(1)).first()
            if row is None:
                versions = list(s.scalars(select(m.Model.version).where(m.Model.job == job).order_by(m.Model.version)))
                raise NotFoundError(
                    f"job {job!r} has no model" + (f" version {version}" if version is not None else ""),
                    hint=f"Model versions of {job!r}: {versions}."
                    if versions
                    else "Train one first (`instil run` trains and registers it).",
                )
            return model_version(row, self.home)

        return self._query(read)

    def list_models(self, job: str | None = None) -> list[ModelVersion]:
        """Model versions, oldest first; only ``job``'s when given."""

        def read(s: Session) -> list[ModelVersion]:
            q = select(m.Model).order_by(m.Model.job, m.Model.version)
            if job is not None:
                q = q.where(m.Model.job == job)
            return [model_version(r, self.home) for r in s.scalars(q)]

        return self._query(read)

    def trace_model(self, model: ModelVersion | int) -> list[DatasetVersion]:
        """The dataset versions a model's training run read, then all their ancestors: the examples it descends from."""

        def read(s: Session) -> list[DatasetVersion]:
            row = s.get(m.Model, as_id(model, "model"))
            if row is None:
                raise NotFoundError(f"no model with id {as_id(model, 'model')} in the store")
            if row.run_id is None:
                return []
            direct = list(
                dict.fromkeys(
                    s.scalars(
                        select(m.RunDataset.dataset_version_id)
                        .where(m.RunDataset.run_id == row.run_id)
                        .order_by(m.RunDataset.dataset_version_id)
                    )
                )
            )
            inputs = [dataset_version(s, s.get_one(m.DatasetVersionRow, i)) for i in direct]
            return inputs + ancestors(s, direct)  # ancestors() leaves out the inputs themselves

        return self._query(read)

    # ---- the registry: decisions, production, pins -------------------------------------------------------------------
    def record_decision(
        self,
        job: str,
        *,
        kind: str,
        model: ModelVersion | int,
        promoted: bool,
        production_before: ModelVersion | int | None,
        reference: str | None = None,
        reference_model: ModelVersion | int | None = None,
        dataset: DatasetVersion | int | None = None,
        run_id: int | None = None,
        numbers: dict[str, Any] | None = None,
        rollout_id: int | None = None,
    ) -> DecisionInfo:
        """Record a gate verdict (``kind="gate"``) or a rollback on ``model``, a version of ``job``, and move the
        models' statuses in the same transaction.

        Promoted (a rollback always is): ``model`` becomes ``production`` and the previous production model
        ``retired`` (gate) or ``rolled_back`` (rollback). Refused: ``model`` becomes ``refused``.
        ``production_before`` is the production model the caller decided against (None: there was none); when
        another process changed production since, nothing is recorded and :class:`StoreError` says to decide again.
        ``rollout_id``: the rollout this decision ends; when it is no longer running (a guard stopped it meanwhile),
        nothing is recorded either.
        """
        check_name(job, "job name")
        if kind not in DECISION_KINDS:
            raise StoreError(f"invalid decision kind {kind!r}", hint=f"Use one of: {', '.join(DECISION_KINDS)}.")
        if kind == "rollback" and not promoted:
            raise StoreError("a rollback always makes its model production: record it with promoted=True")
        model_id = as_id(model, "model")
        before_id = as_id(production_before, "production_before") if production_before is not None else None
        reference_id = as_id(reference_model, "reference_model") if reference_model is not None else None
        dataset_id = as_id(dataset, "dataset") if dataset is not None else None
        numbers = check_json(dict(numbers or {}), f"numbers of the {kind} decision on {job!r}")

        def write(s: Session) -> DecisionInfo:
            self._serialize(s, f"registry:{job}")
            row = self._job_model(s, job, model_id)
            current = s.scalars(select(m.Model).where(m.Model.job == job, m.Model.status == "production")).all()
            current_id = current[0].id if current else None
            if current_id != before_id:
                now = f"{job}@{current[0].version}" if current else "none"
                raise StoreError(
                    f"the production model of {job!r} changed while this {kind} was being decided (now: {now})",
                    hint="Another process promoted or rolled back at the same time; decide again.",
                )
            if current_id == model_id:
                raise StoreError(f"{row.job}@{row.version} is already the production model of {job!r}")
            if rollout_id is not None:
                rollout = s.get(m.Rollout, rollout_id)
                if rollout is None or rollout.job != job or rollout.status != "running":
                    ended = f"{rollout.status}: {rollout.reason}" if rollout is not None else "gone"
                    raise StoreError(
                        f"the rollout {rollout_id} of {job!r} ended while this {kind} was being decided ({ended})",
                        hint="nothing was recorded; `instil rollout status` shows why it ended",
                    )
            if reference_id is not None:
                self._job_model(s, job, reference_id)
            if dataset_id is not None and s.get(m.DatasetVersionRow, dataset_id) is None:
                raise NotFoundError(f"cannot record the decision: no dataset version with id {dataset_id}")
            if run_id is not None:
                self._run_row(s, run_id)
            if promoted:
                for old in current:
                    old.status = "retired" if kind == "gate" else "rolled_back"
                row.status = "production"
            else:
                row.status = "refused"
            self._end_rollout_on(s, job, row, promoted, kind)
            decision = m.Decision(
                job=job,
                kind=kind,
                model_id=model_id,
                promoted=promoted,
                reference=reference,
                reference_model_id=reference_id,
                dataset_version_id=dataset_id,
                run_id=run_id,
                numbers=numbers,
                created_at=_now(),
            )
            s.add(decision)
            s.flush()
            return self._decision(s, decision)

        return self._tx(write)

    def list_decisions(self, job: str | None = None, *, model: ModelVersion | int | None = None) -> list[DecisionInfo]:
        """Registry decisions, oldest first; only ``job``'s and/or those on ``model`` when given."""

        def read(s: Session) -> list[DecisionInfo]:
            q = select(m.Decision).order_by(m.Decision.id)
            if job is not None:
                q = q.where(m.Decision.job == job)
            if model is not None:
                q = q.where(m.Decision.model_id == as_id(model, "model"))
            return [self._decision(s, r) for r in s.scalars(q)]

        return self._query(read)

    def get_decision(self, decision_id: int) -> DecisionInfo:
        def read(s: Session) -> DecisionInfo:
            row = s.get(m.Decision, as_id(decision_id, "decision"))
            if row is None:
                raise NotFoundError(f"no decision with id {decision_id} in the store")
            return self._decision(s, row)

        return self._query(read)

    @staticmethod
    def _end_rollout_on(s: Session, job: str, model: m.Model, promoted: bool, kind: str) -> None:
        """A decision ends the job's running rollout: its candidate promoted or refused, or production moved under it
        (which makes its comparison meaningless)."""
        running = s.scalars(select(m.Rollout).where(m.Rollout.job == job, m.Rollout.status == "running")).all()
        for r in running:
            if r.model_id == model.id:
                r.status = "promoted" if promoted else "refused"
                r.reason = f"the {kind} " + ("promoted it" if promoted else "refused it")
            elif promoted:
                r.status = "aborted"
                r.reason = f"production changed under it: a {kind} made {job}@{model.version} production"
            else:
                continue
            r.ended_at = _now()

    def production_model(self, job: str) -> ModelVersion | None:
        """The model the last promotion or rollback of ``job`` made production; None before the first promotion."""

        def read(s: Session) -> ModelVersion | None:
            row = s.scalars(select(m.Model).where(m.Model.job == job, m.Model.status == "production")).first()
            return model_version(row, self.home) if row is not None else None

        return self._query(read)

    def set_pin(self, job: str, name: str, model: ModelVersion | int) -> PinInfo:
        """Point the pin ``name`` of ``job`` at ``model`` (moving it when it already points elsewhere)."""
        check_name(job, "job name")
        check_word(name, "pin name")
        model_id = as_id(model, "model")

        def write(s: Session) -> PinInfo:
            self._serialize(s, f"registry:{job}")
            target = self._job_model(s, job, model_id)
            row = m.Pin(job=job, name=name, model_id=model_id, created_at=_now())
            s.add(row)
            s.flush()
            return pin_info(row, target.version)

        return self._tx(write)

    def remove_pin(self, job: str, name: str) -> PinInfo:
        """Remove the pin ``name`` of ``job``; returns the pin as it was. NotFoundError when it is not set."""

        def write(s: Session) -> PinInfo:
            self._serialize(s, f"registry:{job}")
            current = {p.name: p for p in self._current_pins(s, job)}
            if name not in current:
                raise NotFoundError(
                    f"job {job!r} has no pin named {name!r}",
                    hint=f"Pins of {job!r}: {', '.join(sorted(current))}." if current else f"{job!r} has no pins.",
                )
            s.add(m.Pin(job=job, name=name, model_id=None, created_at=_now()))
            return current[name]

        return self._tx(write)

    def list_pins(self, job: str) -> list[PinInfo]:
        """The pins of ``job`` set now, by name."""
        return self._query(lambda s: sorted(self._current_pins(s, job), key=lambda p: p.name))

    def pin_history(self, job: str, name: str | None = None) -> list[PinInfo]:
        """Every setting and removal of ``job``'s pins (only ``name``'s when given), oldest first."""

        def read(s: Session) -> list[PinInfo]:
            q = select(m.Pin).where(m.Pin.job == job).order_by(m.Pin.id)
            if name is not None:
                q = q.where(m.Pin.name == name)
            rows = list(s.scalars(q))
            versions = self._versions(s, [r.model_id for r in rows])
            return [pin_info(r, versions.get(r.model_id)) for r in rows]

        return self._query(read)

    def _current_pins(self, s: Session, job: str) -> list[PinInfo]:
        latest = select(func.max(m.Pin.id).label("id")).where(m.Pin.job == job).group_by(m.Pin.name).subquery()
        rows = list(s.scalars(select(m.Pin).join(latest, latest.c.id == m.Pin.id).where(m.Pin.model_id.is_not(None))))
        versions = self._versions(s, [r.model_id for r in rows])
        return [pin_info(r, versions[r.model_id]) for r in rows]

    def _job_model(self, s: Session, job: str, model_id: int) -> m.Model:
        row = s.get(m.Model, model_id)
        if row is None or row.job != job:
            raise NotFoundError(f"job {job!r} has no model with id {model_id}")
        return row

    @staticmethod
    def _versions(s: Session, ids: Iterable[int | None]) -> dict[int, int]:
        wanted = {i for i in ids if i is not None}
        if not wanted:
            return {}
        rows = s.execute(select(m.Model.id, m.Model.version).where(m.Model.id.in_(wanted)))
        return {model_id: version for model_id, version in rows}

    def _decision(self, s: Session, row: m.Decision) -> DecisionInfo:
        versions = self._versions(s, [row.model_id, row.reference_model_id])
        return decision_info(row, versions[row.model_id], versions.get(row.reference_model_id))

    # ---- evaluations and artifacts -----------------------------------------------------------------------------------
    def add_evaluation(
        self,
        run_id: int,
        *,
        candidate: str,
        dataset: DatasetVersion | int,
        metrics: dict[str, Any],
        model: ModelVersion | int | None = None,
    ) -> EvaluationInfo:
        """Record the metrics of ``candidate`` (prompt, base, model:<job>@<n>...) on a dataset version."""
        dataset_id = as_id(dataset, "dataset")
        model_id = as_id(model, "model") if model is not None else None
        metrics = check_json(dict(metrics), f"metrics of {candidate!r}")

        def write(s: Session) -> EvaluationInfo:
            self._run_row(s, run_id)
            if s.get(m.DatasetVersionRow, dataset_id) is None:
                raise NotFoundError(f"cannot record the evaluation: no dataset version with id {dataset_id}")
            if model_id is not None and s.get(m.Model, model_id) is None:
                raise NotFoundError(f"cannot record the evaluation: no model with id {model_id}")
            row = m.Evaluation(
                run_id=run_id,
                candidate=candidate,
                model_id=model_id,
                dataset_version_id=dataset_id,
                metrics=metrics,
                created_at=_now(),
            )
            s.add(row)
            s.flush()
            return evaluation_info(row)

        return self._tx(write)

    def list_evaluations(
        self,
        *,
        run_id: int | None = None,
        dataset: DatasetVersion | int | None = None,
        model: ModelVersion | int | None = None,
    ) -> list[EvaluationInfo]:
        """Evaluations, oldest first; only those of a run, a dataset version and/or a model when given."""

        def read(s: Session) -> list[EvaluationInfo]:
            q = select(m.Evaluation).order_by(m.Evaluation.id)
            if run_id is not None:
                q = q.where(m.Evaluation.run_id == run_id)
            if dataset is not None:
                q = q.where(m.Evaluation.dataset_version_id == as_id(dataset, "dataset"))
            if model is not None:
                q = q.where(m.Evaluation.model_id == as_id(model, "model"))
            return [evaluation_info(r) for r in s.scalars(q)]

        return self._query(read)

    def add_artifact(self, run_id: int, kind: str, path: str | Path, sha256: str | None = None) -> ArtifactInfo:
        """Record a file a run produced (checkpoint, report...)."""
        check_word(kind, "artifact kind")

        def write(s: Session) -> ArtifactInfo:
            self._run_row(s, run_id)
            row = m.Artifact(
                run_id=run_id, kind=kind, path=store_path(path, self.home), sha256=sha256, created_at=_now()
            )
            s.add(row)
            s.flush()
            return artifact_info(row, self.home)

        return self._tx(write)

    def list_artifacts(self, run_id: int) -> list[ArtifactInfo]:
        return self._query(
            lambda s: [
                artifact_info(r, self.home)
                for r in s.scalars(select(m.Artifact).where(m.Artifact.run_id == run_id).order_by(m.Artifact.id))
            ]
        )

    # ---- rollouts ----------------------------------------------------------------------------------------------------
    def start_rollout(
        self,
        job: str,
        model: ModelVersion | int,
        *,
        mode: str,
        percent: float,
        settings: dict[str, Any] | None = None,
    ) -> RolloutInfo:
        """Start rolling ``model`` out as a ``canary`` or ``shadow`` on ``percent`` of the job's requests; a running
        rollout of the same model is replaced, one of another model refused (one runs per job)."""
        check_name(job, "job name")
        model_id = as_id(model, "model")
        check_json(settings or {}, "rollout settings")

        def write(s: Session) -> RolloutInfo:
            self._serialize(s, f"registry:{job}")
            row = self._job_model(s, job, model_id)
            production = s.scalars(
                select(m.Model).where(m.Model.job == job, m.Model.status == "production").limit(1)
            ).first()
            if production is not None and production.id == row.id:
                raise InstilError(
                    f"{job}@{row.version} is the production version already: there is nothing to roll out",
                    hint="roll out a newer version (`instil models` lists them)",
                )
            return start_rollout(s, job, row, production, mode, percent, settings or {})

        return self._tx(write)

    def end_rollout(
        self,
        job: str,
        status: str,
        reason: str,
        *,
        summary: dict[str, Any] | None = None,
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        """End the job's running rollout as ``status`` (``promoted``, ``aborted``, ``stopped``, ``refused``) saying
        why; with ``rollout_id``, only if that one is still the running one."""
        check_json(summary or {}, "rollout summary")

        def write(s: Session) -> RolloutInfo:
            self._serialize(s, f"registry:{job}")
            return end_rollout(s, job, status, reason, summary, rollout_id)

        return self._tx(write)

    def running_rollout(self, job: str) -> RolloutInfo | None:
        """The job's running rollout, if any."""
        found = self._query(lambda s: list_rollouts(s, job, running=True))
        return found[-1] if found else None

    def list_rollouts(self, job: str) -> list[RolloutInfo]:
        """Every rollout of the job, oldest first."""
        return self._query(lambda s: list_rollouts(s, job))

    # ---- the review queue --------------------------------------------------------------------------------------------
    def add_review_items(self, items: Sequence[ReviewItem], *, replace: bool = False) -> list[ReviewItem]:
        """Queue items for review; one whose ``key`` is queued already is skipped (with ``replace``: updated and
        opened again). Returns the items added (and replaced)."""
        for it in items:
            check_name(it.job, "job name")
            check_json({"messages": it.messages, "tools": it.tools, "meta": it.meta}, f"review item {it.key!r}")
            if len(it.key) > 256:
                raise StoreError(f"a review item's key is {len(it.key)} characters, past 256", hint="hash it")
        return self._tx(lambda s: add_review_items(s, items, replace))

    def list_review_items(
        self,
        job: str,
        *,
        status: str | None = None,
        kind: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[ReviewItem]:
        """The job's review items, oldest first (``status``/``kind``/``ids`` narrow them)."""
        return self._query(lambda s: list_review_items(s, job, status=status, kind=kind, ids=ids, limit=limit))

    def count_review_items(self, job: str) -> dict[str, int]:
        """How many of the job's review items are in each status."""
        return self._query(lambda s: count_review_items(s, job))

    def decide_review_items(
        self, job: str, decisions: dict[int, tuple[str, str | None]], *, by: str
    ) -> list[ReviewItem]:
        """Record decisions ``{item id: (status, correction)}`` on the job's items, by ``by`` (a name), now."""
        return self._tx(lambda s: decide_review_items(s, job, decisions, by))

    # ---- traces ------------------------------------------------------------------------------------------------------
    def add_traces(self, traces: Sequence[Trace]) -> int:
        """Record answered requests; a trace whose id is stored already is skipped (so a replay is exact). Returns
        how many were new."""
        for t in traces:
            check_json(t.to_dict(), f"trace {t.id!r}")
        return self._tx(lambda s: add_traces(s, traces))

    def list_traces(
        self, where: TraceFilter | None = None, *, limit: int | None = 100, offset: int = 0, oldest_first: bool = False
    ) -> list[Trace]:
        """Traces matching ``where``, newest first (``oldest_first``: in arrival order); ``limit=None``: all."""
        return self._query(
            lambda s: query_traces(s, where or TraceFilter(), limit=limit, offset=offset, oldest_first=oldest_first)
        )

    def trace_outcomes(
        self,
        where: TraceFilter,
        *,
        after: tuple[datetime, str] | None = None,
        before: datetime | None = None,
    ) -> list[Outcome]:
        """The traces matching ``where`` in arrival order, as the few fields a rollout's figures need; only those
        after ``(created_at, id)``, and arrived before ``before``, when given."""
        return self._query(lambda s: trace_outcomes(s, where, after, before))

    def count_traces(self, where: TraceFilter | None = None) -> int:
        return self._query(lambda s: count_traces(s, where or TraceFilter()))

    def find_trace(self, trace_id: str) -> Trace | None:
        """The trace with exactly this id, or None (no prefix matching: for ids that come from requests)."""

        def read(s: Session) -> Trace | None:
            row = s.get(m.Trace, trace_id)
            if row is None:
                return None
            tags = s.scalars(select(m.TraceTag.tag).where(m.TraceTag.trace_id == row.id).order_by(m.TraceTag.tag))
            return trace_value(row, list(tags))

        return self._query(read)

    def get_trace(self, trace_id: str) -> Trace:
        """The trace with this id, or with the one id that starts with it (at least 8 characters)."""

        def read(s: Session) -> Trace:
            row = s.get(m.Trace, trace_id)
            if row is None and len(trace_id) >= 8:
                rows = list(s.scalars(select(m.Trace).where(m.Trace.id.startswith(trace_id, autoescape=True)).limit(2)))
                if len(rows) > 1:
                    raise StoreError(f"{trace_id!r} starts more than one trace id", hint="Give more of the id.")
                row = rows[0] if rows else None
            if row is None:
                raise NotFoundError(f"no trace {trace_id!r}", hint="`instil traces list` shows the traces' ids.")
            tags = s.scalars(select(m.TraceTag.tag).where(m.TraceTag.trace_id == row.id).order_by(m.TraceTag.tag))
            return trace_value(row, list(tags))

        return self._query(read)

    def delete_traces(self, where: TraceFilter) -> int:
        """Delete the traces matching ``where`` (retention); returns how many went."""
        return self._tx(lambda s: delete_traces(s, where))

    def known_traces(self, ids: Sequence[str]) -> set[str]:
        """Which of these trace ids the store holds."""

        def read(s: Session) -> set[str]:
            found: set[str] = set()
            for k in range(0, len(ids), 500):
                found.update(s.scalars(select(m.Trace.id).where(m.Trace.id.in_(list(ids[k : k + 500])))))
            return found

        return self._query(read)
