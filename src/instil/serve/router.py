"""A job's requests routed by its running rollout (canary, shadow), applied live, and the canary's guard run.

    router = RolloutRouter(store, "triage")               # reads the store's rollout every second, in a thread
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
``promote`` reaches a running server within that), and while a canary runs it feeds the guard the routed traces
that arrived more than ``settle_s`` ago (by then their answers are out and traced), in arrival order, and ends the
canary in the store when the guard stops it. A trace that reaches the store later than that is left out of this
server's guard (``instil rollout status`` counts it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from instil import rollout as rollouts
from instil.errors import InstilError
from instil.eval.sequential import CanaryGuard
from instil.serve.app import ROUTE_KEY, Route
from instil.store import RolloutInfo, Store, TraceFilter

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


class RolloutRouter:
    """The job's rollout as the store says now, the middleware that applies it, and the canary's guard."""

    def __init__(
        self,
        store: Store,
        job: str,
        *,
        refresh_s: float = 1.0,
        settle_s: float = 30.0,
        max_shadow_inflight: int = 32,
        guard: bool = True,
    ) -> None:
        self.store, self.job = store, job
        self.refresh_s, self.settle_s, self.guard_on = refresh_s, settle_s, guard
        self.max_shadow_inflight = max_shadow_inflight
        self.current: RolloutInfo | None = None
        """The running rollout, as last read."""
        self.counts: dict[str, int] = {"production": 0, "candidate": 0, "shadow": 0, "shadow_skipped": 0}
        self._guard: CanaryGuard | None = None
        self._guard_for: int | None = None
        self._seen: tuple[datetime, str] | None = None
        self._shadows = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the thread ----------------------------------------------------------------------------------------------------
    def start(self) -> RolloutRouter:
        """Read the rollout now, then keep it fresh (and the guard fed) in a thread until :meth:`close`."""
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
        """Read the running rollout; feed and, if it says so, stop a canary's guard."""
        with self._lock:
            current = self.store.running_rollout(self.job)
            if current is not None and current.mode == "canary" and self.guard_on:
                current = self._check(current)
            self.current = current

    def _check(self, r: RolloutInfo) -> RolloutInfo | None:
        if self._guard_for != r.id:
            self._guard, self._guard_for, self._seen = rollouts.guard_for(r), r.id, None
        guard = self._guard
        assert guard is not None
        before = datetime.now(UTC) - timedelta(seconds=self.settle_s)
        outcomes = self.store.trace_outcomes(
            TraceFilter(job=self.job, rollout_id=r.id), after=self._seen, before=before
        )
        if outcomes:
            self._seen = (outcomes[-1].created_at, outcomes[-1].id)
        if not rollouts.feed(guard, outcomes):
            return r
        reason = "stopped by the guard: " + guard.reason()
        try:
            self.store.end_rollout(self.job, "stopped", reason, summary=rollouts.guard_summary(guard), rollout_id=r.id)
            log.warning("the canary of %s is stopped: %s", r.ref, reason)
        except InstilError:  # ended meanwhile (another server's guard, a promotion): nothing more to do
            pass
        return None

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
                user = body.get("user") if isinstance(body.get("user"), str) else None
                arm = "candidate" if canary_bucket(self.job, r.version, user) < r.percent else "production"
                self.counts[arm] += 1
                inner = {**scope, ROUTE_KEY: Route(r.id, arm)}
                if arm == "candidate":
                    first = {**first, "body": _encode({**body, "model": r.ref})}
                    inner["headers"] = _with_length(scope, len(first["body"]))
                await app(inner, _replaying(first, receive), send)
                return
            if random.random() * 100 >= r.percent:  # a shadow on a share of requests: the rest go as they came
                await app(scope, _replaying(first, receive), send)
                return
            pair = uuid.uuid4().hex
            self.counts["production"] += 1
            await app({**scope, ROUTE_KEY: Route(r.id, "production", pair)}, _replaying(first, receive), send)
            if self._shadows >= self.max_shadow_inflight:
                self.counts["shadow_skipped"] += 1
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
