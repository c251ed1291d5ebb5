"""Constrained decoding: an answer that must be JSON of a schema, or one of the job's labels, can be nothing else.

    from instil.eval.constrain import Constrainer, output_grammar, schema_grammar
    grammar = output_grammar(spec.output)                  # None for free text and tool calls
    constrainer = Constrainer.for_model(model, tokenizer, stop_ids)   # built once per tokenizer (about 1 s)
    matcher = constrainer.matcher(grammar)                 # ConstraintError says what cannot be enforced
    generate_rows(model, tokenizer, renderer, [Row(ids, 64, matcher=matcher)])

At every step the matcher gives the tokens that keep the answer on its grammar, and every other token's logit is set
to -inf before temperature and top-p, so greedy and sampled answers alike stay inside it; once the grammar is
complete only the end-of-turn tokens are allowed. An answer can still be cut by ``max_tokens`` (finish ``length``).

The engine is llguidance (the Rust library under Microsoft's Guidance, and one of vLLM's, SGLang's and llama.cpp's
structured-output backends). Chosen over xgrammar and outlines for this job: its Earley parser computes each mask
lazily from the tokenizer's trie, so a new schema costs a compile of milliseconds rather than a per-schema index over
the vocabulary (outlines-core builds one from a regex automaton, which grows with the schema); it needs neither
``torch.compile`` nor a GPU kernel to apply the mask (we apply it with plain tensor ops here); and it accepts the
widest part of JSON Schema of the three (JSONSchemaBench), refusing what it cannot enforce instead of ignoring it.
"""

from __future__ import annotations

import copy
import json
import threading
import weakref
from typing import Any

from instil.errors import DependencyError, InstilError

__all__ = [
    "ConstraintError",
    "Constrainer",
    "GrammarMask",
    "apply_masks",
    "json_object_grammar",
    "label_grammar",
    "output_grammar",
    "schema_grammar",
]

# Whitespace between JSON tokens: what json.dumps and pretty-printers write, bounded so that a weak model cannot loop
# on blanks until max_tokens runs out.
_JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,12}"}


class ConstraintError(InstilError):
    """A grammar that cannot be enforced: a schema the engine refuses, or a tokenizer it cannot read."""


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise DependencyError(
            "constrained decoding needs llguidance", hint="pip install 'instil[serve]' (or pip install llguidance)"
        ) from None
    return llguidance


def schema_grammar(schema: dict[str, Any]) -> str:
    """The grammar of a JSON value that fits ``schema`` (a JSON Schema)."""
    llg = _llguidance()
    try:
        return str(llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_JSON_OPTIONS))
    except (ValueError, TypeError) as e:
        raise ConstraintError(f"the JSON schema cannot be compiled: {e}") from None


