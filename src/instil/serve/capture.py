"""Trace capture: every answered request becomes a trace in the store, off the request path, and none is lost.

    log = TraceLog(store, graders=capture_graders(spec), redact=spec.serve.redact_pii)
    log.start()            # first adopts and replays what a server that died left in the spool
    log.capture(trace)     # on the request path: one append to the spool, no database, no grading
    log.close()            # drains: every captured trace is in the store, or still spooled for the next start

How it never blocks and never loses:

- :meth:`TraceLog.capture` writes the trace as one JSON line to this process's spool segment (a single ``os.write``
  on an ``O_APPEND`` file) before the response goes out. A server killed with SIGKILL after that keeps the line: it is
  in the kernel's page cache, not the process. The writer ``fsync``\\ s a segment before it reads from it, so even a
  machine crash loses at most the last fraction of a second.
- A writer thread follows the spool: it reads the new complete lines, grades them (the job's graders that need no
  reference answer), and inserts them with :meth:`Store.add_traces`, which skips ids already stored. A segment
  stored to its end and no longer written is deleted. The spool is the only queue, so memory stays flat however
  long the store is away.
- When the store is locked or unreachable, the writer keeps its place and retries with backoff while requests go on
  being answered and spooled; when it is back, the backlog goes in, each trace once (by id).
- Each server process spools in its own folder under ``<home>/spool/traces`` and holds an ``flock`` on it while it
  runs. A starting server adopts the folders whose lock is free (their process is gone) and replays them first.
  Replaying a line that did reach the store is harmless. The spool is per machine (flock on a network share is not
  to be trusted).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from instil.data.pii import redact_text
from instil.data.records import Example, Message
from instil.errors import InstilError, StoreError
from instil.eval.graders import Grader, as_output, build_graders
from instil.serve.app import ServedRequest
from instil.spec import JobSpec
from instil.store import Store, Trace, TraceFilter

__all__ = [
    "REFERENCE_FREE",
    "CaptureStats",
    "TraceLog",
    "capture_graders",
    "grade_trace",
    "redact_trace",
    "served_trace",
]

log = logging.getLogger("instil.serve.capture")

REFERENCE_FREE = ("contains", "not_contains", "regex", "json_valid", "json_schema", "length")
"""The grader types that judge an output alone: a trace has no reference answer, so only these grade it at capture."""

SEGMENT_BYTES = 8 * 1024 * 1024
"""A spool segment is closed and a new one begun past this size, so stored segments can be deleted."""
BATCH = 256
"""The most traces the writer inserts in one transaction."""
_READ_BYTES = 4 * 1024 * 1024


def capture_graders(spec: JobSpec) -> list[Grader]:
    """The job's graders that need no reference answer (:data:`REFERENCE_FREE`), which grade every trace."""
    free = {g.name for g in spec.graders if g.type in REFERENCE_FREE}
    return [g for g in build_graders(spec) if g.name in free]


def grade_trace(trace: Trace, graders: Iterable[Grader]) -> Trace:
    """The trace with its ``grades`` and ``passed`` filled in (an error response, or no grader, stays ungraded).

    A grader that fails on its own (a bug, not the output) is recorded with its ``error`` and does not count."""
    graders = list(graders)
    if trace.status != 200 or not graders:
        return trace
    messages = [Message.from_dict(m) for m in trace.messages]
    answer = {"role": "assistant", "content": trace.output, "tool_calls": trace.tool_calls}
    example = Example([*messages, Message.from_dict(answer)], tools=trace.tools)
    output = as_output(answer)
    grades: dict[str, dict[str, Any]] = {}
    for g in graders:
        try:
            score = g.grade(example, output)
        except InstilError as e:  # GraderError / DataError: the grader could not judge, which is not a failure
            grades[g.name] = {"error": str(e)}
            continue
        grades[g.name] = {"value": float(score.value), "passed": bool(score.passed), "reason": score.reason}
    judged = [v["passed"] for v in grades.values() if "passed" in v]
    return replace(trace, grades=grades, passed=all(judged) if judged else None)


