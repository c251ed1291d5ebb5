"""The shipped example job (support-ticket triage): its spec, its seeded data generator and copy_example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import jsonschema
import pytest

from instil.data.records import Example, canonical_json, normalize_text
from instil.errors import InstilError
from instil.examples import EXAMPLES, copy_example, example_dir
from instil.examples.triage import phrases
from instil.examples.triage.generate import EDGE_FRACTIONS, PLANTED, edge_counts, generate, main
from instil.spec import load_spec

SIZES = {"golden": 120, "traffic": 400, "holdout": 120}
STANDARD_SUMMARIES = {i.summary for i in phrases.ISSUES} | {phrases.EMPTY_SUMMARY}
GUARD = 0.6  # the similarity bound README.md documents, well under the spec's near-duplicate threshold of 0.8


@pytest.fixture(scope="module")
def spec():
    return load_spec(example_dir("triage") / "instil.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, list[dict]]:
    paths = generate(tmp_path_factory.mktemp("triage"), seed=0)
    assert sorted(paths) == sorted(SIZES)
    return {
        name: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for name, path in paths.items()
    }


def ticket(row: dict) -> str:
    return row["messages"][1]["content"]


def answer(row: dict) -> dict:
    return json.loads(row["messages"][2]["content"])


def tags(row: dict) -> list[str]:
    return row.get("metadata", {}).get("tags", [])


def words3(text: str) -> set[tuple[str, ...]]:
    # Written independently of the generator's own shingling on purpose.
    w = re.findall(r"\w+", text.lower())
    return set(zip(w, w[1:], w[2:], strict=False)) if len(w) >= 3 else {tuple(w)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


# ---- the spec --------------------------------------------------------------------------------------------------------
def test_examples_list_names_the_shipped_folders():
    for name in EXAMPLES:
        assert (example_dir(name) / "instil.yaml").is_file()
        assert (example_dir(name) / "README.md").is_file()


def test_shipped_spec_loads_and_matches_the_generator(spec):
    assert spec.name == "support-triage"
    assert tuple(spec.output.labels) == phrases.CATEGORIES
    assert spec.output.label_field == "category"
    assert spec.primary_grader == "label"
    assert {g.type for g in spec.graders} == {"json_schema", "field_f1", "label_accuracy"}
    assert {(d.path, d.role) for d in spec.data} == {
        ("data/golden.jsonl", "train"),
        ("data/traffic.jsonl", "pool"),
        ("data/holdout.jsonl", "holdout"),
    }
    assert len(spec.system_prompt) > 4000 and len(spec.short_prompt) < 120
    # Every standard issue the generator writes is named in the prompt, so a prompted model can produce the summary.
    for issue in phrases.ISSUES:
        assert f"\n  - {issue.name}\n" in spec.system_prompt, issue.key


def test_the_prompts_few_shot_answers_fit_the_schema(spec):
    answers = re.findall(r"^Answer: (.*)$", spec.system_prompt, flags=re.M)
    assert len(answers) >= 6
    for text in answers:
        obj = json.loads(text)
        jsonschema.validate(obj, spec.output.json_schema)
        assert list(obj) == ["category", "urgency", "summary"]
        assert obj["summary"] in STANDARD_SUMMARIES


# ---- the generated data ----------------------------------------------------------------------------------------------
def test_generation_is_deterministic_and_seeded(tmp_path):
    small = {"n_golden": 40, "n_traffic": 60, "n_holdout": 30}
    a = generate(tmp_path / "a", seed=7, **small)
    b = generate(tmp_path / "b", seed=7, **small)
    c = generate(tmp_path / "c", seed=8, **small)
    for name in SIZES:
        assert a[name].read_bytes() == b[name].read_bytes()
        assert a[name].read_bytes() != c[name].read_bytes()
        assert len(a[name].read_text(encoding="utf-8").splitlines()) == small[f"n_{name}"]


def test_lines_are_canonical_examples(data, spec):
    for name, rows in data.items():
        assert len(rows) == SIZES[name]
        ids = [r["metadata"]["id"] for r in rows]
        assert ids == [f"{name}-{k:04d}" for k in range(1, SIZES[name] + 1)]
        for row in rows:
            ex = Example.from_dict(row)
            assert canonical_json(ex.to_dict()) == canonical_json(row)
            assert [m.role for m in ex.messages] == ["system", "user", "assistant"]
            assert ex.messages[0].content == spec.system_prompt


def test_every_answer_fits_the_schema_and_the_labels(data, spec):
    for rows in data.values():
        for row in rows:
            text = row["messages"][2]["content"]
            obj = json.loads(text)
            jsonschema.validate(obj, spec.output.json_schema)
            assert list(obj) == ["category", "urgency", "summary"], "fixed key order"
            assert text == json.dumps(obj, ensure_ascii=False)
            assert obj["category"] in spec.output.labels
            assert len(obj["summary"].split()) <= 12
            assert obj["summary"].startswith(obj["category"].capitalize() + ": ")
            if "planted:contradiction" not in tags(row):
                # Only a planted reviewer slip pairs a summary with another category's issue.
                assert obj["summary"] in STANDARD_SUMMARIES


def test_edge_case_counts_and_answers(data):
    for name, rows in data.items():
        planted = PLANTED.get(name)
        distinct = SIZES[name] - (planted.extra_lines if planted else 0)
        got = Counter(t for r in rows for t in tags(r) if not t.startswith("planted:"))
        # Planted copies of a ticket carry its tags too, but they are only ever made of untagged tickets.
        assert got == Counter(edge_counts(distinct)), name
        assert set(EDGE_FRACTIONS) == set(got)
        for row in rows:
            t = tags(row)
            if "edge:empty" in t:
                assert answer(row) == {
                    "category": "other",
                    "urgency": "low",
                    "summary": phrases.EMPTY_SUMMARY,
                }
            if "edge:long" in t:
                assert 1500 <= len(ticket(row)) <= 3600
            else:
                assert len(ticket(row)) < 800
            if "edge:injection" in t:
                assert re.search(r"ignore|disregard|instructions|bot|AI assistant", ticket(row), re.I)
    blanks = [(name, r) for name, rows in data.items() for r in rows if not ticket(r).strip()]
    assert len(blanks) == 1 and blanks[0][0] == "golden", "one blank ticket in all the data, in golden"


def test_golden_uses_only_common_wordings(data):
    def pattern(template: str) -> re.Pattern:
        return re.compile(re.sub(r"\\\{\w+\\\}", ".+?", re.escape(template)), re.I)

    rare = [pattern(w) for issue in phrases.ISSUES for w in issue.rare]
    assert not [r for r in data["golden"] if any(p.search(ticket(r)) for p in rare)]
    assert len([r for r in data["traffic"] if any(p.search(ticket(r)) for p in rare)]) >= 40


def test_holdout_is_disjoint_from_golden_and_traffic(data):
    train = [ticket(r) for r in data["golden"] + data["traffic"]]
    train_norm = {normalize_text(t) for t in train}
    train_sets = [words3(t) for t in train]
    worst = 0.0
    for row in data["holdout"]:
        assert normalize_text(ticket(row)) not in train_norm
        h = words3(ticket(row))
        worst = max(worst, max(jaccard(h, s) for s in train_sets))
    assert worst < GUARD < 0.8
    assert not [r for r in data["holdout"] if any(t.startswith("planted:") for t in tags(r))]


def resolve(rows: list[dict]) -> list[dict]:
    """The documented rule: group by normalised ticket; keep the first of the majority answer; drop ties."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[normalize_text(ticket(row))].append(row)
    kept = []
    for group in groups.values():
        votes = Counter(r["messages"][2]["content"] for r in group).most_common()
        if len(votes) > 1 and votes[0][1] == votes[1][1]:
            continue
        kept.append(next(r for r in group if r["messages"][2]["content"] == votes[0][0]))
    return kept


