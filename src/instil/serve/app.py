"""An OpenAI-compatible HTTP server for local models: any OpenAI client talks to the base or a trained version.

    from instil.serve import create_app
    app = create_app(model, tokenizer, renderer, model_name="colors@1", api_key="sk-local")
    uvicorn.run(app, host="127.0.0.1", port=8000)
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-local").chat.completions.create(...)

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health`` (no key).
:func:`create_app` serves one model under one name; :func:`create_catalog_app` serves every name of a
:class:`~instil.serve.catalog.Catalog` (a job's versions on one base, by ``model``), the response naming the version
that answered.

What a request gets, and where it differs from OpenAI's hosted API:

- The prompt is rendered exactly as training and evaluation render it (:meth:`ChatRenderer.prompt` through
  :func:`~instil.eval.generate.generate_local`), so a served answer is the answer ``instil eval`` measured.
- Greedy unless ``temperature`` >= 0.001 (then sampling with ``top_p``; ``seed`` is honoured on a best-effort basis, as
  OpenAI does). An omitted ``temperature`` means greedy, not OpenAI's 1: the served model answers what was evaluated.
- ``stop`` strings cut the decoded answer (generation itself stops at the end-of-turn token); ``usage`` counts the
  tokens generated.
- ``response_format`` ``json_schema`` and ``json_object`` are enforced by constrained decoding
  (:mod:`instil.eval.constrain`, llguidance): the answer can only be JSON of the schema (any JSON object), then the
  end of the turn. A schema that cannot be enforced is a 400, never an unconstrained answer; so is a request that sends
  its own ``tools`` with ``response_format`` (send ``tool_choice: "none"``). With the job's default tools only, a
  constrained answer calls none.
- ``tool_calls`` are parsed from Hermes-style ``<tool_call>{...}</tool_call>`` blocks; ``content`` is the text
  around them (None when there is none). ``tool_choice`` may be ``auto`` or ``none`` (a model cannot be forced).
- ``stream: true`` is answered as server-sent events, ``chat.completion.chunk`` objects ending with
  ``data: [DONE]``, the text as its tokens are generated. What could still turn out to be part of a stop string or a
  tool-call tag is held back until it cannot; tool calls arrive whole, after the text.
- A request without a system message gets ``default_system_prompt`` (a trained model's short prompt, as it was
  trained), and one without ``tools`` gets ``default_tools`` (the job's).
- Errors are OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (``param``
  names the field), 401 for a missing or wrong key, 404 for an unknown model or route, 500 for a server fault.

Concurrency (:mod:`instil.serve.engine`): one thread owns the model (generation is not thread-safe). A request is
checked cheaply first (a prompt past 32 characters per context position is refused unread), then rendered and
tokenized on a request thread, never the engine's, so a long prompt holds up nobody. Requests waiting when a batch
starts are generated together, each to its own ``max_tokens``; greedy answers equal one-by-one answers. A client that
disconnects has its request dropped from the queue, or stopped at its next token. Past ``max_queue`` waiting requests
the answer is 429 with ``Retry-After``; past ``max_body_bytes`` a body is refused 413 before it is read.

Capture: ``on_request`` gets a :class:`ServedRequest` for every answer, before its last byte goes out (a stream:
before ``data: [DONE]``), with the request's ``user``, ``metadata``, ``store`` flag and ``X-Instil-Tags`` header;
:func:`instil.serve.job.job_app` turns each into a trace (:mod:`instil.serve.capture`). What else sits in front of
generation (routing between versions, canary and shadow) wraps the ASGI app this returns, as ASGI middleware, and
never reaches into the worker or generation.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, and `Request` is imported inside
# create_app (fastapi is an optional dependency), where postponed annotations could not find it.
import asyncio
import collections
import concurrent.futures
import dataclasses
import hmac
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from instil.data.records import Example, Message
from instil.errors import ChatTemplateError, DependencyError, InstilError
from instil.eval.generate import MAX_NEW_TOKENS_CAP, Generation, parse_tool_calls, stop_token_ids
from instil.eval.prefix import prefix_length
from instil.serve.catalog import Catalog, NotServed, Target
from instil.serve.engine import Engine, EngineStats, Job, QueueFull
from instil.serve.metrics import AccessLog, ServeMetrics

__all__ = [
    "ANSWERED_KEY",
    "FAILED_KEY",
    "ROUTE_KEY",
    "TAGS_HEADER",
    "Route",
    "ServedRequest",
    "create_app",
    "create_catalog_app",
    "request_route",
    "request_tags",
]

log = logging.getLogger("instil.serve")

MAX_BODY_BYTES = 2 * 1024 * 1024
"""The largest request body :func:`create_app` reads by default (2 MiB: far past what a model's context holds)."""
MAX_QUEUE = 256
"""The most requests :func:`create_app` lets wait for the model by default; past it, 429 with ``Retry-After``."""
GREEDY_BELOW = 1e-3
"""A ``temperature`` under this is answered greedily, as 0 is."""
MAX_CHARS_PER_TOKEN = 32
"""A prompt longer than the model's context times this many characters cannot fit, whatever the tokenizer."""
TAGS_HEADER = "x-instil-tags"
"""The request header whose comma-separated tags are kept with the trace (``X-Instil-Tags: beta, mobile``)."""
MAX_TAGS = 16
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,63}")
ROUTE_KEY = "instil.route"
"""The ASGI scope key where a rollout's router (:mod:`instil.serve.router`) leaves a request's :class:`Route`: in the
scope, never a header, so no client can claim an arm."""
ANSWERED_KEY = "instil.answered"
"""The ASGI scope key where the app leaves the id of the answer ``on_request`` took (its trace's id)."""
FAILED_KEY = "instil.failed"
"""The ASGI scope key the app sets when generation failed after a stream's 200 went out."""
_NOT_PARAMS = {"model", "messages", "tools", "stream", "stream_options", "user", "metadata", "store"}


