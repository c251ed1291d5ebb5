"""Prefix caching: the keys and values of a prompt's shared start (the long system prompt) computed once and reused.

    cache = PrefixCache()                                          # one per model, used from one thread
    generate_rows(model, tokenizer, renderer, rows, prefix_cache=cache, prefix_len=412)

Every request to a job's model starts with the same rendered system turn. When all rows of a batch start with the
same ``prefix_len`` tokens (and run the same adapter), those tokens' KV is taken from the cache (computed by one
forward pass the first time), copied for each row, and only the rest of each prompt is prefilled. The rows' own
parts are left-padded *after* the prefix, and the attention mask hides the padding, so each token sees the positions
and context it sees without the cache: greedy answers are the same (see ``tests/test_generate.py``).

:func:`prefix_length` finds where a system prompt's shared part ends, by rendering it with two different user
turns: what they have in common is the system turn and the user turn's header, whatever the chat template.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections import OrderedDict
from typing import Any

__all__ = ["MIN_PREFIX_TOKENS", "PrefixCache", "prefix_length"]

log = logging.getLogger("instil.generate")

MIN_PREFIX_TOKENS = 32
"""A shorter shared start is prefilled with the rest (a cache lookup and copy would cost more than it saves)."""


def prefix_length(renderer: Any, tokenizer: Any, system: Any, tools: Any = None) -> int:
    """How many leading tokens every prompt with this system message (a text or a ``Message``) and tools shares,
    whatever the user says: the common start of the prompts for two unrelated user turns. 0 without one."""
    from instil.data.records import Example, Message

    if not system:
        return 0
    turn = system if isinstance(system, Message) else Message("system", system)
    prompts = [
        renderer.prompt(Example([turn, Message("user", u), Message("assistant", "")], tools=tools))
        for u in ("A", "7 z")
    ]
    a, b = (list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class PrefixCache:
    """Prefix KV by (adapter, prefix tokens), least recently used dropped past ``max_entries`` or ``max_tokens``.

    Not thread-safe: the engine's one generating thread uses it."""

    def __init__(self, max_entries: int = 8, max_tokens: int = 65_536) -> None:
        self.max_entries, self.max_tokens = max_entries, max_tokens
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.broken = False
        """True once the model refused a prefix cache: it is not tried again."""

    def batch_cache(self, model: Any, prefix: list[int], rows: int, adapter: str | None, device: Any) -> Any:
        """A cache holding ``prefix``'s KV for each of ``rows`` rows, ready for ``generate``; None when the model
        cannot take one (then the caller prefills the whole prompt)."""
        if self.broken:
            return None
        key = (adapter, tuple(prefix))
        stored = self._entries.get(key)
        if stored is None:
            self.misses += 1
            try:
                stored = self._compute(model, prefix, adapter, device)
            except Exception as e:  # an architecture whose cache cannot be built this way: fall back for good
                log.warning("prefix caching is off for this model: %s: %s", type(e).__name__, e)
                self.broken = True
                return None
            self._entries[key] = stored
            while len(self._entries) > self.max_entries or sum(len(k[1]) for k in self._entries) > self.max_tokens:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        cache = copy.deepcopy(stored)
        cache.batch_repeat_interleave(rows)
        return cache

    def _compute(self, model: Any, prefix: list[int], adapter: str | None, device: Any) -> Any:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=_config(model))
        kwargs: dict[str, Any] = {cache_keyword(model): cache, "use_cache": True}
        if adapter is not None:
            kwargs["adapter_names"] = [adapter]
        with torch.inference_mode():
            model(input_ids=torch.tensor([prefix], dtype=torch.long, device=device), **kwargs)
        return cache


def _config(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def cache_keyword(model: Any) -> str:
    """The name ``forward`` and ``generate`` take a cache by: ``cache`` in newer transformers, ``past_key_values``
    before (now deprecated there)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
