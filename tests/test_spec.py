"""The job spec: every shipped spec loads, bad specs report every problem with its line and field path."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

import instil
from instil.errors import InstilError, SpecError
from instil.spec import describe_fields, load_spec, parse_spec, write_starter_spec

MINIMAL = """\
name: demo
system_prompt: Answer yes or no.
output: {type: label, labels: ["yes", "no"]}
graders:
  - {name: label, type: label_accuracy, primary: true}
data:
  - {path: train.jsonl}
"""


def shipped_specs() -> list[Path]:
    root = Path(str(files("instil")))
    return sorted(root.rglob("instil.yaml"))  # job specs; configs/ holds accelerate files


def test_there_are_shipped_specs():
    names = {p.name for p in shipped_specs()}
    assert "instil.yaml" in names


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: str(p.relative_to(p.parents[2])))
def test_every_shipped_spec_loads(path: Path):
    spec = load_spec(path)
    assert spec.primary_grader in {g.name for g in spec.graders}
    assert spec.root == path.parent.resolve()


def test_minimal_spec_defaults(tmp_path: Path):
    spec = parse_spec(MINIMAL, root=tmp_path)
    assert spec.primary_grader == "label"
    assert spec.model.base == "tiny"
    assert spec.model.trust_remote_code is False
    assert spec.training.method == "sft" and spec.training.adapter == "lora"
    assert spec.resolve("train.jsonl") == tmp_path / "train.jsonl"
    assert spec.split.holdout_fraction == 0.2


def test_every_problem_is_reported_at_once_with_lines(tmp_path: Path):
    bad = tmp_path / "instil.yaml"
    bad.write_text(
        """\
name: demo
system_prompt: x
outptu: {}
output:
  type: json
  schema: {type: objectx}
graders:
  - name: a
    type: regex
    pattern: "("
  - {name: b, type: exact_match, primary: true}
  - {name: c, type: nope}
data:
  - {path: x.jsonl, format: weird}
split: {holdout_fraction: 2}
training:
  trl: {gradient_accumulation_step: 2}
"""
    )
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    got = {(p.location, p.line) for p in info.value.problems}
    assert got == {
        ("outptu", 3),
        ("output.schema", 6),
        ("graders[0].pattern", 10),
        ("graders[2]", 12),
        ("data[0].format", 14),
        ("split.holdout_fraction", 15),
        ("training.trl", 17),
    }
    text = str(info.value)
    assert f"{bad}:17: training.trl" in text
    assert "did you mean 'gradient_accumulation_steps'" in text
    assert "unknown grader type 'nope'" in text


def test_cross_field_rules():
    base = MINIMAL.replace("primary: true", "primary: false")
    with pytest.raises(SpecError, match="exactly one grader must have 'primary: true'"):
        parse_spec(base)
    with pytest.raises(SpecError, match="gate.primary names 'missing'"):
        parse_spec(MINIMAL + "gate: {primary: missing}\n")
    no_labels = MINIMAL.replace('output: {type: label, labels: ["yes", "no"]}', "output: {type: text}")
    with pytest.raises(SpecError, match="needs output.labels"):
        parse_spec(no_labels)
    dup = MINIMAL.replace("graders:\n", "graders:\n  - {name: label, type: json_valid}\n")
    with pytest.raises(SpecError, match="grader names must be unique"):
        parse_spec(dup)
    with pytest.raises(SpecError, match="type 'json' needs a 'schema'"):
        parse_spec(MINIMAL.replace("{type: label, labels", "{type: json, labels"))


def test_trl_passthrough_is_checked_against_real_trl_fields():
    ok = parse_spec(MINIMAL + "training: {trl: {gradient_accumulation_steps: 4, weight_decay: 0.01}}\n")
    assert ok.training.trl["gradient_accumulation_steps"] == 4
    dpo = parse_spec(MINIMAL + "training: {method: dpo, trl: {beta: 0.2}}\n")
    assert dpo.training.trl == {"beta": 0.2}
    with pytest.raises(SpecError, match="unknown field"):  # beta is DPO's, not SFT's
        parse_spec(MINIMAL + "training: {trl: {beta: 0.2}}\n")
    with pytest.raises(SpecError, match="set by instil"):
        parse_spec(MINIMAL + "training: {trl: {output_dir: /tmp/x}}\n")


def test_yaml_errors_have_lines():
    with pytest.raises(SpecError) as info:
        parse_spec("name: demo\nsystem_prompt: [unclosed\n")
    assert info.value.problems[0].line is not None
    with pytest.raises(SpecError, match="YAML mapping"):
        parse_spec("- a\n- b\n")


def test_missing_file_says_what_to_do(tmp_path: Path):
    with pytest.raises(SpecError, match="instil init"):
        load_spec(tmp_path / "nope.yaml")


def test_starter_spec_is_written_and_valid(tmp_path: Path):
    path = write_starter_spec(tmp_path / "instil.yaml")
    spec = load_spec(path)
    assert spec.output.type == "json" and spec.primary_grader == "label"
    assert "#" in path.read_text()  # it is commented
    with pytest.raises(InstilError, match="exists already"):
        write_starter_spec(path)
    write_starter_spec(path, overwrite=True)


def test_every_field_has_a_docstring():
    rows = describe_fields()
    undocumented = [r[0] for r in rows if not r[3]]
    assert undocumented == []
    assert any(r[0] == "output.schema" for r in rows)


def test_public_api_is_sorted_and_importable():
    assert instil.__all__ == sorted(instil.__all__)
    for name in instil.__all__:
        assert hasattr(instil, name), name


# ---- hostile specs ---------------------------------------------------------------------------------------------------
def _alias_bomb(levels: int) -> str:
    """A 'billion laughs' document: each level is nine aliases of the one below (9**levels values)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return MINIMAL + "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9, 30])