@dataclass(frozen=True)
class Route:
    """Where a rollout sent a request: its rollout, its arm, and (shadowed requests) the pair both answers share."""

    rollout_id: int
    arm: str
    """``production``, ``candidate`` or ``shadow``."""
    pair_id: str | None = None


def request_route(scope: dict[str, Any]) -> Route | None:
    """The request's :class:`Route`, when a rollout's router set one."""
    route = scope.get(ROUTE_KEY)
    return route if isinstance(route, Route) else None


@dataclass(frozen=True)
class ServedRequest:
    """One answered request, as the ``on_request`` hook receives it (to log traffic, or to collect it as data)."""

    messages: list[dict[str, Any]]
    """The conversation as the model saw it: the request's messages, with the default system prompt when added."""
    text: str
    """The whole answer as generated (tool-call blocks included), after ``stop`` strings cut it."""
    content: str | None
    """The answer's content as the response carries it: tool-call blocks taken out; None when there are only
    tool calls."""
    usage: dict[str, int]
    """``prompt_tokens``, ``completion_tokens`` and ``total_tokens``, as in the response."""
    latency_s: float
    """Seconds from the request's arrival to its answer, queueing included: what the client waited."""
    first_token_s: float | None
    """Seconds from the request's arrival to its first generated token, queueing included (None: no token)."""
    id: str
    """The response's id (``chatcmpl-...``)."""
    model: str
    """The served model's name."""
    finish_reason: str
    """``stop``, ``length`` or ``tool_calls``, as in the response."""
    tool_calls: list[dict[str, Any]] | None
    """The tool calls returned, in OpenAI's shape; None when there were none."""
    tools: list[dict[str, Any]] | None
    """The tool definitions the prompt was rendered with."""
    batch_size: int
    """How many requests were generated together with this one (1 when it ran alone)."""
    arrived_at: datetime
    """When the request arrived (UTC)."""
    stream: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    """The request's settings besides the messages and tools (temperature, max_tokens, response_format...)."""
    user: str | None = None
    """The request's ``user`` field (OpenAI's end-user id)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The request's ``metadata`` field."""
    store: bool = True
    """False when the request said ``store: false``: it must not be kept."""
    tags: tuple[str, ...] = ()
    """The tags of the request's ``X-Instil-Tags`` header."""
    version: int | None = None
    """The job's model version that answered (None: a base, or a model outside a job)."""
    asked_model: str | None = None
    """The ``model`` the request named (an alias such as ``<job>`` or ``<job>@stable``); ``model`` is what answered."""
    route: Route | None = None
    """Where a running rollout sent it (None: no rollout routed it)."""


