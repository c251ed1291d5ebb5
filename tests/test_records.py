"""The internal record type: canonical form, hashes, input/output views, labels."""

from __future__ import annotations

import json

from instil.data.records import Example, Message, canonical_json, normalize_text


def make(answer: str = '{"label": "yes"}', **kw) -> Example:
    return Example(
        messages=[
            Message("system", "Be brief."),
            Message("user", "Is it  raining?"),
            Message("assistant", answer),
        ],
        **kw,
    )


def test_round_trip_keeps_everything():
    ex = Example(
        messages=[
            Message("user", "weather?"),
            Message(
                "assistant",
                None,
                tool_calls=[{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
            ),
            Message("tool", "sunny", tool_call_id="c1"),
            Message("assistant", "Sunny.", weight=1),
        ],
        tools=[{"type": "function", "function": {"name": "w"}}],
        id="a1",
        tags=["edge"],
        group="g",
        meta={"customer": 7},
    )
    d = ex.to_dict()
    assert "content" not in d["messages"][1]  # tool-call-only assistant turn has no content key
    assert d["metadata"] == {"customer": 7, "id": "a1", "tags": ["edge"], "group": "g"}
    back = Example.from_dict(json.loads(canonical_json(d)))
    assert back.to_dict() == d
    assert back.content_hash() == ex.content_hash()


def test_hash_ignores_metadata_but_not_content():
    assert make().content_hash() == make(id="x", tags=["t"]).content_hash()
    assert make().content_hash() != make('{"label": "no"}').content_hash()
    assert make().key().startswith("ex-") and make(id="mine").key() == "mine"


def test_input_and_output_views_skip_the_system_prompt():
    ex = make()
    assert ex.input_text() == "user: Is it  raining?"
    assert ex.output_text() == '{"label": "yes"}'
    assert ex.label("label") == "yes"
    assert ex.label("missing") is None
    assert make("not json").label("label") is None
    assert make("Yes ").label() == "Yes"


def test_normalize_text():
    assert normalize_text("  Hello\tWORLD\n ") == "hello world"
    assert normalize_text("ﬁne") == "fine"  # NFKC folds the ligature
