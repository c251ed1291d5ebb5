"""`instil serve`: a job's trained model (or its base) behind the OpenAI-compatible API of :mod:`instil.serve.app`.

    from instil.serve import load_served, job_app, serve_job
    served = load_served(spec, store)                 # the latest model version; version=2, or base=True
    app = job_app(spec, store, version=2, api_key="sk-local")   # a FastAPI app, to run under any ASGI server
    serve_job(spec, store, port=8000, api_key_env="INSTIL_API_KEY")   # load, then run uvicorn until Ctrl-C
    serve_job(spec, store, proxy=True)                 # forward to the spec's serve.upstream instead, capturing

The model is loaded exactly as ``instil eval`` loads a local candidate, through the one inference loader
(:func:`instil.train.models.load_for_inference`), so the served answers are the evaluated ones. A request without a
system message gets the prompt the model runs with in evaluation: the short prompt for a trained version (as it was
trained), the full prompt for the base.

Every answered request is kept as a trace (:mod:`instil.serve.capture`) unless the spec says ``serve.capture:
false`` or the request says ``store: false``; ``instil traces`` reads them back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from instil.errors import DependencyError, InstilError, NotFoundError
from instil.eval.candidates import Candidate, load_candidate
from instil.eval.generate import MAX_NEW_TOKENS_CAP
from instil.registry import resolve
from instil.serve.app import MAX_BODY_BYTES, MAX_QUEUE, ServedRequest, create_catalog_app
from instil.serve.capture import CaptureStats, TraceLog, capture_graders, served_trace
from instil.serve.catalog import Catalog, NotServed, Target
from instil.serve.engine import serving_threads
from instil.serve.feedback import add_feedback_route
from instil.serve.proxy import create_proxy_app
from instil.serve.router import RolloutRouter
from instil.serve.versions import MAX_ADAPTERS, JobCatalog, default_versions
from instil.spec import JobSpec
from instil.store import ModelVersion, Store

__all__ = [
    "ServedModel",
    "api_key_from_env",
    "job_app",
    "job_catalog",
    "load_served",
    "proxy_app",
    "serve_job",
    "trace_log",
]


@dataclass(frozen=True)
class ServedModel:
    """A loaded model ready to serve, with what requests default to."""

    name: str
    """The name clients send as ``model``: ``<job>@<n>`` for a trained version, ``<job>:base`` for the base."""
    model: Any
    """The transformers model (a PEFT model for an adapter)."""
    tokenizer: Any
    """Its tokenizer, with the chat template it was trained with."""
    renderer: Any
    """The :class:`~instil.train.chat.ChatRenderer` training and evaluation render prompts with."""
    system_prompt: str | None
    """The system prompt a request without one gets: ``short_prompt`` for a trained version, ``system_prompt``
    for the base."""
    tools: list[dict[str, Any]] | None
    """The job's tools (``output.tools``), offered to requests that send none."""
    version: ModelVersion | None
    """The model version served; None for the base."""


def load_served(spec: JobSpec, store: Store, *, version: int | str | None = None, base: bool = False) -> ServedModel:
    """Load what to serve: model ``version`` of the job, or the base model with ``base=True``.

    ``version`` is anything :func:`instil.registry.resolve` reads: ``3``, ``"3"``, ``"<job>@3"``, ``"production"``,
    ``"latest"`` or a pin name. The default is the production version, or the latest before the first promotion.
    Raises :class:`NotFoundError` when the job has no such model."""
    if base and version is not None:
        raise InstilError("serve either a model version or the base, not both", hint="drop --version or --base")
    tools = spec.output.tool_dicts()
    if base:
        candidate = Candidate("base+full", "local", "full", "base")
        name, prompt, model_version = f"{spec.name}:base", spec.system_prompt, None
    else:
        ref = version
        if ref is None:
            ref = "production" if store.production_model(spec.name) is not None else "latest"
        try:
            model_version = resolve(store, spec.name, ref)
        except NotFoundError as e:
            hint = e.hint if version is not None else "train one first (`instil train`), or serve the base (--base)"
            raise NotFoundError(str(e), hint=hint) from None
        candidate = Candidate(
            model_version.ref, "local", "short", f"model:{model_version.ref}", model_version=model_version
        )
        name, prompt = model_version.ref, spec.short_prompt
    loaded = load_candidate(candidate, spec, store)
    return ServedModel(name, loaded.model, loaded.tokenizer, loaded.renderer, prompt, tools, model_version)


