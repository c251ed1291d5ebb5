"""Reading example files in the formats people have, all into one record type (:class:`Example`); ``writers.py``
writes them back.

    fmt = detect_format("data.jsonl")                    # chat, preference, prompt_completion, alpaca, sharegpt...
    for ex in read_examples("data.jsonl"):               # streams; DataFormatError "file:line: field: what" if bad
        ...
    write_examples(examples, "out.csv", format="csv")    # DataFormatError when an example does not fit the format
    for rec in iter_records("data.jsonl"):               # the raw layer validation uses: line, text, value or error
        ...

Formats (``FORMATS``):

    chat               OpenAI chat JSONL: {"messages": [...], "tools": [...]}; instil's canonical form (``metadata``
                       holds id, tags, group; ``rejected`` holds a non-preferred output)
    preference         OpenAI preference JSONL: {"input": {"messages": [...]}, "preferred_output": [...],
                       "non_preferred_output": [...]}
    prompt_completion  {"prompt": "...", "completion": "..."} (or TRL's conversational form with message lists)
    alpaca             {"instruction": "...", "input": "...", "output": "..."} (JSONL, or a JSON array)
    sharegpt           {"conversations": [{"from": "human", "value": "..."}, ...]}
    csv                one example per row; ``columns`` maps prompt, completion, system, id, group, tags to headers
    hf_disk            a Hugging Face ``datasets.Dataset`` saved with ``save_to_disk`` (rows in any format above)

A ``.json`` file may also be a JSON array of records. A UTF-8 BOM and CRLF line endings are accepted. Keys a format
does not know are kept in ``Example.meta`` and written back; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instil.data.records import ROLES, Example, Message, canonical_json
from instil.errors import DataFormatError, DependencyError

__all__ = [
    "COLUMN_KEYS",
    "FORMATS",
    "RawRecord",
    "RecordError",
    "detect_format",
    "detect_record_format",
    "iter_records",
    "message_from_dict",
    "read_examples",
    "to_example",
    "valid_content",
]

FORMATS = ("chat", "preference", "prompt_completion", "alpaca", "sharegpt", "csv", "hf_disk")
"""Every format instil reads and writes."""
COLUMN_KEYS = ("prompt", "completion", "system", "id", "group", "tags")
"""The keys a column mapping may give (``DataSource.columns``); each maps to a column name of the file."""
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "weight")
"""The keys a chat message may have."""

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function_response": "tool",
    "observation": "tool",
}
_SHAREGPT_WRITE = {"user": "human", "assistant": "gpt", "system": "system", "tool": "tool"}
_META_KEYS = ("id", "group", "tags")


class RecordError(DataFormatError):
    """One record does not fit its format. ``field`` is the path inside the record (``messages[2].role``)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as it sits in the file, before it is turned into an :class:`Example`."""

    line: int
    """1-based line where the record starts (a CSV row's first line; a Hugging Face row's index + 1)."""
    raw: str
    """The record's original text, without its line ending or a leading BOM."""
    data: Any = None
    """The parsed value (a dict for a well-formed record); None when ``error`` is set."""
    error: str | None = None
    """Why the record could not be parsed (invalid JSON, not UTF-8, a short CSV row)."""
    bom: bool = False
    """The line started with a UTF-8 byte order mark (accepted, reported as a warning)."""
    crlf: bool = False
    """The line ended with CRLF (accepted, reported as a warning)."""


# ---- detection -------------------------------------------------------------------------------------------------------
def detect_record_format(d: Any) -> str | None:
    """The format one parsed record is in, from its keys; None when no format fits."""
    if not isinstance(d, dict):
        return None
    if "messages" in d:
        return "chat"
    if "input" in d and "preferred_output" in d:
        return "preference"
    if "prompt" in d and "completion" in d:
        return "prompt_completion"
    if "instruction" in d and "output" in d:
        return "alpaca"
    convs = d.get("conversations")
    if isinstance(convs, list) and any(isinstance(t, dict) and "from" in t and "value" in t for t in convs):
        return "sharegpt"
    return None


