"""Traces in the store, and the trace log that spools them: exactly once by id, through a locked and a missing
database, and across a process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from instil.errors import NotFoundError, StoreError
from instil.serve.capture import TraceLog, capture_graders, grade_trace, redact_trace
from instil.spec import parse_spec
from instil.store import Store, Trace, TraceFilter
from instil.store.db import create_store_engine, migrate

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

SPEC = """
name: triage
system_prompt: "Answer with a JSON object with a label."
graders:
  - {name: json, type: json_valid, primary: true}
  - {name: short, type: length, max_chars: 40}
  - {name: exact, type: exact_match}
data: [{path: data.jsonl}]
"""


def trace(i: int, **kw) -> Trace:
    base = dict(
        id=f"chatcmpl-{i:06d}",
        job="triage",
        created_at=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=i),
        source="local",
        model="triage@1",
        version=1,
        messages=[{"role": "system", "content": "Triage."}, {"role": "user", "content": f"ticket {i}"}],
        output='{"label": "billing"}',
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=5,
        latency_s=0.01,
    )
    return Trace(**(base | kw))


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, instil_home: Path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    with Store.open(url, home=instil_home) as s:
        yield s


# ---- the store -------------------------------------------------------------------------------------------------------
def test_traces_are_kept_once_by_id_and_read_back_through_every_filter(any_store: Store) -> None:
    traces = [
        trace(0, user="ana", tags=("beta", "mobile"), passed=True, grades={"json": {"value": 1.0, "passed": True}}),
        trace(1, user="bo", tags=("beta",), passed=False),
        trace(
            2,
            source="proxy",
            model="gpt-4o",
            version=None,
            upstream="openai",
            status=429,
            output=None,
            error={"error": {"message": "slow down"}},
        ),
        trace(3, meta={"ticket": "T-9"}, params={"temperature": 0.2}),
    ]
    assert any_store.add_traces(traces) == 4
    assert any_store.add_traces([traces[1], trace(1, output="changed"), trace(4)]) == 1  # 1 is kept as first stored
    assert any_store.count_traces() == 5
    assert any_store.get_trace("chatcmpl-000001").output == '{"label": "billing"}'

    def ids(**where) -> list[str]:
        return [t.id[-1] for t in any_store.list_traces(TraceFilter(**where))]

    assert ids() == ["4", "3", "2", "1", "0"]  # newest first
    assert [t.id[-1] for t in any_store.list_traces(oldest_first=True, limit=2)] == ["0", "1"]
    assert ids(tag="beta") == ["1", "0"] and ids(tag="mobile") == ["0"] and ids(tag="none") == []
    assert ids(user="bo") == ["1"]
    assert ids(passed=False) == ["1"] and ids(passed=True) == ["0"]
    assert ids(source="proxy") == ["2"] and ids(model="gpt-4o") == ["2"] and ids(status=429) == ["2"]
    assert ids(since=traces[2].created_at) == ["4", "3", "2"]
    assert ids(until=traces[2].created_at) == ["1", "0"]
    assert ids(version=1) == ["4", "3", "1", "0"]

    back = any_store.get_trace("chatcmpl-000000")
    assert (
        back.tags == ("beta", "mobile")
        and back.user == "ana"
        and back.grades == {"json": {"value": 1.0, "passed": True}}
    )
    assert back.created_at == traces[0].created_at and back.created_at.tzinfo is not None
    assert any_store.get_trace("chatcmpl-000003").meta == {"ticket": "T-9"}
    assert any_store.get_trace("chatcmpl-000003").params == {"temperature": 0.2}
    assert any_store.get_trace("chatcmpl-000002").error == {"error": {"message": "slow down"}}
    assert any_store.get_trace("chatcmpl-000002").status == 429
    with pytest.raises(StoreError, match="more than one"):
        any_store.get_trace("chatcmpl-00000")
    with pytest.raises(NotFoundError, match="no trace"):
        any_store.get_trace("chatcmpl-999999")
    assert Trace.from_dict(json.loads(json.dumps(back.to_dict()))) == back

    assert any_store.delete_traces(TraceFilter(until=traces[2].created_at)) == 2  # retention
    assert ids() == ["4", "3", "2"] and ids(tag="beta") == []
    assert any_store.known_traces(["chatcmpl-000000", "chatcmpl-000003"]) == {"chatcmpl-000003"}


# ---- grading and redaction -------------------------------------------------------------------------------------------
def test_only_graders_that_need_no_reference_grade_a_trace() -> None:
    spec = parse_spec(SPEC)
    graders = capture_graders(spec)
    assert [g.name for g in graders] == ["json", "short"]  # exact_match compares with a reference a trace lacks
    good = grade_trace(trace(0), graders)
    assert good.passed is True and set(good.grades) == {"json", "short"}
    bad = grade_trace(trace(1, output="billing, I think, or maybe shipping; hard to say really"), graders)
    assert bad.passed is False
    assert bad.grades["json"]["passed"] is False and bad.grades["short"]["passed"] is False
    assert bad.grades["json"]["reason"]
    assert grade_trace(trace(2, status=500, output=None), graders).passed is None  # an error is not graded
    assert grade_trace(trace(3), []).grades is None


def test_redaction_masks_pii_in_messages_output_and_tool_arguments() -> None:
    t = trace(
        0,
        messages=[{"role": "user", "content": "I am ana@example.com, call +44 20 7946 0958", "name": "ana"}],
        output="Mailed ana@example.com",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "email", "arguments": '{"to": "ana@example.com"}'},
            }
        ],
    )
    r = redact_trace(t)
    text = json.dumps(r.to_dict())
    assert "ana@example.com" not in text and "7946" not in text
    assert "[EMAIL]" in r.messages[0]["content"] and r.messages[0]["name"] == "ana" and r.messages[0]["role"] == "user"
    assert r.tool_calls[0]["id"] == "call_1" and r.tool_calls[0]["function"]["name"] == "email"
    assert r.redacted and not t.redacted


# ---- the trace log ---------------------------------------------------------------------------------------------------
def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_every_captured_trace_is_stored_graded_once_and_the_spool_is_cleared(store: Store) -> None:
    spec = parse_spec(SPEC)
    log = TraceLog(store, graders=capture_graders(spec), segment_bytes=4096).start()  # small: many segments
    threads = [
        threading.Thread(target=lambda k=k: [log.capture(trace(k * 100 + i)) for i in range(50)]) for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: store.count_traces() == 200)
    stats = log.close()
    assert (stats.captured, stats.stored, stats.skipped, stats.bad_lines, stats.spool_bytes) == (200, 200, 0, 0, 0)
    assert all(t.passed is True for t in store.list_traces(limit=None))
    assert list((store.home / "spool" / "traces").iterdir()) == []  # nothing left behind
    with pytest.raises(StoreError, match="not running"):
        log.capture(trace(999))


def test_traces_wait_in_the_spool_while_the_database_is_locked(store: Store) -> None:
    log = TraceLog(store, flush_s=0.01).start()
    holder = sqlite3.connect(store.home / "instil.db", timeout=1)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock, as a long migration would
    try:
        took = []
        for i in range(30):
            began = time.perf_counter()
            log.capture(trace(i))
            took.append(time.perf_counter() - began)
        time.sleep(0.5)
        assert max(took) < 0.05  # the request path never waits for the database
        assert log.stats().spool_bytes > 0 and log.stats().stored == 0
    finally:
        holder.rollback()
        holder.close()
    wait_for(lambda: log.stats().stored == 30)
    stats = log.close()
    assert stats.spool_bytes == 0 and stats.store_ok
    assert store.count_traces() == 30


def test_traces_spooled_while_the_database_is_missing_go_in_once_it_is_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db = tmp_path / "not-yet" / "instil.db"  # no database there yet: every write fails
    engine = create_store_engine(f"sqlite:///{db}")
    store = Store(engine, home)
    log = TraceLog(store, retry_s=0.05).start()
    for i in range(25):
        log.capture(trace(i))
    wait_for(lambda: not log.stats().store_ok)
    assert log.stats().stored == 0 and "failed" in (log.stats().last_error or "")
    db.parent.mkdir(exist_ok=True)
    migrate(engine, home)  # the database is back
    wait_for(lambda: log.stats().stored == 25)
    log.capture(trace(25))
    wait_for(lambda: log.stats().stored == 26)
    assert log.close().spool_bytes == 0
    assert store.count_traces() == 26
    engine.dispose()


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime
    from instil.store import Store, Trace
    from instil.serve.capture import TraceLog

    store = Store.open(home=sys.argv[1])
    log = TraceLog(store, flush_s=0.0).start()
    for i in range(int(sys.argv[2])):
        log.capture(Trace(id=f"chatcmpl-{i:06d}", job="triage", created_at=datetime.now(UTC), source="local",
                          model="triage@1", messages=[{"role": "user", "content": f"ticket {i}"}], output="ok"))
    os.kill(os.getpid(), signal.SIGKILL)  # mid-write for the writer thread, whatever it had stored
    """
)


