"""Reading and writing every data format: detection, round trips, column mapping, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instil.data.formats import (
    FORMATS,
    detect_format,
    iter_records,
    read_examples,
    to_example,
)
from instil.data.records import Example, Message
from instil.data.writers import write_examples
from instil.errors import DataFormatError


def single(i: int, system: bool = True) -> Example:
    msgs = [Message("system", "Be brief.")] if system else []
    msgs += [
        Message("user", f'Question {i}, with "quotes", commas and é'),
        Message("assistant", f"Answer {i}\nline 2"),
    ]
    return Example(msgs, id=f"ex{i}", tags=["a", "b"] if i % 2 else [], group="g1" if i % 2 else None)


def write_lines(path: Path, records: list, *, sep: str = "\n", bom: bool = False) -> Path:
    text = sep.join(r if isinstance(r, str) else json.dumps(r) for r in records) + sep
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# ---- detection -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "chat"),
        ({"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}, "preference"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"conversations": [{"from": "human", "value": "v"}]}, "sharegpt"),
    ],
)
def test_detect_format_from_first_record(tmp_path: Path, record: dict, expected: str) -> None:
    path = write_lines(tmp_path / "d.jsonl", ["", "not json", record])
    assert detect_format(path) == expected


def test_detect_format_by_extension_and_folder(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\n")
    assert detect_format(tmp_path / "d.csv") == "csv"
    write_examples([single(1)], tmp_path / "hf", format="hf_disk")
    assert detect_format(tmp_path / "hf") == "hf_disk"


def test_detect_format_unknown_keys_names_the_line_and_keys(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataFormatError, match=r"d.jsonl:1: cannot tell the format.*'answer', 'question'"):
        detect_format(path)


# ---- round trips -----------------------------------------------------------------------------------------------------
def rich_examples() -> list[Example]:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    return [
        single(1),
        Example(
            [
                Message("user", "find x"),
                Message("assistant", None, tool_calls=[call]),
                Message("tool", "found", tool_call_id="c1"),
                Message("assistant", "x is found", weight=1),
                Message("user", "thanks"),
                Message("assistant", "ok", name="bot", weight=0),
            ],
            tools=tools,
            meta={"origin": "prod", "score": 3},
        ),
        Example([Message("user", [{"type": "text", "text": "parts"}]), Message("assistant", "y")], tags=["t"]),
    ]


@pytest.mark.parametrize(
    ("fmt", "examples"),
    [
        ("chat", rich_examples()),
        ("prompt_completion", rich_examples()),  # multi-turn ones use TRL's conversational form
        ("alpaca", [single(i, system=i % 2 == 0) for i in range(3)]),
        ("csv", [single(i, system=i % 2 == 0) for i in range(3)]),
        (
            "sharegpt",
            [
                single(0),
                Example(
                    [
                        Message("user", "a"),
                        Message("assistant", "b"),
                        Message("user", "c"),
                        Message("tool", "d"),
                        Message("assistant", "e"),
                    ],
                    meta={"k": "v"},
                ),
            ],
        ),
        (
            "preference",
            [
                Example(
                    [Message("system", "s"), Message("user", "u"), Message("assistant", "good")],
                    rejected=[Message("assistant", "bad")],
                    id="p1",
                    meta={"parallel_tool_calls": False},
                )
            ],
        ),
        ("hf_disk", rich_examples()[:2]),  # Arrow fills absent fields with null; they read back as absent
    ],
)
def test_round_trip(tmp_path: Path, fmt: str, examples: list[Example]) -> None:
    path = tmp_path / ("out.csv" if fmt == "csv" else "out" if fmt == "hf_disk" else "out.jsonl")
    assert write_examples(examples, path, format=fmt) == len(examples)
    assert detect_format(path) == fmt
    back = list(read_examples(path))
    for ex in back:
        ex.source = None
    assert back == examples


def test_every_format_has_a_round_trip() -> None:
    # keep the parametrisation above in step with FORMATS
    assert set(FORMATS) == {"chat", "preference", "prompt_completion", "alpaca", "sharegpt", "csv", "hf_disk"}


@pytest.mark.parametrize("fmt", ["alpaca", "csv"])
def test_multi_turn_cannot_be_written_as_single_turn_formats(tmp_path: Path, fmt: str) -> None:
    ex = rich_examples()[1]
    with pytest.raises(DataFormatError, match=rf"example 0 .*cannot be written as {fmt}"):
        write_examples([ex], tmp_path / "x", format=fmt)


def test_hf_disk_mixed_content_types_give_a_clear_error(tmp_path: Path) -> None:
    # Arrow needs one type per column: string content in one row and content parts in another cannot be stored.
    with pytest.raises(DataFormatError, match="cannot store these examples as a Hugging Face dataset") as err:
        write_examples(rich_examples(), tmp_path / "hf", format="hf_disk")
    assert "chat JSONL" in (err.value.hint or "")


def test_tool_calls_cannot_be_written_as_sharegpt(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"messages\[1\]: sharegpt holds plain text"):
        write_examples([rich_examples()[1]], tmp_path / "x.jsonl", format="sharegpt")


def test_preference_needs_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="rejected: a preference record needs"):
        write_examples([single(1)], tmp_path / "x.jsonl", format="preference")


# ---- reading specifics -----------------------------------------------------------------------------------------------
def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_lines(tmp_path / "d.jsonl", [rec, "", rec], sep="\r\n", bom=True)
    records = list(iter_records(path))
    assert [r.line for r in records] == [1, 3]
    assert records[0].bom and not records[1].bom and all(r.crlf for r in records)
    assert records[0].raw == json.dumps(rec)
    assert [e.source for e in read_examples(path)] == [f"{path}:1", f"{path}:3"]


def test_json_array_records_carry_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n   "input": "d", "output": "e"}\n]\n'
    )
    assert detect_format(path) == "alpaca"
    assert [r.line for r in iter_records(path)] == [2, 3]
    assert list(read_examples(path))[1].messages[0].content == "c\n\nd"


def test_csv_column_mapping_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('q,a,sys,ticket,labels,extra\n"multi\nline",yes,,T1,"x, y",kept\nq2,no,Be nice,,,\n')
    cols = {"prompt": "q", "completion": "a", "system": "sys", "id": "ticket", "tags": "labels"}
    first, second = read_examples(path, columns=cols, tags=["src"])
    assert first.messages == [Message("user", "multi\nline"), Message("assistant", "yes")]
    assert (first.id, first.tags, first.meta, first.source) == (
        "T1",
        ["x", "y", "src"],
        {"extra": "kept"},
        f"{path}:2",
    )
    assert second.messages[0] == Message("system", "Be nice") and second.id is None and second.source == f"{path}:4"


def test_csv_missing_mapped_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("question,answer\na,b\n")
    with pytest.raises(DataFormatError, match=r"d.csv:2: prompt: missing prompt column.*columns.prompt"):
        list(read_examples(path))


def test_sharegpt_roles_are_mapped(tmp_path: Path) -> None:
    rec = {
        "system": "s",
        "conversations": [
            {"from": "human", "value": "1"},
            {"from": "gpt", "value": "2"},
            {"from": "function_response", "value": "3"},
            {"from": "user", "value": "4"},
            {"from": "assistant", "value": "5"},
        ],
    }
    ex = to_example(rec, "sharegpt")
    assert [m.role for m in ex.messages] == ["system", "user", "assistant", "tool", "user", "assistant"]
    with pytest.raises(DataFormatError, match=r"conversations\[0\].from: unknown speaker 'bot'"):
        to_example({"conversations": [{"from": "bot", "value": "x"}]}, "sharegpt")


def test_openai_preference_record_maps_to_example() -> None:
    rec = {
        "input": {"messages": [{"role": "user", "content": "u"}], "tools": []},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    ex = to_example(rec, "preference")
    assert ex.messages[-1] == Message("assistant", "good") and ex.rejected == [Message("assistant", "bad")]


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]},
            r"messages\[1\].role",
        ),
        (
            {"messages": [{"role": "assistant", "content": "y", "weight": 2}]},
            r"messages\[0\].weight: weight must be 0 or 1",
        ),
        ({"messages": [{"role": "user"}]}, r"messages\[0\].content: missing content"),
        (
            {"messages": [{"role": "user", "content": "x", "extra": 1}]},
            r"messages\[0\].extra: unknown message key",
        ),
        ({"messages": "hello"}, r"messages: must be a list"),
        ([1, 2], r"a record must be a JSON object"),
    ],
)
def test_to_example_names_the_bad_field(record: object, match: str) -> None:
    with pytest.raises(DataFormatError, match=match):
        to_example(record, "chat")


def test_read_examples_stops_at_the_first_bad_record_with_file_and_line(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_lines(tmp_path / "d.jsonl", [good, good, '{"messages": [', good])
    it = read_examples(path)
    assert next(it).source == f"{path}:1"
    next(it)
    with pytest.raises(DataFormatError, match=r"d.jsonl:3: invalid JSON") as err:
        next(it)
    assert "instil data validate" in (err.value.hint or "")


def test_assistant_tool_call_without_content_is_valid() -> None:
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ex = to_example(
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]}, "chat"
    )
    assert ex.messages[1].content is None and ex.messages[1].tool_calls == [call]
