"""Proxy mode: instil in front of the team's current model (any OpenAI-compatible API), and every request a trace.

    app = create_proxy_app(spec.serve.upstreams, job="support", api_key="sk-local", on_trace=traces.capture)
    # clients swap https://api.openai.com/v1 for http://127.0.0.1:8000/v1 and change nothing else

What passes through unchanged: the request body (the bytes as sent), the upstream's status code, body and headers
(content type, request id, rate-limit headers), and a stream's chunks as they arrive, never buffered. What changes
on the way up: ``Authorization`` (the upstream's key from its ``api_key_env`` when set; otherwise the client's own
header is forwarded, unless this proxy asks for its own key) and ``Accept-Encoding`` (identity, so what is relayed is
what is read). An upstream that cannot be reached is a 502, one that does not answer in its ``timeout_s`` a 504, both
in OpenAI's error shape.

Routing: a request's ``model`` goes to the upstream that lists it in ``models``, else to the one upstream without a
list; no route is a 404 ``model_not_found``. ``GET /v1/models`` is the default upstream's list.

Capture: ``on_trace`` gets a :class:`~instil.store.Trace` for every request the upstream answered, errors included,
before the answer's last byte goes out (a streamed answer: before ``data: [DONE]``), so a client that has the
whole answer has its trace spooled. A request with ``store: false`` is forwarded (the upstream reads the flag too)
and not traced.
"""

# No `from __future__ import annotations`: FastAPI reads the handler's annotations (see app.py).
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from instil.errors import DependencyError
from instil.serve.app import (
    _NOT_PARAMS,
    ANSWERED_KEY,
    MAX_BODY_BYTES,
    TAGS_HEADER,
    Route,
    _ApiError,
    _BodyLimit,
    _handle_errors,
    _require_key,
    request_route,
    request_tags,
)
from instil.serve.metrics import AccessLog, ServeMetrics
from instil.spec import UpstreamSpec
from instil.store import Trace

__all__ = ["create_proxy_app", "route"]

log = logging.getLogger("instil.serve.proxy")

# Never forwarded either way: hop-by-hop headers, what the transport sets itself, and what is ours.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "date",
    "server",
}
_NOT_UP = _HOP | {"authorization", "cookie", TAGS_HEADER}


def route(upstreams: list[UpstreamSpec], model: Any) -> UpstreamSpec | None:
    """The upstream that answers ``model``: the one that lists it, else the one that lists none; None: no route."""
    if isinstance(model, str):
        for u in upstreams:
            if model in u.models:
                return u
    return next((u for u in upstreams if not u.models), None)


