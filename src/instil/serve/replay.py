"""Replaying requests through a served model, as production traffic would reach it: over HTTP, with the real
``openai`` client, each answer captured as a trace.

    from instil.serve.replay import replay
    traces = replay(spec, store, model, examples)     # one Trace per example, in order (None where none came back)

The model is served on a loopback port by the same app ``instil serve`` runs (:func:`~instil.serve.job.job_app`,
capture on); each example's conversation is sent without its system message, so the server adds the prompt the
model runs with, as it does for a production client. Each request carries ``metadata.example`` (the example's key)
and the ``replay`` tag, which is how its trace is found again. The loop's learn stage takes this as its ``traffic``
when the quickstart runs (``instil quickstart``): its second turn learns from traces, not from answers generated in
process.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Sequence

from instil.data.records import Example
from instil.errors import DependencyError, InstilError
from instil.serve.app import TAGS_HEADER
from instil.serve.job import job_app, trace_log
from instil.spec import JobSpec
from instil.store import ModelVersion, Store, Trace

__all__ = ["REPLAY_TAG", "replay"]

REPLAY_TAG = "replay"


def replay(
    spec: JobSpec,
    store: Store,
    model: ModelVersion,
    examples: Sequence[Example],
    *,
    max_tokens: int | None = None,
    clients: int = 8,
) -> list[Trace | None]:
    """Serve ``model`` on loopback, send it each example (``clients`` at a time), and return the captured traces in
    the examples' order (None for a request that got no answer)."""
    try:
        import openai
        import uvicorn
    except ImportError:
        raise DependencyError(
            "replaying needs the serve extra and openai", hint="pip install 'instil[serve]'"
        ) from None
    traces = trace_log(spec, store)
    app = job_app(spec, store, version=model.version, traces=traces)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    traces.start()
    thread = threading.Thread(target=server.run, name="instil-replay", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            traces.close()
            raise InstilError("the replay server did not start", hint="see the log above")
        time.sleep(0.02)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="replay", max_retries=2, timeout=600)
    limit = max_tokens or spec.eval.max_new_tokens or 256

    def send(e: Example) -> str | None:
        messages = [m.to_dict() for m in e.messages[:-1] if m.role != "system"]
        try:
            r = client.chat.completions.create(
                model=model.ref, messages=messages, max_tokens=limit, temperature=0,
                metadata={"example": e.key()[:512]}, extra_headers={TAGS_HEADER: REPLAY_TAG},
            )  # fmt: skip
        except openai.APIError:
            return None
        return r.id

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, clients)) as pool:
            ids = list(pool.map(send, examples))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        traces.close()  # every answer stored before the traces are read
    return [store.find_trace(i) if i is not None else None for i in ids]
