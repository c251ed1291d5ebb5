"""Render chats through the tokenizer's real chat template: the one rendering path for training, eval and serving.

    renderer = ChatRenderer(tokenizer)                       # the tokenizer's own template
    renderer = ChatRenderer(tokenizer, chat_template="chatml")   # a built-in template, Jinja text, or a .jinja path
    text = renderer.render(example)                          # the whole conversation, with the example's tools
    rendering = renderer.locate(example)                     # text + the character spans the loss is taken on
    prompt = renderer.prompt(example)                        # what the model is given at eval/serving time
    renderer.end_of_turn, renderer.stop_strings              # where a generated turn stops

How trained spans are found (one way for every template, so it can be checked): the conversation is rendered once,
and each assistant turn is found in that text, in order, as its content followed by the template's end-of-turn marker
(``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``, ``<|end|>``...). The marker is learned by probing the
template with a sentinel reply, not from a table of known models. An assistant turn that only calls tools is found
from the rendering of the conversation before it (the prefix property); a template that breaks it raises.

The span policy: a trained span is the assistant's content (without its own leading/trailing whitespace) plus the
end-of-turn marker right after it. Template text before the content (role headers, Qwen3's empty think block) and after
the marker (the newline before the next turn) is not trained. Token masks are derived in :mod:`instil.train.masking`.

Templates that drop a message (Phi-3-128k drops the system prompt) raise :class:`ChatTemplateError` unless
``allow_dropped_messages=True``; a tokenizer without a template raises unless one is given. Never a silent guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instil.data.records import Example, Message
from instil.errors import ChatTemplateError

__all__ = [
    "BUILTIN_TEMPLATES",
    "CHATML_TEMPLATE",
    "ChatRenderer",
    "ChatTemplateError",
    "Rendering",
    "TurnSpan",
]


CHATML_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    '{{- \'# Tools\\n\\nYou may call these functions. Call one as <tool_call>{"name": ..., "arguments": ...}'
    "</tool_call>.\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}"
    "{%- for call in (message['tool_calls'] or []) %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- ('\\n' if (message['content'] or not loop.first) else '') + '<tool_call>{\"name\": \"' + fn['name']"
    " + '\", \"arguments\": ' + (fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson))"
    " + '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML (``<|im_start|>role ... <|im_end|>``), with Hermes-style tool calls: the built-in ``chatml`` template."""

BUILTIN_TEMPLATES: dict[str, tuple[str, str]] = {"chatml": (CHATML_TEMPLATE, "<|im_end|>")}
"""Templates selectable by name (``model.chat_template: chatml``): name -> (Jinja text, end-of-turn marker)."""

_SENTINEL = "Sentinelreply"
"""A reply used to probe a template: a plain word, so tokenizers treat it like ordinary content."""


@dataclass(frozen=True, slots=True)
class TurnSpan:
    """One trained assistant turn, as a character range of the rendered text."""

    message_index: int
    """The index of the assistant message in the example's ``messages``."""
    start: int
    """The offset of the first character of the turn's content (or of its first tool call)."""
    end: int
    """The offset just past the turn's end-of-turn marker."""


@dataclass(frozen=True, slots=True)
class Rendering:
    """A conversation rendered by the template, and where its trained turns are."""

    text: str
    """The rendered text, exactly as the template wrote it (it carries the BOS text when the template adds one)."""
    spans: tuple[TurnSpan, ...]
    """The trained assistant turns, in order (turns with ``weight: 0`` are left out)."""
    dropped: tuple[int, ...] = ()
    """Indexes of messages the template left out (only non-empty when ``allow_dropped_messages`` is set)."""


