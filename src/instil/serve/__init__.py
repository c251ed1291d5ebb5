"""Serving: a local model (a job's trained version, or its base) behind an OpenAI-compatible HTTP API.

    from instil.serve import serve_job, create_app
    serve_job(spec, store, version=2, port=8000)      # what `instil serve instil.yaml --version 2` runs
    app = create_app(model, tokenizer, renderer, model_name="m")   # any loaded model, as a FastAPI app

``app.py`` is the HTTP layer (routes, OpenAI's request and error shapes), ``engine.py`` the generation queue,
``proxy.py`` the proxy in front of an upstream, ``capture.py`` the traces, ``metrics.py`` ``/metrics`` and the access
log; ``job.py`` loads a job's model as evaluation does (or builds the proxy) and runs the server.
"""

from __future__ import annotations

from instil.serve.app import ServedRequest, create_app
from instil.serve.job import ServedModel, api_key_from_env, job_app, load_served, serve_job

__all__ = [
    "ServedModel",
    "ServedRequest",
    "api_key_from_env",
    "create_app",
    "job_app",
    "load_served",
    "serve_job",
]