_NOT_TEXT = frozenset({"role", "type", "name", "id", "tool_call_id"})


def redact_trace(trace: Trace) -> Trace:
    """The trace with PII masked (:func:`instil.data.pii.redact_text`) in every text of its messages, output and
    tool calls; roles, names and ids are left as they are."""

    def text(value: Any, key: str = "") -> Any:
        if isinstance(value, str):
            return value if key in _NOT_TEXT else redact_text(value)
        if isinstance(value, list):
            return [text(v) for v in value]
        if isinstance(value, dict):
            return {k: text(v, k) for k, v in value.items()}
        return value

    return replace(
        trace,
        messages=text(trace.messages),
        output=text(trace.output),
        tool_calls=text(trace.tool_calls),
        redacted=True,
    )


@dataclass(frozen=True)
class CaptureStats:
    """What the trace log has done since it started (for ``/metrics`` and the server's shutdown line)."""

    captured: int
    """Traces written to the spool by this process."""
    stored: int
    """Traces the writer inserted into the store (replayed ones of dead servers included)."""
    skipped: int
    """Spool lines that were in the store already (a replay after a crash)."""
    spool_bytes: int
    """Bytes in the spool not yet known to be in the store."""
    bad_lines: int
    """Spool lines that could not be read (a torn last line of a killed server, a damaged file): skipped."""
    store_ok: bool
    """Whether the last write to the store worked."""
    last_error: str | None


