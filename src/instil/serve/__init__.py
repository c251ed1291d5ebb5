"""Serving: a job's models (its versions side by side, and its base) behind an OpenAI-compatible HTTP API.

    from instil.serve import serve_job, create_app
    serve_job(spec, store, port=8000)                 # production, pinned and latest versions, each by name
    serve_job(spec, store, versions=[2, 3], base=True)   # `instil serve instil.yaml --version 2 --version 3 --base`
    app = create_app(model, tokenizer, renderer, model_name="m")   # any loaded model, as a FastAPI app

``app.py`` is the HTTP layer (routes, OpenAI's request and error shapes), ``engine.py`` the generation queue,
``catalog.py`` the names a server answers to, ``versions.py`` a job's versions on one base (LoRA adapters loaded
once, picked per request), ``proxy.py`` the proxy in front of an upstream, ``capture.py`` the traces, ``metrics.py``
``/metrics`` and the access log; ``job.py`` loads a job's models as evaluation does (or builds the proxy) and runs the
server.
"""

from __future__ import annotations

from instil.serve.app import ServedRequest, create_app, create_catalog_app
from instil.serve.catalog import Catalog, NotServed, Target
from instil.serve.job import ServedModel, api_key_from_env, job_app, job_catalog, load_served, serve_job
from instil.serve.versions import JobCatalog

__all__ = [
    "Catalog",
    "JobCatalog",
    "NotServed",
    "ServedModel",
    "ServedRequest",
    "Target",
    "api_key_from_env",
    "create_app",
    "create_catalog_app",
    "job_app",
    "job_catalog",
    "load_served",
    "serve_job",
]
