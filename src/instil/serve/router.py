"""A job's requests routed by its running rollout (canary, shadow), applied live, and the canary's guard run.

    router = RolloutRouter(store, "triage", traces=traces)   # reads the store's rollout every second, in a thread
    app = job_app(spec, store, traces=traces, router=router)
    router.start(); ...; router.close()                  # serve_job does both

See :mod:`instil.rollout` for what a rollout is. The router is ASGI middleware inside the key check and the body
limit: a request for ``/v1/chat/completions`` naming the job itself (``model: "<job>"``) while a rollout runs gets
its :class:`~instil.serve.app.Route` in the ASGI scope (never a header, so no client can pick an arm) and, on a
canary's candidate arm, its ``model`` rewritten to the candidate (``<job>@<n>``). A shadowed request is answered by
production as usual; once its answer is out, the same body (``stream`` off) goes through the app again as the
candidate's, in the background, its answer traced and thrown away. At most ``max_shadow_inflight`` shadows run at
once; past it a request is not shadowed (``/metrics``: ``instil_rollout_shadow_skipped``).

The router's thread reads the running rollout at most every ``refresh_s`` (a ``rollout start``, ``abort`` or
``promote`` reaches a running server within that). While a canary runs, its guard is fed from this server's own
traffic: each routed request takes a place in line as it arrives, and its outcome (a grader's verdict from its trace,
handed over by the trace log once stored; or a server error, or a candidate that could not be served) is taken in
that order, so the test's validity does not depend on which answers are slow. When the guard stops the canary the
router stops routing to it at once and ends it in the store, saying why. Several servers each guard their own
traffic (the chance that one of N stops an equal canary is then at most N times ``alpha``); ``instil rollout status``
recomputes the same test from all the traces in the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from instil import rollout as rollouts
from instil.errors import InstilError
from instil.serve.app import ANSWERED_KEY, FAILED_KEY, ROUTE_KEY, Route
from instil.serve.capture import TraceLog
from instil.store import RolloutInfo, Store, Trace

__all__ = ["RolloutRouter", "canary_bucket"]

log = logging.getLogger("instil.serve.rollout")

_PATH = "/v1/chat/completions"


def canary_bucket(job: str, version: int, user: str | None) -> float:
    """Where in [0, 100) a request falls: from its ``user`` (the same person always lands in the same place, so a
    canary's share can be raised without moving anyone out of it), at random without one."""
    if not user:
        return random.random() * 100
    digest = hashlib.sha256(f"{job}\0{version}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class _Watch:
    """One canary's guard, fed what this server routed, in the order the requests arrived.

    Each routed request takes a place in line when it arrives; its outcome comes when it ends (a server error, a
    candidate that could not be served) or when its trace has been graded and stored (the trace log's listener). The
    guard takes outcomes strictly in line order, so a slow answer holds the line rather than moving groups, and the
    order never depends on the outcomes."""

    def __init__(self, rollout: RolloutInfo) -> None:
        self.rollout = rollout
        self.guard = rollouts.guard_for(rollout)
        self._line: collections.deque[tuple[int, str]] = collections.deque()
        self._known: dict[int, bool | None] = {}
        self._waiting: dict[str, int] = {}  # an answer's id -> its place, until its grades come
        self._early: collections.OrderedDict[str, bool | None] = collections.OrderedDict()  # grades before the end
        self._since: dict[int, float] = {}  # when a place began waiting for its grades
        self._next = 0
        self._lock = threading.Lock()

    def arrive(self, arm: str) -> int:
        with self._lock:
            seq, self._next = self._next, self._next + 1
            self._line.append((seq, arm))
            return seq

    def end(
        self, seq: int, arm: str, status: int | None, answer_id: str | None, traced: bool, failed: bool = False
    ) -> None:
        """The request in place ``seq`` ended with ``status`` (None: before a response started); ``failed``: the
        server failed it whatever the status said (an error inside a stream, an exception)."""
        with self._lock:
            if failed:
                self._known[seq] = True
            elif status is None:
                self._known[seq] = None  # the client went away before anything was answered
            elif status >= 500 or status == 429 or (arm == "candidate" and status == 404):
                self._known[seq] = True  # the server failed it (or could not serve the candidate it routed to)
            elif status == 200 and answer_id is not None and traced:
                if answer_id in self._early:
                    self._known[seq] = self._early.pop(answer_id)
                else:
                    self._waiting[answer_id] = seq
                    self._since[seq] = time.monotonic()
            else:  # a request the client got wrong, one not kept (store: false), or no capture: no verdict
                self._known[seq] = None
            self._advance()

    def graded(self, traces: list[Trace]) -> None:
        with self._lock:
            for t in traces:
                if t.rollout_id != self.rollout.id or t.arm not in ("candidate", "production"):
                    continue
                verdict = rollouts.failed(t)
                seq = self._waiting.pop(t.id, None)
                if seq is not None:
                    self._known[seq] = verdict
                else:
                    self._early[t.id] = verdict
                    while len(self._early) > 100_000:  # bounded: a trace whose request never ends here
                        self._early.popitem(last=False)
            self._advance()

    def expire(self, after_s: float) -> None:
        """Give up on grades that have not come ``after_s`` after their answer (a trace that could not be written):
        no verdict, so the line moves on."""
        with self._lock:
            now = time.monotonic()
            for answer_id, seq in list(self._waiting.items()):
                if now - self._since.get(seq, now) > after_s:
                    del self._waiting[answer_id]
                    self._known[seq] = None
            self._advance()

    def _advance(self) -> None:
        while self._line and self._line[0][0] in self._known:
            seq, arm = self._line.popleft()
            verdict = self._known.pop(seq)
            self._since.pop(seq, None)
            if verdict is not None:
                self.guard.update(arm, verdict)


class RolloutRouter:
    """The job's rollout as the store says now, the middleware that applies it, and the canary's guard."""

    def __init__(
        self,
        store: Store,
        job: str,
        *,
        refresh_s: float = 1.0,
        max_shadow_inflight: int = 32,
        shadow_below_waiting: int = 4,
        guard: bool = True,
        traces: TraceLog | None = None,
    ) -> None:
        self.store, self.job = store, job
        self.refresh_s, self.guard_on = refresh_s, guard
        self.grades_timeout_s = 300.0
        """How long a routed answer's place waits for its grades before it counts as no verdict."""
        self.max_shadow_inflight, self.shadow_below_waiting = max_shadow_inflight, shadow_below_waiting
        self.traced = traces is not None
        self.current: RolloutInfo | None = None
        """The running rollout, as last read."""
        self.load: Callable[[], int] | None = None
        """How many requests wait for the model now (set by the app): shadows are skipped while it is high."""
        self.prepare: Callable[[str], object] | None = None
        """Makes a candidate answerable before any request goes to it (set by the app: its catalog loads it)."""
        self._prepared: int | None = None
        self.counts: dict[str, int] = {"production": 0, "candidate": 0, "shadow": 0, "shadow_skipped": 0}
        self._watch: _Watch | None = None
        self._shadows = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if traces is not None:
            traces.listen(self._stored)

    # -- the thread ----------------------------------------------------------------------------------------------------
    def start(self) -> RolloutRouter:
        """Read the rollout now, then keep it fresh (and a stopped canary ended in the store) until :meth:`close`."""
        if self.guard_on and not self.traced:
            log.warning("traces are not captured: a canary's guard sees only server errors, no grader's verdict")
        self.refresh()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"instil-rollout-{self.job}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> RolloutRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # a store hiccup must not end routing: the last rollout read stands until it is back
                log.exception("reading the rollout of %r failed; retrying", self.job)

    def refresh(self) -> None:
        """Read the running rollout; load its candidate before routing to it (a candidate that cannot be loaded
        ends the rollout); a canary the guard stopped is ended in the store (and no longer routed)."""
        with self._lock:
            current = self.store.running_rollout(self.job)
            watch = self._watch
            if current is not None and watch is not None and watch.rollout.id == current.id:
                watch.expire(self.grades_timeout_s)
                if watch.guard.stopped:
                    self._end(watch)
                    current = None
            if current is not None and self.prepare is not None and self._prepared != current.id:
                try:
                    self.prepare(current.ref)
                    self._prepared = current.id
                except Exception as e:  # noqa: BLE001 - whatever it was, no request may go to a model not there
                    why = f"this server could not load {current.ref}: {type(e).__name__}: {e}"
                    log.error("the rollout of %s is aborted: %s", current.ref, why)
                    with contextlib.suppress(InstilError):
                        self.store.end_rollout(self.job, "aborted", why, rollout_id=current.id)
                    current = None
            stopped = (
                watch is not None and current is not None and watch.rollout.id == current.id and watch.guard.stopped
            )
            self.current = None if stopped else current  # the guard may have stopped it meanwhile

    def _end(self, watch: _Watch) -> None:
        guard, r = watch.guard, watch.rollout
        reason = "stopped by the guard: " + guard.reason()
        try:
            self.store.end_rollout(self.job, "stopped", reason, summary=rollouts.guard_summary(guard), rollout_id=r.id)
            log.warning("the canary of %s is stopped: %s", r.ref, reason)
        except InstilError:  # ended meanwhile (by hand, by a promotion): nothing more to do
            pass

    def _watch_for(self, r: RolloutInfo) -> _Watch | None:
        if not self.guard_on:
            return None
        watch = self._watch
        if watch is None or watch.rollout.id != r.id:
            watch = self._watch = _Watch(r)
        return watch

    def _stored(self, traces: list[Trace]) -> None:
        watch = self._watch
        if watch is not None:
            watch.graded(traces)
            if watch.guard.stopped and self.current is not None and self.current.id == watch.rollout.id:
                self.current = None  # stop routing at once; the thread ends it in the store

    # -- the middleware ------------------------------------------------------------------------------------------------
    def wrap(self, app: Any) -> Callable[..., Any]:
        """The ASGI middleware around ``app`` (for ``add_middleware``)."""

        async def routed(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
            r = self.current
            if r is None or scope["type"] != "http" or scope.get("path") != _PATH or scope.get("method") != "POST":
                await app(scope, receive, send)
                return
            first = await receive()  # the whole body: the body limit outside has read and bounded it
            body = _json_object(first.get("body", b"")) if first.get("type") == "http.request" else None
            if body is None or body.get("model") != self.job:
                await app(scope, _replaying(first, receive), send)
                return
            if r.mode == "canary":
                await self._canary(app, r, scope, first, body, receive, send)
                return
            if random.random() * 100 >= r.percent:  # a shadow on a share of requests: the rest go as they came
                await app(scope, _replaying(first, receive), send)
                return
            pair = uuid.uuid4().hex
            self.counts["production"] += 1
            await app({**scope, ROUTE_KEY: Route(r.id, "production", pair)}, _replaying(first, receive), send)
            busy = self.load is not None and self.load() >= self.shadow_below_waiting
            if busy or self._shadows >= self.max_shadow_inflight:
                self.counts["shadow_skipped"] += 1  # production's callers come first
                return
            shadow = {**body, "model": r.ref, "stream": False}
            shadow.pop("stream_options", None)
            data = _encode(shadow)
            shadow_scope = {**scope, ROUTE_KEY: Route(r.id, "shadow", pair), "headers": _with_length(scope, len(data))}
            self._shadows += 1
            self.counts["shadow"] += 1
            task = asyncio.ensure_future(self._shadow(app, shadow_scope, data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return routed

    async def _canary(
        self, app: Any, r: RolloutInfo, scope: dict[str, Any], first: dict[str, Any], body: dict[str, Any],
        receive: Callable, send: Callable,
    ) -> None:  # fmt: skip
        user = body.get("user") if isinstance(body.get("user"), str) else None
        arm = "candidate" if canary_bucket(self.job, r.version, user) < r.percent else "production"
        self.counts[arm] += 1
        inner = {**scope, ROUTE_KEY: Route(r.id, arm)}
        if arm == "candidate":
            first = {**first, "body": _encode({**body, "model": r.ref})}
            inner["headers"] = _with_length(scope, len(first["body"]))
        watch = self._watch_for(r)
        seq = watch.arrive(arm) if watch is not None else -1
        status: int | None = None

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        crashed = False
        try:
            await app(inner, _replaying(first, receive), sending)
        except Exception:
            crashed = True  # the app's error handler sits outside this middleware: it answers the 500
            raise
        finally:
            if watch is not None:
                traced = self.traced and body.get("store") is not False
                failed = crashed or bool(inner.get(FAILED_KEY))
                watch.end(seq, arm, status, inner.get(ANSWERED_KEY), traced, failed)
                if watch.guard.stopped and self.current is not None and self.current.id == r.id:
                    self.current = None

    async def _shadow(self, app: Any, scope: dict[str, Any], body: bytes) -> None:
        """The candidate answers the same request unseen; its trace is the point, its bytes go nowhere."""
        sent = False
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await never  # no disconnect: a shadow is never abandoned by its (absent) client
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                log.info("a shadow request to the candidate got %s", message["status"])

        try:
            await app(scope, receive, send)
        except Exception:
            log.exception("a shadow request failed")
        finally:
            self._shadows -= 1
            never.cancel()


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None  # the app answers a malformed body itself
    return body if isinstance(body, dict) else None


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def _with_length(scope: dict[str, Any], length: int) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() != b"content-length"]
    return [*headers, (b"content-length", str(length).encode())]


def _replaying(first: dict[str, Any], receive: Callable) -> Callable:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return replay
