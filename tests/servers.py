"""Real HTTP servers on loopback for tests: an ASGI app under uvicorn, in a thread, on a free port; and a fake
OpenAI-compatible endpoint (``POST /v1/chat/completions``) whose answers a test writes as a plain function.

    with serve_app(app) as url: ...                      # any ASGI app (instil.serve's own, say)
    with openai_server(lambda body, request: "red") as (url, log): ...   # log: every request body, in order

The ``fake_openai`` fixture in conftest.py starts the same fake for one test (and skips without fastapi, uvicorn or
openai).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

try:  # FastAPI resolves the handler's annotations by name in this module's globals
    from fastapi import Request
except ImportError:  # the tests that need it skip then
    Request = None  # type: ignore[assignment,misc]

Answer = Callable[[dict, Any], Any]
"""What a fake endpoint answers: ``answer(body, request)`` gets the request's JSON body and the FastAPI request and
returns the reply's text (wrapped by :func:`chat_completion`), a whole response body (a dict), or a FastAPI response
(an HTTP error, say)."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (a moment ago): for a server to bind, or for a refused connection."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields the OpenAI-style base URL (``http://.../v1``)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def chat_completion(model: str, content: str, prompt_tokens: int = 10, completion_tokens: int = 1) -> dict:
    """The body of an OpenAI chat completion whose one choice answers ``content`` (finish reason ``stop``)."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def openai_app(answer: Answer, log: list[dict] | None = None) -> Any:
    """A FastAPI app that answers ``POST /v1/chat/completions`` as OpenAI does, with what ``answer`` says; each
    request's body is appended to ``log`` first."""
    import fastapi

    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> object:
        body = await request.json()
        if log is not None:
            log.append(body)
        reply = answer(body, request)
        return chat_completion(body["model"], reply) if isinstance(reply, str) else reply

    return app


@contextmanager
def openai_server(answer: Answer) -> Iterator[tuple[str, list[dict]]]:
    """A fake OpenAI endpoint (:func:`openai_app`) on loopback until the block ends: (base URL, the request bodies)."""
    log: list[dict] = []
    with serve_app(openai_app(answer, log)) as url:
        yield url, log


def between(tag: str, text: str) -> str | None:
    """What a judge prompt holds between ``<tag>`` and ``</tag>`` (each on its own line); None without that section."""
    m = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.DOTALL)
    return m.group(1) if m else None