# ---- the request body ------------------------------------------------------------------------------------------------
class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _ChatRequest(BaseModel):
    # OpenAI clients send fields a local model has no use for (service_tier, parallel_tool_calls...): ignored.
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[_Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's seed is an int64
    stream: bool = Field(default=False, strict=True)  # "yes" is not true
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = Field(default=None, strict=True)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Kept with the trace, as OpenAI's API defines them: an end-user id, up to 16 short key-value pairs, and
    # whether the exchange may be stored at all.
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    store: bool | None = Field(default=None, strict=True)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return v


class _ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def response(self) -> Any:
        from fastapi.responses import JSONResponse

        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


# ---- the app ---------------------------------------------------------------------------------------------------------
def create_app(
    model: Any,
    tokenizer: Any,
    renderer: Any,
    *,
    model_name: str,
    api_key: str | None = None,
    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
    default_system_prompt: str | None = None,
    default_tools: list[dict[str, Any]] | None = None,
    batch_size: int = 8,
    on_request: Callable[[ServedRequest], None] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_queue: int = MAX_QUEUE,
    trace_log: Any = None,
) -> Any:
    """A FastAPI app serving ``model`` under the name ``model_name`` with OpenAI's chat completions API.

    ``renderer`` is the :class:`~instil.train.chat.ChatRenderer` the model was trained and evaluated with.
    ``default_system_prompt`` / ``default_tools`` are used by requests without a system message / without tools.
    The other arguments are :func:`create_catalog_app`'s."""
    target = Target(model_name, model, tokenizer, renderer, system_prompt=default_system_prompt, tools=default_tools)
    return create_catalog_app(
        Catalog([target]),
        api_key=api_key,
        max_new_tokens_cap=max_new_tokens_cap,
        batch_size=batch_size,
        on_request=on_request,
        max_body_bytes=max_body_bytes,
        max_queue=max_queue,
        trace_log=trace_log,
    )


class _Backend:
    """One model object's engine and what requests to it are checked and tokenized with."""

    def __init__(self, target: Target, batch_size: int, max_queue: int, cap: int) -> None:
        model, tokenizer, renderer = target.model, target.tokenizer, target.renderer
        self.tokenizer, self.renderer = tokenizer, renderer
        self.engine = Engine(model, tokenizer, renderer, batch_size=batch_size, max_queue=max_queue)
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.stop_ids = set(stop_token_ids(tokenizer, renderer, model))
        self.prompter = _Prompter(tokenizer, renderer, cap, context, model, sorted(self.stop_ids))
        # No tokenizer turns more than this many characters into the context's tokens: longer prompts are refused
        # at once, before they are rendered or tokenized.
        self.max_chars = context * MAX_CHARS_PER_TOKEN if context else None


class _Engines:
    """The engines of every backend, read together for metrics (queue depth, batches, cancellations)."""

    def __init__(self, backends: dict[int, _Backend]) -> None:
        self.backends = backends

    @property
    def waiting(self) -> int:
        return sum(b.engine.waiting for b in list(self.backends.values()))

    @property
    def stats(self) -> EngineStats:
        total = EngineStats()
        for b in list(self.backends.values()):
            for f in dataclasses.fields(EngineStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(b.engine.stats, f.name))
        return total


def create_catalog_app(
    catalog: Catalog,
    *,
    api_key: str | None = None,
    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
    batch_size: int = 8,
    on_request: Callable[[ServedRequest], None] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_queue: int = MAX_QUEUE,
    trace_log: Any = None,
    router: Any = None,
) -> Any:
    """A FastAPI app serving every target of ``catalog`` (:mod:`instil.serve.catalog`) by the name a request's
    ``model`` gives; targets sharing a model object share one engine, so versions on one base batch together.

    ``api_key``: the key clients must send as ``Authorization: Bearer <key>`` (None: no key). ``max_new_tokens_cap``
    bounds ``max_tokens`` (a larger request is refused) and is the default when a request sets none.
    ``batch_size``: the most queued requests generated together. ``on_request`` is called with a
    :class:`ServedRequest` after each answer (in a worker thread; an exception in it is logged, the answer stands).
    ``max_body_bytes`` bounds a request's body: a larger one is answered 413 before it is read whole.
    ``max_queue``: the most requests waiting for each model; past it, 429 with ``Retry-After``.
    ``trace_log``: the :class:`~instil.serve.capture.TraceLog` the hook captures to, whose spool ``/metrics`` shows.
    ``router``: a :class:`~instil.serve.router.RolloutRouter` routing requests by the job's running rollout (its
    middleware sits inside the key check and the body limit; ``/metrics`` shows its counts).
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import Response, StreamingResponse
        from starlette.concurrency import run_in_threadpool
    except ImportError:
        raise DependencyError("serving needs fastapi and uvicorn", hint="pip install fastapi uvicorn") from None
    if max_new_tokens_cap < 1 or batch_size < 1 or max_body_bytes < 1 or max_queue < 1:
        raise ValueError(
            f"max_new_tokens_cap ({max_new_tokens_cap}), batch_size ({batch_size}), max_body_bytes "
            f"({max_body_bytes}) and max_queue ({max_queue}) must be at least 1"
        )

    backends: dict[int, _Backend] = {}
    backends_lock = threading.Lock()

    def backend(t: Target) -> _Backend:
        b = backends.get(id(t.model))
        if b is None:
            with backends_lock:
                b = backends.get(id(t.model))
                if b is None:
                    b = backends[id(t.model)] = _Backend(t, batch_size, max_queue, max_new_tokens_cap)
        return b

    for t in catalog.targets():  # engines (and their stop tokens' checks) for what is loaded now, not mid-request
        backend(t)

    def on_engine(model: Any, fn: Callable[[], Any]) -> Any:
        b = backends.get(id(model))
        return fn() if b is None else b.engine.call(fn).result(timeout=600)

    catalog.bind(on_engine)  # an adapter loaded into a serving model waits for the batch in hand

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        for b in list(backends.values()):
            await run_in_threadpool(b.engine.stop)

    first = catalog.targets()[0].name
    app = FastAPI(title=f"instil: {first}", lifespan=lifespan, docs_url=None, redoc_url=None)
    engines = _Engines(backends)
    app.state.catalog = catalog
    app.state.engine = backend(catalog.targets()[0]).engine  # the first model's, for tests
    app.state.engines = engines

    _handle_errors(app)
    if router is not None:  # innermost: it reads the body the limit has bounded, of requests the key let in
        app.add_middleware(router.wrap)
        router.load = lambda: engines.waiting  # shadows wait their turn behind production's callers
        router.prepare = lambda name: backend(catalog.prepare(name))  # loaded (and its engine made) before routing
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)  # inside the key check, which runs first
    _require_key(app, api_key)
    metrics = ServeMetrics(engine=engines, traces=trace_log, router=router)
    app.state.metrics = metrics
    app.add_middleware(AccessLog, metrics=metrics)  # outermost: every request is counted, refused ones too

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": first, "models": catalog.names()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": catalog.cards()}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        card = catalog.card(name)
        if card is None:
            raise _unknown_model(name, catalog.names())
        return card

    def record(
        body: _ChatRequest,
        asked: _Asked,
        job: Job,
        answer: tuple[str, str, dict[str, Any], dict[str, int], Any],
        rid: str,
        began: float,
        arrived: datetime,
        tags: tuple[str, ...],
        target: Target,
        route: Route | None,
    ) -> ServedRequest:
        text, finish, message, usage, calls = answer
        return ServedRequest(
            messages=asked.messages,
            text=text,
            content=message.get("content"),
            usage=usage,
            latency_s=time.perf_counter() - began,
            first_token_s=(job.first_token_at - began) if job.first_token_at is not None else None,
            id=rid,
            model=target.name,
            finish_reason=finish,
            tool_calls=calls,
            tools=asked.tools,
            batch_size=job.batch_size,
            arrived_at=arrived,
            stream=body.stream,
            params=body.model_dump(exclude=_NOT_PARAMS, exclude_none=True),
            user=body.user,
            metadata=dict(body.metadata or {}),
            store=body.store is not False,
            tags=tags,
            version=target.version,
            asked_model=body.model,
            route=route,
        )

    def count(target: Target, job: Job, usage: dict[str, int], began: float) -> None:
        first = (job.first_token_at - began) if job.first_token_at is not None else None
        metrics.answered(target.name, usage.get("prompt_tokens"), usage.get("completion_tokens"), first)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: _ChatRequest, request: Request) -> Any:
        began, arrived = time.perf_counter(), datetime.now(UTC)
        target = catalog.lookup(body.model)
        if target is None:  # an alias not yet read, or a version not yet loaded: off the event loop
            target = await run_in_threadpool(_resolve, catalog, body.model)
        if target is None:
            raise _unknown_model(body.model, catalog.names())
        served = backend(target)
        tags = request_tags(request.headers.get(TAGS_HEADER))
        route = request_route(request.scope)
        asked = _check(body, target.system_prompt, target.tools, max_new_tokens_cap, served.max_chars)
        served.engine.expect(1)  # a batch about to start may wait a moment for this one
        try:
            job = await run_in_threadpool(served.prompter.job, asked)  # off the event loop and the engine's thread
        except BaseException:
            served.engine.expect(-1)
            raise
        job.adapter = target.adapter
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        engine, tokenizer, renderer = served.engine, served.tokenizer, served.renderer
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            tokens = _Tokens(asyncio.get_running_loop())
            job.on_token = tokens.put
            job.future.add_done_callback(lambda f: tokens.put(None))
            _submit(engine, job)  # a full queue is a 429 before the stream starts

            async def events() -> AsyncIterator[str]:
                stream = _Stream(rid, created, target.name, include_usage)
                stops = [*renderer.stop_strings, *asked.stops]
                text = _TextSoFar(tokenizer, served.stop_ids, stops, asked.want_tools)
                try:
                    yield stream.chunk({"role": "assistant", "content": ""})
                    ended = False
                    while not ended:
                        # What has come since the last chunk goes out as one: a busy server sends fewer, fuller
                        # chunks (each costs the loop and the client far more than a token), an idle one every token.
                        got = await tokens.get()
                        if ended := got[-1] is None:
                            got.pop()
                        if got and (delta := text.push(got)):
                            yield stream.chunk({"content": delta})
                    try:
                        gen = job.future.result()
                    except Exception as e:  # the status is sent already: the error goes in the stream, as OpenAI's
                        log.exception("generation failed for %s", rid)
                        request.scope[FAILED_KEY] = True  # a rollout's guard counts it, the 200 notwithstanding
                        yield stream.error(f"generation failed: {type(e).__name__}: {e}")
                        return
                    answer = _answer(gen, asked.stops, asked.want_tools)
                    _, finish, message, usage, _ = answer
                    count(target, job, usage, began)
                    if on_request is not None:  # before [DONE]: a client that saw the end has its trace kept
                        hook_record = record(body, asked, job, answer, rid, began, arrived, tags, target, route)
                        if await run_in_threadpool(_call_hook, on_request, hook_record):
                            request.scope[ANSWERED_KEY] = rid
                    for chunk in stream.rest(message, text.sent, finish, usage):
                        yield chunk
                finally:
                    if not job.future.done():  # the client went away mid-stream
                        job.cancel()

            return StreamingResponse(events(), media_type="text/event-stream")

        _submit(engine, job)
        gen = await _unless_gone(job, request)
        if gen is None:  # nobody is there to read an answer
            return Response(status_code=499)
        answer = _answer(gen, asked.stops, asked.want_tools)
        _, finish, message, usage, _ = answer
        count(target, job, usage, began)
        if on_request is not None:  # before the answer goes out: a client that has it has its trace kept
            hook_record = record(body, asked, job, answer, rid, began, arrived, tags, target, route)
            if await run_in_threadpool(_call_hook, on_request, hook_record):
                request.scope[ANSWERED_KEY] = rid
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": target.name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage,
            "system_fingerprint": None,
        }

    return app


def _resolve(catalog: Catalog, name: str) -> Target | None:
    """The catalog's target for ``name``; a failure to load it is the server's fault, said as a 503 (retryable)."""
    try:
        return catalog.resolve(name)
    except NotServed as e:
        raise _ApiError(404, f"{e} ({e.hint})" if e.hint else str(e), param="model", code="model_not_found") from None
    except InstilError as e:
        raise _ApiError(
            503, f"the model {name!r} could not be loaded: {e}", type="server_error", code="model_unavailable"
        ) from None


def _submit(engine: Engine, job: Job) -> None:
    try:
        engine.submit(job, expected=True)  # announced by expect(1) before it was tokenized
    except QueueFull as e:
        raise _ApiError(
            429,
            f"the server is busy: {e.waiting} requests are waiting for the model; retry in {e.retry_after_s:.0f} s",
            type="rate_limit_error",
            code="server_busy",
            headers={"Retry-After": str(math.ceil(e.retry_after_s))},
        ) from None


async def _unless_gone(job: Job, request: Any) -> Generation | None:
    """The job's generation, or None when the client disconnects first (the job is then cancelled)."""
    answer = asyncio.ensure_future(asyncio.wrap_future(job.future))

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not answer.done():
        job.cancel()
        answer.cancel()
        return None
    try:
        return answer.result()
    except _ApiError:
        raise
    except concurrent.futures.CancelledError:
        return None
    except Exception as e:
        raise _ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error") from e


def _handle_errors(app: Any) -> None:
    """Every error as OpenAI's error JSON: ours, a malformed body (400), an unknown route, and anything else (500)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(_ApiError)
    async def api_error(request: Request, e: _ApiError) -> Any:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, e: RequestValidationError) -> Any:
        return _validation_error(e.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Any:
        code = "not_found" if e.status_code == 404 else None
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return _ApiError(e.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> Any:
        return JSONResponse(
            {
                "error": {
                    "message": f"the server failed: {type(e).__name__}: {e}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            status_code=500,
        )


def _require_key(app: Any, api_key: str | None) -> None:
    """Refuse ``/v1/`` requests without ``Authorization: Bearer <api_key>`` (nothing is required when None)."""
    # A middleware, not a route dependency: it runs before the body is read, so a client without the key learns
    # nothing about its request (not even that its JSON is malformed). Pure ASGI, not BaseHTTPMiddleware, which
    # costs every request (a stream most) a task and a copy of each chunk.
    if api_key is not None:
        app.add_middleware(_KeyCheck, api_key=api_key)


class _KeyCheck:
    """ASGI middleware: a ``/v1/`` request must carry ``Authorization: Bearer <api_key>``, compared in constant time."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            error = _ApiError(401, "no API key given: send it as 'Authorization: Bearer <key>'", code="invalid_api_key")
            await error.response()(scope, receive, send)
            return
        # Constant time, so the time to refuse a key does not tell how much of it was right.
        if not hmac.compare_digest(given.strip(), self.key):
            await _ApiError(401, "incorrect API key", code="invalid_api_key").response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _answer(
    gen: Generation, stops: list[str], want_tools: bool
) -> tuple[str, str, dict[str, Any], dict[str, int], list[dict[str, Any]] | None]:
    """(text, finish_reason, the assistant message, usage, tool calls) of a generation, cut at the request's stops."""
    text, finish = gen.text, gen.finish_reason
    cut = min((at for s in stops if (at := text.find(s)) >= 0), default=None)
    if cut is not None:
        text, finish = text[:cut], "stop"
    calls = _tool_calls(text) if want_tools else None
    content: str | None = text
    if calls:
        content = _TOOL_BLOCK.sub("", text).strip() or None
        if finish == "stop":
            finish = "tool_calls"
    usage = {
        "prompt_tokens": gen.input_tokens,
        "completion_tokens": gen.output_tokens,
        "total_tokens": gen.input_tokens + gen.output_tokens,
    }
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return text, finish, message, usage, calls


def _check(
    body: _ChatRequest,
    default_system: str | None,
    default_tools: list[dict[str, Any]] | None,
    cap: int,
    max_chars: int | None = None,
) -> "_Asked":
    """Check what a local model cannot honour, cheaply (no tokenizer), and read the request's conversation."""
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None and max_tokens > cap:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise _ApiError(400, f"{field} is {max_tokens}; this server generates at most {cap} tokens", param=field)
    if body.n not in (None, 1):
        raise _ApiError(400, f"n is {body.n}; this server answers one choice per request (n=1)", param="n")
    if body.logprobs:
        raise _ApiError(400, "logprobs are not available from this server", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise _ApiError(400, f"{name} is not supported (leave it out or 0)", param=name)
    choice = body.tool_choice
    if choice not in (None, "auto", "none"):
        raise _ApiError(
            400,
            f"tool_choice {choice!r} cannot be enforced on a local model; use 'auto' or 'none'",
            param="tool_choice",
        )
    schema = _response_schema(body.response_format)
    if schema is not None and body.tools and choice != "none":
        raise _ApiError(
            400,
            "response_format holds the answer to JSON, so it cannot call the request's tools as well; send "
            "tool_choice: 'none' with it, or leave response_format out",
            param="response_format",
        )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or not all(stops):
        raise _ApiError(400, "stop takes up to 4 non-empty strings", param="stop")
    tools = body.tools or default_tools
    for k, tool in enumerate(body.tools or []):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _ApiError(
                400,
                "a tool is {'type': 'function', 'function': {'name': ..., 'parameters': ...}}",
                param=f"tools[{k}]",
            )
        if "parameters" in fn:
            problem = _schema_problem(fn["parameters"])
            if problem is not None:
                raise _ApiError(
                    400, f"parameters must be a JSON Schema: {problem}", param=f"tools[{k}].function.parameters"
                )

    texts = [json.dumps(m.model_dump(), ensure_ascii=False) for m in body.messages]  # each message read once
    for k, text in enumerate(texts):  # a lone surrogate ("\ud800") is valid JSON, but no text a model reads
        if not _encodable(text):
            raise _ApiError(
                400, "the message holds text that is not valid Unicode (a lone surrogate)", param=f"messages[{k}]"
            )
    if tools is not None and not _encodable(json.dumps(tools, ensure_ascii=False)):
        raise _ApiError(400, "the tools hold text that is not valid Unicode (a lone surrogate)", param="tools")
    chars = sum(len(text) for text in texts)
    if max_chars is not None and chars > max_chars:
        # Cheap and early: no tokenizer needs this many characters to fill the model's context.
        raise _ApiError(
            400,
            f"the messages are {chars:,} characters, far more than the model's context holds ({max_chars:,} "
            "characters at most are read)",
            param="messages",
            code="context_length_exceeded",
        )
    messages: list[Message] = []
    for k, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):
            for p, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _ApiError(400, "only text content parts are supported", param=f"messages[{k}].content[{p}]")
        if m.role == "assistant" and content is None and not m.tool_calls:
            raise _ApiError(400, "an assistant message needs content or tool_calls", param=f"messages[{k}].content")
        if m.role != "assistant" and content is None:
            raise _ApiError(400, f"a {m.role} message needs content", param=f"messages[{k}].content")
        # "developer" is OpenAI's newer name for the system role; chat templates know only "system".
        role = "system" if m.role == "developer" else m.role
        messages.append(Message(role, content, name=m.name, tool_calls=m.tool_calls, tool_call_id=m.tool_call_id))
    if messages[-1].role == "assistant":
        raise _ApiError(
            400,
            "the last message is the assistant's; continuing a partial answer is not supported",
            param=f"messages[{len(messages) - 1}].role",
        )
    if default_system is not None and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", default_system))
    # A placeholder answer closes the conversation: the renderer treats an example's last assistant turn as the
    # reference and prompts with everything before it, so earlier assistant turns stay in the prompt.
    example = Example([*messages, Message("assistant", "")], tools=tools)

    return _Asked(
        example=example,
        max_tokens=max_tokens,
        # Sampling at a temperature this low is greedy decoding in all but overflow (1e-99 made the logits inf).
        temperature=0.0 if (body.temperature or 0.0) < GREEDY_BELOW else body.temperature,
        top_p=body.top_p or 1.0,
        seed=body.seed,
        stops=stops,
        want_tools=choice != "none" and schema is None,
        messages=[m.to_dict() for m in messages],
        tools=tools,
        schema=schema,
    )


@dataclass
class _Asked:
    """A checked request, before it is tokenized: what to generate from, and how to answer."""

    example: Example
    max_tokens: int | None
    """None: as many as the cap and the context allow."""
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str]
    want_tools: bool
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    schema: dict[str, Any] | None = None
    """The JSON Schema the answer is held to (``response_format``); None: free text."""


