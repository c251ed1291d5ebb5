"""Several versions of a job side by side: one base with each LoRA adapter loaded once, picked per request by name.

    from instil.serve.versions import JobCatalog
    catalog = JobCatalog(spec, store)                    # production (or latest), every pinned version, the latest
    catalog = JobCatalog(spec, store, versions=[2, 3], base=True)
    app = create_catalog_app(catalog, api_key="sk-local")

Names a request may send as ``model``:

- ``<job>``: the production version (the latest before the first promotion), read from the store again at most
  ``refresh_s`` after a change, so a promotion or a rollback reaches a running server within a second;
- ``<job>@<n>``, ``<job>@production``, ``<job>@latest``, ``<job>@<pin>``: that version (see
  :func:`instil.registry.resolve`);
- ``<job>:base``: the base model with the full prompt, when the server loads it.

Versions that are LoRA (or QLoRA, served unmerged) adapters on the same base, with the same tokenizer and chat
template, share one copy of the base: each adapter is loaded into it under its own name, and a batch holds requests of
different versions (and of the base) together. A version asked for by name that is not loaded yet is loaded then, if
it is such an adapter (at most ``max_adapters`` of them); whole models (full fine-tunes, merged exports, prompt
tuning) are loaded at start only, and a request for one that is not is a 404 that says how to serve it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instil.errors import NotFoundError
from instil.eval.candidates import Candidate, load_candidate
from instil.registry import resolve
from instil.serve.catalog import BASE_ADAPTER, Catalog, NotServed, Target
from instil.spec import JobSpec
from instil.store import ModelVersion, Store
from instil.train.models import job_base, trained_base, version_kind

__all__ = ["MAX_ADAPTERS", "Aliases", "JobCatalog", "default_versions"]

log = logging.getLogger("instil.serve")

MAX_ADAPTERS = 16
"""The most LoRA adapters :class:`JobCatalog` loads into one base by default."""
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ADAPTERS = ("lora", "qlora")


def default_versions(store: Store, job: str) -> list[ModelVersion]:
    """What a job's server loads unless told: production (the latest before a promotion), every pinned version,
    the latest; each once, in that order."""
    models = store.list_models(job)
    if not models:
        return []
    production = store.production_model(job)
    pinned = [store.get_model(job, p.version) for p in store.list_pins(job)]
    return list({m.version: m for m in [production or models[-1], *pinned, models[-1]]}.values())


def version_named(store: Store, job: str, name: str) -> ModelVersion | None:
    """The model version a request's ``model`` names: ``<job>`` (production, else the latest), ``<job>@<n>``,
    ``<job>@production``, ``<job>@latest``, ``<job>@<pin>``; None when it names none of this job's versions."""
    if name == job:
        ref = "production"
    elif name.startswith(job + "@") and _REF.fullmatch(name[len(job) + 1 :]):
        ref = name[len(job) + 1 :]
    else:
        return None
    try:
        return resolve(store, job, ref)
    except NotFoundError:
        if ref != "production":
            return None
        try:
            return resolve(store, job, "latest")
        except NotFoundError:
            return None


class Aliases:
    """A job's names mapped to the canonical ``<job>@<n>`` as the store says now, re-read at most every
    ``refresh_s`` (for a server whose engine knows only canonical names: vLLM's)."""

    def __init__(self, store: Store, job: str, refresh_s: float = 1.0) -> None:
        self.store, self.job, self.refresh_s = store, job, refresh_s
        self._seen: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str | None:
        """The canonical name ``name`` stands for, or None when it is not one of the job's names."""
        now = time.monotonic()
        hit = self._seen.get(name)
        if hit is not None and now - hit[0] <= self.refresh_s:
            return hit[1]
        with self._lock:
            version = version_named(self.store, self.job, name)
            canonical = version.ref if version is not None else None
            if len(self._seen) > 1024:
                self._seen.clear()
            self._seen[name] = (now, canonical)
        return canonical


@dataclass
class _Host:
    """A loaded base holding LoRA adapters: the PEFT model, its tokenizer, the adapters by version."""

    model: Any
    tokenizer: Any
    renderer: Any
    base: str
    adapters: dict[int, str] = field(default_factory=dict)


