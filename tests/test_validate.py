"""`validate_file`: every check, with the file, line and field of each finding, and the rejects file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instil.data.tokens import TokenCounter
from instil.data.validate import Finding, validate_file, validate_files
from instil.errors import DataFormatError
from instil.spec import parse_spec

U = {"role": "user", "content": "Where is my parcel?"}
A = {"role": "assistant", "content": '{"category": "shipping", "reply": "On its way."}'}
CALL = {"id": "c1", "type": "function", "function": {"name": "track", "arguments": '{"order": "42"}'}}

JSON_SPEC = """
name: support
system_prompt: Classify the ticket and reply in JSON.
output:
  type: json
  schema:
    type: object
    required: [category, reply]
    properties:
      category: {type: string}
      reply: {type: string}
  labels: [shipping, billing]
  label_field: category
  tools:
    - function:
        name: track
        parameters: {type: object, required: [order], properties: {order: {type: string}}}
graders: [{name: schema, type: json_schema, primary: true}]
data: [{path: d.jsonl}]
"""


def write(path: Path, records: list, *, sep: str = "\n", bom: bool = False) -> Path:
    text = sep.join(r if isinstance(r, str) else json.dumps(r) for r in records) + sep
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def chat(*messages: dict, **extra) -> dict:
    return {"messages": list(messages), **extra}


def codes(findings: list[Finding]) -> set[tuple[int | None, str, str]]:
    return {(f.line, f.field, f.code) for f in findings}


def test_valid_file_is_ok_and_reports_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [chat(U, A), chat({"role": "system", "content": "s"}, U, A)])
    report = validate_file(path)
    assert report.ok and report.findings == [] and (report.n_lines, report.n_valid, report.n_rejected) == (2, 2, 0)


@pytest.mark.parametrize(
    ("record", "field", "code"),
    [
        ("{not json", "", "invalid_json"),
        ("[1, 2]", "", "data_type"),
        ({"msgs": []}, "messages", "missing_messages_list"),
        (chat({"content": "x"}, A), "messages[0].role", "message_missing_key"),
        (chat({"role": "user"}, A), "messages[0].content", "message_missing_key"),
        (chat(U, {**A, "wieght": 1}), "messages[1].wieght", "message_unrecognized_key"),
        (chat({"role": "human", "content": "x"}, A), "messages[0].role", "unrecognized_role"),
        (chat({"role": "user", "content": None}, A), "messages[0].content", "missing_content"),
        (chat({"role": "user", "content": 5}, A), "messages[0].content", "missing_content"),
        (chat(U, {"role": "assistant", "content": " \n"}), "messages[1].content", "empty_content"),
        (chat(U), "messages", "example_missing_assistant_message"),
        (chat(U, {**A, "weight": 0}), "messages", "nothing_to_learn"),
        (chat({"role": "system", "content": "s"}, A), "messages", "nothing_to_learn"),
        (chat(U, {**A, "weight": 0.5}), "messages[1].weight", "invalid_weight"),
        (chat({**U, "weight": 1}, A), "messages[0].weight", "invalid_weight"),
        (
            chat(U, {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}, A),
            "messages[1].tool_calls[0].function.name",
            "tool_call_invalid",
        ),
        (
            chat(U, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}, A),
            "messages[1].tool_calls[0].function.arguments",
            "tool_call_invalid",
        ),
        (
            chat(U, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}, A),
            "messages[1].tool_calls[0].function.arguments",
            "tool_call_invalid",
        ),
        (
            chat(
                U,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "zz", "content": "1"},
                A,
            ),
            "messages[2].tool_call_id",
            "tool_call_invalid",
        ),
        (chat(U, A, metadata=[1]), "metadata", "invalid_field"),
        (chat({**U, "name": 3}, A), "messages[0].name", "invalid_field"),
        (
            {"input": {"messages": [U]}, "preferred_output": [U], "non_preferred_output": [A]},
            "preferred_output[0].role",
            "preference_output",
        ),
        (
            {"input": {"messages": [U]}, "preferred_output": [A]},
            "non_preferred_output",
            "missing_messages_list",
        ),
    ],
)
def test_each_error_names_line_and_field(tmp_path: Path, record: object, field: str, code: str) -> None:
    fmt = "preference" if isinstance(record, dict) and "input" in record else "chat"
    good = (
        chat(U, A)
        if fmt == "chat"
        # A pair whose two outputs differ: equal ones teach nothing (preference_identical).
        else {"input": {"messages": [U]}, "preferred_output": [A], "non_preferred_output": [{**A, "content": "?"}]}
    )
    path = write(tmp_path / "d.jsonl", [good, record, good])
    report = validate_file(path, format=fmt, rejects_path=tmp_path / "rejects.jsonl")
    assert (2, field, code) in codes(report.findings), report.format_findings()
    assert not report.ok and report.n_rejected == 1 and report.n_valid == 2
    assert all(f.file == str(path) for f in report.findings)
    [reject] = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 2 and reject["source"] == str(path)
    assert reject["raw"] == (record if isinstance(record, str) else json.dumps(record))
    assert code in {e["code"] for e in reject["errors"]}


def test_all_problems_of_a_record_are_reported_at_once(tmp_path: Path) -> None:
    bad = chat({"role": "bot", "content": "x"}, {"role": "assistant", "content": "", "weight": 7, "x": 1})
    report = validate_file(write(tmp_path / "d.jsonl", [bad]))
    assert {f.code for f in report.findings} == {
        "unrecognized_role",
        "empty_content",
        "invalid_weight",
        "message_unrecognized_key",
    }


def test_tool_call_without_content_is_valid_unlike_the_cookbook(tmp_path: Path) -> None:
    rec = chat(
        U,
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        A,
    )
    report = validate_file(write(tmp_path / "d.jsonl", [rec]))
    assert report.ok and report.findings == []


def test_warnings_do_not_reject(tmp_path: Path) -> None:
    recs = [chat(U, A, id="7"), chat({"role": "system", "content": " "}, U, A), chat(U, A, U)]
    path = write(tmp_path / "d.jsonl", recs, sep="\r\n", bom=True)
    report = validate_file(path, rejects_path=tmp_path / "r.jsonl")
    assert report.ok and report.n_valid == 3 and report.n_rejected == 0
    assert codes(report.findings) == {
        (1, "", "bom"),
        (1, "id", "unrecognized_key"),
        (2, "messages[0].content", "empty_content"),
        (3, "messages[2].content", "last_not_assistant"),
        (1, "", "crlf"),
    }
    assert all(f.severity == "warning" for f in report.findings)
    assert not (tmp_path / "r.jsonl").exists()  # nothing rejected: no (empty) rejects file either


def test_spec_contract_schema_labels_and_tools(tmp_path: Path) -> None:
    spec = parse_spec(JSON_SPEC, root=tmp_path)
    out = lambda content: {"role": "assistant", "content": content}  # noqa: E731
    recs = [
        chat(U, A),
        chat(U, out("not json")),
        chat(U, out('{"category": "shipping"}')),
        chat(U, out('{"category": "refunds", "reply": "x"}')),
        chat(
            U,
            {
                "role": "assistant",
                "tool_calls": [{**CALL, "function": {"name": "cancel", "arguments": "{}"}}],
            },
            A,
        ),
        chat(
            U,
            {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "track", "arguments": "{}"}}]},
            A,
        ),
        chat(U, {**out("not json"), "weight": 0}, A),  # untrained turns are not held to the contract
    ]
    report = validate_file(write(tmp_path / "d.jsonl", recs), spec=spec)
    found = {(f.line, f.code) for f in report.findings}
    assert found == {
        (2, "output_schema"),
        (3, "output_schema"),
        (4, "output_label"),
        (5, "tool_call_invalid"),
        (6, "tool_call_invalid"),
    }, report.format_findings()
    messages = {f.line: f.message for f in report.findings}
    assert "'reply' is a required property" in messages[3] and "'refunds'" in messages[4]
    assert "'order' is a required property" in messages[6]


def test_label_output_type(tmp_path: Path) -> None:
    spec = parse_spec(
        JSON_SPEC.split("output:")[0] + "output: {type: label, labels: [approve, deny]}\n"
        "graders: [{name: acc, type: label_accuracy, primary: true}]\ndata: [{path: d.jsonl}]\n",
        root=tmp_path,
    )
    recs = [
        chat(U, {"role": "assistant", "content": "approve\n"}),
        chat(U, {"role": "assistant", "content": "maybe"}),
    ]
    report = validate_file(write(tmp_path / "d.jsonl", recs), spec=spec)
    assert codes(report.findings) == {(2, "messages[1].content", "output_label")}


def test_too_long_with_estimate_and_limit(tmp_path: Path) -> None:
    recs = [chat(U, A), chat({"role": "user", "content": "x" * 400}, A)]
    report = validate_file(write(tmp_path / "d.jsonl", recs), max_tokens=60)
    [f] = report.findings
    assert (f.line, f.code, f.severity) == (2, "too_long", "error")
    assert "estimated" in f.message and "max_tokens" in f.message
    assert validate_file(tmp_path / "d.jsonl").ok  # no limit known: no length check


def test_too_long_with_a_given_counter(tmp_path: Path) -> None:
    class Words:  # any object with encode() serves as a tokenizer
        chat_template = None
        model_max_length = 5

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [0] * len(text.split())

    counter = TokenCounter.from_tokenizer(Words())
    recs = [chat({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"})]
    report = validate_file(write(tmp_path / "d.jsonl", recs), counter=counter)
    [f] = report.findings
    assert f.code == "too_long" and "context length" in f.message and "estimated" not in f.message


def test_other_formats_point_at_their_own_fields(tmp_path: Path) -> None:
    alpaca = write(
        tmp_path / "a.jsonl",
        [
            {"instruction": "i", "output": "o"},
            {"instruction": "i", "output": " "},
            {"instruction": 3, "output": "o"},
        ],
    )
    report = validate_file(alpaca)
    assert codes(report.findings) == {(2, "output", "empty_content"), (3, "instruction", "record_invalid")}
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("q,a\nhello,\nfine,ok\n")
    report = validate_file(csv_path, columns={"prompt": "q", "completion": "a"})
    assert codes(report.findings) == {(2, "a", "empty_content")} and report.n_valid == 1
    share = write(
        tmp_path / "s.jsonl",
        [{"system": "s", "conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": ""}]}],
    )
    assert codes(validate_file(share).findings) == {(1, "conversations[1].value", "empty_content")}


def test_unknown_format_is_checked_as_chat(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", ["garbage", '{"a": 1'])
    report = validate_file(path)
    assert {f.code for f in report.findings} == {"format_unknown", "invalid_json"} and report.n_rejected == 2


def test_several_files_share_one_report_and_rejects_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [chat(U, A), "nope"])
    b = write(tmp_path / "b.jsonl", ["nope", chat(U, A)])
    report = validate_files([a, b, tmp_path / "missing.jsonl"], rejects_path=tmp_path / "out" / "rejects.jsonl")
    assert (report.n_lines, report.n_valid, report.n_rejected) == (4, 2, 2)
    assert (None, "", "unreadable") in codes(report.findings)
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["line"]) for r in rejects] == [(str(a), 2), (str(b), 1)]
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d and d["ok"] is False and d["counts"] == {"invalid_json": 2, "unreadable": 1}
    text = report.format_findings()
    assert f"{a}:2: error: invalid JSON" in text and "4 records: 2 valid, 2 rejected" in text


def test_unknown_column_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="columns: unknown key 'answer'"):
        validate_file(write(tmp_path / "d.jsonl", [chat(U, A)]), columns={"answer": "a"})


def test_findings_are_capped_but_counts_are_complete(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", ["bad"] * 30)
    report = validate_file(path, format="chat", max_findings=10)
    assert report.counts == {"invalid_json": 30} and report.n_errors == 30 and len(report.findings) == 10
    assert report.to_dict()["findings_truncated"] == 20 and "... and 20 more" in report.format_findings()


SHARED_TOKENIZER = Path(__file__).parents[2] / "shared" / "tokenizers" / "qwen2.5-instruct"


@pytest.mark.skipif(not SHARED_TOKENIZER.is_dir(), reason="../shared/tokenizers is absent")
def test_too_long_uses_the_spec_tokenizer_and_max_length(tmp_path: Path) -> None:
    spec = parse_spec(
        JSON_SPEC.replace(
            "data: [{path: d.jsonl}]",
            f"data: [{{path: d.jsonl}}]\nmodel:\n  base: {SHARED_TOKENIZER}\n  max_length: 80\n",
        ),
        root=tmp_path,
    )
    long = {"role": "user", "content": "word " * 100}
    report = validate_file(write(tmp_path / "d.jsonl", [chat(U, A), chat(long, A)]), spec=spec)
    assert codes(report.findings) == {(2, "", "too_long")}
    assert "model.max_length" in report.findings[0].message and "estimated" not in report.findings[0].message


# ---- gaps found by hostile input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codec", "name"), [("utf-16", "UTF-16LE"), ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE")]
)
def test_a_utf16_file_is_one_clear_finding_not_a_line_of_invalid_json_each(tmp_path: Path, codec: str, name: str):
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join(json.dumps(chat(U, A)) for _ in range(5)) + "\n").encode(codec))
    report = validate_file(path)
    assert [(f.code, f.severity) for f in report.findings] == [("encoding", "error")]
    assert f"the file is {name}, not UTF-8" in report.findings[0].message and report.n_lines == 0


def test_a_preference_pair_with_equal_outputs_is_rejected(tmp_path: Path):
    same = [{"role": "assistant", "content": "On its way."}]
    pref = {"input": {"messages": [U]}, "preferred_output": same, "non_preferred_output": same}
    differ = {**pref, "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}
    report = validate_file(write(tmp_path / "p.jsonl", [pref, differ]), format="preference")
    assert codes(report.findings) == {(1, "non_preferred_output", "preference_identical")}
    assert (report.n_valid, report.n_rejected) == (1, 1)
    chat_pair = chat(U, A, rejected=[A])
    report = validate_file(write(tmp_path / "c.jsonl", [chat_pair]))
    assert codes(report.findings) == {(1, "rejected", "preference_identical")}


def test_an_example_past_any_small_context_is_flagged_without_a_tokenizer(tmp_path: Path):
    huge = chat(U, {"role": "assistant", "content": "word " * 30_000})  # 150,000 characters
    report = validate_file(write(tmp_path / "d.jsonl", [huge, chat(U, A)]))
    [long] = report.findings
    assert (long.line, long.code, long.severity) == (1, "very_long", "warning") and report.n_valid == 2
    assert "about 37,5" in long.message and "32,768 tokens" in long.message
    # With a limit to check, the limit decides: too long is an error, and nothing else is said.
    limited = validate_file(tmp_path / "d.jsonl", max_tokens=4096)
    assert [f.code for f in limited.findings] == ["too_long"]