class TraceLog:
    """Captures traces to an append-only spool on the request path and moves them into the store in the background.

    ``graders`` grade each trace in the writer thread (see :func:`capture_graders`); ``redact`` masks PII before
    anything is written. ``spool`` defaults to ``<home>/spool/traces``. ``flush_s`` is how long the writer waits for
    more before it writes what it has; ``retry_s`` the first wait after a failed write (doubling up to 30 s).
    ``retention_days`` deletes older traces on start and then daily.
    """

    def __init__(
        self,
        store: Store,
        *,
        graders: Iterable[Grader] = (),
        redact: bool = False,
        spool: Path | None = None,
        flush_s: float = 0.05,
        retry_s: float = 0.5,
        retention_days: int | None = None,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.store, self.graders, self.redact = store, list(graders), redact
        self.root = Path(spool) if spool is not None else Path(store.home) / "spool" / "traces"
        self.flush_s, self.retry_s, self.retention_days = flush_s, retry_s, retention_days
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # capture() and rotation
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._seq = 0
        self._size = 0
        self._synced = True
        self._adopted: list[tuple[Path, int]] = []  # dead servers' folders and their lock fds, replayed first
        self._cursor: tuple[Path, int] | None = None  # the segment the writer reads and how far it has stored
        self._captured = self._stored = self._skipped = self._bad = 0
        self._ok, self._error = True, None
        self._next_retention = 0.0
        self._close_timeout_s = 10.0
        self._listeners: list[Callable[[list[Trace]], None]] = []

    # ---- life ----------------------------------------------------------------------------------------------------
    def start(self) -> TraceLog:
        """Take this process's spool folder, adopt the folders of servers that are gone, start the writer."""
        if self._thread is not None:
            return self
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._adopt()
            name = f"{socket.gethostname()[:64]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._dir = self.root / name
            self._dir.mkdir()
            self._lock_fd = _locked(self._dir / "lock")
            if self._lock_fd is None:  # a fresh name nobody else knows: cannot happen unless flock is broken
                raise OSError("could not lock a new spool folder")
        except OSError as e:
            raise StoreError(
                f"cannot create the trace spool under {self.root}: {e.strerror or e}",
                hint="The instil home must be writable by the server (or set serve.capture: false).",
            ) from None
        self._open_segment()
        self._thread = threading.Thread(target=self._run, name="instil-trace-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> CaptureStats:
        """Stop taking traces, store what is spooled (waiting up to ``timeout_s`` for the store), release the spool.

        What could not be stored stays in the spool folder and is replayed by the next server that starts."""
        self._close_timeout_s = timeout_s
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s + 5)
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
        stats = self.stats()
        if self._dir is not None and stats.spool_bytes == 0 and not self._thread_alive():
            shutil.rmtree(self._dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for _, fd in self._adopted:
            os.close(fd)
        self._adopted = []
        return stats

    def __enter__(self) -> TraceLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the request path ----------------------------------------------------------------------------------------
    def capture(self, trace: Trace) -> None:
        """Spool one trace (redacted first when asked). Raises :class:`StoreError` only if the spool itself cannot be
        written (a full disk); the store being down never reaches the caller."""
        if self.redact:
            trace = redact_trace(trace)
        line = (json.dumps(trace.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise StoreError("the trace log is not running", hint="call TraceLog.start() first")
            try:
                _write_all(self._fd, line)
            except OSError as e:
                raise StoreError(f"cannot write the trace spool {self._dir}: {e.strerror}") from None
            self._size += len(line)
            self._captured += 1
            self._synced = False
            if self._size >= self.segment_bytes:
                self._open_segment()
        self._wake.set()

    def _open_segment(self) -> None:
        """Begin the next segment (under ``_lock``, or before the writer starts)."""
        assert self._dir is not None
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        self._seq += 1
        path = self._dir / f"{self._seq:08d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = 0
        self._synced = True

    # ---- the writer ----------------------------------------------------------------------------------------------
    def stats(self) -> CaptureStats:
        pending = 0
        for folder in [*(d for d, _ in self._adopted), *([self._dir] if self._dir else [])]:
            for seg in _segments(folder):
                with suppress(FileNotFoundError):
                    pending += seg.stat().st_size
        if self._cursor is not None:
            pending -= self._cursor[1]
        return CaptureStats(
            self._captured, self._stored, self._skipped, max(pending, 0), self._bad, self._ok, self._error
        )

    def _run(self) -> None:
        wait = self.retry_s
        give_up_at: float | None = None
        while True:
            stopping = self._stop.is_set()
            try:
                self._retention()
                self._drain()
            except StoreError as e:
                if self._ok or str(e) != self._error:
                    log.warning("traces are being spooled, the store failed: %s", e)
                self._ok, self._error = False, str(e)
                if stopping:  # keep trying until close()'s time is up; what is left stays spooled
                    give_up_at = give_up_at or time.monotonic() + self._close_timeout_s
                    if time.monotonic() >= give_up_at:
                        return
                    time.sleep(min(wait, 0.5))
                else:
                    self._wake.wait(timeout=wait)
                    self._wake.clear()
                wait = min(wait * 2, 30.0)
                continue
            except Exception:  # a bug here must not end capture: log it and carry on after a pause
                log.exception("the trace writer failed")
                if stopping:
                    return
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._ok, self._error, wait = True, None, self.retry_s
            if stopping:
                return
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            time.sleep(self.flush_s)  # let a burst gather into one transaction

    def _drain(self) -> None:
        """Store everything spooled so far (raises :class:`StoreError` where the store failed)."""
        for folder, fd in list(self._adopted):
            self._drain_folder(folder, live=False)
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)
            self._adopted.remove((folder, fd))
        if self._dir is not None:
            self._drain_folder(self._dir, live=True)

    def _drain_folder(self, folder: Path, *, live: bool) -> None:
        for seg in _segments(folder):
            sync = None
            with self._lock:
                active = live and self._fd is not None and seg.name == f"{self._seq:08d}.jsonl"
                if active and not self._synced:
                    sync, self._synced = os.dup(self._fd), True  # a dup: rotation may close the original meanwhile
            if sync is not None:
                try:
                    os.fsync(sync)  # the group commit: one fsync for every line written since the last, unlocked
                finally:
                    os.close(sync)
            if self._cursor is None or self._cursor[0] != seg:
                self._cursor = (seg, 0)
            done = self._drain_segment(seg, sealed=not active)
            if not done:
                return  # the active segment: more will come
            with suppress(FileNotFoundError):
                seg.unlink()
            self._cursor = None

    def _drain_segment(self, seg: Path, *, sealed: bool) -> bool:
        """Store the segment's complete lines past the cursor; True when it is sealed and stored to its end."""
        assert self._cursor is not None
        while True:
            offset = self._cursor[1]
            try:
                with open(seg, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(_READ_BYTES)
            except FileNotFoundError:
                return True
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                if sealed and chunk:  # a torn last line: its request never got an answer
                    self._bad += 1
                    log.warning("%s: skipped a torn last line (%d bytes)", seg, len(chunk))
                return sealed
            traces = []
            for raw in chunk[:end].splitlines():
                if not raw.strip():
                    continue
                try:
                    traces.append(Trace.from_dict(json.loads(raw)))
                except (ValueError, TypeError, KeyError) as e:
                    self._bad += 1
                    log.warning("%s: skipped a spool line that cannot be read: %s", seg, e)
            for k in range(0, len(traces), BATCH):
                self._store(traces[k : k + BATCH])
            self._cursor = (seg, offset + end)

    def _store(self, traces: list[Trace]) -> None:
        known = self.store.known_traces([t.id for t in traces])
        fresh = [grade_trace(t, self.graders) for t in traces if t.id not in known]
        new = self.store.add_traces(fresh) if fresh else 0
        self._stored += new
        self._skipped += len(traces) - new
        for listener in list(self._listeners):
            try:
                listener(fresh)
            except Exception:  # a listener's bug must not stop capture
                log.exception("a trace listener failed")

    def listen(self, listener: Callable[[list[Trace]], None]) -> None:
        """Call ``listener`` (in the writer thread) with each batch of traces just stored, graded; it must be quick."""
        self._listeners.append(listener)

    def _retention(self) -> None:
        if self.retention_days is None or time.monotonic() < self._next_retention:
            return
        cutoff = datetime.now(UTC) - timedelta(days=self.retention_days)
        gone = self.store.delete_traces(TraceFilter(until=cutoff))
        if gone:
            log.info("retention: deleted %d traces older than %d days", gone, self.retention_days)
        self._next_retention = time.monotonic() + 24 * 3600

    # ---- adoption ------------------------------------------------------------------------------------------------
    def _adopt(self) -> None:
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            fd = _locked(folder / "lock")
            if fd is not None:  # its server is gone (or never locked it): its traces are ours to replay
                self._adopted.append((folder, fd))


def _segments(folder: Path) -> list[Path]:
    try:
        return sorted(folder.glob("*.jsonl"))
    except OSError:
        return []


def _locked(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (created if absent), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def served_trace(job: str, r: ServedRequest, *, version: int | None = None, price_per_hour: float = 0.0) -> Trace:
    """The trace of one request a local model answered (``r`` as :func:`~instil.serve.app.create_app`'s hook gets
    it). Its cost is the machine's price for the time the answer took, shared by the requests generated with it."""
    cost = price_per_hour * r.latency_s / 3600 / max(r.batch_size, 1) if price_per_hour > 0 else None
    return Trace(
        id=r.id,
        job=job,
        created_at=r.arrived_at,
        source="local",
        model=r.model,
        messages=r.messages,
        output=r.content,
        tool_calls=r.tool_calls,
        finish_reason=r.finish_reason,
        version=version,
        stream=r.stream,
        tools=r.tools,
        params=r.params,
        prompt_tokens=r.usage.get("prompt_tokens"),
        completion_tokens=r.usage.get("completion_tokens"),
        latency_s=r.latency_s,
        first_token_s=r.first_token_s,
        cost=cost,
        user=r.user,
        meta=r.metadata,
        tags=r.tags,
        rollout_id=r.route.rollout_id if r.route is not None else None,
        arm=r.route.arm if r.route is not None else None,
        pair_id=r.route.pair_id if r.route is not None else None,
    )