@pytest.mark.parametrize("name", ["golden", "traffic"])
def test_planted_duplicates_and_contradictions(data, name):
    planted = PLANTED[name]
    rows = data[name]
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[normalize_text(ticket(row))].append(row)
    shape = Counter()
    for group in groups.values():
        group_tags = {t for r in group for t in tags(r) if t.startswith("planted:")}
        answers = Counter(r["messages"][2]["content"] for r in group)
        if len(group) == 1:
            assert not group_tags, "a planted ticket appears more than once"
        elif group_tags == {"planted:duplicate"}:
            assert len(group) == 2 and len(answers) == 1
            shape["duplicate"] += 1
        else:
            assert group_tags == {"planted:contradiction"}
            assert sorted(answers.values()) in ([1, 2], [1, 1])
            cats = {json.loads(a)["category"] for a in answers}
            assert len(cats) == 2, "a contradiction differs in category"
            shape["majority" if len(group) == 3 else "tie"] += 1
    assert shape == Counter(duplicate=planted.duplicates, majority=planted.majority, tie=planted.ties)
    kept = resolve(rows)
    assert len(kept) == SIZES[name] - planted.dropped_by_rule
    assert len(kept) == {"golden": 113, "traffic": 386}[name], "the counts README.md documents"
    # The rule keeps the right answer of a majority group: the one whose summary names its own category's issue.
    for row in kept:
        assert answer(row)["summary"] in STANDARD_SUMMARIES