class JobCatalog(Catalog):
    """The versions of one job a server answers for, by the names in this module's docstring."""

    def __init__(
        self,
        spec: JobSpec,
        store: Store,
        *,
        versions: Sequence[int | str] | None = None,
        base: bool = False,
        max_adapters: int = MAX_ADAPTERS,
        refresh_s: float = 1.0,
    ) -> None:
        if max_adapters < 1:
            raise ValueError(f"max_adapters ({max_adapters}) must be at least 1")
        self.spec, self.store, self.job = spec, store, spec.name
        self.max_adapters, self.refresh_s = max_adapters, refresh_s
        self._hosts: dict[str, _Host] = {}
        self._load_lock = threading.RLock()
        self._store_lock = threading.Lock()  # the store is read from request threads; one at a time
        self._refreshed = float("-inf")
        chosen = (
            [resolve(store, self.job, v) for v in versions]
            if versions is not None
            else default_versions(store, self.job)
        )
        if not chosen and not base:
            raise NotFoundError(
                f"the job {self.job!r} has no model to serve yet",
                hint="train one first (`instil train`), or serve the base (--base)",
            )
        targets = [self._load_version(v) for v in {m.version: m for m in chosen}.values()]
        if base:
            targets.append(self._load_base())
        super().__init__(targets)
        self._refresh(force=True)

    # -- names ---------------------------------------------------------------------------------------------------------
    def lookup(self, name: str) -> Target | None:
        known = self._targets.get(name)
        if known is not None:
            return known
        if time.monotonic() - self._refreshed > self.refresh_s:
            return None  # an alias may have moved: resolve() reads the store again
        return super().lookup(name)

    def resolve(self, name: str) -> Target | None:
        known = self._targets.get(name)
        if known is not None:
            return known
        self._refresh()
        hit = super().lookup(name)
        if hit is not None:
            return hit
        version = self._version_named(name)
        if version is None:
            return None
        return self._ensure(version, name)

    def prepare(self, name: str) -> Target:
        """Load what ``name`` names now if it is not loaded, a whole model too (a rollout's candidate: the router
        calls this before it routes any request there, so nothing is loaded on a request's whim)."""
        version = self._version_named(name)
        if version is None:
            return super().prepare(name)
        with self._load_lock:  # requests may be adding targets meanwhile
            hit = next((t for t in self._targets.values() if t.version == version.version), None)
        if hit is not None:
            return hit
        kind = version_kind(version)
        if kind in _ADAPTERS:
            return self._ensure(version, name)
        with self._load_lock:
            hit = next((t for t in self._targets.values() if t.version == version.version), None)
            if hit is None:
                hit = self._load_version(version)
                self._add(hit)
                log.info("loaded %s (a %s) for its rollout", hit.name, kind)
        self._refresh(force=True)
        return hit

    def _version_named(self, name: str) -> ModelVersion | None:
        with self._store_lock:
            return version_named(self.store, self.job, name)

    def _refresh(self, force: bool = False) -> None:
        """Point the aliases at what the store says now (at most every ``refresh_s``, unless ``force``)."""
        if not force and time.monotonic() - self._refreshed <= self.refresh_s:
            return
        with self._store_lock:
            production = self.store.production_model(self.job)
            models = self.store.list_models(self.job)
            pins = self.store.list_pins(self.job)
        by_number = {t.version: t.name for t in self._targets.values() if t.version is not None}
        aliases: dict[str, str] = {}
        current = production or (models[-1] if models else None)
        if current is not None and current.version in by_number:
            aliases[self.job] = by_number[current.version]
        if production is not None and production.version in by_number:
            aliases[f"{self.job}@production"] = by_number[production.version]
        if models and models[-1].version in by_number:
            aliases[f"{self.job}@latest"] = by_number[models[-1].version]
        for p in pins:
            if p.version in by_number:
                aliases[f"{self.job}@{p.name}"] = by_number[p.version]
        self._set_aliases(aliases)
        self._refreshed = time.monotonic()

    # -- loading -------------------------------------------------------------------------------------------------------
    def _ensure(self, version: ModelVersion, asked: str) -> Target:
        """The target of ``version``, loading it now when it is an adapter that fits a loaded base."""
        with self._load_lock:
            hit = next((t for t in self._targets.values() if t.version == version.version), None)
            if hit is None:
                hit = self._load_version(version, lazily=True, asked=asked)
                self._add(hit)
                log.info("loaded %s for a request naming %r", hit.name, asked)
        self._refresh(force=True)
        return hit

    def _load_version(self, version: ModelVersion, *, lazily: bool = False, asked: str = "") -> Target:
        kind = version_kind(version)
        card = {"kind": kind}
        if kind in _ADAPTERS:
            base = str(trained_base(version))
            card["parent"] = base if not Path(base).is_absolute() else f"{self.job}:base"
            host = self._hosts.get(base)
            if host is not None:
                adapter = self._add_adapter(host, version, lazily, asked)
                if adapter is not None:
                    return self._target(version, host.model, host.tokenizer, host.renderer, adapter, card)
            elif lazily:
                raise self._not_loaded(version, f"{kind} adapter whose base this server does not hold", asked)
            else:
                loaded = self._load(version)
                host = _Host(loaded.model, loaded.tokenizer, loaded.renderer, base, {version.version: "default"})
                self._hosts[base] = host
                return self._target(version, host.model, host.tokenizer, host.renderer, "default", card)
        if lazily:
            raise self._not_loaded(version, kind, asked)
        loaded = self._load(version)
        return self._target(version, loaded.model, loaded.tokenizer, loaded.renderer, None, card)

    def _add_adapter(self, host: _Host, version: ModelVersion, lazily: bool, asked: str) -> str | None:
        """Load ``version``'s adapter into ``host`` under its own name; None when it cannot share that base (another
        tokenizer or template, or the host is full and this is at start: it is then loaded on its own)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(Path(version.path))
        if not _same_tokenizer(tokenizer, host.tokenizer):
            if lazily:
                raise self._not_loaded(version, "adapter with its own tokenizer", asked)
            return None
        if len(host.adapters) >= self.max_adapters:
            if lazily:
                raise NotServed(
                    f"{version.ref} is not loaded: this server holds {self.max_adapters} adapters on its base already",
                    hint=f"restart the server with --version {version.version} among the versions it loads",
                )
            return None
        name = f"v{version.version}"
        model = host.model
        self._runner(model, lambda: model.load_adapter(str(version.path), adapter_name=name, is_trainable=False))
        host.adapters[version.version] = name
        return name

    def _load(self, version: ModelVersion) -> Any:
        candidate = Candidate(version.ref, "local", "short", f"model:{version.ref}", model_version=version)
        return load_candidate(candidate, self.spec, self.store)

    def _load_base(self) -> Target:
        """The base with the full prompt, sharing a loaded host when the host's base is the job's and their
        tokenizers match (then ``__base__`` runs it inside the adapters' batches)."""
        from instil.train.models import load_tokenizer

        base = str(job_base(self.spec, self.store))
        host = self._hosts.get(base)
        shared = host is not None and _same_tokenizer(
            load_tokenizer(self.spec.model.model_copy(update={"base": base}), root=self.spec.root), host.tokenizer
        )
        if shared and host is not None:
            model, tokenizer, renderer, adapter = host.model, host.tokenizer, host.renderer, BASE_ADAPTER
        else:
            loaded = load_candidate(Candidate("base+full", "local", "full", "base"), self.spec, self.store)
            model, tokenizer, renderer, adapter = loaded.model, loaded.tokenizer, loaded.renderer, None
        return Target(
            f"{self.job}:base",
            model,
            tokenizer,
            renderer,
            adapter=adapter,
            system_prompt=self.spec.system_prompt,
            tools=self.spec.output.tool_dicts(),
            card={"kind": "base"},
        )

    def _target(
        self, version: ModelVersion, model: Any, tokenizer: Any, renderer: Any, adapter: str | None, card: dict
    ) -> Target:
        return Target(
            version.ref,
            model,
            tokenizer,
            renderer,
            adapter=adapter,
            system_prompt=self.spec.short_prompt,
            tools=self.spec.output.tool_dicts(),
            version=version.version,
            card=card,
        )

    def _not_loaded(self, version: ModelVersion, kind: str, asked: str) -> NotServed:
        return NotServed(
            f"the model {asked!r} is {version.ref}, which this server does not hold (a {kind}: loaded only at start)",
            hint=f"restart the server with --version {version.version}",
        )


def _same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers turn every text into the same ids and render chats alike (same vocabulary, merges,
    special tokens and chat template): then versions may share one base."""
    if getattr(a, "chat_template", None) != getattr(b, "chat_template", None):
        return False
    try:
        return a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    except AttributeError:  # a slow tokenizer: its vocabulary and specials are what we can compare
        return a.get_vocab() == b.get_vocab() and a.all_special_tokens == b.all_special_tokens