def detect_format(path: str | Path) -> str:
    """A file's format, from its extension and (for JSON) its first well-formed record."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "hf_disk"
        if (path / "dataset_dict.json").exists():
            return "hf_disk"  # iter_records explains that a split folder must be named
        raise DataFormatError(
            f"{path}: a folder, but not a Hugging Face dataset saved with save_to_disk (no dataset_info.json)",
            hint="point at a data file, or at the folder `Dataset.save_to_disk` wrote",
        )
    if not path.exists():
        raise DataFormatError(f"{path}: file not found", hint="check the path (relative paths start at the spec)")
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    for rec in _iter_json(path, limit=50):
        found = detect_record_format(rec.data)
        if found is not None:
            return found
        if rec.error is None:
            keys = sorted(rec.data) if isinstance(rec.data, dict) else type(rec.data).__name__
            raise DataFormatError(
                f"{path}:{rec.line}: cannot tell the format from the first record (keys: {keys})",
                hint="chat records have 'messages'; preference 'input' and 'preferred_output'; prompt_completion "
                "'prompt' and 'completion'; alpaca 'instruction' and 'output'; sharegpt 'conversations'. "
                "Or name the format (--format / data[].format).",
            )
    raise DataFormatError(
        f"{path}: no well-formed JSON record in the first 50 lines, so the format cannot be detected",
        hint="run `instil data validate` on it to see what is wrong with each line",
    )


# ---- the raw layer ---------------------------------------------------------------------------------------------------
def iter_records(path: str | Path, format: str = "auto", columns: dict[str, str] | None = None) -> Iterator[RawRecord]:
    """Yield every record of a file with its line, original text and parsed value (or parse error). Streams."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else _check_format(format)
    if fmt == "csv":
        yield from _iter_csv(path)
    elif fmt == "hf_disk":
        yield from _iter_hf(path)
    else:
        yield from _iter_json(path)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at column {e.colno}"
    except (ValueError, RecursionError) as e:
        return None, f"invalid JSON: {e}"


def _iter_json(path: Path, limit: int | None = None) -> Iterator[RawRecord]:
    with path.open("rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf").lstrip()
        f.seek(0)
        if head.startswith(b"[") and path.suffix.lower() == ".json":  # JSONL lines may be arrays; only .json is one
            yield from _iter_json_array(f.read(), limit)
            return
        n = 0
        for number, bline in enumerate(f, start=1):
            bom = number == 1 and bline.startswith(b"\xef\xbb\xbf")
            body = bline[3:] if bom else bline
            crlf = body.endswith(b"\r\n")
            body = body[:-2] if crlf else body.rstrip(b"\n")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(
                    number,
                    body.decode("utf-8", "replace"),
                    None,
                    f"not UTF-8: {e.reason} at byte {e.start}",
                    bom,
                    crlf,
                )
                continue
            if not text.strip(" \t\r"):
                continue  # blank lines (JSON whitespace only) hold nothing; any other character is reported
            data, error = _parse_json(text)
            yield RawRecord(number, text, data, error, bom, crlf)
            n += 1
            if limit is not None and n >= limit:
                return


