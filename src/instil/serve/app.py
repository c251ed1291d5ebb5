"""An OpenAI-compatible HTTP server for one local model: any OpenAI client talks to the base or a trained model.

    from instil.serve import create_app
    app = create_app(model, tokenizer, renderer, model_name="colors@1", api_key="sk-local")
    uvicorn.run(app, host="127.0.0.1", port=8000)
    # then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-local").chat.completions.create(...)

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health`` (no key).

What a request gets, and where it differs from OpenAI's hosted API:

- The prompt is rendered exactly as training and evaluation render it (:meth:`ChatRenderer.prompt` through
  :func:`~instil.eval.generate.generate_local`), so a served answer is the answer ``instil eval`` measured.
- Greedy unless ``temperature`` > 0 (then sampling with ``top_p``; ``seed`` is honoured on a best-effort basis, as
  OpenAI does). An omitted ``temperature`` means greedy, not OpenAI's 1: the served model answers what was evaluated.
- ``stop`` strings cut the decoded answer (generation itself stops at the end-of-turn token); ``usage`` counts the
  tokens generated.
- ``response_format`` is accepted but not enforced (no constrained decoding): the model answers as it was trained.
- ``tool_calls`` are parsed from Hermes-style ``<tool_call>{...}</tool_call>`` blocks; ``content`` is the text
  around them (None when there is none). ``tool_choice`` may be ``auto`` or ``none`` (a model cannot be forced).
- ``stream: true`` is answered as server-sent events, ``chat.completion.chunk`` objects ending with
  ``data: [DONE]``; the answer is generated whole first, so its text arrives in one chunk.
- A request without a system message gets ``default_system_prompt`` (a trained model's short prompt, as it was
  trained), and one without ``tools`` gets ``default_tools`` (the job's).
- Errors are OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (``param``
  names the field), 401 for a missing or wrong key, 404 for an unknown model or route, 500 for a server fault.

Concurrency: one worker thread owns the model (generation is not thread-safe). Requests queue; those waiting when a
batch starts are generated together by ``generate_local``'s batching, whose greedy answers equal one-by-one answers.

Extending it: what sits in front of generation (trace capture, routing between versions, canary and shadow) wraps the
ASGI app this returns, as Starlette middleware (``app.add_middleware``) or an ASGI callable around it, and reads each
answer through ``on_request``; it never reaches into the worker or generation.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, and `Request` is imported inside
# create_app (fastapi is an optional dependency), where postponed annotations could not find it.
import asyncio
import concurrent.futures
import hmac
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from instil.data.records import Example, Message
from instil.errors import ChatTemplateError, DependencyError
from instil.eval.generate import MAX_NEW_TOKENS_CAP, Generation, generate_local, parse_tool_calls

__all__ = ["ServedRequest", "create_app"]

log = logging.getLogger("instil.serve")

MAX_BODY_BYTES = 2 * 1024 * 1024
"""The largest request body :func:`create_app` reads by default (2 MiB: far past what a model's context holds)."""
MAX_CHARS_PER_TOKEN = 32
"""A prompt longer than the model's context times this many characters cannot fit, whatever the tokenizer."""


@dataclass(frozen=True)
class ServedRequest:
    """One answered request, as the ``on_request`` hook receives it (to log traffic, or to collect it as data)."""

    messages: list[dict[str, Any]]
    """The conversation as the model saw it: the request's messages, with the default system prompt when added."""
    text: str
    """The whole answer as generated (tool-call blocks included), after ``stop`` strings cut it."""
    usage: dict[str, int]
    """``prompt_tokens``, ``completion_tokens`` and ``total_tokens``, as in the response."""
    latency_s: float
    """Seconds from the request's arrival to its answer, queueing included: what the client waited."""
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


# ---- the request body ------------------------------------------------------------------------------------------------
class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _ChatRequest(BaseModel):
    # OpenAI clients send fields a local model has no use for (user, metadata, store, service_tier): ignored.
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
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> Any:
        from fastapi.responses import JSONResponse

        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# ---- the worker that owns the model ----------------------------------------------------------------------------------
@dataclass
class _Job:
    example: Example
    max_tokens: int | None
    """None: as many as the cap and the context allow."""
    temperature: float
    top_p: float
    seed: int | None
    future: concurrent.futures.Future
    prompt_tokens: int = 0
    batch_size: int = 1


class _Worker:
    """One thread generates; requests wait in a queue, and those queued together are batched."""

    def __init__(self, model: Any, tokenizer: Any, renderer: Any, cap: int, batch_size: int) -> None:
        self.model, self.tokenizer, self.renderer = model, tokenizer, renderer
        self.cap, self.batch_size = cap, batch_size
        self.context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(self, job: _Job) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="instil-serve-generate", daemon=True)
                self.thread.start()
        self.queue.put(job)

    def stop(self) -> None:
        with self.lock:
            thread, self.thread = self.thread, None
        if thread is not None:
            self.queue.put(None)
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, stopping = [first], False
            while len(jobs) < self.batch_size:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                jobs.append(more)
            admitted = []
            for j in jobs:
                try:
                    if self._admit(j):
                        admitted.append(j)
                except Exception as e:  # answered as a 500; the worker lives on for the next requests
                    log.exception("could not prepare a request")
                    j.future.set_exception(e)
            self._run(admitted)
            if stopping:
                return

    def _admit(self, job: _Job) -> bool:
        """Render and count one prompt before it joins a batch, so one bad request fails alone (400), not its
        batch-mates; also settles how many tokens it may generate."""
        try:
            prompt = self.renderer.prompt(job.example)
        except ChatTemplateError as e:
            job.future.set_exception(_ApiError(400, str(e), param="messages"))
            return False
        job.prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        room = self.cap if self.context is None else min(self.cap, self.context - job.prompt_tokens)
        asked = job.max_tokens
        if room < 1 or (asked is not None and asked > room):
            if room < 1:
                why = f"the prompt is {job.prompt_tokens:,} tokens, and the model has {self.context:,} positions"
                what = "shorten the messages"
            else:
                why = (
                    f"the prompt is {job.prompt_tokens:,} tokens, which leaves {room:,} of the model's "
                    f"{self.context:,} positions, and max_tokens asks for {asked:,}"
                )
                what = "lower max_tokens or shorten the messages"
            job.future.set_exception(
                _ApiError(400, f"{why} ({what})", param="messages", code="context_length_exceeded")
            )
            return False
        job.max_tokens = room if asked is None else asked
        return True

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for j in jobs:  # one generate call takes one max_new_tokens and one sampling setting
            groups.setdefault((j.max_tokens, j.temperature, j.top_p, j.seed), []).append(j)
        for (max_tokens, temperature, top_p, seed), group in groups.items():
            try:
                if seed is not None:
                    import torch

                    torch.manual_seed(seed)
                sample = temperature > 0
                gens = generate_local(
                    self.model,
                    self.tokenizer,
                    self.renderer,
                    [j.example for j in group],
                    system_prompt=None,
                    max_new_tokens=max_tokens,
                    batch_size=len(group),
                    do_sample=sample,
                    temperature=temperature if sample else 1.0,
                    top_p=top_p if sample else 1.0,
                )
            except BaseException as e:  # answered as a 500 to each request of the group; the worker lives on
                log.exception("generation failed for a batch of %d request(s)", len(group))
                for j in group:
                    j.future.set_exception(e)
                continue
            for j, g in zip(group, gens, strict=True):
                j.future.set_result(g)


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
) -> Any:
    """A FastAPI app serving ``model`` under the name ``model_name`` with OpenAI's chat completions API.

    ``renderer`` is the :class:`~instil.train.chat.ChatRenderer` the model was trained and evaluated with.
    ``api_key``: the key clients must send as ``Authorization: Bearer <key>`` (None: no key). ``max_new_tokens_cap``
    bounds ``max_tokens`` (a larger request is refused) and is the default when a request sets none.
    ``default_system_prompt`` / ``default_tools`` are used by requests without a system message / without tools.
    ``batch_size``: the most queued requests generated together. ``on_request`` is called with a
    :class:`ServedRequest` after each answer (in a worker thread; an exception in it is logged, the answer stands).
    ``max_body_bytes`` bounds a request's body: a larger one is answered 413 before it is read whole.
    """
    try:
        from fastapi import FastAPI
        from fastapi.responses import StreamingResponse
        from starlette.concurrency import run_in_threadpool
    except ImportError:
        raise DependencyError("serving needs fastapi and uvicorn", hint="pip install fastapi uvicorn") from None
    if max_new_tokens_cap < 1 or batch_size < 1 or max_body_bytes < 1:
        raise ValueError(
            f"max_new_tokens_cap ({max_new_tokens_cap}), batch_size ({batch_size}) and max_body_bytes "
            f"({max_body_bytes}) must be at least 1"
        )

    worker = _Worker(model, tokenizer, renderer, max_new_tokens_cap, batch_size)
    # No tokenizer turns more than this many characters into the context's tokens: longer prompts are refused at
    # once, before they are rendered or tokenized on the worker's thread.
    max_chars = worker.context * MAX_CHARS_PER_TOKEN if worker.context else None
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(worker.stop)

    app = FastAPI(title=f"instil: {model_name}", lifespan=lifespan, docs_url=None, redoc_url=None)

    _handle_errors(app)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)  # inside the key check, which runs first
    _require_key(app, api_key)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "instil"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise _unknown_model(name, model_name)
        return model_card()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: _ChatRequest) -> Any:
        began = time.perf_counter()
        if body.model != model_name:
            raise _unknown_model(body.model, model_name)
        job, stops, want_tools, messages, tools = _job(
            body, default_system_prompt, default_tools, max_new_tokens_cap, max_chars
        )
        worker.submit(job)
        try:
            gen: Generation = await asyncio.wrap_future(job.future)
        except _ApiError:
            raise
        except Exception as e:
            raise _ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error") from e
        text, finish, message, usage, calls = _answer(gen, stops, want_tools)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if on_request is not None:
            record = ServedRequest(
                messages=messages,
                text=text,
                usage=usage,
                latency_s=time.perf_counter() - began,
                id=rid,
                model=model_name,
                finish_reason=finish,
                tool_calls=calls,
                tools=tools,
                batch_size=gen.batch_size,
            )
            await run_in_threadpool(_call_hook, on_request, record)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            chunks = _chunks(rid, created, model_name, message, finish, usage if include_usage else None)
            return StreamingResponse(chunks, media_type="text/event-stream")
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage,
            "system_fingerprint": None,
        }

    return app


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
    from fastapi import Request

    # A middleware, not a route dependency: it runs before the body is read, so a client without the key learns
    # nothing about its request (not even that its JSON is malformed).
    @app.middleware("http")
    async def authorize(request: Request, call_next: Callable) -> Any:
        if api_key is None or not request.url.path.startswith("/v1/"):
            return await call_next(request)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _ApiError(
                401, "no API key given: send it as 'Authorization: Bearer <key>'", code="invalid_api_key"
            ).response()
        # Constant time, so the time to refuse a key does not tell how much of it was right.
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            return _ApiError(401, "incorrect API key", code="invalid_api_key").response()
        return await call_next(request)


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


