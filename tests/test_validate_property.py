"""Property tests of the validator: it never crashes, and it keeps every valid line and only those, unchanged."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instil.data.formats import iter_records
from instil.data.validate import validate_file
from instil.spec import parse_spec

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Non-blank by Python's own str.strip, which is what "whitespace-only content" means to the validator.
text = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())


@st.composite
def valid_chat(draw: st.DrawFn) -> dict:
    msgs: list[dict] = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(text)})
    turns = draw(st.integers(1, 3))
    for t in range(turns):
        msgs.append({"role": "user", "content": draw(text)})
        if draw(st.booleans()):  # a tool round trip; an assistant tool call needs no content
            call = {
                "id": f"c{t}",
                "type": "function",
                "function": {"name": "f", "arguments": json.dumps({"x": t})},
            }
            msgs.append({"role": "assistant", "tool_calls": [call]})
            msgs.append({"role": "tool", "tool_call_id": f"c{t}", "content": draw(text)})
        last = t == turns - 1
        answer = {"role": "assistant", "content": draw(text)}
        weight = draw(st.sampled_from([None, 1] if last else [None, 0, 1]))
        if weight is not None:
            answer["weight"] = weight
        msgs.append(answer)
    return {"messages": msgs}


def _assistant(d: dict) -> dict:
    return [m for m in d["messages"] if m["role"] == "assistant"][-1]


MUTATIONS = {
    "drop_messages": lambda d, _: {"msgs": d["messages"]},
    "bad_role": lambda d, _: {"messages": [{**d["messages"][0], "role": "bot"}, *d["messages"][1:]]},
    "content_type": lambda d, _: {"messages": [*d["messages"][:-1], {**d["messages"][-1], "content": 5}]},
    "weight": lambda d, _: {"messages": [*d["messages"][:-1], {**d["messages"][-1], "weight": 2}]},
    "blank_answer": lambda d, _: {"messages": [*d["messages"][:-1], {**d["messages"][-1], "content": " \t"}]},
    "unknown_key": lambda d, _: {"messages": [*d["messages"][:-1], {**d["messages"][-1], "Weight": 1}]},
    "drop_role": lambda d, _: {"messages": [{k: v for k, v in d["messages"][0].items() if k != "role"}]},
    "no_assistant": lambda d, _: {"messages": [m for m in d["messages"] if m["role"] != "assistant"]},
}


@st.composite
def line(draw: st.DrawFn) -> tuple[str, bool]:
    """One JSONL line and whether it is valid (an oracle written independently of the validator)."""
    d = draw(valid_chat())
    kind = draw(st.sampled_from(["valid", "valid", "truncate", "garbage", *MUTATIONS]))
    compact = draw(st.booleans())
    ascii_only = draw(st.booleans())

    def dump(v: object) -> str:
        return json.dumps(v, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)

    if kind == "valid":
        return dump(d), True
    if kind == "truncate":  # any proper, non-empty prefix of a JSON object is not JSON
        full = dump(d)
        return full[: draw(st.integers(1, len(full) - 1))], False
    if kind == "garbage":
        junk = draw(st.text(min_size=1, max_size=30).filter(lambda s: "\n" not in s and s.strip(" \t\r")))
        return junk.rstrip("\r"), False  # a trailing CR would read as a CRLF ending
    return dump(MUTATIONS[kind](d, None)), False


def _write(tmp: Path, lines: list[str], bom: bool, crlf: bool) -> Path:
    path = tmp / "data.jsonl"
    sep = "\r\n" if crlf else "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (sep.join(lines) + sep).encode("utf-8"))
    return path


@SETTINGS
@given(st.lists(line(), min_size=1, max_size=8), st.booleans(), st.booleans())
def test_valid_lines_are_exactly_the_oracle_and_unchanged(lines: list[tuple[str, bool]], bom: bool, crlf: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), [t for t, _ in lines], bom, crlf)
        before = path.read_bytes()
        report = validate_file(path, format="chat", rejects_path=Path(tmp) / "rejects.jsonl")
        assert path.read_bytes() == before  # the input is only read
        # The rejects file exists exactly when a line was rejected: nothing empty is left behind.
        assert (Path(tmp) / "rejects.jsonl").exists() == (report.n_rejected > 0)
        rejected = {f.line for f in report.findings if f.severity == "error"}
        expected_valid = {i + 1 for i, (_, ok) in enumerate(lines) if ok}
        assert set(range(1, len(lines) + 1)) - rejected == expected_valid, report.format_findings()
        assert report.n_valid + report.n_rejected == report.n_lines == len(lines)
        # The reader hands over each valid line's text exactly as written, and rejects carry the original text.
        records = {r.line: r.raw for r in iter_records(path, "chat")}
        for n in expected_valid:
            assert records[n] == lines[n - 1][0]
        # split on "\n" only: str.splitlines also breaks at U+0085 and U+2028, which JSON strings may hold raw
        rows = (Path(tmp) / "rejects.jsonl").read_text(encoding="utf-8").split("\n")[:-1] if report.n_rejected else []
        assert len(rows) == report.n_rejected
        for row in map(json.loads, rows):
            assert row["raw"] == lines[row["line"] - 1][0]


json_leaf = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=5)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8,
)
KEYS = [
    "messages",
    "role",
    "content",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "weight",
    "tool_call_id",
    "id",
    "input",
    "preferred_output",
    "non_preferred_output",
    "prompt",
    "completion",
    "instruction",
    "output",
    "conversations",
    "from",
    "value",
    "tools",
    "metadata",
    "tags",
    "type",
    "text",
    "system",
]
ROLES = st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "bot"])
shaped = st.recursive(
    json_leaf | ROLES,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(KEYS), c, max_size=5),
    max_leaves=20,
)

SPEC = parse_spec("""
name: fuzz
system_prompt: s
output:
  type: json
  schema: {type: object, properties: {label: {type: string}}}
  labels: [a, b]
  label_field: label
  tools: [{function: {name: f, parameters: {type: object, properties: {x: {type: integer}}}}}]
graders: [{name: g, type: json_valid, primary: true}]
data: [{path: d.jsonl}]
""")


@SETTINGS
@given(
    st.lists(st.dictionaries(st.sampled_from(KEYS), shaped, max_size=5) | json_value, min_size=1, max_size=6),
    st.sampled_from(["auto", "chat", "preference", "prompt_completion", "alpaca", "sharegpt"]),
)
def test_never_crashes_on_shaped_junk(records: list, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        report = validate_file(path, format=fmt, spec=SPEC, max_tokens=50)
        assert report.n_valid + report.n_rejected == report.n_lines
        assert report.n_lines in (len(records), 0)  # 0 only when auto-detection gave up on the whole file
        json.dumps(report.to_dict())
