"""``POST /v1/feedback``: a user's verdict on one answer, queued for review (:func:`instil.review.feedback`).

    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/feedback \\
         -d '{"id": "chatcmpl-1a2b...", "rating": 0, "correction": "billing", "comment": "it was a refund"}'
    # -> {"object": "feedback", "id": 12, "trace_id": "chatcmpl-1a2b...", "status": "queued"}

``id`` is the response's id (the trace's); ``rating`` is 0 (bad) to 1 (good); ``correction`` the answer it should
have been; at least one of ``rating``, ``correction``, ``comment``. The trace is written a moment after its answer
(off the request path), so feedback sent straight after an answer waits up to :data:`WAIT_S` for it before a 404. The
route sits behind the server's key check and body limit, like every ``/v1/`` route.
"""

# No `from __future__ import annotations`: FastAPI reads the handler's annotations.
import asyncio
import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from instil import review
from instil.errors import InstilError, NotFoundError, StoreError
from instil.serve.app import _ApiError
from instil.spec import JobSpec
from instil.store import ReviewItem, Store

__all__ = ["WAIT_S", "add_feedback_route"]

WAIT_S = 5.0
"""How long feedback waits for its trace to reach the store before a 404."""


class _Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    rating: float | None = Field(None, ge=0, le=1)
    correction: str | None = Field(None, max_length=100_000)
    comment: str | None = Field(None, max_length=10_000)
    user: str | None = Field(None, max_length=256)


def add_feedback_route(app: Any, spec: JobSpec, store: Store, *, wait_s: float | None = None) -> None:
    """Add ``POST /v1/feedback`` to a server's app (the local server's or the proxy's); ``wait_s`` defaults to
    :data:`WAIT_S`."""
    import anyio.to_thread

    lock = threading.Lock()  # the store is written from request threads: one at a time
    # Its own few threads: feedback waiting for a trace never takes the ones chat completions need.
    limiter = anyio.CapacityLimiter(4)

    def once(body: _Feedback) -> ReviewItem | None:
        try:
            with lock:
                return review.feedback(
                    spec, store, body.id, rating=body.rating, correction=body.correction, comment=body.comment,
                    by=body.user,
                )  # fmt: skip
        except NotFoundError:
            return None
        except StoreError as e:
            raise _ApiError(
                503, f"feedback could not be kept: {e}", type="server_error", code="store_unavailable"
            ) from None
        except InstilError as e:
            raise _ApiError(400, str(e)) from None

    @app.post("/v1/feedback")
    async def post_feedback(body: _Feedback) -> dict[str, Any]:
        deadline = time.monotonic() + (WAIT_S if wait_s is None else wait_s)
        while True:
            item = await anyio.to_thread.run_sync(once, body, limiter=limiter)
            if item is not None:
                return {"object": "feedback", "id": item.id, "trace_id": item.trace_id, "status": "queued"}
            if time.monotonic() >= deadline:
                raise _ApiError(
                    404, f"no answer {body.id!r} of this job: send the id of an answer this server gave (its trace "
                    "may still be on its way: retry in a moment)", param="id", code="trace_not_found",
                )  # fmt: skip
            await asyncio.sleep(0.1)  # on the event loop: a wait holds no thread