def test_an_alias_bomb_is_refused_before_it_expands(levels: int):
    # 6 levels took 24 s and 2.3 GB through the line index, 9 died with a MemoryError; 30 would be 9**30 values.
    with pytest.raises(SpecError, match=r"expands to more than 100,000 values through aliases") as info:
        parse_spec(_alias_bomb(levels), file="bomb.yaml")
    assert info.value.problems[0].line is not None


def test_aliases_within_the_bound_still_load():
    text = MINIMAL.replace("data:\n  - {path: train.jsonl}\n", "") + (
        "data:\n  - &src {path: train.jsonl, tags: [a]}\n  - *src\n"
    )
    spec = parse_spec(text, file="ok.yaml")
    assert [s.path for s in spec.data] == ["train.jsonl", "train.jsonl"]


def test_nesting_too_deep_to_read_is_a_spec_error_not_a_traceback():
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_spec(MINIMAL + "deep: " + "[" * 5000 + "]" * 5000 + "\n", file="deep.yaml")


def test_paths_that_leave_the_spec_folder_are_named(tmp_path: Path):
    (tmp_path / "job").mkdir()
    spec_file = tmp_path / "job" / "instil.yaml"
    spec_file.write_text(
        MINIMAL.replace("{path: train.jsonl}", "{path: train.jsonl}\n  - {path: ../../../../etc/passwd}")
        + "eval: {regression_set: /tmp/elsewhere.jsonl}\n"
    )
    outside = load_spec(spec_file).paths_outside()
    assert len(outside) == 2
    assert outside[0].startswith("data[1].path '../../../../etc/passwd' leads out of the spec's folder, to /")
    assert outside[1].startswith("eval.regression_set '/tmp/elsewhere.jsonl' leads out")


def test_serve_upstreams_are_checked_and_routed():
    head = (
        "name: j\nsystem_prompt: p\ngraders: [{name: g, type: exact_match, primary: true}]\ndata: [{path: d.jsonl}]\n"
    )
    one = parse_spec(head + "serve:\n  upstream: {base_url: 'https://api.openai.com/v1/', api_key_env: K}\n")
    (u,) = one.serve.upstreams
    assert u.name == "default" and u.base_url == "https://api.openai.com/v1" and u.models == []
    many = parse_spec(
        head + "serve:\n  upstream:\n    - {name: a, base_url: 'http://a:1/v1', models: [m1]}\n"
        "    - {name: b, base_url: 'http://b:1/v1'}\n"
    )
    assert [u.name for u in many.serve.upstreams] == ["a", "b"]
    assert parse_spec(head).serve.upstreams == [] and parse_spec(head).serve.capture is True
    with pytest.raises(SpecError) as e:
        parse_spec(
            head + "serve:\n  retention_days: 0\n  upstream:\n    - {name: a, base_url: 'ftp://x'}\n"
            "    - {name: a, base_url: 'http://b:1/v1'}\n    - {name: 'c d', base_url: 'http://c:1/v1', models: [m]}\n"
        )
    text = str(e.value)
    assert "http:// or https://" in text and "name" in text and "retention_days" in text
    with pytest.raises(SpecError, match="only one upstream may leave out 'models'"):
        parse_spec(
            head + "serve:\n  upstream:\n    - {name: a, base_url: 'http://a'}\n    - {name: b, base_url: 'http://b'}\n"
        )
    with pytest.raises(SpecError, match="routed to two upstreams"):
        parse_spec(
            head + "serve:\n  upstream:\n    - {name: a, base_url: 'http://a', models: [m]}\n"
            "    - {name: b, base_url: 'http://b', models: [m]}\n"
        )