def create_proxy_app(
    upstreams: list[UpstreamSpec],
    *,
    job: str,
    api_key: str | None = None,
    on_trace: Callable[[Trace], None] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    keys: dict[str, str | None] | None = None,
    trace_log: Any = None,
    rename: Callable[[str], str | None] | None = None,
    source: str = "proxy",
    router: Any = None,
) -> Any:
    """A FastAPI app forwarding OpenAI chat completions to ``upstreams`` (see the module doc).

    ``rename(model)``: the name to send upstream instead (an alias such as ``<job>`` turned into ``<job>@3``), or
    None to send the request as it came; a renamed body is re-encoded, any other goes up byte for byte. ``source``
    is what the traces say answered (``proxy``; ``local`` for a model of our own behind vLLM).

    ``api_key``: the key clients must send to this proxy (None: none). ``keys`` maps an upstream's name to its key
    (read from its ``api_key_env`` by the caller; an upstream without one forwards the client's ``Authorization``).
    ``on_trace`` is called on the event loop with each :class:`Trace`; it must be quick (a spool append is).
    ``trace_log``: the :class:`~instil.serve.capture.TraceLog` behind ``on_trace``, whose spool ``/metrics`` shows.
    ``router``: a :class:`~instil.serve.router.RolloutRouter` (for our own versions behind vLLM), as in
    :func:`~instil.serve.app.create_catalog_app`.
    """
    try:
        import aiohttp
        from fastapi import FastAPI, Request
        from fastapi.responses import Response, StreamingResponse
    except ImportError:
        raise DependencyError(
            "the proxy needs fastapi, uvicorn and aiohttp", hint="pip install 'instil[serve]'"
        ) from None
    if not upstreams:
        raise ValueError("give at least one upstream (serve.upstream in the spec)")
    keys = keys or {}
    sessions: dict[str, Any] = {}

    def session(u: UpstreamSpec) -> Any:
        if u.name not in sessions:  # made on the server's event loop, on first use
            sessions[u.name] = aiohttp.ClientSession(
                # timeout_s bounds each wait for the upstream (the answer's start, and each gap in a stream)
                timeout=aiohttp.ClientTimeout(total=None, connect=min(10.0, u.timeout_s), sock_read=u.timeout_s),
                connector=aiohttp.TCPConnector(limit=512),
                auto_decompress=False,  # relay the bytes as they come
                skip_auto_headers=("User-Agent",),  # the client's own is forwarded
            )
        return sessions[u.name]

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        for c in sessions.values():
            await c.close()

    app = FastAPI(title=f"instil proxy: {job}", lifespan=lifespan, docs_url=None, redoc_url=None)
    _handle_errors(app)
    if router is not None:
        app.add_middleware(router.wrap)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    _require_key(app, api_key)
    metrics = ServeMetrics(traces=trace_log, router=router)
    app.state.metrics = metrics
    app.add_middleware(AccessLog, metrics=metrics)  # outermost: every request is counted, refused ones too

    def headers_up(request: Any, u: UpstreamSpec) -> dict[str, str]:
        out = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_UP}
        out["accept-encoding"] = "identity"
        key = keys.get(u.name)
        if key:
            out["authorization"] = f"Bearer {key}"
        elif api_key is None and "authorization" in request.headers:
            out["authorization"] = request.headers["authorization"]  # the client's own key for the upstream
        return out

    def headers_down(response: Any) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k.lower() not in _HOP}

    def emit(trace: Trace, capture: bool, scope: dict[str, Any]) -> None:
        if trace.status == 200:
            metrics.answered(trace.model, trace.prompt_tokens, trace.completion_tokens, trace.first_token_s)
        if on_trace is None or not capture:
            return
        try:
            on_trace(trace)
            scope[ANSWERED_KEY] = trace.id  # a rollout's router waits for this trace's grades
        except Exception:  # a broken log must not take the answer from a client that has it
            log.exception("capturing the trace of %s failed", trace.id)

    async def send(u: UpstreamSpec, request: Any, path: str, method: str, body: bytes | None) -> Any:
        url = f"{u.base_url}/{path}"
        try:
            return await session(u).request(method, url, data=body, headers=headers_up(request, u))
        except TimeoutError:
            raise _ApiError(
                504,
                f"the upstream {u.name!r} did not answer in {u.timeout_s:g} s",
                type="upstream_error",
                code="upstream_timeout",
            ) from None
        except aiohttp.ClientError as e:
            raise _ApiError(
                502,
                f"the upstream {u.name!r} ({u.base_url}) cannot be reached: {type(e).__name__}",
                type="upstream_error",
                code="upstream_unreachable",
            ) from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "mode": "proxy", "upstreams": [u.name for u in upstreams]}

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        u = route(upstreams, None) or upstreams[0]
        response = await send(u, request, "models", "GET", None)
        body = await read_whole(u, response)
        return Response(body, status_code=response.status, headers=headers_down(response))

    async def read_whole(u: UpstreamSpec, response: Any) -> bytes:
        try:
            return await response.read()
        except (aiohttp.ClientError, TimeoutError):
            raise _ApiError(502, f"the upstream {u.name!r} broke off its answer", type="upstream_error") from None
        finally:
            response.release()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        began, arrived = time.perf_counter(), datetime.now(UTC)
        raw = await request.body()  # already read whole (and bounded) by _BodyLimit
        tags = request_tags(request.headers.get(TAGS_HEADER))
        routed = request_route(request.scope)
        try:
            asked = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            asked = None
        asked = asked if isinstance(asked, dict) else {}
        if rename is not None and isinstance(asked.get("model"), str):
            renamed = rename(asked["model"])
            if renamed is not None and renamed != asked["model"]:
                asked = {**asked, "model": renamed}
                raw = json.dumps(asked, ensure_ascii=False).encode()
        u = route(upstreams, asked.get("model"))
        if u is None:
            raise _ApiError(
                404,
                f"no upstream serves the model {asked.get('model')!r}; routed: "
                f"{sorted(m for x in upstreams for m in x.models)}",
                param="model",
                code="model_not_found",
            )
        keep = asked.get("store") is not False  # forwarded either way; kept only without store: false
        response = await send(u, request, "chat/completions", "POST", raw)
        streamed = response.headers.get("content-type", "").startswith("text/event-stream")

        def trace(status: int, answer: dict[str, Any], error: dict[str, Any] | None, first: float | None) -> Trace:
            return _trace(job, u, asked, answer, status, error, began, arrived, first, bool(streamed), tags, source,
                          routed)  # fmt: skip

        status = response.status
        if not streamed:
            body = await read_whole(u, response)
            answer, error = _read_answer(body, status)
            emit(trace(status, answer, error, None), keep, request.scope)
            return Response(body, status_code=status, headers=headers_down(response))

        async def relay() -> AsyncIterator[bytes]:
            events = _Events()
            kept = False
            try:
                async for chunk in response.content.iter_any():  # each piece as it arrives, never gathered
                    if not kept and events.feed(chunk, time.perf_counter() - began):
                        kept = True  # the end is in this chunk: trace first, then let the client see it
                        emit(trace(status, events.answer(), None, events.first_token_s), keep, request.scope)
                    yield chunk
            except (aiohttp.ClientError, TimeoutError):  # the client sees the stream end without [DONE]
                log.warning("the upstream %r broke off a stream", u.name)
            finally:
                response.release()
                if not kept:  # the stream ended without [DONE]: the upstream broke off or the client went away
                    broken = {"message": "the stream ended before [DONE]"}
                    emit(trace(499, events.answer(), broken, events.first_token_s), keep, request.scope)

        return StreamingResponse(relay(), status_code=status, headers=headers_down(response))

    return app


