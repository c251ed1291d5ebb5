"""The split: determinism, units that never straddle, stratification, the leakage audit and the frozen holdout."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from instil.data.records import Example, Message, canonical_json, sha256_hex
from instil.data.split import HoldoutIndex, split_examples, split_file
from instil.errors import DataError, HoldoutLeakError
from instil.spec import SplitSpec

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "birch",
    "cedar",
    "dune",
    "ember",
    "fjord",
    "grove",
    "heath",
]


def sentence(i: int, n: int = 14) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, size=n)) + f" case {i}"


def ex(i: int, label: str, **kw) -> Example:
    return Example([Message("user", sentence(i)), Message("assistant", label)], id=f"e{i}", **kw)


def data(n: int = 100) -> list[Example]:
    return [ex(i, ["spam", "ham", "ham", "ham", "other"][i % 5]) for i in range(n)]


def ids(examples: list[Example]) -> list[str]:
    return [e.id for e in examples]


def test_split_is_deterministic_and_seeded():
    a = split_examples(data(), SplitSpec(seed=7))
    b = split_examples(data(), SplitSpec(seed=7))
    c = split_examples(data(), SplitSpec(seed=8))
    assert ids(a.holdout) == ids(b.holdout) and ids(a.holdout) != ids(c.holdout)
    assert sorted(ids(a.train) + ids(a.holdout)) == sorted(ids(data()))
    assert a.index.content_hash == sha256_hex("".join(canonical_json(e.to_dict()) + "\n" for e in a.holdout))


def test_split_does_not_depend_on_hash_randomisation():
    code = (
        "from tests.test_split import data, ids; from instil.data.split import split_examples; "
        "from instil.spec import SplitSpec; print(ids(split_examples(data(), SplitSpec(seed=3)).holdout))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_stratified_proportions():
    result = split_examples(data(200), SplitSpec(seed=1, holdout_fraction=0.25))
    held = Counter(e.messages[-1].content for e in result.holdout)
    assert held == {"ham": 30, "spam": 10, "other": 10}


def test_every_label_gets_a_holdout_example():
    rows = [ex(i, "common") for i in range(40)] + [ex(100, "rare"), ex(101, "rare")]
    result = split_examples(rows, SplitSpec(seed=0, holdout_fraction=0.1), labels=["common", "rare"])
    assert "rare" in {e.messages[-1].content for e in result.holdout}
    assert "rare" in {e.messages[-1].content for e in result.train}


def test_labels_from_a_json_field_and_unknown_labels():
    rows = [ex(i, json.dumps({"category": "Spam" if i % 4 == 0 else "Ham", "score": i})) for i in range(40)]
    result = split_examples(rows, SplitSpec(seed=0, holdout_fraction=0.25), label_field="category")
    held = Counter(json.loads(e.messages[-1].content)["category"] for e in result.holdout)
    assert sum(held.values()) == 10 and held["Ham"] in (7, 8) and held["Spam"] in (2, 3)  # 7.5 and 2.5 wanted
    with pytest.raises(DataError, match=r"\['Spam'\] that are not in output.labels"):
        split_examples(rows, SplitSpec(), label_field="category", labels=["Ham"])


def test_groups_and_near_duplicates_never_straddle():
    rows = data(60)
    for i in range(0, 60, 6):  # groups of three by the group field, groups of two by a metadata key
        for j in range(3):
            rows[i + j].group = f"g{i}"
        rows[i + 3].meta["customer"] = rows[i + 4].meta["customer"] = f"c{i}"
    typo = Example([Message("user", sentence(5).replace("case 5", "cas 5")), Message("assistant", "ham")], id="t5")
    rows += [typo, Example([Message("user", sentence(7).upper()), Message("assistant", "ham")], id="u7")]
    for seed in range(5):
        result = split_examples(rows, SplitSpec(seed=seed, group_by="customer"))
        side = {e.id: "h" for e in result.holdout} | {e.id: "t" for e in result.train}
        for i in range(0, 60, 6):
            assert side[f"e{i}"] == side[f"e{i + 1}"] == side[f"e{i + 2}"]
            assert side[f"e{i + 3}"] == side[f"e{i + 4}"]
        assert side["t5"] == side["e5"] and side["u7"] == side["e7"]
        assert result.audit.clean


def test_holdout_size_and_errors():
    assert len(split_examples(data(), SplitSpec(holdout_size=17, stratify=False)).holdout) == 17
    with pytest.raises(DataError, match="holdout_size"):
        split_examples(data(10), SplitSpec(holdout_size=10))
    same = [ex(1, "x", group="all"), ex(2, "y", group="all"), ex(3, "z", group="all")]
    with pytest.raises(DataError, match="one unit"):
        split_examples(same, SplitSpec())


def test_holdout_index_refuses_exact_and_near_copies(tmp_path):
    result = split_examples(data(), SplitSpec(seed=2))
    path = result.index.save(tmp_path / "idx")
    index = HoldoutIndex.load(path)
    assert index.content_hash == result.index.content_hash and index.keys == ids(result.holdout)
    h0, h1 = result.holdout[0], result.holdout[1]
    exact = Example([Message("user", h0.messages[0].content.upper()), Message("assistant", "spam")], id="copy")
    typo = Example([Message("user", h1.messages[0].content.replace("a", "e", 1)), Message("assistant", "x")], id="ty")
    clean = [
        Example([Message("user", sentence(1000 + i)), Message("assistant", "ham")], id=f"new{i}") for i in range(5)
    ]
    assert index.check(clean + result.train) == []
    matches = index.check([*clean, exact, typo])
    assert [(m.example_key, m.holdout_key, m.kind) for m in matches] == [
        ("copy", h0.id, "exact"),
        ("ty", h1.id, "near"),
    ]
    with pytest.raises(HoldoutLeakError, match="copy") as err:
        index.assert_no_leak([*clean, exact, typo])
    assert "ty" in str(err.value) and len(err.value.matches) == 2


def test_holdout_index_load_errors(tmp_path):
    with pytest.raises(DataError, match="cannot read the holdout index"):
        HoldoutIndex.load(tmp_path / "missing")


def test_split_file_matches_split_examples(tmp_path):
    rows = data(80)
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in rows), encoding="utf-8")
    summary = split_file(src, tmp_path / "train.jsonl", tmp_path / "holdout.jsonl", SplitSpec(seed=4))
    in_memory = split_examples(rows, SplitSpec(seed=4))
    written = [json.loads(x)["metadata"]["id"] for x in (tmp_path / "holdout.jsonl").read_text().splitlines()]
    assert written == ids(in_memory.holdout) and summary.holdout == len(written)
    assert summary.index.content_hash == in_memory.index.content_hash
    assert summary.train + summary.holdout == 80 and summary.audit.clean