def _response_schema(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON Schema a ``response_format`` holds the answer to (``{"type": "object"}`` for ``json_object``), None
    for text; a 400 names what is wrong with it."""
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise _ApiError(
            400, f"response_format.type {kind!r}: use text, json_object or json_schema", param="response_format.type"
        )
    spec = (fmt or {}).get("json_schema")
    if not isinstance(spec, dict):
        raise _ApiError(
            400,
            "response_format json_schema needs a json_schema object: {'name': ..., 'schema': {...}}",
            param="response_format.json_schema",
        )
    schema = spec.get("schema", {"type": "object"})  # OpenAI's default: no schema is any JSON object
    problem = _schema_problem(schema)
    if problem is not None:
        raise _ApiError(400, f"the schema is not a JSON Schema: {problem}", param="response_format.json_schema.schema")
    return schema


class _Prompter:
    """Renders and tokenizes a checked request into an engine :class:`Job`, on the caller's thread (never the
    engine's), and refuses a prompt that leaves no room in the model's context."""

    def __init__(
        self, tokenizer: Any, renderer: Any, cap: int, context: int | None, model: Any = None, stops: Any = ()
    ) -> None:
        self.tokenizer, self.renderer, self.cap, self.context = tokenizer, renderer, cap, context
        self.model, self.stops = model, list(stops)
        self._prefixes: dict[str, int] = {}  # system turn and tools -> shared prompt tokens (prefix_length)
        # Fast tokenizers share one Rust object that refuses concurrent mutable use ("Already borrowed"): one
        # request is tokenized at a time, on a request thread, while the engine generates.
        self.lock = threading.Lock()

    def prefix_len(self, asked: "_Asked") -> int:
        """The tokens this request's prompt shares with every prompt of the same system turn and tools (its system
        prompt, rendered), found once per system prompt and kept (the most recent 64)."""
        first = asked.example.messages[0]
        if first.role != "system":
            return 0
        key = json.dumps([first.to_dict(), asked.tools], sort_keys=True, ensure_ascii=False)
        n = self._prefixes.get(key)
        if n is None:
            with self.lock:  # it tokenizes
                n = prefix_length(self.renderer, self.tokenizer, first, asked.tools)
            if len(self._prefixes) >= 64:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[key] = n
        return n

    def matcher(self, schema: dict[str, Any]) -> Any:
        """A grammar matcher holding the answer to ``schema``, compiled on the request's thread; a 400 when it cannot
        be enforced (the client asked for a guarantee this server cannot give)."""
        from instil.eval.constrain import Constrainer, ConstraintError, schema_grammar

        try:
            return Constrainer.for_model(self.model, self.tokenizer, self.stops).matcher(schema_grammar(schema))
        except (ConstraintError, DependencyError) as e:
            hint = f" ({e.hint})" if getattr(e, "hint", None) else ""
            raise _ApiError(400, f"response_format cannot be enforced: {e}{hint}", param="response_format") from None

    def job(self, asked: _Asked) -> Job:
        try:
            prompt = self.renderer.prompt(asked.example)
        except ChatTemplateError as e:
            raise _ApiError(400, str(e), param="messages") from None
        with self.lock:
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        n = len(ids)
        room = self.cap if self.context is None else min(self.cap, self.context - n)
        wanted = asked.max_tokens
        if room < 1 or (wanted is not None and wanted > room):
            if room < 1:
                why = f"the prompt is {n:,} tokens, and the model has {self.context:,} positions"
                what = "shorten the messages"
            else:
                why = (
                    f"the prompt is {n:,} tokens, which leaves {room:,} of the model's {self.context:,} positions, "
                    f"and max_tokens asks for {wanted:,}"
                )
                what = "lower max_tokens or shorten the messages"
            raise _ApiError(400, f"{why} ({what})", param="messages", code="context_length_exceeded")
        return Job(
            ids,
            prefix_len=self.prefix_len(asked),
            max_tokens=room if wanted is None else wanted,
            temperature=asked.temperature,
            top_p=asked.top_p,
            seed=asked.seed,
            matcher=self.matcher(asked.schema) if asked.schema is not None else None,
        )


def request_tags(header: str | None) -> tuple[str, ...]:
    """The tags of an ``X-Instil-Tags`` header value (comma-separated); a 400 names a bad one."""
    if not header:
        return ()
    tags = tuple(dict.fromkeys(t.strip() for t in header.split(",") if t.strip()))
    bad = [t for t in tags if not _TAG.fullmatch(t)]
    if bad or len(tags) > MAX_TAGS:
        raise _ApiError(
            400,
            f"the X-Instil-Tags header takes up to {MAX_TAGS} comma-separated tags of letters, digits and _ . : / - "
            f"(at most 64 characters each); got {bad[0]!r}"
            if bad
            else f"the X-Instil-Tags header takes up to {MAX_TAGS} tags; got {len(tags)}",
            param="X-Instil-Tags",
        )
    return tags


class _BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413, from its Content-Length before anything is read, or as
    soon as a body sent without one (chunked) passes the bound; a body within it is read here and handed on whole."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        chunks, size, message = [], 0, {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replaying([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large().response()(scope, receive, send)
                return
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replaying([whole], receive), send)

    def _too_large(self) -> _ApiError:
        return _ApiError(
            413, f"the request body is over {self.max_bytes:,} bytes, the most this server reads", code="body_too_large"
        )


def _replaying(messages: list[dict[str, Any]], receive: Callable) -> Callable:
    """A ``receive`` that hands out ``messages`` first, then what the client sends next (a disconnect)."""
    pending = list(messages)

    async def replay() -> dict[str, Any]:
        return pending.pop(0) if pending else await receive()

    return replay


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a JSON Schema (an object whose keywords check), or None when it is one."""
    if not isinstance(schema, dict):
        return f"got {type(schema).__name__} {json.dumps(schema)[:40]}, not an object"
    import jsonschema  # at call time: most requests carry no tools

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        return f"{e.message} (at {'/'.join(str(p) for p in e.path) or 'the top'})"
    return None


