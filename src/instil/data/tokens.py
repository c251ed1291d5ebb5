"""Token counts of examples, with the job's real tokenizer when there is one and an honest estimate otherwise.

    counter = TokenCounter.from_spec(spec)               # the base model's tokenizer; an estimate for `tiny`
    counter = TokenCounter.from_tokenizer("path/to/tokenizer")   # a local folder or a cached hub id, never downloaded
    counter = TokenCounter.estimate()                    # ~4 characters per token, plus a per-message overhead
    counts = counter.count_example(example)              # ExampleTokens(total, assistant, messages)
    counter.estimated                                    # True when the counts are estimates

With a real tokenizer that has a chat template, ``total`` is the length of the rendered conversation, exactly what
training sees. Without a template (or when the template refuses a conversation, e.g. one that does not alternate
user/assistant), ``total`` is the sum of the message counts plus a small per-message overhead, and
``ExampleTokens.templated`` is False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instil.data.records import Example, Message
from instil.errors import DependencyError, InstilError
from instil.spec import JobSpec

__all__ = ["ExampleTokens", "TokenCounter"]

CHARS_PER_TOKEN = 4.0
"""The estimate's ratio: English text averages about 4 characters per token in modern BPE vocabularies."""
MESSAGE_OVERHEAD = 4
"""Tokens added per message for role markers and separators (chat templates use 3-5)."""
REPLY_OVERHEAD = 2
"""Tokens added once per conversation (begin-of-text, the generation prompt)."""


@dataclass(frozen=True, slots=True)
class ExampleTokens:
    """The token counts of one example."""

    total: int
    """The whole conversation (for a preference example, the longer of input+preferred and input+rejected)."""
    assistant: int
    """The assistant messages of ``messages`` (the tokens the model learns from, before weights)."""
    messages: tuple[int, ...]
    """Each message of ``messages``: its content tokens plus the per-message overhead."""
    templated: bool = False
    """True when ``total`` comes from rendering the tokenizer's chat template."""


