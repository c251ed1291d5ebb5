"""``/metrics`` (Prometheus text format) and structured access logs, for the local server and the proxy alike.

    metrics = ServeMetrics(engine=engine, traces=trace_log)    # each app its own registry
    app.add_middleware(AccessLog, metrics=metrics)              # every request: a JSON log line, counted and timed
    metrics.answered(model, prompt_tokens, completion_tokens, first_token_s)   # what only the handler knows
    # GET /metrics -> instil_requests_total, instil_request_seconds, instil_time_to_first_token_seconds,
    #                 instil_tokens_total, instil_queue_depth, instil_trace_spool_bytes, instil_traces_*

Built on ``prometheus_client`` (the Prometheus project's own library). The access log goes to the
``instil.serve.access`` logger as one JSON object per line: time, method, path, status, milliseconds, bytes sent and
the client's address, never a header or a body, so no key and no prompt reaches a log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AccessLog", "ServeMetrics"]

access_log = logging.getLogger("instil.serve.access")

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    """The metrics of one server. ``engine`` (a local model's :class:`~instil.serve.engine.Engine`) gives the queue
    depth and batch counts, ``traces`` (a :class:`~instil.serve.capture.TraceLog`) the spool; both are read when
    scraped."""

    def __init__(self, *, engine: Any = None, traces: Any = None, router: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "instil_requests", "HTTP requests answered, by route and status", ["path", "status"], registry=r
        )
        self.seconds = Histogram(
            "instil_request_seconds",
            "Seconds from a request's arrival to its last byte",
            ["path"],
            buckets=_SECONDS,
            registry=r,
        )
        self.first_token = Histogram(
            "instil_time_to_first_token_seconds",
            "Seconds from arrival to the first token, by model",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.tokens = Counter(
            "instil_tokens", "Tokens, by model and kind (prompt, completion)", ["model", "kind"], registry=r
        )
        if engine is not None:
            Gauge("instil_queue_depth", "Requests waiting for the model", registry=r).set_function(
                lambda: engine.waiting
            )
            Gauge("instil_batches", "Batches generated", registry=r).set_function(lambda: engine.stats.batches)
            Gauge(
                "instil_engine_steps", "Decoding steps run (a token for each running request)", registry=r
            ).set_function(lambda: engine.stats.steps)
            Gauge("instil_engine_busy_seconds", "Seconds the model spent generating", registry=r).set_function(
                lambda: engine.stats.batch_seconds
            )
            Gauge("instil_cancelled", "Requests dropped because their client went away", registry=r).set_function(
                lambda: engine.stats.cancelled
            )
            Gauge(
                "instil_prefix_cache_hits", "Batches whose shared system prompt came from the KV cache", registry=r
            ).set_function(lambda: engine.stats.prefix_hits)
        if router is not None:
            routed = Gauge(
                "instil_rollout_requests", "Requests a rollout routed, by arm (production, candidate, shadow)", ["arm"],
                registry=r,
            )  # fmt: skip
            for arm in ("production", "candidate", "shadow"):
                routed.labels(arm).set_function(lambda arm=arm: router.counts[arm])
            Gauge(
                "instil_rollout_shadow_skipped", "Requests not shadowed: too many shadows were running", registry=r
            ).set_function(lambda: router.counts["shadow_skipped"])
            Gauge("instil_rollout_running", "1 while a rollout routes the job's requests", registry=r).set_function(
                lambda: 1.0 if router.current is not None else 0.0
            )
        if traces is not None:
            Gauge("instil_trace_spool_bytes", "Bytes of traces spooled, not yet in the store", registry=r).set_function(
                lambda: traces.stats().spool_bytes
            )
            Gauge("instil_traces_captured", "Traces written to the spool", registry=r).set_function(
                lambda: traces.stats().captured
            )
            Gauge("instil_traces_stored", "Traces stored", registry=r).set_function(lambda: traces.stats().stored)
            Gauge("instil_trace_store_ok", "1 while writes to the store work", registry=r).set_function(
                lambda: 1.0 if traces.stats().store_ok else 0.0
            )  # fmt: skip

    def answered(
        self, model: str, prompt_tokens: int | None, completion_tokens: int | None, first_token_s: float | None
    ) -> None:
        """Count an answer's tokens and its time to first token."""
        if prompt_tokens:
            self.tokens.labels(model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(model, "completion").inc(completion_tokens)
        if first_token_s is not None:
            self.first_token.labels(model).observe(first_token_s)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_ROUTES = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")


class AccessLog:
    """ASGI middleware: every HTTP request counted, timed and logged as one JSON line, after its last byte."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") == "/metrics" and scope.get("method") == "GET":
            body, kind = self.metrics.render()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind.encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        began = time.perf_counter()
        status, sent = 500, 0

        async def counting(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            took = time.perf_counter() - began
            path = scope.get("path", "")
            # Unknown paths share one label: a scanner probing URLs must not grow the metrics without bound.
            route = path if path in _ROUTES or path.startswith("/v1/models/") else "other"
            route = "/v1/models/{id}" if route.startswith("/v1/models/") else route
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.seconds.labels(route).observe(took)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_log.info(
                    json.dumps(
                        {
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                            "method": scope.get("method"),
                            "path": route,
                            "status": status,
                            "ms": round(took * 1000, 2),
                            "bytes": sent,
                            "client": client[0],
                        }
                    )
                )