def _job(
    body: _ChatRequest,
    default_system: str | None,
    default_tools: list[dict[str, Any]] | None,
    cap: int,
    max_chars: int | None = None,
) -> tuple[_Job, list[str], bool, list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Check what a local model cannot honour, and turn the request into a queued job."""
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
    fmt = (body.response_format or {}).get("type", "text")
    if fmt not in ("text", "json_object", "json_schema"):
        raise _ApiError(
            400,
            f"response_format.type {fmt!r}: use text, json_object or json_schema",
            param="response_format.type",
        )
    choice = body.tool_choice
    if choice not in (None, "auto", "none"):
        raise _ApiError(
            400,
            f"tool_choice {choice!r} cannot be enforced on a local model; use 'auto' or 'none'",
            param="tool_choice",
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

    temperature = body.temperature or 0.0
    job = _Job(example, max_tokens, temperature, body.top_p or 1.0, body.seed, concurrent.futures.Future())
    return job, stops, choice != "none", [m.to_dict() for m in messages], tools


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


def _unknown_model(name: str, served: str) -> _ApiError:
    return _ApiError(
        404,
        f"the model {name!r} does not exist; this server serves {served!r}",
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


def _call_hook(hook: Callable[[ServedRequest], None], record: ServedRequest) -> None:
    try:
        hook(record)
    except Exception:  # a broken log must not take the answer from a client that has it
        log.exception("the on_request hook failed for %s", record.id)


async def _chunks(
    rid: str, created: int, model: str, message: dict[str, Any], finish: str, usage: dict[str, int] | None
) -> AsyncIterator[str]:
    """The answer as OpenAI's stream: a role chunk, the content, the tool calls, the finish, usage, [DONE]."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if usage is not None:
            body["usage"] = None  # with include_usage, every chunk carries the field; only the last one fills it
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    if message.get("content"):
        yield chunk({"content": message["content"]})
    for k, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": k, **call}]})
    yield chunk({}, finish)
    if usage is not None:
        last = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"
