"""Writing examples in every format instil reads (see ``formats.py`` for the formats).

write_examples(examples, "out.csv", format="csv")    # DataFormatError names the first example the format cannot hold
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from instil.data.formats import _SHAREGPT_WRITE, COLUMN_KEYS, RecordError, _check_format
from instil.data.records import Example
from instil.errors import DataFormatError, DependencyError

__all__ = ["write_examples"]


def write_examples(examples: Iterable[Example], path: str | Path, format: str = "chat") -> int:
    """Write examples in a format; returns how many. Raises :class:`DataFormatError` naming the first example that
    the format cannot represent (nothing partial is left behind for csv and hf_disk; JSONL is written as it goes)."""
    path = Path(path)
    fmt = _check_format(format)
    encode = {
        "chat": lambda ex: ex.to_dict(),
        "preference": _to_preference,
        "prompt_completion": _to_prompt_completion,
        "alpaca": _to_alpaca,
        "sharegpt": _to_sharegpt,
        "csv": _to_csv_row,
        "hf_disk": lambda ex: ex.to_dict(),
    }[fmt]

    def rows() -> Iterator[dict[str, Any]]:
        for i, ex in enumerate(examples):
            try:
                yield encode(ex)
            except RecordError as e:
                raise DataFormatError(
                    f"example {i} ({ex.source or ex.key()}) cannot be written as {fmt}: {e}",
                    hint="write it as chat (which represents every example), or pick a format that fits",
                ) from None

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        return _write_csv(list(rows()), path)
    if fmt == "hf_disk":
        return _write_hf(list(rows()), path)
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _meta_fields(ex: Example) -> dict[str, Any]:
    d: dict[str, Any] = dict(ex.meta)
    if ex.id is not None:
        d["id"] = ex.id
    if ex.tags:
        d["tags"] = list(ex.tags)
    if ex.group is not None:
        d["group"] = ex.group
    return d


def _no_rejected(ex: Example) -> None:
    if ex.rejected is not None:
        raise RecordError("rejected", "a preference example needs the preference (or chat) format")


def _plain(ex: Example, what: str) -> None:
    """Raise unless every message is plain text without name, tool calls or weight."""
    for i, m in enumerate(ex.messages):
        if not isinstance(m.content, str) or m.name or m.tool_calls or m.tool_call_id or m.weight is not None:
            raise RecordError(
                f"messages[{i}]", f"{what} holds plain text messages only (no parts, names, tools, weights)"
            )


def _single_turn(ex: Example, what: str) -> tuple[str | None, str, str]:
    _no_rejected(ex)
    _plain(ex, what)
    if ex.tools:
        raise RecordError("tools", f"{what} cannot hold tool definitions")
    roles = [m.role for m in ex.messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]) or (
        roles[0] == "system" and not ex.messages[0].content
    ):
        raise RecordError("messages", f"{what} holds one (system,) user, assistant exchange, not {roles}")
    system = ex.messages[0].content if roles[0] == "system" else None
    return system, ex.messages[-2].content, ex.messages[-1].content


def _to_preference(ex: Example) -> dict[str, Any]:
    if ex.rejected is None:
        raise RecordError("rejected", "a preference record needs a non-preferred output")
    split = len(ex.messages)
    while split > 0 and ex.messages[split - 1].role == "assistant":
        split -= 1
    if split == len(ex.messages):
        raise RecordError("messages", "no preferred assistant output at the end of the conversation")
    inp: dict[str, Any] = {"messages": [m.to_dict() for m in ex.messages[:split]]}
    if ex.tools:
        inp["tools"] = ex.tools
    meta = _meta_fields(ex)
    if "parallel_tool_calls" in meta:
        inp["parallel_tool_calls"] = meta.pop("parallel_tool_calls")
    d: dict[str, Any] = {
        "input": inp,
        "preferred_output": [m.to_dict() for m in ex.messages[split:]],
        "non_preferred_output": [m.to_dict() for m in ex.rejected],
    }
    if meta:
        d["metadata"] = meta
    return d


def _to_prompt_completion(ex: Example) -> dict[str, Any]:
    _no_rejected(ex)
    try:
        system, prompt, completion = _single_turn(ex, "prompt_completion")
        d: dict[str, Any] = {"prompt": prompt, "completion": completion}
        if system is not None:
            d["system"] = system
    except RecordError:  # anything richer goes in TRL's conversational form
        i = ex.last_assistant_index()
        if i is None:
            raise RecordError("messages", "no assistant message to be the completion") from None
        d = {
            "prompt": [m.to_dict() for m in ex.messages[:i]],
            "completion": [m.to_dict() for m in ex.messages[i:]],
        }
        if ex.tools:
            d["tools"] = ex.tools
    return _add_meta(d, ex)


def _add_meta(d: dict[str, Any], ex: Example) -> dict[str, Any]:
    for key, value in _meta_fields(ex).items():
        if key in d:
            raise RecordError(f"metadata.{key}", f"clashes with the format's own '{key}' key")
        d[key] = value
    return d


def _to_alpaca(ex: Example) -> dict[str, Any]:
    system, prompt, completion = _single_turn(ex, "alpaca")
    d: dict[str, Any] = {"instruction": prompt, "input": "", "output": completion}
    if system is not None:
        d["system"] = system
    return _add_meta(d, ex)


def _to_sharegpt(ex: Example) -> dict[str, Any]:
    _no_rejected(ex)
    _plain(ex, "sharegpt")
    d: dict[str, Any] = {"conversations": [{"from": _SHAREGPT_WRITE[m.role], "value": m.content} for m in ex.messages]}
    if ex.tools:
        d["tools"] = ex.tools
    return _add_meta(d, ex)


def _to_csv_row(ex: Example) -> dict[str, Any]:
    system, prompt, completion = _single_turn(ex, "csv")
    d: dict[str, Any] = {"prompt": prompt, "completion": completion, "system": system or ""}
    if ex.id is not None:
        d["id"] = ex.id
    if ex.group is not None:
        d["group"] = ex.group
    if ex.tags:
        if any("," in t for t in ex.tags):
            raise RecordError("tags", "a CSV tags cell is comma-separated, so a tag cannot contain ','")
        d["tags"] = ",".join(ex.tags)
    for key, value in ex.meta.items():
        if key in d or key in COLUMN_KEYS:
            raise RecordError(f"metadata.{key}", f"clashes with the CSV column '{key}'")
        if not isinstance(value, str):  # a CSV cell is text: a number would come back as a string
            raise RecordError(f"metadata.{key}", "a CSV column holds text; this value is not a string")
        d[key] = value
    return d


def _write_csv(rows: list[dict[str, Any]], path: Path) -> int:
    header = list(COLUMN_KEYS)
    for row in rows:
        header += [k for k in row if k not in header]
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _write_hf(rows: list[dict[str, Any]], path: Path) -> int:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DependencyError("writing a Hugging Face dataset needs `datasets`; pip install datasets") from None
    try:
        # from_list takes its columns from the first row alone: give every row every key, or later keys are lost.
        keys = list(dict.fromkeys(k for row in rows for k in row))
        datasets.Dataset.from_list([{k: row.get(k) for k in keys} for row in rows]).save_to_disk(str(path))
    except Exception as e:  # pyarrow raises ArrowInvalid/ArrowTypeError when rows mix value types
        raise DataFormatError(
            f"{path}: cannot store these examples as a Hugging Face dataset: {type(e).__name__}: {e}",
            hint="Arrow needs one type per field across rows (e.g. content always a string); write chat JSONL instead",
        ) from None
    return len(rows)