def test_distinct_tickets_are_not_near_duplicates(data):
    # Curation must find the planted problems and nothing else: no accidental near-duplicates inside a split.
    for name in ("golden", "traffic"):
        sets = [words3(ticket(r)) for r in resolve(data[name]) if ticket(r).strip()]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                assert jaccard(a, b) < GUARD


# ---- copy_example and the command line -------------------------------------------------------------------------------
def test_copy_example_writes_a_runnable_job(tmp_path):
    dest = tmp_path / "job"
    spec_path = copy_example("triage", dest)
    assert spec_path == dest / "instil.yaml"
    spec = load_spec(spec_path)
    for source in spec.data:
        path = spec.resolve(source.path)
        assert path.is_file() and path.stat().st_size > 0
    assert (dest / "README.md").read_text(encoding="utf-8").startswith("# Example job: support-ticket triage")


def test_copy_example_refuses_a_non_empty_folder(tmp_path):
    dest = tmp_path / "job"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InstilError, match=r"job: folder is not empty") as info:
        copy_example("triage", dest)
    assert "overwrite" in info.value.hint
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]
    copy_example("triage", dest, overwrite=True)
    assert (dest / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (dest / "data" / "golden.jsonl").is_file()


def test_copy_example_refuses_a_file_and_unknown_names(tmp_path):
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(InstilError, match="not a folder"):
        copy_example("triage", target)
    for bad in ("nope", "../triage", "triage/../triage", ""):
        with pytest.raises(InstilError, match="unknown example"):
            copy_example(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_main_writes_files_and_rejects_tiny_sizes(tmp_path, capsys):
    assert main([str(tmp_path / "d"), "--seed", "3", "--n-golden", "30", "--n-traffic", "40", "--n-holdout", "20"]) == 0
    assert "golden" in capsys.readouterr().out
    assert len((tmp_path / "d" / "traffic.jsonl").read_text(encoding="utf-8").splitlines()) == 40
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "e"), "--n-golden", "10"])
    assert info.value.code == 2
    assert "too small" in capsys.readouterr().err


def test_module_runs_with_python_dash_m(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "instil.examples.triage.generate",
            str(tmp_path),
            "--n-golden",
            "30",
            "--n-traffic",
            "40",
            "--n-holdout",
            "20",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "holdout" in out.stdout
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == [
        "golden.jsonl",
        "holdout.jsonl",
        "traffic.jsonl",
    ]
