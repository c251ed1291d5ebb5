"""Curation: duplicates, near duplicates, contradictions and their rules, PII scan and redaction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instil.data import minhash
from instil.data.curate import curate, curate_file
from instil.data.pii import redact, redact_text, scan_pii
from instil.data.records import Example, Message
from instil.errors import DataError

Q = "how do I reset my account password after the recovery email never arrived in my inbox"
Q_TYPO = "how do I reset my acount password after the recovery email never arrived in my inbox"
Q2 = "which shipping options are available for large parcels sent overseas to japan"
Q3 = "can you explain the refund policy for annual subscriptions cancelled mid year"


def ex(q: str, a: str, id: str) -> Example:
    return Example(
        [Message("system", "You answer support tickets."), Message("user", q), Message("assistant", a)], id=id
    )


# ---- minhash ---------------------------------------------------------------------------------------------------------
def test_signatures_are_deterministic_and_estimate_similarity():
    a = minhash.signatures([Q, Q_TYPO, Q2])
    b = minhash.signatures([Q, Q_TYPO, Q2])
    assert a.dtype == np.uint16 and a.shape == (3, minhash.NUM_PERM)
    assert np.array_equal(a, b)
    sims = minhash.estimated_similarity(a[[0, 0]], a[[1, 2]])
    assert sims[0] > 0.8 > 0.3 > sims[1]


def test_similar_pairs_and_components():
    sigs = minhash.signatures([Q, Q2, Q_TYPO, Q3, Q2 + "!"])
    pairs, sims = minhash.similar_pairs(sigs, 0.8)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 2), (1, 4)]
    assert (sims >= 0.8).all()
    assert minhash.components(5, pairs).tolist() == [0, 1, 0, 3, 1]


def test_cross_pairs_only_across_sides():
    left = minhash.signatures([Q, Q2, Q2])
    right = minhash.signatures([Q3, Q_TYPO])
    pairs, _ = minhash.cross_pairs(left, right, 0.8)
    assert pairs.tolist() == [[0, 1]]


# ---- duplicates and contradictions -----------------------------------------------------------------------------------
def test_exact_duplicates_after_normalisation_keep_the_first():
    data = [
        ex(Q, "Use the reset link.", "a"),
        ex(Q.upper() + "  ", "use the reset  link.", "b"),
        ex(Q2, "DHL.", "c"),
    ]
    result = curate(data)
    assert [e.id for e in result.examples] == ["a", "c"]
    (group,) = result.report.exact_groups
    assert group.keys == ["a", "b"] and result.report.dropped == {"exact": 1}


def test_near_duplicates_reported_and_kept_unless_asked():
    data = [ex(Q, "Use the reset link.", "a"), ex(Q_TYPO, "Use the reset link.", "b"), ex(Q2, "DHL.", "c")]
    result = curate(data)
    assert [g.keys for g in result.report.near_groups] == [["a", "b"]]
    assert result.report.near_groups[0].similarity >= 0.8
    assert len(result.examples) == 3
    assert [e.id for e in curate(data, drop_near=True).examples] == ["a", "c"]


def _contradiction_data() -> list[Example]:
    return [
        ex(Q, "billing", "a"),
        ex(Q2, "shipping", "x"),
        ex(Q_TYPO, "account", "b"),
        ex(Q, "Billing.", "c"),  # same answer as a once normalised and without punctuation
        ex(Q3, "billing", "y"),
    ]


def test_contradictions_group_near_same_inputs_with_different_answers():
    report = curate(_contradiction_data()).report
    (group,) = report.contradiction_groups
    assert group.keys == ["a", "b", "c"]
    assert group.answers == [0, 1, 0]
    assert group.id.startswith("c-")
    # The id does not depend on the order of the data.
    again = curate(list(reversed(_contradiction_data()))).report.contradiction_groups[0]
    assert again.id == group.id


@pytest.mark.parametrize(
    ("rule", "kept"),
    [
        ("report", ["a", "x", "b", "c", "y"]),
        ("drop", ["x", "y"]),
        ("majority", ["a", "x", "y"]),
        ("first", ["a", "x", "y"]),
        ("last", ["x", "c", "y"]),
    ],
)
def test_contradiction_rules(rule, kept):
    result = curate(_contradiction_data(), contradictions=rule)
    assert [e.id for e in result.examples] == kept


def test_majority_tie_drops_the_group_and_choices_win():
    data = [ex(Q, "billing", "a"), ex(Q, "account", "b"), ex(Q2, "shipping", "x")]
    assert [e.id for e in curate(data, contradictions="majority").examples] == ["x"]
    gid = curate(data).report.contradiction_groups[0].id
    assert [e.id for e in curate(data, contradictions="drop", choices={gid: "b"}).examples] == ["b", "x"]
    with pytest.raises(DataError, match="not one of its examples"):
        curate(data, choices={gid: "x"})
    with pytest.raises(DataError, match="does not have"):
        curate(data, choices={"c-0000": "a"})
    with pytest.raises(DataError, match="not a rule"):
        curate(data, contradictions="newest")


def test_curate_file_streams_and_reports_sources(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [ex(Q, "billing", "a"), ex(Q, "billing", "b"), ex(Q2, "mail me at jane.doe@example.org", "c")]
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    report = curate_file(path, out, redact_pii=True)
    assert report.exact_groups[0].sources == [f"{path}:1", f"{path}:2"]
    assert [f.field for f in report.pii] == ["messages[2].content"]
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["metadata"]["id"] for x in lines] == ["a", "c"]
    assert lines[1]["messages"][2]["content"] == "mail me at [EMAIL]"
    assert json.loads(json.dumps(report.to_dict()))["counts"]["pii"] == {"email": 1}


# ---- PII -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to john.doe+work@mail.example.co.uk today", "email"),
        ("call +44 20 7946 0958 now", "phone"),
        ("call (415) 555-2671", "phone"),
        ("tel: +1-415-555-2671", "phone"),
        ("pay with 4111 1111 1111 1111", "card"),
        ("amex 378282246310005", "card"),
        ("IBAN DE89 3704 0044 0532 0130 00", "iban"),
        ("OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUvWx12", "secret"),
        ("AKIAIOSFODNN7EXAMPLE", "secret"),
        ("token ghp_" + "a1B2" * 9, "secret"),
        ("slack xoxb-123456789012-abcdefABCDEF", "secret"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc", "secret"),
        ('config = {"client_secret": "q8Zr2LmV9xT4wK7pN3sB"}', "secret"),
    ],
)
def test_pii_positives(text, kind):
    assert [m.kind for m in scan_pii(text)] == [kind]


@pytest.mark.parametrize(
    "text",
    [
        "the meeting is on 2024-01-15 at 10:30",
        "released 12/03/2023 as version 1.12.3 (build 20240115)",
        "it costs $1,299.99 or 1 299,99 EUR",
        "order 555-123-4567 shipped",
        "invoice number 4111111111111112",
        "request id 123e4567-e89b-12d3-a456-426614174000",
        "server 192.168.100.200 port 8080",
        "call me at 12345",
        "the token_count = 1234567890123456 here",
        "my password is hunter",
    ],
)
def test_pii_negatives(text):
    assert scan_pii(text) == []


def test_redaction_keeps_the_original_untouched():
    original = ex("I am jane@example.com, card 4111-1111-1111-1111", "Thanks, call +33 1 42 68 53 00", "a")
    clean = redact(original)
    assert clean.messages[1].content == "I am [EMAIL], card [CARD]"
    assert clean.messages[2].content == "Thanks, call [PHONE]"
    assert "jane@example.com" in original.messages[1].content
    assert redact_text("no personal data here") == "no personal data here"
    assert scan_pii("jane@example.com")[0].preview == "j***@e***.com"


def test_planted_defects_are_found_on_a_small_benchmark(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench", Path(__file__).parents[1] / "benchmarks" / "curate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    family, kinds, pii = bench.generate(tmp_path / "data.jsonl", 3000, 5)
    report = curate_file(tmp_path / "data.jsonl")
    for kind, planted, found, correct, hits in bench.score(report, family, kinds, pii):
        assert correct / found >= 0.99, kind
        assert hits / planted >= (0.99 if kind in bench.EXACT_KINDS else 0.95), kind


def test_exact_copies_vote_in_the_majority_rule():
    # Two identical copies say billing, one says account: billing wins 2-1 (after dedup it would be a 1-1 tie).
    data = [ex(Q, "billing", "a"), ex(Q, "billing", "a2"), ex(Q, "account", "b"), ex(Q2, "shipping", "x")]
    result = curate(data, contradictions="majority")
    assert [e.id for e in result.examples] == ["a", "x"]
    assert result.report.dropped == {"exact": 1, "contradiction": 1}
    assert [e.id for e in curate(data, contradictions="last").examples] == ["b", "x"]
    # Choosing a2, which was dropped as an exact copy of a: a stands for it.
    gid = result.report.contradiction_groups[0].id
    assert [e.id for e in curate(data, contradictions="drop", choices={gid: "a2"}).examples] == ["a", "x"]