def resolve_template(chat_template: str) -> tuple[str, str | None]:
    """A ``chat_template`` setting as (Jinja text, end-of-turn marker when known): a built-in name, a ``.jinja``
    path, or Jinja text."""
    name = chat_template.strip()
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    if "{{" in name or "{%" in name:
        return chat_template, None
    path = Path(name).expanduser()
    if name.endswith(".jinja") or path.is_file():
        try:
            return path.read_text(encoding="utf-8"), None
        except OSError as e:
            raise ChatTemplateError(
                f"chat_template: cannot read the template file {path}: {e.strerror or e}",
                hint="fix the path, paste the Jinja text, or pick a built-in: " + ", ".join(BUILTIN_TEMPLATES),
            ) from None
    raise ChatTemplateError(
        f"chat_template: {name!r} is neither a built-in template, Jinja text, nor an existing .jinja file",
        hint="use one of the built-ins (" + ", ".join(BUILTIN_TEMPLATES) + "), a path to a .jinja file, or Jinja text",
    )


def _as_messages(example_or_messages: Example | list[Message] | list[dict[str, Any]]) -> list[Message]:
    if isinstance(example_or_messages, Example):
        return list(example_or_messages.messages)
    return [m if isinstance(m, Message) else Message.from_dict(m) for m in example_or_messages]


def _template_dict(m: Message) -> dict[str, Any]:
    """A message as templates expect it: string content ('' rather than None), no instil-only fields."""
    d = m.to_dict()
    d.pop("weight", None)  # instil's training field, not the template's
    if isinstance(m.content, list):
        # Templates differ in how (or whether) they take content parts; every one takes a string.
        d["content"] = "\n".join(p.get("text", "") for p in m.content if isinstance(p, dict))
    elif m.content is None:
        d["content"] = ""  # Qwen3's template concatenates content even for tool-call-only turns
    return d


def _content(m: Message) -> str:
    """The content as the template sees it, without surrounding whitespace (Llama 3 and Gemma trim it)."""
    return _template_dict(m)["content"].strip()


def _describe(m: Message) -> str:
    if not _content(m) and m.tool_calls:
        names = ", ".join(str((c.get("function") or c).get("name")) for c in m.tool_calls)
        return f"{m.role}: tool calls to {names}"
    return f"{m.role}: {_content(m)[:40]!r}"


def _where(example: Any) -> str:
    source = getattr(example, "source", None)
    return f"{source}: " if source else ""


