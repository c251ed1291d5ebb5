"""The one internal record type every format is read into and written from.

An :class:`Example` is a chat: a list of :class:`Message` (system, user, assistant, tool), the tool definitions the
model may call, and instil's own metadata (id, tags, group). A preference example also carries ``rejected``: the
non-preferred assistant output for the same input. Slotted dataclasses rather than pydantic models, because curation
streams millions of them.

Hashes are taken over a canonical JSON form (sorted keys, compact separators, UTF-8), so the same content always hashes
the same whatever file format it came from.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ROLES",
    "Example",
    "Message",
    "canonical_json",
    "normalize_text",
    "sha256_hex",
]

ROLES = ("system", "user", "assistant", "tool")
"""The chat roles instil understands (OpenAI's, without the legacy ``function`` role)."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: the form every hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: two texts equal under this are exact duplicates."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass(slots=True)
class Message:
    """One chat message, in OpenAI's shape."""

    role: str
    content: Any = None
    """A string, a list of content parts, or None (an assistant message that only calls tools)."""
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    weight: int | None = None
    """OpenAI's per-message weight for assistant turns: 0 excludes the turn from the loss, 1 (or absent) trains it."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role}
        if self.content is not None or not self.tool_calls:
            d["content"] = self.content
        for key in ("name", "tool_calls", "tool_call_id", "weight"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        return cls(
            role=d["role"],
            content=d.get("content"),
            name=d.get("name"),
            tool_calls=d.get("tool_calls"),
            tool_call_id=d.get("tool_call_id"),
            weight=d.get("weight"),
        )

    def text(self) -> str:
        """The message's text: string content, text parts joined, tool calls as canonical JSON."""
        parts: list[str] = []
        if isinstance(self.content, str):
            parts.append(self.content)
        elif isinstance(self.content, list):
            parts.extend(p.get("text", "") for p in self.content if isinstance(p, dict))
        if self.tool_calls:
            parts.append(canonical_json(self.tool_calls))
        return "\n".join(parts)


@dataclass(slots=True)
class Example:
    """One training or evaluation example."""

    messages: list[Message]
    """The conversation; for a preference example, the input followed by the preferred output."""
    tools: list[dict[str, Any]] | None = None
    """Tool definitions (OpenAI ``tools``) offered to the model in this conversation."""
    rejected: list[Message] | None = None
    """The non-preferred output for the same input (preference data); None for plain examples."""
    id: str | None = None
    """A stable id given by the source; :meth:`key` derives one from the content when absent."""
    tags: list[str] = field(default_factory=list)
    """Free-form tags (edge cases, languages); evaluation reports slices by tag."""
    group: str | None = None
    """A group key: examples of one group never straddle the train/holdout split."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else the source carried (kept, hashed, written back)."""
    source: str | None = None
    """Where the example was read from (``file:line``); not part of its content or hash."""

    # ---- content views -----------------------------------------------------------------------------------------------
    def content_dict(self) -> dict[str, Any]:
        """The example's content (what a model sees and learns), without instil's metadata."""
        d: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.tools:
            d["tools"] = self.tools
        if self.rejected is not None:
            d["rejected"] = [m.to_dict() for m in self.rejected]
        return d

    def to_dict(self) -> dict[str, Any]:
        """The canonical record: OpenAI chat JSONL, with instil's metadata under ``metadata``."""
        d = self.content_dict()
        metadata: dict[str, Any] = dict(self.meta)
        if self.id is not None:
            metadata["id"] = self.id
        if self.tags:
            metadata["tags"] = list(self.tags)
        if self.group is not None:
            metadata["group"] = self.group
        if metadata:
            d["metadata"] = metadata
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None) -> Example:
        """Read the canonical record written by :meth:`to_dict` (assumes it is valid; see ``data.validate``)."""
        metadata = dict(d.get("metadata") or {})
        rejected = d.get("rejected")
        return cls(
            messages=[Message.from_dict(m) for m in d["messages"]],
            tools=d.get("tools"),
            rejected=[Message.from_dict(m) for m in rejected] if rejected is not None else None,
            id=metadata.pop("id", None),
            tags=list(metadata.pop("tags", []) or []),
            group=metadata.pop("group", None),
            meta=metadata,
            source=source,
        )

    def content_hash(self) -> str:
        """sha256 of the canonical content: equal for byte-identical examples whatever their metadata."""
        return sha256_hex(canonical_json(self.content_dict()))

    def key(self) -> str:
        """The example's id: the source's own, or ``ex-`` and the first 16 hex digits of the content hash."""
        return self.id if self.id is not None else "ex-" + self.content_hash()[:16]

    def with_system_prompt(self, prompt: str | None) -> Example:
        """The example as a model running with ``prompt`` sees it: its system messages replaced by ``prompt``
        (dropped when None). Training swaps in the short prompt this way, evaluation each candidate's prompt, so
        the two render alike. The copy keeps the stored example's key."""
        rest = [m for m in self.messages if m.role != "system"]
        messages = ([Message("system", prompt)] if prompt is not None else []) + rest
        return Example(
            messages=messages,
            tools=self.tools,
            rejected=self.rejected,
            id=self.key(),
            tags=list(self.tags),
            group=self.group,
            meta=dict(self.meta),
            source=self.source,
        )

    # ---- input / output split used by curation, splitting and evaluation ---------------------------------------------
    def last_assistant_index(self) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "assistant":
                return i
        return None

    def prompt_messages(self) -> list[Message]:
        """The messages before the final assistant turn: what the model is given."""
        i = self.last_assistant_index()
        return self.messages if i is None else self.messages[:i]

    def output_message(self) -> Message | None:
        """The final assistant turn: the reference output."""
        i = self.last_assistant_index()
        return None if i is None else self.messages[i]

    def input_text(self) -> str:
        """The input as one text for duplicate detection: non-system turns before the final answer.

        System prompts are left out on purpose: a job's examples share one long system prompt, and including it
        would make every pair look alike.
        """
        return "\n".join(f"{m.role}: {m.text()}" for m in self.prompt_messages() if m.role != "system")

    def output_text(self) -> str:
        """The reference output as text (content, or the tool calls as canonical JSON)."""
        m = self.output_message()
        return "" if m is None else m.text()

    def label(self, field_path: str | None = None) -> str | None:
        """The example's label: the output itself, or a field of the JSON output (dotted path) when given."""
        out = self.output_text()
        if field_path is None:
            return out.strip() or None
        try:
            value: Any = json.loads(out)
        except (json.JSONDecodeError, TypeError):
            return None
        for part in field_path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value if isinstance(value, str) else canonical_json(value)