def job_catalog(
    spec: JobSpec,
    store: Store,
    *,
    versions: Sequence[int | str] | None = None,
    base: bool = False,
    max_adapters: int = MAX_ADAPTERS,
) -> JobCatalog:
    """What a job's server loads (:class:`~instil.serve.versions.JobCatalog`): ``versions`` (default: production or
    the latest, every pinned version and the latest), plus the base with ``base``. ``base`` alone, with no
    ``versions``, serves the base only."""
    if base and not versions:
        return JobCatalog(spec, store, versions=[], base=True, max_adapters=max_adapters)
    return JobCatalog(spec, store, versions=versions, base=base, max_adapters=max_adapters)


def job_app(
    spec: JobSpec,
    store: Store,
    *,
    version: int | str | None = None,
    versions: Sequence[int | str] | None = None,
    base: bool = False,
    api_key: str | None = None,
    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
    on_request: Callable[[ServedRequest], None] | None = None,
    served: ServedModel | None = None,
    catalog: Catalog | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_queue: int = MAX_QUEUE,
    traces: TraceLog | None = None,
    router: RolloutRouter | None = None,
) -> Any:
    """The FastAPI app serving the job's models by name: ``catalog`` as given, else ``served`` alone (already
    loaded), else :func:`job_catalog` of ``versions`` (or the one ``version``) and ``base``.

    ``traces``: a started :class:`TraceLog` that every answer is captured to (the caller starts and closes it).
    ``router``: a :class:`~instil.serve.router.RolloutRouter` for the job's rollouts (the caller starts and closes
    it)."""
    if catalog is None:
        if served is not None:
            number = served.version.version if served.version is not None else None
            target = Target(
                served.name,
                served.model,
                served.tokenizer,
                served.renderer,
                system_prompt=served.system_prompt,
                tools=served.tools,
                version=number,
            )
            catalog = Catalog([target])
        else:
            refs = [version] if version is not None else versions
            catalog = job_catalog(spec, store, versions=refs, base=base)
    hook = on_request
    if traces is not None:
        price = spec.eval.machine_price_per_hour

        def hook(r: ServedRequest) -> None:
            if r.store:
                traces.capture(served_trace(spec.name, r, version=r.version, price_per_hour=price))
            if on_request is not None:
                on_request(r)

    app = create_catalog_app(
        catalog,
        api_key=api_key,
        max_new_tokens_cap=max_new_tokens_cap,
        batch_size=spec.eval.batch_size,
        on_request=hook,
        max_body_bytes=max_body_bytes,
        max_queue=max_queue,
        trace_log=traces,
        router=router,
    )
    add_feedback_route(app, spec, store)
    return app


def trace_log(spec: JobSpec, store: Store) -> TraceLog:
    """The job's trace log (not started): graded by its reference-free graders, redacted and kept as ``serve`` says."""
    return TraceLog(
        store,
        graders=capture_graders(spec),
        redact=spec.serve.redact_pii,
        retention_days=spec.serve.retention_days,
    )


