"""What a server serves: loaded models, and the names clients reach them by.

    from instil.serve.catalog import Catalog, Target
    base = Target("triage:base", model, tokenizer, renderer, adapter="__base__")
    v3 = Target("triage@3", model, tokenizer, renderer, adapter="v3", version=3)   # the same PEFT model
    catalog = Catalog([base, v3], aliases={"triage": "triage@3"})
    app = create_catalog_app(catalog)          # requests name any of triage, triage@3, triage:base

A :class:`Target` is one answerable name: a model object with the tokenizer and renderer it runs with, and, for a
base holding several LoRA adapters, the adapter to run (``__base__`` for none). Targets that share a model object
share one generation engine, so requests for different versions are batched together (PEFT's mixed-adapter
inference). Aliases (``triage`` for production, ``triage@stable`` for a pin) map to a target's name.

:class:`Catalog` is the static kind; :class:`~instil.serve.versions.JobCatalog` resolves a job's aliases from the
store as they change, and loads a version's adapter the first time it is asked for. The app calls only
:meth:`Catalog.lookup` (cheap, on the event loop), :meth:`Catalog.resolve` (may load, on a worker thread) and
:meth:`Catalog.cards`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instil.errors import InstilError

__all__ = ["BASE_ADAPTER", "Catalog", "NotServed", "Target"]

BASE_ADAPTER = "__base__"
"""The adapter name PEFT's mixed-adapter inference reads as "no adapter": the base model itself."""


class NotServed(InstilError):
    """The name is a real model of the job, but this server does not serve it (said as a 404 with what to do)."""


@dataclass(frozen=True)
class Target:
    """One name a server answers to, and how it answers."""

    name: str
    """What clients send as ``model`` and what responses name: ``<job>@<n>``, ``<job>:base``."""
    model: Any
    tokenizer: Any
    renderer: Any
    """The :class:`~instil.train.chat.ChatRenderer` the model was trained and evaluated with."""
    adapter: str | None = None
    """The PEFT adapter to run in a model holding several (``__base__``: none); None for a model used as it is."""
    system_prompt: str | None = None
    """The system prompt a request without one gets."""
    tools: list[dict[str, Any]] | None = None
    """The tools a request without ``tools`` gets."""
    version: int | None = None
    """The job's model version it is (None for a base or a model outside a job)."""
    card: dict[str, Any] = field(default_factory=dict)
    """What ``/v1/models`` says of it besides its id (``parent``, the version's kind)."""


def _run_here(model: Any, fn: Callable[[], Any]) -> Any:
    return fn()


class Catalog:
    """A fixed set of targets and aliases."""

    _runner: Callable[[Any, Callable[[], Any]], Any] = staticmethod(_run_here)
    """Before an app binds one: nothing serves the model yet, so a change runs on the caller's thread."""

    def __init__(self, targets: list[Target], aliases: dict[str, str] | None = None) -> None:
        if not targets:
            raise ValueError("a catalog needs at least one target")
        self._targets = {t.name: t for t in targets}
        if len(self._targets) != len(targets):
            raise ValueError("two targets have the same name")
        self._aliases = dict(aliases or {})
        unknown = {a: n for a, n in self._aliases.items() if n not in self._targets}
        if unknown:
            raise ValueError(f"aliases name no target: {unknown}")
        self._lock = threading.Lock()
        self.created = int(time.time())

    def bind(self, runner: Callable[[Any, Callable[[], Any]], Any]) -> None:
        """How a change to a loaded model object runs once it serves: ``runner(model, fn)`` runs ``fn`` on the thread
        that owns ``model`` (its engine's, between batches) and returns its result. The app binds it."""
        self._runner = runner

    # -- what the app calls --------------------------------------------------------------------------------------------
    def lookup(self, name: str) -> Target | None:
        """The target ``name`` reaches now, from what is known without waiting (None: unknown, or not known yet)."""
        name = self._aliases.get(name, name)
        return self._targets.get(name)

    def resolve(self, name: str) -> Target | None:
        """The target ``name`` reaches; may look it up or load it (call it off the event loop). None: no such name."""
        return self.lookup(name)

    def prepare(self, name: str) -> Target:
        """Make ``name`` answerable before requests are routed to it (a rollout's candidate); raises
        :class:`NotServed` when it cannot be."""
        target = self.resolve(name)
        if target is None:
            raise NotServed(f"this server serves no model {name!r}", hint=f"it serves {', '.join(self.names())}")
        return target

    def names(self) -> list[str]:
        """The targets' names, for an unknown model's error message."""
        return list(self._targets)

    def targets(self) -> list[Target]:
        return list(self._targets.values())

    def aliases(self) -> dict[str, str]:
        """Alias -> target name, as of now."""
        return dict(self._aliases)

    def cards(self) -> list[dict[str, Any]]:
        """``/v1/models``: every target, then every alias (with ``instil.alias_of``)."""
        out = [self._card(t.name, t) for t in self.targets()]
        for alias, name in self.aliases().items():
            target = self._targets.get(name)
            if target is not None:
                out.append(self._card(alias, target, alias_of=name))
        return out

    def card(self, name: str) -> dict[str, Any] | None:
        target = self.lookup(name)
        if target is None:
            return None
        return self._card(name, target, alias_of=target.name if name != target.name else None)

    # -- for subclasses ------------------------------------------------------------------------------------------------
    def _add(self, target: Target) -> None:
        with self._lock:
            self._targets[target.name] = target

    def _set_aliases(self, aliases: dict[str, str]) -> None:
        self._aliases = {a: n for a, n in aliases.items() if n in self._targets}

    def _card(self, name: str, target: Target, alias_of: str | None = None) -> dict[str, Any]:
        extra = dict(target.card)
        if target.version is not None:
            extra["version"] = target.version
        if alias_of is not None:
            extra["alias_of"] = alias_of
        card: dict[str, Any] = {"id": name, "object": "model", "created": self.created, "owned_by": "instil"}
        if "parent" in extra:
            card["parent"] = extra.pop("parent")  # vLLM's field for a LoRA adapter's base
        card["instil"] = extra
        return card