def _validation_error(errors: Any) -> _ApiError:
    """The first validation problem as a 400 that names the field (``messages[1].role``), as OpenAI does."""
    first = dict(errors[0]) if errors else {}
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    if first.get("type") == "json_invalid":
        return _ApiError(400, "the request body is not valid JSON")
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return _ApiError(400, "the request body must be a JSON object, sent with Content-Type: application/json")
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "missing":
        message = "required"
    return _ApiError(400, f"{param}: {message}" if param else message, param=param)


def _unknown_model(name: str, served: list[str]) -> _ApiError:
    shown = ", ".join(repr(n) for n in served[:8]) + (f" and {len(served) - 8} more" if len(served) > 8 else "")
    return _ApiError(
        404,
        f"the model {name!r} does not exist; this server serves {shown} (GET /v1/models lists every name)",
        param="model",
        code="model_not_found",
    )


_TOOL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


def _tool_calls(text: str) -> list[dict[str, Any]] | None:
    calls = parse_tool_calls(text)
    if calls is None:
        return None
    # Ids unique across responses: a client ties the tool results it sends back to them.
    return [{**c, "id": f"call_{uuid.uuid4().hex[:24]}"} for c in calls]


def _call_hook(hook: Callable[[ServedRequest], None], record: ServedRequest) -> bool:
    """Call the hook; whether it took the record (a broken log must not take the answer from a client that has it)."""
    try:
        hook(record)
    except Exception:
        log.exception("the on_request hook failed for %s", record.id)
        return False
    return True


