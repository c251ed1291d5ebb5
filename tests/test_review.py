"""The review queue (instil.review): items collected once from failed, unscored and shadowed traces and from
feedback; decisions with who and when; groups by grader and similarity; corrections and preference pairs in the
job's datasets, the holdout kept out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from colour_jobs import PROMPT, SPEC_HEAD, chat_rows, ticket
from instil import review
from instil.errors import InstilError, NotFoundError
from instil.jobdata import curate_job, dataset_name, split_job
from instil.spec import JobSpec, load_spec
from instil.store import Store, Trace

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def job(tmp_path: Path, store: Store) -> JobSpec:
    """The colour job with a frozen holdout (items 100..107), no model."""
    root = tmp_path / "job"
    root.mkdir()

    (root / "train.jsonl").write_text(chat_rows(range(16)), encoding="utf-8")
    (root / "holdout.jsonl").write_text(chat_rows(range(100, 108)), encoding="utf-8")
    (root / "instil.yaml").write_text(SPEC_HEAD + "training: {adapter: full}\n", encoding="utf-8")
    spec = load_spec(root / "instil.yaml")
    curate_job(spec, store)
    split_job(spec, store)
    return spec


def _trace(i: int, output: str, *, passed: bool | None = True, **kw) -> Trace:
    grades = kw.pop("grades", None)
    if grades is None and passed is not None:
        grades = {"short": {"value": float(passed), "passed": passed, "reason": None if passed else "too long"}}
    fields = {
        "id": f"chatcmpl-{i:04d}",
        "job": "colors",
        "created_at": T0 + timedelta(seconds=i),
        "source": "local",
        "model": "colors@1",
        "version": 1,
        "messages": [{"role": "system", "content": "Name the colour."}, {"role": "user", "content": ticket(200 + i)}],
        "output": output,
        "grades": grades,
        "passed": passed,
    }
    return Trace(**{**fields, **kw})


def test_collect_queues_failures_unscored_and_disagreements_once(job: JobSpec, store: Store):
    store.add_traces(
        [
            _trace(1, "red"),
            _trace(2, "a very long answer", passed=False),
            _trace(3, "red", passed=None, grades={"short": {"error": "the grader broke"}}),
            _trace(4, "red", passed=None, grades=None),  # never graded: nothing to review
            _trace(5, "red", rollout_id=1, arm="production", pair_id="p1"),
            _trace(6, "blue", rollout_id=1, arm="shadow", pair_id="p1", version=2),
            _trace(7, "red", rollout_id=1, arm="production", pair_id="p2"),
            _trace(8, " red ", rollout_id=1, arm="shadow", pair_id="p2", version=2),  # agrees, spacing aside
            _trace(9, "x" * 40, passed=False, status=500),  # a server error is not an answer to review
        ]
    )
    first = review.collect(job, store)
    assert first.added == {"failed": 1, "unscored": 1, "disagreement": 1}
    assert review.collect(job, store).total == 0  # collected again: nothing new
    items = {i.kind: i for i in store.list_review_items("colors")}
    failed, unscored, disagreement = items["failed"], items["unscored"], items["disagreement"]
    assert (
        failed.trace_id == "chatcmpl-0002" and failed.reason == "short: too long" and failed.meta["failed"] == ["short"]
    )
    assert unscored.reason == "short: the grader broke"
    assert (disagreement.trace_id, disagreement.other_trace_id) == ("chatcmpl-0005", "chatcmpl-0006")
    assert (disagreement.output, disagreement.suggestion) == ("red", "blue")
    assert failed.messages[-1]["content"] == ticket(202) and failed.status == "open"
    assert store.count_review_items("colors") == {"open": 3, "accepted": 0, "corrected": 0, "discarded": 0}


def test_feedback_is_checked_and_kept_once(job: JobSpec, store: Store):
    store.add_traces([_trace(1, "red")])
    with pytest.raises(NotFoundError):
        review.feedback(job, store, "chatcmpl-nope", rating=0)
    with pytest.raises(InstilError, match="between 0"):
        review.feedback(job, store, "chatcmpl-0001", rating=5)
    with pytest.raises(InstilError, match="needs a rating"):
        review.feedback(job, store, "chatcmpl-0001")
    a = review.feedback(job, store, "chatcmpl-0001", rating=0, correction="blue", comment="it is blue", by="ana")
    b = review.feedback(job, store, "chatcmpl-0001", rating=0, correction="blue", comment="it is blue", by="ana")
    assert a.id == b.id and (a.kind, a.suggestion, a.rating, a.reason) == ("feedback", "blue", 0.0, "it is blue")
    c = review.feedback(job, store, "chatcmpl-0001", rating=1, by="bo")  # another user: another item
    assert c.id != a.id and len(store.list_review_items("colors", kind="feedback")) == 2
    with pytest.raises(NotFoundError):  # ids from requests are taken whole, never as a prefix
        review.feedback(job, store, "chatcmpl-000", rating=0)
    review.decide(job, store, [a.id], "discard", by="reviewer")
    assert review.feedback(job, store, "chatcmpl-0001", rating=0, correction="blue", comment="it is blue",
                           by="ana").status == "discarded"  # a retry: the decision stands  # fmt: skip
    changed = review.feedback(job, store, "chatcmpl-0001", rating=0, correction="green", by="ana")
    assert (changed.id, changed.status, changed.suggestion) == (a.id, "open", "green")  # changed mind: open again


def test_decisions_record_who_and_when_and_refuse_what_makes_no_sense(job: JobSpec, store: Store):
    store.add_traces([_trace(i, "a very long answer", passed=False) for i in range(1, 4)])
    review.collect(job, store)
    ids = [i.id for i in store.list_review_items("colors")]
    with pytest.raises(InstilError, match="needs the right answer"):
        review.decide(job, store, ids[:1], "correct", by="ana")
    with pytest.raises(InstilError, match="unknown review action"):
        review.decide(job, store, ids[:1], "approve", by="ana")
    with pytest.raises(InstilError, match="reviewer's name"):
        review.decide(job, store, ids[:1], "discard", by=" ")
    with pytest.raises(NotFoundError):
        review.decide(job, store, [9999], "discard", by="ana")
    before = datetime.now(UTC)
    fixed = review.decide(job, store, ids[:2], "correct", correction="red", by="ana")
    assert [(i.status, i.correction, i.decided_by) for i in fixed] == [("corrected", "red", "ana")] * 2
    assert all(i.decided_at >= before for i in fixed)
    kept = review.decide(job, store, ids[2:], "accept", by="bo")[0]
    assert (kept.status, kept.correction) == ("accepted", "a very long answer")
    again = review.decide(job, store, ids[2:], "reopen", by="bo")[0]
    assert (again.status, again.decided_by, again.decided_at) == ("open", None, None)


def test_groups_follow_the_failing_graders_then_the_words(job: JobSpec, store: Store):
    billing = ["refund my invoice payment", "the invoice payment failed twice", "charged twice on my invoice payment"]
    login = ["cannot reset my password login", "password login locked out", "login password expired"]
    traces = []
    for k, text in enumerate(billing + login):
        t = _trace(k + 1, "a long wrong answer", passed=False)
        traces.append(Trace(**{**t.__dict__, "messages": [{"role": "user", "content": text}]}))
    other = _trace(50, "x", passed=False, grades={"em": {"value": 0.0, "passed": False, "reason": "wrong"}})
    store.add_traces([*traces, other])
    review.collect(job, store)
    found = review.groups(job, store)
    sizes = sorted(len(g.items) for g in found)
    assert sizes == [1, 3, 3]
    by_words = {frozenset(i.messages[0]["content"] for i in g.items) for g in found if len(g.items) == 3}
    assert by_words == {frozenset(billing), frozenset(login)}
    assert any("invoice" in g.label or "payment" in g.label for g in found)
    assert next(g for g in found if len(g.items) == 1).label.startswith("failed (em)")


def test_corrections_become_sft_examples_and_pairs_and_never_the_holdout(job: JobSpec, store: Store):
    leak = Trace(
        **{
            **_trace(9, "a long wrong answer", passed=False).__dict__,
            "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": ticket(101)}],
        }
    )
    store.add_traces([_trace(1, "a long wrong answer", passed=False), _trace(2, "blue", passed=False), leak])
    review.collect(job, store)
    items = {i.trace_id: i.id for i in store.list_review_items("colors")}
    review.decide(job, store, [items["chatcmpl-0001"], items["chatcmpl-0009"]], "correct", correction="red", by="ana")
    review.decide(job, store, [items["chatcmpl-0002"]], "accept", by="ana")
    out = review.corrections(job, store)
    assert (out.decided, out.added, out.pairs, out.left_out_for_holdout) == (3, 2, 1, 1)
    sft = {e.key(): e for e in store.iter_examples(out.corrections)}
    assert set(sft) == {"chatcmpl-0001", "chatcmpl-0002"}
    assert sft["chatcmpl-0001"].messages[-1].content == "red" and "review" in sft["chatcmpl-0001"].tags
    assert sft["chatcmpl-0002"].messages[-1].content == "blue"
    (pair,) = list(store.iter_examples(out.preferences))
    assert pair.messages[-1].content == "red" and pair.rejected[0].content == "a long wrong answer"
    assert out.corrections.ref == dataset_name(job, "corrections") + "@1"

    # Nothing new: the same version. A changed mind replaces the example; a discard drops it.
    assert review.corrections(job, store).corrections == out.corrections
    review.decide(job, store, [items["chatcmpl-0001"]], "correct", correction="green", by="bo")
    review.decide(job, store, [items["chatcmpl-0002"]], "discard", by="bo")
    later = review.corrections(job, store)
    (only,) = list(store.iter_examples(later.corrections))
    assert only.key() == "chatcmpl-0001" and only.messages[-1].content == "green"
    assert review.corrections(job, store, exclude={"chatcmpl-0001"}).corrections.n_examples == 0


def test_the_terminal_ui_decides_items_and_whole_groups(job: JobSpec, store: Store):
    import asyncio

    pytest.importorskip("textual")
    from instil.tui import ReviewSession, review_app

    billing = ["refund my invoice payment", "the invoice payment failed twice", "charged twice on my invoice payment"]
    traces = [_trace(1, "blue", passed=False), _trace(2, "a long wrong answer", passed=False)]
    for k, text in enumerate(billing):
        t = _trace(10 + k, "wrong", passed=False)
        traces.append(Trace(**{**t.__dict__, "messages": [{"role": "user", "content": text}]}))
    store.add_traces(traces)
    session = ReviewSession.open(job, store, "ana")
    assert sum(len(g.items) for g in session.groups) == 5
    billing_group = next(k for k, g in enumerate(session.groups) if len(g.items) == 3)

    async def walk() -> None:
        app = review_app(session)
        async with app.run_test(size=(140, 40)) as pilot:
            session.select(billing_group)
            app.refresh_view(groups=True)
            await pilot.press("n", "p")  # look around the group first
            await pilot.press("g", "d")  # then discard the whole group at once
            await pilot.pause()
            assert all(len(g.items) != 3 for g in session.groups)
            await pilot.press("a")  # accept the item now in view
            await pilot.press("c")  # correct the last one in the editor
            await pilot.pause()
            edit = app.query_one("#edit")
            edit.load_text("red")
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert session.describe().startswith("Nothing to review")
            await pilot.press("q")

    asyncio.run(walk())
    decided = {i.status: 0 for i in store.list_review_items("colors")}
    for i in store.list_review_items("colors"):
        decided[i.status] += 1
        assert i.decided_by == "ana" and i.decided_at is not None
    assert decided == {"discarded": 3, "accepted": 1, "corrected": 1}
    assert [i.correction for i in store.list_review_items("colors", status="corrected")] == ["red"]


def test_cli_review_list_decide_export(job: JobSpec, store: Store, capsys):
    from instil.cli import main

    store.add_traces([_trace(1, "a long wrong answer", passed=False), _trace(2, "blue", passed=False)])
    spec = str(job.file)
    assert main(["review", "list", spec]) == 0
    out = capsys.readouterr().out
    assert "collected 2 new: 2 failed" in out and "failed" in out and "open" in out
    assert main(["review", "list", spec, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    ids = [i["id"] for i in listed["items"]]
    assert len(ids) == 2 and listed["added"] == {"failed": 0, "unscored": 0, "disagreement": 0}
    assert {i["reason"] for i in listed["items"]} == {"short: too long"}
    assert main(["review", "decide", str(ids[0]), "--spec", spec, "--accept", "--discard"]) == 2
    assert main(["review", "decide", str(ids[0]), "--spec", spec, "--correct", "red", "--by", "ana"]) == 0
    assert "1 item(s) corrected by ana" in capsys.readouterr().out
    assert main(["review", "decide", "999", "--spec", spec, "--discard"]) == 1
    assert main(["review", "list", spec, "--group"]) == 0
    assert "failed (short)" in capsys.readouterr().out
    assert main(["review", "export", spec]) == 0
    out = capsys.readouterr().out
    assert "1 new corrections" in out and "colors:corrections@1" in out and "colors:preferences@1" in out


def test_tool_call_answers_are_compared_and_kept_as_tool_calls(job: JobSpec, store: Store):
    def call(city: str) -> list[dict]:
        return [{"id": f"call-{city}", "type": "function",
                 "function": {"name": "weather", "arguments": json.dumps({"city": city})}}]  # fmt: skip

    store.add_traces(
        [
            _trace(1, None, tool_calls=call("Oslo"), rollout_id=1, arm="production", pair_id="p1"),
            _trace(2, None, tool_calls=call("Lima"), rollout_id=1, arm="shadow", pair_id="p1"),
            _trace(3, None, tool_calls=call("Oslo"), rollout_id=1, arm="production", pair_id="p2"),
            _trace(4, None, tool_calls=[{**call("Oslo")[0], "id": "other"}], rollout_id=1, arm="shadow", pair_id="p2"),
            _trace(5, None, tool_calls=call("Rome"), passed=False),
        ]
    )
    assert review.collect(job, store).added == {"failed": 1, "unscored": 0, "disagreement": 1}  # call ids aside
    failed = store.list_review_items("colors", kind="failed")[0]
    review.decide(job, store, [failed.id], "accept", by="ana")
    out = review.corrections(job, store)
    (example,) = list(store.iter_examples(out.corrections))
    answer = example.messages[-1]
    assert answer.content is None and answer.tool_calls[0]["function"]["name"] == "weather"


def test_taking_the_offer_for_a_whole_group_gives_each_item_its_own(job: JobSpec, store: Store):
    from instil.tui import ReviewSession

    store.add_traces(
        [
            _trace(k, "red", rollout_id=1, arm=arm, pair_id=f"p{k // 2}")
            if arm == "production"
            else _trace(k, ["blue", "green", "pink"][k // 2 - 1], rollout_id=1, arm=arm, pair_id=f"p{k // 2}")
            for k, arm in [
                (2, "production"),
                (3, "shadow"),
                (4, "production"),
                (5, "shadow"),
                (6, "production"),
                (7, "shadow"),
            ]  # fmt: skip
        ]
    )
    session = ReviewSession.open(job, store, "ana")
    items = [i for g in session.groups for i in g.items]
    session.groups = [review.Group("disagreement", items)]  # as if alike: one group of three
    session.whole_group = True
    done = session.decide("take")
    assert sorted(d.correction for d in done) == ["blue", "green", "pink"]
    assert session.groups == [] and session.describe().startswith("Nothing to review")


def test_a_refreshed_holdout_takes_reviewed_answers_no_training_version_holds(job: JobSpec, store: Store, capsys):
    from instil.cli import main
    from instil.jobdata import frozen_holdout

    before = frozen_holdout(job, store)
    fresh = _trace(1, "a long wrong answer", passed=False)
    seen = Trace(
        **{
            **_trace(2, "blue", passed=False).__dict__,
            "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": ticket(3)}],
        }  # fmt: skip
    )  # item 3 is in the training data
    store.add_traces([fresh, seen])
    review.collect(job, store)
    ids = [i.id for i in store.list_review_items("colors")]
    review.decide(job, store, ids, "correct", correction="red", by="ana")
    assert main(["data", "refresh-holdout", str(job.file)]) == 0
    assert "1 reviewed answers; 1 left out for matching a training version" in capsys.readouterr().out
    after = frozen_holdout(job, store)
    assert after.version == before.version + 1 and after.frozen and after.n_examples == before.n_examples + 1
    assert "chatcmpl-0001" in {e.key() for e in store.iter_examples(after)}
    # What went into the holdout never becomes training data.
    out = review.corrections(job, store)
    assert {e.key() for e in store.iter_examples(out.corrections)} == {"chatcmpl-0002"}
    assert out.left_out_for_holdout == 1
    again = review.refresh_holdout(job, store)
    assert again.added == 0 and again.holdout == after  # nothing new: the same version