def test_a_server_killed_with_sigkill_leaves_a_spool_the_next_one_replays_exactly_once(
    store: Store, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(KILLED_CHILD)
    n = 3000
    done = subprocess.run([sys.executable, str(script), str(store.home), str(n)], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    stored_before = store.count_traces()
    assert stored_before < n  # it died with traces spooled but not stored
    folders = list((store.home / "spool" / "traces").iterdir())
    assert len(folders) == 1
    segment = sorted(folders[0].glob("*.jsonl"))[-1]
    with open(segment, "ab") as f:
        f.write(b'{"id": "chatcmpl-torn", "job"')  # and a line torn by the kill: its request never got an answer

    log = TraceLog(store).start()  # the next server
    wait_for(lambda: store.count_traces() == n)
    stats = log.close()
    assert stats.bad_lines == 1
    assert stats.stored + stats.skipped >= n - stored_before
    ids = [t.id for t in store.list_traces(limit=None)]
    assert len(ids) == len(set(ids)) == n
    assert list((store.home / "spool" / "traces").iterdir()) == []


def test_a_running_servers_spool_is_not_taken_by_another(store: Store) -> None:
    first = TraceLog(store).start()
    second = TraceLog(store).start()  # a second server on the same home: each keeps its own folder
    try:
        for i in range(10):
            (first if i % 2 else second).capture(trace(i))
        # Each writer counts what it stored just after the commit: wait for the counts, not for the rows.
        wait_for(lambda: first.stats().stored + second.stats().stored == 10)
        assert first.stats().stored == 5 and second.stats().stored == 5 and store.count_traces() == 10
    finally:
        first.close()
        second.close()


def test_retention_deletes_old_traces_when_the_log_starts(store: Store) -> None:
    old, new = trace(0, created_at=datetime.now(UTC) - timedelta(days=40)), trace(1, created_at=datetime.now(UTC))
    store.add_traces([old, new])
    log = TraceLog(store, retention_days=30).start()
    wait_for(lambda: store.count_traces() == 1)
    log.close()
    assert [t.id for t in store.list_traces()] == [new.id]


def test_the_spool_folder_must_be_writable(store: Store, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the trace spool"):
        TraceLog(store, spool=blocked / "traces").start()
    assert os.path.isfile(blocked)