class TokenCounter:
    """Counts tokens of texts and examples; build one with a ``from_*`` or ``estimate`` constructor."""

    def __init__(self, tokenizer: Any = None, *, name: str = "estimate") -> None:
        self.tokenizer = tokenizer
        """A ``transformers`` tokenizer, or None for the estimate."""
        self.name = name
        """Where the tokenizer came from (a path or hub id), or ``estimate``."""

    # ---- constructors ------------------------------------------------------------------------------------------------
    @classmethod
    def estimate(cls) -> TokenCounter:
        """A counter that estimates: ~4 characters per token plus a per-message overhead."""
        return cls(None)

    @classmethod
    def from_tokenizer(
        cls, tokenizer: str | Path | Any, *, chat_template: str | None = None, trust_remote_code: bool = False
    ) -> TokenCounter:
        """A counter using a real tokenizer: an object, a local folder, or a hub id already in the local cache.

        Never downloads: a hub id that is not cached raises :class:`InstilError` saying how to get it.
        ``chat_template`` (Jinja text) replaces or supplies the tokenizer's template.
        """
        if isinstance(tokenizer, str | Path):
            name = str(tokenizer)
            try:
                from transformers import AutoTokenizer
            except ImportError:  # pragma: no cover - transformers is a core dependency
                raise DependencyError("counting tokens needs `transformers`; pip install transformers") from None
            try:
                # local_files_only: a local folder loads as is, and a hub id loads only from the cache.
                tok = AutoTokenizer.from_pretrained(
                    str(Path(name).expanduser()), local_files_only=True, trust_remote_code=trust_remote_code
                )
            except Exception as e:  # transformers raises OSError, ValueError, KeyError... depending on the cause
                raise InstilError(
                    f"cannot load the tokenizer '{name}': {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}",
                    hint=(
                        "point model.base at a local folder holding tokenizer.json/tokenizer_config.json, or download "
                        f"it first (`hf download {name}`); instil never downloads while counting tokens"
                    ),
                ) from None
        else:
            tok, name = tokenizer, getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        if chat_template is not None:
            tok.chat_template = chat_template
        return cls(tok, name=name)

    @classmethod
    def from_spec(cls, spec: JobSpec) -> TokenCounter:
        """The counter for a job: its base model's tokenizer (and chat template), or the estimate for ``tiny``."""
        model = spec.model
        if model.is_tiny:  # a random model built locally: no real tokenizer to count with yet
            return cls.estimate()
        local = spec.resolve(model.base)
        # A folder holding only a tokenizer is enough to count with; otherwise training's resolution, which names a
        # path-shaped base that does not exist as a missing folder instead of trying it as a hub id.
        source = local if local.exists() else model.locate(spec.root)
        template = model.chat_template
        if template is not None and template.strip().endswith(".jinja"):
            path = spec.resolve(template.strip())
            try:
                template = path.read_text(encoding="utf-8")
            except OSError as e:
                raise InstilError(
                    f"model.chat_template: cannot read {path}: {e}",
                    hint="fix the path or paste the template text",
                ) from None
        return cls.from_tokenizer(source, chat_template=template, trust_remote_code=model.trust_remote_code)

    # ---- properties --------------------------------------------------------------------------------------------------
    @property
    def estimated(self) -> bool:
        """True when counts are estimates (no real tokenizer)."""
        return self.tokenizer is None

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer is not None and bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_length(self) -> int | None:
        """The tokenizer's ``model_max_length`` when it is a real limit; None when unknown."""
        n = getattr(self.tokenizer, "model_max_length", None)
        # transformers uses a huge sentinel (int(1e30)) when the limit is unknown.
        return n if isinstance(n, int) and 0 < n < 10_000_000 else None

    # ---- counting ----------------------------------------------------------------------------------------------------
    def count_text(self, text: str) -> int:
        """Tokens in a text, without special tokens."""
        if not text:
            return 0
        if self.tokenizer is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def count_message(self, message: Message) -> int:
        """A message's content (and tool calls) plus the per-message overhead."""
        return self.count_text(message.text()) + MESSAGE_OVERHEAD

    def count_example(self, example: Example) -> ExampleTokens:
        """Token counts of one example; see :class:`ExampleTokens`."""
        per_message = tuple(self.count_message(m) for m in example.messages)
        assistant = sum(n for n, m in zip(per_message, example.messages, strict=True) if m.role == "assistant")
        total, templated = self._total(example.messages, example.tools, sum(per_message))
        if example.rejected is not None:
            prompt = example.prompt_messages() if example.last_assistant_index() is not None else example.messages
            alt = prompt + list(example.rejected)
            alt_total, alt_templated = self._total(alt, example.tools, sum(self.count_message(m) for m in alt))
            if alt_total > total:
                total, templated = alt_total, alt_templated
        return ExampleTokens(total=total, assistant=assistant, messages=per_message, templated=templated)

    def _total(self, messages: list[Message], tools: list[dict[str, Any]] | None, summed: int) -> tuple[int, bool]:
        if self.has_chat_template:
            chat = [_template_dict(m) for m in messages]
            try:
                ids = self.tokenizer.apply_chat_template(chat, tools=tools, tokenize=True, return_dict=False)
                return len(ids), True
            except Exception:
                # Templates raise on conversations they cannot render (no alternation, tool calls they do not
                # support); the sum below is still a fair length, and ExampleTokens.templated says which was used.
                pass
        return summed + REPLY_OVERHEAD, False


def _template_dict(m: Message) -> dict[str, Any]:
    d = m.to_dict()
    d.pop("weight", None)  # instil's training field, not the template's
    if isinstance(d.get("content"), list):
        # Templates differ in how (or whether) they take content parts; the text is what gets counted.
        d["content"] = "\n".join(p.get("text", "") for p in m.content if isinstance(p, dict))
    return d