def _iter_json_array(blob: bytes, limit: int | None) -> Iterator[RawRecord]:
    bom = blob.startswith(b"\xef\xbb\xbf")
    try:
        text = blob[3 if bom else 0 :].decode("utf-8")
    except UnicodeDecodeError as e:
        yield RawRecord(1, "", None, f"not UTF-8: {e.reason} at byte {e.start}", bom)
        return
    crlf = "\r\n" in text
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    pos, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    n = 0
    while True:
        start = _skip(text, pos)
        line += text.count("\n", pos, start)
        if start >= len(text) or text[start] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, ValueError) as e:
            stop = text.find("\n", start)
            raw = text[start : stop if stop >= 0 else len(text)]
            yield RawRecord(line, raw.rstrip("\r"), None, f"invalid JSON array element: {e}", bom, crlf)
            return  # the rest of an array cannot be resynchronised reliably
        yield RawRecord(line, text[start:end], value, None, bom and n == 0, crlf)
        line += text.count("\n", start, end)
        pos = _skip(text, end)
        line += text.count("\n", end, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        n += 1
        if limit is not None and n >= limit:
            return


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _iter_csv(path: Path) -> Iterator[RawRecord]:
    with path.open("rb") as f:
        first = f.readline()
    bom, crlf = first.startswith(b"\xef\xbb\xbf"), first.endswith(b"\r\n")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as e:
            yield RawRecord(1, "", None, f"cannot read the CSV header: {e}", bom, crlf)
            return
        prev = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                yield RawRecord(prev + 1, "", None, f"cannot parse the CSV row: {e}", False, crlf)
                return
            start, prev = prev + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            buf = io.StringIO()
            csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(row)
            if len(row) != len(header):
                error = f"the row has {len(row)} cells but the header has {len(header)} columns"
                yield RawRecord(start, buf.getvalue(), None, error, bom, crlf)
            else:
                yield RawRecord(start, buf.getvalue(), dict(zip(header, row, strict=True)), None, bom, crlf)
            bom = False  # reported once, with the first record


def _load_hf(path: Path) -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DependencyError("reading a saved Hugging Face dataset needs `datasets`; pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError... for folders it cannot read
        raise DataFormatError(f"{path}: cannot load the Hugging Face dataset: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataFormatError(
            f"{path}: a DatasetDict with splits {sorted(ds)}; instil reads one split at a time",
            hint=f"point at a split's folder, such as {path / sorted(ds)[0]}",
        )
    return ds


def _iter_hf(path: Path) -> Iterator[RawRecord]:
    for i, row in enumerate(_load_hf(path)):
        yield RawRecord(i + 1, canonical_json(_jsonable(row)), _drop_nulls(row))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _drop_nulls(value: Any) -> Any:
    # Arrow gives every struct the union of all fields and fills the missing ones with null; null means absent.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# ---- records to examples ---------------------------------------------------------------------------------------------
def to_example(d: Any, format: str, *, columns: dict[str, str] | None = None, source: str | None = None) -> Example:
    """Turn one parsed record into an :class:`Example`. Raises :class:`RecordError` naming the bad field."""
    if not isinstance(d, dict):
        raise RecordError("", f"a record must be a JSON object, not {_type(d)}")
    if format in ("hf_disk", "auto"):
        inner = detect_record_format(d)
        if inner is None:
            raise RecordError("", f"cannot tell the record's format from its keys {sorted(d)}")
        format = inner
    cols = _columns(columns)
    if format == "chat":
        ex = _from_chat(d)
    elif format == "preference":
        ex = _from_preference(d)
    elif format in ("prompt_completion", "csv"):
        ex = _from_prompt_completion(d, cols, csv=format == "csv")
    elif format == "alpaca":
        ex = _from_alpaca(d)
    elif format == "sharegpt":
        ex = _from_sharegpt(d)
    else:
        raise RecordError("", f"unknown format '{format}'; use one of {', '.join(FORMATS)}")
    ex.source = source
    return ex


def _type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, int | float) else type(v).__name__
    )


def _columns(columns: dict[str, str] | None) -> dict[str, str]:
    cols = {k: k for k in COLUMN_KEYS}
    for key, name in (columns or {}).items():
        if key not in COLUMN_KEYS:
            raise DataFormatError(f"columns: unknown key '{key}'; use {', '.join(COLUMN_KEYS)}")
        cols[key] = name
    return cols