class _Stream:
    """OpenAI's ``chat.completion.chunk`` events for one response."""

    def __init__(self, rid: str, created: int, model: str, include_usage: bool) -> None:
        self.head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body: dict[str, Any] = {
            **self.head,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if self.include_usage:
            body["usage"] = None  # with include_usage, every chunk carries the field; only the last one fills it
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def rest(self, message: dict[str, Any], sent: str, finish: str, usage: dict[str, int]) -> list[str]:
        """The events after the streamed text: what of the content was held back, the tool calls, the finish,
        usage, ``[DONE]``."""
        events = []
        content = message.get("content") or ""
        if content.startswith(sent):
            if content[len(sent) :]:
                events.append(self.chunk({"content": content[len(sent) :]}))
        else:  # never seen: the streamed text is always a prefix of the answer; say so rather than send it twice
            log.warning("%s: the streamed text is not a prefix of the answer; the rest is not sent", self.head["id"])
        for k, call in enumerate(message.get("tool_calls") or []):
            events.append(self.chunk({"tool_calls": [{"index": k, **call}]}))
        events.append(self.chunk({}, finish))
        if self.include_usage:
            events.append(f"data: {json.dumps({**self.head, 'choices': [], 'usage': usage})}\n\n")
        events.append("data: [DONE]\n\n")
        return events

    def error(self, message: str) -> str:
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n"


class _Tokens:
    """Tokens handed from the engine's thread to a stream on the event loop, which takes all that have come at once.
    The loop is woken once for as many tokens as arrive before it runs, not once per token (a wake-up costs the
    loop a turn, and under load it is the loop's time that limits a streaming server)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: collections.deque[int | None] = collections.deque()
        self.ready = asyncio.Event()
        self.waking = False

    def put(self, token: int | None) -> None:
        """From any thread; None ends the stream."""
        self.items.append(token)  # before the check: a wake-up already on its way will find it
        if not self.waking:
            self.waking = True
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.waking = False
        self.ready.set()

    async def get(self) -> list[int | None]:
        """Every token that has come (at least one), in order."""
        while not self.items:
            self.ready.clear()
            if self.items:
                break
            await self.ready.wait()
        got = []
        while self.items:
            got.append(self.items.popleft())
        return got


class _TextSoFar:
    """The answer's text as its tokens arrive, and how much of it can be sent without ever taking it back: not a
    trailing piece of a character, of a stop string or of a tool-call tag, nor trailing whitespace (the answer is
    stripped), nor anything from a tool call on (tool calls go out whole at the end)."""

    _TOOL_TAG = "<tool_call>"

    def __init__(self, tokenizer: Any, stop_ids: set[int], stop_strings: list[str], tools: bool) -> None:
        self.tokenizer, self.stop_ids = tokenizer, stop_ids
        self.stop_strings = [s for s in stop_strings if s]
        self.held = [*self.stop_strings, self._TOOL_TAG] if tools else list(self.stop_strings)
        self.tools = tools
        self.ids: list[int] = []
        self.sent = ""
        self.ended = False

    def push(self, tokens: list[int]) -> str:
        """The new text that can be sent now, after ``tokens`` ("" when nothing can)."""
        if self.ended:
            return ""
        for token in tokens:
            if token in self.stop_ids:
                self.ended = True
                break
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False).lstrip()
        cut = min((at for s in self.held if (at := text.find(s)) >= 0), default=None)
        if cut is not None:
            text, self.ended = text[:cut], True
        else:
            text = text.rstrip("\ufffd")
            overlap = max((k for s in self.held for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[: len(text) - overlap]
        text = text.rstrip()
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