def json_object_grammar() -> str:
    """The grammar of any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
    return schema_grammar({"type": "object"})


def label_grammar(labels: list[str]) -> str:
    """The grammar of an answer that is exactly one of ``labels``."""
    if not labels:
        raise ConstraintError("a label grammar needs at least one label")
    # JSON string literals are Lark's too, so any label (quotes, backslashes, newlines, any script) is quoted exactly.
    alternatives = " | ".join(json.dumps(label, ensure_ascii=False) for label in labels)
    return str(_llguidance().LLMatcher.grammar_from_lark(f"start: {alternatives}"))


def output_grammar(output: Any) -> str | None:
    """The grammar an answer to a job with this ``output`` section (:class:`~instil.spec.OutputSpec`) must follow:
    the schema for ``json`` outputs (its ``label_field`` limited to the labels), one of the labels for ``label``
    outputs, None for free text and tool calls (nothing to enforce)."""
    if output.type == "label":
        return label_grammar(list(output.labels))
    if output.type == "json":
        schema = output.json_schema
        if output.label_field and output.labels:
            schema = _with_labels(schema, output.label_field.split("."), list(output.labels))
        return schema_grammar(schema)
    return None


def _with_labels(schema: dict[str, Any], path: list[str], labels: list[str]) -> dict[str, Any]:
    """``schema`` with the field at ``path`` (through ``properties``) limited to ``labels`` unless it already says
    what it holds (``enum`` or ``const``); unchanged when the path is not spelled out in ``properties``."""
    out = copy.deepcopy(schema)
    node = out
    for key in path:
        props = node.get("properties") if isinstance(node, dict) else None
        if not isinstance(props, dict) or not isinstance(props.get(key), dict):
            return schema
        node = props[key]
    if "enum" not in node and "const" not in node:
        node["enum"] = labels
    return out


class Constrainer:
    """Makes grammar matchers for one tokenizer; build it with :meth:`for_model`, which caches it."""

    _cache: weakref.WeakKeyDictionary[Any, Constrainer] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, tokenizer: Any, stop_ids: list[int], vocab_size: int | None = None) -> None:
        llg = _llguidance()
        import llguidance.hf

        self.vocab_size = vocab_size
        try:
            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(stop_ids))
        except ValueError as e:  # a slow (Python) tokenizer: llguidance reads only the Rust tokenizers' JSON
            raise ConstraintError(
                f"constrained decoding cannot read this tokenizer ({type(tokenizer).__name__}): {e}",
                hint="use a fast tokenizer (tokenizer.json), as AutoTokenizer loads by default",
            ) from None
        self._llg = llg

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, stop_ids: list[int]) -> Constrainer:
        """The constrainer of ``tokenizer`` for ``model``'s logits, built once per tokenizer and reused."""
        with cls._lock:
            hit = cls._cache.get(tokenizer)
            if hit is None:
                vocab = _logits_width(model)
                if vocab is not None and vocab < len(tokenizer):
                    vocab = None  # the tokenizer knows more tokens than the model scores: let llguidance size it
                hit = cls(tokenizer, stop_ids, vocab)
                cls._cache[tokenizer] = hit
            return hit

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher of ``grammar`` (one per answer: it holds the answer's progress)."""
        m = self._llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ConstraintError(f"the grammar cannot be enforced: {m.get_error()}")
        return m

    def check(self, grammar: str) -> None:
        """Raise :class:`ConstraintError` when ``grammar`` cannot be enforced with this tokenizer."""
        self.matcher(grammar)


def _logits_width(model: Any) -> int | None:
    try:
        return int(model.get_output_embeddings().weight.shape[0])
    except (AttributeError, TypeError):
        size = getattr(getattr(model, "config", None), "vocab_size", None)
        return int(size) if size else None


class GrammarMask:
    """A logits processor for ``model.generate``: each row with a matcher may only take the tokens its grammar
    allows (only ``stop_ids`` once the grammar is complete); rows without one (None) are left as they are. One
    instance serves one ``generate`` call.

    A row ends at its stop token, or when its matcher errs (a row stopped by its own limit or a cancelled client is
    padded by ``generate`` from then on, and pad tokens break its grammar); an ended row is never masked again, so a
    padded row never gets an empty mask (all ``-inf``, which sampling cannot draw from)."""

    def __init__(self, matchers: list[Any], stop_ids: list[int] | set[int]) -> None:
        self.matchers = matchers
        self.stops = set(stop_ids)
        self.ended = [m is None for m in matchers]
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.started:
            last = input_ids[:, -1].tolist()
            for k, m in enumerate(self.matchers):
                if not self.ended[k]:
                    m.consume_token(last[k])
                    self.ended[k] = last[k] in self.stops or m.is_error()
        self.started = True
        return apply_masks([None if done else m for m, done in zip(self.matchers, self.ended, strict=True)], scores)


def apply_masks(matchers: list[Any], scores: Any) -> Any:
    """``scores`` (rows x vocabulary) with each row that has a matcher limited to the tokens its grammar allows
    next (in place); rows whose matcher is None are left as they are."""
    import torch

    live = [k for k, m in enumerate(matchers) if m is not None]
    if not live:
        return scores
    bits = torch.arange(32, dtype=torch.int32)
    vocab = scores.shape[-1]
    words = (vocab + 31) // 32
    mask = torch.zeros((len(live), words), dtype=torch.int32)
    for row, k in enumerate(live):
        target = mask[row]
        matchers[k].unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * 4)
    allowed = ((mask.unsqueeze(-1) >> bits) & 1).bool().reshape(len(live), words * 32)[:, :vocab]
    index = torch.tensor(live, device=scores.device)
    scores[index] = scores[index].masked_fill(~allowed.to(scores.device), float("-inf"))
    return scores