def _read_answer(body: bytes, status: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the answer's fields, the error body) of a non-streamed upstream response."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if status != 200:
        error = data if isinstance(data, dict) else {"body": body[:2000].decode("utf-8", "replace")}
        return {}, error
    if not isinstance(data, dict):
        return {}, {
            "message": "the upstream's answer is not a JSON object",
            "body": body[:2000].decode("utf-8", "replace"),
        }
    choice = (data.get("choices") or [{}])[0] if isinstance(data.get("choices"), list) else {}
    message = choice.get("message") or {} if isinstance(choice, dict) else {}
    return {
        "id": data.get("id"),
        "model": data.get("model"),
        "content": message.get("content") if isinstance(message, dict) else None,
        "tool_calls": message.get("tool_calls") if isinstance(message, dict) else None,
        "finish_reason": choice.get("finish_reason") if isinstance(choice, dict) else None,
        "usage": data.get("usage") if isinstance(data.get("usage"), dict) else {},
    }, None


class _Events:
    """Reads a relayed ``text/event-stream`` on the side: the answer's text, tool calls, usage, and when it ended."""

    def __init__(self) -> None:
        self.buffer = b""
        self.id: str | None = None
        self.model: str | None = None
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.first_token_s: float | None = None
        self.done = False

    def feed(self, chunk: bytes, at_s: float) -> bool:
        """Read a chunk; True when it holds the end of the stream (``data: [DONE]``)."""
        self.buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip(), at_s)
        return self.done

    def _data(self, payload: bytes, at_s: float) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        self.id = self.id or data.get("id")
        self.model = self.model or data.get("model")
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                self.parts.append(delta["content"])
                if self.first_token_s is None:
                    self.first_token_s = at_s
            for call in delta.get("tool_calls") or []:
                if self.first_token_s is None:
                    self.first_token_s = at_s
                slot = self.calls.setdefault(int(call.get("index", 0)), {"type": "function", "function": {}})
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] = fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] = slot["function"].get("arguments", "") + fn["arguments"]
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def answer(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "content": "".join(self.parts) if self.parts or not self.calls else None,
            "tool_calls": [self.calls[k] for k in sorted(self.calls)] or None,
            "finish_reason": self.finish,
            "usage": self.usage,
        }


def _trace(
    job: str,
    u: UpstreamSpec,
    asked: dict[str, Any],
    answer: dict[str, Any],
    status: int,
    error: dict[str, Any] | None,
    began: float,
    arrived: datetime,
    first_token_s: float | None,
    stream: bool,
    tags: tuple[str, ...],
    source: str = "proxy",
    route: Route | None = None,
) -> Trace:
    usage = answer.get("usage") or {}
    prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    priced = u.input_price_per_million > 0 or u.output_price_per_million > 0
    cost = None
    if priced and prompt is not None and completion is not None:
        cost = (prompt * u.input_price_per_million + completion * u.output_price_per_million) / 1e6
    messages = asked.get("messages")
    tools = asked.get("tools")
    metadata = asked.get("metadata")
    user = asked.get("user")
    rid = answer.get("id")
    return Trace(
        id=rid if isinstance(rid, str) and 0 < len(rid) <= 128 else f"trace-{uuid.uuid4().hex}",
        job=job,
        created_at=arrived,
        source=source,
        model=str(answer.get("model") or asked.get("model") or "")[:256],
        version=_version(job, answer.get("model") or asked.get("model")),
        messages=messages if isinstance(messages, list) else [],
        status=status,
        output=answer.get("content") if isinstance(answer.get("content"), str) else None,
        tool_calls=answer.get("tool_calls") if isinstance(answer.get("tool_calls"), list) else None,
        finish_reason=str(answer["finish_reason"])[:32] if answer.get("finish_reason") else None,
        upstream=u.name,
        stream=stream,
        tools=tools if isinstance(tools, list) else None,
        params={k: v for k, v in asked.items() if k not in _NOT_PARAMS},
        error=error,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_s=time.perf_counter() - began,
        first_token_s=first_token_s,
        cost=cost,
        user=user[:256] if isinstance(user, str) else None,
        meta={str(k): v for k, v in metadata.items()} if isinstance(metadata, dict) else {},
        tags=tags,
        rollout_id=route.rollout_id if route is not None else None,
        arm=route.arm if route is not None else None,
        pair_id=route.pair_id if route is not None else None,
    )


def _version(job: str, model: Any) -> int | None:
    """The job's version a canonical model name ``<job>@<n>`` names (a model of our own served by vLLM)."""
    if isinstance(model, str) and model.startswith(job + "@") and model[len(job) + 1 :].isdigit():
        return int(model[len(job) + 1 :])
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