def proxy_app(
    spec: JobSpec,
    *,
    api_key: str | None = None,
    traces: TraceLog | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """The FastAPI app forwarding to the spec's ``serve.upstream`` (see :mod:`instil.serve.proxy`), capturing every
    answer to ``traces``. Each upstream's key is read from its ``api_key_env`` now, and a missing one is refused."""
    upstreams = spec.serve.upstreams
    if not upstreams:
        raise InstilError(
            f"the job {spec.name!r} has no upstream to proxy to",
            hint="add serve.upstream (base_url, api_key_env) to the spec, or serve a local model without --proxy",
        )
    keys: dict[str, str | None] = {}
    for u in upstreams:
        if u.api_key_env is not None and not os.environ.get(u.api_key_env, "").strip():
            raise InstilError(
                f"the environment variable {u.api_key_env} holds no key for the upstream {u.name!r} ({u.base_url})",
                hint=f"export {u.api_key_env}=<the upstream's API key>, or drop api_key_env to forward the clients' "
                "own keys",
            )
        keys[u.name] = os.environ[u.api_key_env].strip() if u.api_key_env else None
    app = create_proxy_app(
        upstreams,
        job=spec.name,
        api_key=api_key,
        on_trace=traces.capture if traces is not None else None,
        max_body_bytes=max_body_bytes,
        keys=keys,
        trace_log=traces,
    )
    if traces is not None:
        add_feedback_route(app, spec, traces.store)
    return app


def api_key_from_env(api_key_env: str | None) -> str | None:
    """The API key held by the environment variable ``api_key_env`` (None: no key); refuses an unset variable."""
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise InstilError(
            f"the environment variable {api_key_env} holds no API key",
            hint=f"export {api_key_env}=<a secret clients will send>, or leave out --api-key-env to serve without one",
        )
    return key


def serve_job(
    spec: JobSpec,
    store: Store,
    *,
    version: int | str | None = None,
    versions: Sequence[int | str] | None = None,
    base: bool = False,
    max_adapters: int = MAX_ADAPTERS,
    engine: str = "transformers",
    engine_args: Sequence[str] = (),
    proxy: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
    on_request: Callable[[ServedRequest], None] | None = None,
    ready: Callable[[str, str], None] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_queue: int = MAX_QUEUE,
    capture: bool | None = None,
    threads: int | None = None,
) -> CaptureStats | None:
    """Serve the job's models (or, with ``proxy``, forward to its upstreams) on ``host:port`` until interrupted
    (Ctrl-C stops it cleanly); returns what trace capture did (None without capture).

    ``versions`` (or the one ``version``), ``base`` and ``max_adapters`` say what is loaded (:func:`job_catalog`).
    ``engine="vllm"`` runs them in vLLM's server instead (:mod:`instil.serve.vllm`; ``engine_args`` are passed to
    it), behind the proxy's capture and routing.

    ``api_key_env`` names the environment variable with the key clients must send (read once, never logged).
    ``ready(name, base_url)`` is called once the model is loaded, before the server starts listening (``name`` is
    the model's, or ``proxy`` with the upstreams' names). ``max_body_bytes`` bounds each request's body (413 past it);
    ``max_queue`` the requests waiting for the model (429 with ``Retry-After`` past it). ``capture`` overrides the
    spec's ``serve.capture``. ``threads``: torch's threads for generation (default, on a CPU: every core but one,
    :func:`~instil.serve.engine.serving_threads`).
    """
    try:
        import uvicorn
    except ImportError:
        raise DependencyError("serving needs fastapi and uvicorn", hint="pip install 'instil[serve]'") from None
    api_key = api_key_from_env(api_key_env)
    if proxy and (version is not None or versions or base):
        raise InstilError(
            "--proxy forwards to the spec's upstream; it serves no local model", hint="drop --version/--base"
        )
    if engine not in ("transformers", "vllm"):
        raise InstilError(f"unknown engine {engine!r}", hint="use transformers (the default) or vllm")
    if engine == "vllm" and (proxy or base):
        raise InstilError(
            "--engine vllm serves the job's versions (vLLM adds the base itself); it takes no --proxy or --base",
            hint="drop --proxy/--base",
        )
    traces = trace_log(spec, store) if (spec.serve.capture if capture is None else capture) else None
    # Rollouts route what clients of production send (`model: <job>`); the proxy in front of an upstream has no
    # versions of ours to route to.
    router = None
    if not proxy:
        router = RolloutRouter(store, spec.name, max_shadow_inflight=spec.rollout.max_shadow_inflight, traces=traces)
    if engine == "vllm":
        refs = _with_candidate(store, spec.name, [version] if version is not None else versions)
        return _serve_vllm(spec, store, refs, host, port, api_key, traces, max_body_bytes, ready, engine_args, router)
    if proxy:
        app = proxy_app(spec, api_key=api_key, traces=traces, max_body_bytes=max_body_bytes)
        name = "proxy to " + ", ".join(f"{u.name} ({u.base_url})" for u in spec.serve.upstreams)
    else:
        refs = [version] if version is not None else versions
        if not (base and not refs):  # the base alone answers no `<job>`: nothing to route
            refs = _with_candidate(store, spec.name, refs)
        catalog = job_catalog(spec, store, versions=refs, base=base, max_adapters=max_adapters)
        serving_threads(catalog.targets()[0].model, threads)
        app = job_app(
            spec,
            store,
            api_key=api_key,
            max_new_tokens_cap=max_new_tokens_cap,
            on_request=on_request,
            catalog=catalog,
            max_body_bytes=max_body_bytes,
            max_queue=max_queue,
            traces=traces,
            router=router,
        )
        name = ", ".join(catalog.names())
        aliases = catalog.aliases()
        if aliases:
            name += " (" + ", ".join(f"{a} = {n}" for a, n in aliases.items()) + ")"
    if traces is not None:
        traces.start()  # after loading, so a failed load leaves no spool behind; before listening
    if router is not None:
        router.start()
    try:
        if ready is not None:
            shown = f"[{host}]" if ":" in host else host
            ready(name, f"http://{shown}:{port}/v1")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if router is not None:
            router.close()
        stats = traces.close() if traces is not None else None
    return stats


def _with_candidate(store: Store, job: str, refs: Sequence[int | str] | None) -> Sequence[int | str] | None:
    """The versions to load, with a running rollout's candidate among them (a whole model loads only at start)."""
    running = store.running_rollout(job)
    if running is None:
        return refs
    if refs is None:
        return [m.version for m in default_versions(store, job)] + [running.version]
    return [*refs, running.version]


def _serve_vllm(
    spec: JobSpec,
    store: Store,
    versions: Sequence[int | str] | None,
    host: str,
    port: int,
    api_key: str | None,
    traces: TraceLog | None,
    max_body_bytes: int,
    ready: Callable[[str, str], None] | None,
    engine_args: Sequence[str],
    router: RolloutRouter | None,
) -> CaptureStats | None:
    """vLLM on a loopback port of its own, the proxy in front of it on ``host:port``, until interrupted."""
    import socket
    import subprocess
    import time
    import urllib.request

    import uvicorn

    from instil.env import home_dir
    from instil.serve.versions import Aliases
    from instil.serve.vllm import vllm_executable, vllm_plan
    from instil.spec import UpstreamSpec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        inner = s.getsockname()[1]
    plan = vllm_plan(spec, store, versions=versions, port=inner, executable=vllm_executable(), extra_args=engine_args)
    logs = home_dir(spec.root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"vllm-{spec.name}-{inner}.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(plan.command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 1800  # a large model's first load compiles kernels and fills the cache
        while True:
            if proc.poll() is not None:
                raise InstilError(
                    f"vLLM exited with status {proc.returncode} before it was ready", hint=f"its log: {log_path}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{inner}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise InstilError("vLLM did not become ready in 30 minutes", hint=f"its log: {log_path}")
            time.sleep(1.0)
        upstream = UpstreamSpec(name="vllm", base_url=f"http://127.0.0.1:{inner}/v1", timeout_s=600)
        app = create_proxy_app(
            [upstream],
            job=spec.name,
            api_key=api_key,
            on_trace=traces.capture if traces is not None else None,
            max_body_bytes=max_body_bytes,
            trace_log=traces,
            rename=Aliases(store, spec.name),
            source="local",
            router=router,
        )
        add_feedback_route(app, spec, store)
        if router is not None:
            rename = Aliases(store, spec.name)

            def served(name: str) -> None:  # vLLM serves what it started with: a candidate it lacks is refused
                if rename(name) not in plan.names:
                    raise NotServed(
                        f"vLLM was started without {name}", hint="restart `instil serve --engine vllm` to serve it"
                    )

            router.prepare = served
        if traces is not None:
            traces.start()
        if router is not None:
            router.start()
        try:
            if ready is not None:
                shown = f"[{host}]" if ":" in host else host
                ready(", ".join(plan.names) + " (vLLM)", f"http://{shown}:{port}/v1")
            uvicorn.run(app, host=host, port=port, log_level="warning")
        finally:
            if router is not None:
                router.close()
            stats = traces.close() if traces is not None else None
        return stats
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