class ChatRenderer:
    """Renders chats with one chat template and finds the trained assistant turns in the rendering."""

    def __init__(
        self, tokenizer: Any, *, chat_template: str | None = None, allow_dropped_messages: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        """A fast ``transformers`` tokenizer (offsets are needed to map characters to tokens)."""
        self.allow_dropped_messages = allow_dropped_messages
        """Accept templates that leave messages out (the spec's ``model.allow_dropped_messages``)."""
        marker: str | None = None
        if chat_template is not None:
            self.template, marker = resolve_template(chat_template)
            self.template_name = chat_template.strip() if chat_template.strip() in BUILTIN_TEMPLATES else "given"
        elif getattr(tokenizer, "chat_template", None):
            self.template = tokenizer.chat_template
            self.template_name = "tokenizer"
            # A built-in template saved onto a tokenizer (as `model.chat_template: chatml` does) keeps its known
            # marker: the tokenizer may not have it as a special token (stories260K has no <|im_end|>).
            marker = next((m for t, m in BUILTIN_TEMPLATES.values() if t == self.template), None)
        else:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ChatTemplateError(
                f"the tokenizer '{name}' has no chat template, so instil cannot know how its model expects a chat",
                hint=(
                    "set `model.chat_template: chatml` in instil.yaml (the built-in ChatML template), or give the "
                    "model's own template as Jinja text or a path to a .jinja file"
                ),
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ChatTemplateError(
                f"the tokenizer {type(tokenizer).__name__} is a slow (Python) tokenizer; loss masks need the "
                "character offsets only fast tokenizers give",
                hint="install `tokenizers` and load it with AutoTokenizer.from_pretrained(..., use_fast=True)",
            )
        self.end_of_turn: str = marker if marker is not None else self._probe_end_of_turn()
        """The text that ends an assistant turn (trained with it, so the model learns to stop)."""

    # ---- rendering ---------------------------------------------------------------------------------------------------
    def render(
        self,
        example_or_messages: Example | list[Message] | list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The conversation rendered by the template (``tools`` default to the example's own)."""
        messages = _as_messages(example_or_messages)
        if tools is None and isinstance(example_or_messages, Example):
            tools = example_or_messages.tools
        return self._apply(messages, tools, add_generation_prompt, where=_where(example_or_messages))

    def _apply(self, messages: list[Message], tools: list[dict[str, Any]] | None, gen: bool, *, where: str = "") -> str:
        try:
            return self.tokenizer.apply_chat_template(
                [_template_dict(m) for m in messages],
                tools=tools or None,
                chat_template=self.template,
                add_generation_prompt=gen,
                tokenize=False,
            )
        except Exception as e:  # Jinja's raise_exception and TemplateError: the template refuses this chat
            roles = ", ".join(m.role for m in messages)
            raise ChatTemplateError(
                f"{where}the chat template cannot render this conversation ({roles}): {type(e).__name__}: {e}",
                hint=(
                    "reshape the example to what the template accepts (many need user/assistant alternation), "
                    "or set `model.chat_template` (e.g. `chatml`) to use another template"
                ),
            ) from None

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets of rendered text. No special tokens are added: the template's text
        already carries BOS where the model wants it, so adding another would double it."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            raise ChatTemplateError(
                "the rendered chat starts with two BOS tokens; the model would see an input it was never trained on",
                hint="remove the BOS from the chat template or from the text before it is rendered",
            )
        return ids, offsets

    # ---- the end-of-turn marker --------------------------------------------------------------------------------------
    def _probe_end_of_turn(self) -> str:
        """The special token the template writes right after an assistant's content."""
        probe = [Message("user", "Hello"), Message("assistant", _SENTINEL), Message("user", "Thanks")]
        text = self._apply(probe, None, False)
        at = text.find(_SENTINEL)
        if at < 0:
            raise ChatTemplateError("the chat template does not render assistant messages at all")
        after = at + len(_SENTINEL)
        ids, offsets = self.encode(text)
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        special |= set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        for tid, (a, b) in zip(ids, offsets, strict=True):
            if b <= after or not text[a:b].strip():
                continue  # the content's own tokens, and whitespace between it and the marker
            token = self.tokenizer.convert_ids_to_tokens(tid)
            if tid in special and text.startswith(token, a):
                return token
            break
        raise ChatTemplateError(
            "the chat template writes no end-of-turn token after an assistant reply "
            f"(it continues with {text[after : after + 30]!r}), so a model trained with it could not learn to stop",
            hint="set `model.chat_template: chatml`, or a template whose assistant turns end with a special token",
        )

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end a generated reply: the end-of-turn marker, and the EOS token when it differs."""
        eos = getattr(self.tokenizer, "eos_token", None)
        return [self.end_of_turn] + ([eos] if eos and eos != self.end_of_turn else [])

    # ---- finding the trained turns -----------------------------------------------------------------------------------
    def locate(
        self,
        example_or_messages: Example | list[Message] | list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
    ) -> Rendering:
        """Render the conversation and find each trained assistant turn in it (see the module docstring)."""
        messages = _as_messages(example_or_messages)
        if tools is None and isinstance(example_or_messages, Example):
            tools = example_or_messages.tools
        where = _where(example_or_messages)
        text = self._apply(messages, tools, False, where=where)
        spans: list[TurnSpan] = []
        dropped: list[int] = []
        cursor = 0  # assistant turns and user/tool messages are found in order, after this offset
        for i, m in enumerate(messages):
            content = _content(m)
            if m.role != "assistant":
                if not content:
                    continue
                if m.role != "system":  # templates move the system prompt (Mistral: into the last user turn)
                    at = text.find(content, cursor)
                    if at >= 0:
                        cursor = at + len(content)
                        continue
                variants = (
                    content,
                    json.dumps(content, ensure_ascii=False)[1:-1],
                )  # tool results may be JSON-quoted
                if not any(v in text for v in variants):
                    dropped.append(i)
                continue
            span = self._assistant_span(messages, tools, i, text, cursor, where)
            if span is None:
                dropped.append(i)
                continue
            cursor = span.end
            if m.weight != 0:
                spans.append(span)
        if dropped and not self.allow_dropped_messages:
            desc = "; ".join(f"messages[{i}] ({_describe(messages[i])})" for i in dropped)
            raise ChatTemplateError(
                f"{where}the chat template silently drops {desc}: the model would never see "
                + ("it" if len(dropped) == 1 else "them"),
                hint=(
                    "move what it drops where the template keeps it (e.g. the system prompt into the first user "
                    "message), set `model.allow_dropped_messages: true` to accept this, or set `model.chat_template` "
                    "to a template that renders every message"
                ),
            )
        return Rendering(text=text, spans=tuple(spans), dropped=tuple(dropped))

    def _assistant_span(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None,
        i: int,
        text: str,
        cursor: int,
        where: str,
    ) -> TurnSpan | None:
        """Where assistant ``messages[i]`` is in ``text``; None when the template left it out."""
        m, marker = messages[i], self.end_of_turn
        content = _content(m)
        if content:
            # Content followed by the marker (or by tool calls): anchoring on the marker keeps a short reply such
            # as "user" from matching inside a role header.
            pattern = re.escape(content) + (r"(?=[\s\S]*?" if m.tool_calls else r"(?=\s*") + re.escape(marker) + ")"
            found = re.compile(pattern).search(text, cursor)
            if found is None:
                if content in text[cursor:]:
                    raise ChatTemplateError(
                        f"{where}messages[{i}] (assistant) is rendered without the end-of-turn marker {marker!r} "
                        "after it, so its mask cannot be placed",
                        hint="set `model.chat_template` to a template that ends every assistant turn with a marker",
                    )
                if content in text:
                    raise ChatTemplateError(
                        f"{where}the chat template renders messages[{i}] (assistant) out of order",
                        hint="set `model.chat_template` (e.g. `chatml`) to a template that keeps the turn order",
                    )
                return None
            start = found.start()
        else:
            # A turn that only calls tools has no content to find: it starts where the conversation before it,
            # followed by the generation prompt, ends.
            prefix = self._apply(messages[:i], tools, True, where=where)
            if not text.startswith(prefix) or len(prefix) < cursor:
                raise ChatTemplateError(
                    f"{where}cannot place messages[{i}] (a tool-call-only assistant turn): the template renders the "
                    "conversation before it differently when that conversation is rendered on its own",
                    hint="set `model.chat_template: chatml`, whose rendering keeps earlier turns unchanged",
                )
            start = len(prefix)
        end = text.find(marker, start + len(content))
        if end < 0:
            return None
        for call in m.tool_calls or []:
            name = (call.get("function") or call).get("name", "")
            if name and name not in text[start:end]:
                return None  # the template dropped the tool call (Llama 3's does)
        return TurnSpan(message_index=i, start=start, end=end + len(marker))

    # ---- prompts for evaluation and serving --------------------------------------------------------------------------
    def prompt(
        self,
        example_or_messages: Example | list[Message] | list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        system_prompt_override: str | None = None,
    ) -> str:
        """The text a model is given to write the next assistant turn, ending exactly where training's trained
        tokens begin.

        For an example that ends with an assistant turn, that turn is left out (it is the reference answer). The
        prompt is cut from a rendering with a sentinel reply in place of the answer, at the first token of the
        reply: so template text before an answer (Qwen3's empty think block, Mistral's space) matches training.
        ``system_prompt_override`` replaces the system message (or adds one when there is none).
        """
        if isinstance(example_or_messages, Example):
            messages = example_or_messages.prompt_messages()
            tools = example_or_messages.tools if tools is None else tools
        else:
            messages = _as_messages(example_or_messages)
            if messages and messages[-1].role == "assistant":
                messages = messages[:-1]
        if system_prompt_override is not None:
            rest = [m for m in messages if m.role != "system"]
            messages = [Message("system", system_prompt_override), *rest]
        text = self._apply(
            [*messages, Message("assistant", _SENTINEL)], tools, False, where=_where(example_or_messages)
        )
        at = text.rfind(_SENTINEL)
        if at < 0:
            raise ChatTemplateError("the chat template does not render a final assistant turn")
        _, offsets = self.encode(text)
        # The first token that reaches into the sentinel: a tokenizer may fold the template's space into it.
        cut = next(a for a, b in offsets if b > at)
        return text[: min(cut, at)]