def valid_content(content: Any) -> bool:
    """A message's content is a string, or a list of parts each with a string ``type`` (and string ``text``)."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("type"), str) and isinstance(p.get("text", ""), str) for p in content
    )


def message_from_dict(d: Any, path: str) -> Message:
    """Check one chat message's structure and build it; :class:`RecordError` names ``path`` and the field."""
    if not isinstance(d, dict):
        raise RecordError(path, f"a message must be an object, not {_type(d)}")
    unknown = sorted(set(d) - set(MESSAGE_KEYS))
    if unknown:
        raise RecordError(f"{path}.{unknown[0]}", f"unknown message key; a message has {', '.join(MESSAGE_KEYS)}")
    role = d.get("role")
    if role not in ROLES:
        raise RecordError(f"{path}.role", f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    content, calls = d.get("content"), d.get("tool_calls")
    if calls is not None and (role != "assistant" or not isinstance(calls, list)):
        raise RecordError(f"{path}.tool_calls", "tool_calls must be a list, on an assistant message")
    if content is None and not calls:
        raise RecordError(f"{path}.content", "missing content (only an assistant message with tool_calls may omit it)")
    if content is not None and not valid_content(content):
        raise RecordError(f"{path}.content", "content must be a string or a list of {type, text} parts")
    weight = d.get("weight")
    if weight is not None and (type(weight) is not int or weight not in (0, 1)):
        raise RecordError(f"{path}.weight", f"weight must be 0 or 1, not {weight!r}")
    for key in ("name", "tool_call_id"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise RecordError(f"{path}.{key}", f"must be a string, not {_type(d[key])}")
    return Message(role, content, d.get("name"), calls, d.get("tool_call_id"), weight)


def _messages(value: Any, path: str) -> list[Message]:
    if not isinstance(value, list):
        raise RecordError(path, f"must be a list of messages, not {_type(value)}")
    return [message_from_dict(m, f"{path}[{i}]") for i, m in enumerate(value)]


def _tools(d: dict[str, Any], path: str = "tools") -> list[dict[str, Any]] | None:
    tools = d.get("tools")
    if isinstance(tools, str):  # ShareGPT exports often carry tools as a JSON string
        tools, error = _parse_json(tools)
        if error:
            raise RecordError(path, error)
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise RecordError(path, "tools must be a list of tool objects")
    return tools


def _metadata(d: dict[str, Any], known: Iterable[str]) -> tuple[str | None, list[str], str | None, dict[str, Any]]:
    """id, tags, group and the other keys of a record: from ``metadata`` and from unknown top-level keys."""
    meta = {k: v for k, v in d.items() if k not in known and k != "metadata"}
    inner = d.get("metadata")
    if inner is not None and not isinstance(inner, dict):
        raise RecordError("metadata", f"must be an object, not {_type(inner)}")
    meta.update(inner or {})
    rid, tags, group = meta.pop("id", None), meta.pop("tags", None), meta.pop("group", None)
    if rid is not None and not isinstance(rid, str | int):
        raise RecordError("metadata.id", f"must be a string, not {_type(rid)}")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise RecordError("metadata.tags", "must be a list of strings")
    if group is not None and not isinstance(group, str | int):
        raise RecordError("metadata.group", f"must be a string, not {_type(group)}")
    return (
        None if rid is None else str(rid),
        list(tags or []),
        None if group is None else str(group),
        meta,
    )


def _from_chat(d: dict[str, Any]) -> Example:
    if "messages" not in d:
        raise RecordError("messages", "missing: a chat record needs a 'messages' list")
    messages = _messages(d["messages"], "messages")
    rejected = _messages(d["rejected"], "rejected") if d.get("rejected") is not None else None
    rid, tags, group, meta = _metadata(d, ("messages", "tools", "rejected"))
    return Example(messages, _tools(d), rejected, rid, tags, group, meta)


def _from_preference(d: dict[str, Any]) -> Example:
    inp = d.get("input")
    if not isinstance(inp, dict):
        raise RecordError("input", f"must be an object with 'messages', not {_type(inp)}")
    if "messages" not in inp:
        raise RecordError("input.messages", "missing: the input needs a 'messages' list")
    messages = _messages(inp["messages"], "input.messages")
    preferred = _messages(d.get("preferred_output"), "preferred_output")
    rejected = _messages(d.get("non_preferred_output"), "non_preferred_output")
    for key, out in (("preferred_output", preferred), ("non_preferred_output", rejected)):
        if not out or any(m.role != "assistant" for m in out):
            raise RecordError(key, "must hold one or more assistant messages")
    extra = sorted(set(inp) - {"messages", "tools", "parallel_tool_calls"})
    if extra:
        raise RecordError(f"input.{extra[0]}", "unknown key; the input has messages, tools, parallel_tool_calls")
    rid, tags, group, meta = _metadata(d, ("input", "preferred_output", "non_preferred_output"))
    if "parallel_tool_calls" in inp:
        meta["parallel_tool_calls"] = inp["parallel_tool_calls"]
    return Example(messages + preferred, _tools(inp, "input.tools"), rejected, rid, tags, group, meta)


def _text(d: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = d.get(key)
    if value is None:
        if required:
            raise RecordError(key, "missing")
        return None
    if not isinstance(value, str):
        raise RecordError(key, f"must be a string, not {_type(value)}")
    return value


def _from_prompt_completion(d: dict[str, Any], cols: dict[str, str], *, csv: bool) -> Example:
    prompt, completion = d.get(cols["prompt"]), d.get(cols["completion"])
    for key in ("prompt", "completion"):
        if cols[key] not in d:
            raise RecordError(cols[key], f"missing {key} column/key (columns: {sorted(d)}); map it with columns.{key}")
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational prompt-completion
        messages = _messages(prompt, cols["prompt"]) + _messages(completion, cols["completion"])
        system = _text(d, cols["system"], required=False)
        if system:
            messages.insert(0, Message("system", system))
    else:
        messages = []
        system = _text(d, cols["system"], required=False)
        if system:  # an empty cell means no system prompt
            messages.append(Message("system", system))
        messages += [
            Message("user", _text(d, cols["prompt"])),
            Message("assistant", _text(d, cols["completion"])),
        ]
    known = {cols[k] for k in COLUMN_KEYS} | {"tools"}
    meta = {k: v for k, v in d.items() if k not in known}
    rid, group = d.get(cols["id"]), d.get(cols["group"])
    tags = d.get(cols["tags"])
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise RecordError(cols["tags"], "must be a list of strings (or a comma-separated string)")
    if csv:  # an empty cell is an absent value
        rid, group = rid or None, group or None
    return Example(
        messages,
        _tools(d),
        None,
        None if rid is None else str(rid),
        list(tags or []),
        None if group is None else str(group),
        meta,
    )


def _from_alpaca(d: dict[str, Any]) -> Example:
    if "history" in d and d["history"]:
        raise RecordError("history", "multi-turn Alpaca (history) is not supported; convert the file to chat")
    instruction, extra, output = (
        _text(d, "instruction"),
        _text(d, "input", required=False),
        _text(d, "output"),
    )
    system = _text(d, "system", required=False)
    messages = [Message("system", system)] if system else []
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages += [Message("user", user), Message("assistant", output)]
    rid, tags, group, meta = _metadata(d, ("instruction", "input", "output", "system", "history"))
    return Example(messages, None, None, rid, tags, group, meta)


def _from_sharegpt(d: dict[str, Any]) -> Example:
    convs = d.get("conversations")
    if not isinstance(convs, list):
        raise RecordError("conversations", f"must be a list of turns, not {_type(convs)}")
    system = _text(d, "system", required=False)
    messages = [Message("system", system)] if system else []
    for i, turn in enumerate(convs):
        path = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(path, f"a turn must be an object, not {_type(turn)}")
        who = turn.get("from")
        if who not in _SHAREGPT_ROLES:
            raise RecordError(f"{path}.from", f"unknown speaker {who!r}; use {', '.join(_SHAREGPT_ROLES)}")
        value = turn.get("value")
        if not isinstance(value, str):
            raise RecordError(f"{path}.value", f"must be a string, not {_type(value)}")
        messages.append(Message(_SHAREGPT_ROLES[who], value))
    rid, tags, group, meta = _metadata(d, ("conversations", "system", "tools"))
    return Example(messages, _tools(d), None, rid, tags, group, meta)


# ---- reading ---------------------------------------------------------------------------------------------------------
def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise DataFormatError(f"unknown format '{format}'; use auto or one of {', '.join(FORMATS)}")
    return format


def read_examples(
    path: str | Path, format: str = "auto", columns: dict[str, str] | None = None, tags: Iterable[str] = ()
) -> Iterator[Example]:
    """Stream a file's examples. Raises :class:`DataFormatError` ("file:line: field: what") at the first bad record;
    ``instil data validate`` lists every problem instead."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else _check_format(format)
    extra = list(tags)
    hint = f"run `instil data validate {path}` to see every problem, and get a rejects file"
    for rec in iter_records(path, fmt, columns):
        where = f"{path}:{rec.line}"
        if rec.error is not None:
            raise DataFormatError(f"{where}: {rec.error}", hint=hint)
        try:
            ex = to_example(rec.data, fmt, columns=columns, source=where)
        except DataFormatError as e:
            raise DataFormatError(f"{where}: {e}", hint=hint) from None
        ex.tags.extend(t for t in extra if t not in ex.tags)
        yield ex
