"""The store against SQLite always, and against PostgreSQL when ``INSTIL_TEST_POSTGRES_URL`` names a running server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

import instil.store as store_pkg
from instil.data.records import Example, Message, canonical_json
from instil.errors import NotFoundError, StoreError
from instil.store import BlobStore, Store
from instil.store.models import Base

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def ex(i: int, answer: str = "ok") -> Example:
    return Example(
        messages=[
            Message("system", "Be brief."),
            Message("user", f"question {i}"),
            Message("assistant", answer),
        ],
        tags=["t"],
    )


def url_for(backend: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres_url") if backend == "postgres" else None


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, instil_home: Path) -> Iterator[Store]:
    with Store.open(url_for(request.param, request), home=instil_home) as s:
        yield s


# ---- opening ---------------------------------------------------------------------------------------------------------
def test_open_uses_instil_home_with_wal_busy_timeout_and_foreign_keys(instil_home: Path) -> None:
    with Store.open() as s:
        assert s.home == instil_home
        assert (instil_home / "instil.db").is_file()
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_db_url_env_var_moves_the_database_but_not_the_blobs(
    tmp_path: Path, instil_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "elsewhere" / "x.db"
    monkeypatch.setenv("INSTIL_DB_URL", f"sqlite:///{db}")
    with Store.open() as s:
        v = s.put_dataset("d", [ex(1)])
        assert db.is_file() and not (instil_home / "instil.db").exists()
        assert s.blob_path(v.sha256).is_relative_to(instil_home / "blobs")


def test_reopening_keeps_everything(instil_home: Path) -> None:
    with Store.open() as s:
        v = s.put_dataset("d", [ex(1), ex(2)])
    with Store.open() as s:
        assert s.get_dataset("d") == v
        assert [e.to_dict() for e in s.iter_examples(v)] == [ex(1).to_dict(), ex(2).to_dict()]


def test_bad_urls_raise_store_errors_with_hints(instil_home: Path) -> None:
    with pytest.raises(StoreError, match="not a database URL") as e:
        Store.open("not a url")
    assert e.value.hint
    with pytest.raises(StoreError, match="in-memory"):
        Store.open("sqlite://")
    with pytest.raises(StoreError, match="cannot open the store database") as e:
        Store.open("postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing?connect_timeout=2")
    assert "secret" not in str(e.value) and "server is running" in (e.value.hint or "")


def test_a_store_from_a_newer_instil_is_refused(instil_home: Path) -> None:
    Store.open().close()
    with sqlite3.connect(instil_home / "instil.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999_from_the_future'")
    with pytest.raises(StoreError, match="does not know") as e:
        Store.open()
    assert "upgrade instil" in (e.value.hint or "")


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrations_produce_exactly_the_models(backend: str, request: pytest.FixtureRequest) -> None:
    with Store.open(url_for(backend, request)) as s, s.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert MigrationContext.configure(conn).get_current_heads() == ("0006_review",)


# ---- blobs -----------------------------------------------------------------------------------------------------------
def test_blob_is_canonical_jsonl_named_by_its_sha256(store: Store) -> None:
    examples = [ex(1), ex(2, "ünïcode ✓\nline")]
    info = store.put_examples(iter(examples))
    expected = "".join(canonical_json(e.to_dict()) + "\n" for e in examples).encode()
    assert info.path.read_bytes() == expected
    assert info.sha256 == hashlib.sha256(expected).hexdigest()
    assert (info.n_examples, info.bytes) == (2, len(expected))
    assert info.path == store.home / "blobs" / "sha256" / info.sha256[:2] / f"{info.sha256}.jsonl"
    assert store.put_examples(examples) == info  # the same content is the same blob
    assert [e.to_dict() for e in store.iter_examples(info.sha256)] == [e.to_dict() for e in examples]
    assert list(info.path.parent.parent.glob(".incoming-*")) == []


def test_a_failed_write_leaves_no_blob_and_no_temp_file(store: Store) -> None:
    def broken() -> Iterator[Example]:
        yield ex(1)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        store.put_dataset("d", broken())
    assert [p for p in (store.home / "blobs").rglob("*") if p.is_file()] == []
    assert store.list_datasets() == []


def test_tampered_blob_is_detected(store: Store) -> None:
    v = store.put_dataset("d", [ex(1), ex(2)])
    path = store.blob_path(v.sha256)
    path.write_bytes(path.read_bytes().replace(b"question 2", b"question 3"))
    assert not store.blobs.verify(v.sha256)
    with pytest.raises(StoreError, match="does not match its name"):
        list(store.iter_examples(v))
    path.unlink()
    with pytest.raises(NotFoundError, match="missing"):
        list(store.iter_examples(v))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "a" * 63, "g" * 64, ""])
def test_blob_paths_come_only_from_hex_digests(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="not a sha256"):
        BlobStore(tmp_path).path(bad)


def test_put_examples_streams_without_holding_the_examples(store: Store) -> None:
    n, filler = 4000, "x" * 2000
    tracemalloc.start()
    try:
        info = store.put_examples(ex(i, filler) for i in range(n))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.n_examples == n and info.bytes > 8_000_000
    assert peak < 1_000_000, f"peak {peak} bytes: examples are being held in memory"


# ---- datasets --------------------------------------------------------------------------------------------------------
def test_put_dataset_versions_are_content_addressed_and_idempotent(any_store: Store) -> None:
    s = any_store
    v1 = s.put_dataset("support/raw", [ex(1), ex(2)], meta={"source": "a.jsonl"})
    assert (v1.name, v1.version, v1.kind, v1.n_examples, v1.meta, v1.frozen) == (
        "support/raw",
        1,
        "raw",
        2,
        {"source": "a.jsonl"},
        False,
    )
    assert v1.created_at.tzinfo is not None
    assert s.put_dataset("support/raw", [ex(1), ex(2)], kind="curated") == v1  # same content: no new version
    v2 = s.put_dataset("support/raw", [ex(1), ex(3)])
    assert v2.version == 2 and v2.sha256 != v1.sha256
    other = s.put_dataset("other", [ex(1), ex(2)])  # same content, another dataset: its own v1, the same blob
    assert (other.version, other.sha256) == (1, v1.sha256) and other.id != v1.id
    assert [v.version for v in s.list_versions("support/raw")] == [1, 2]
    assert [(v.name, v.version) for v in s.list_datasets()] == [("other", 1), ("support/raw", 2)]
    assert s.get_version(v2.id) == v2


def test_get_dataset_by_latest_number_and_hash_prefix(any_store: Store) -> None:
    s = any_store
    v1 = s.put_dataset("d", [ex(1)])
    v2 = s.put_dataset("d", [ex(2)])
    assert s.get_dataset("d") == v2
    assert s.get_dataset("d", 1) == v1
    assert s.get_dataset("d", v1.sha256[:8]) == v1
    assert s.get_dataset("d", v2.sha256) == v2
    with pytest.raises(NotFoundError, match="no version 7") as e:
        s.get_dataset("d", 7)
    assert f"1 ({v1.sha256[:12]}, raw, 1 examples)" in (e.value.hint or "")
    with pytest.raises(StoreError, match="invalid version"):
        s.get_dataset("d", "v1")
    with pytest.raises(NotFoundError, match="no dataset named 'nope'") as e:
        s.get_dataset("nope")
    assert e.value.hint == "Datasets here: d."


def test_an_ambiguous_hash_prefix_is_refused(store: Store) -> None:
    # Find two one-example datasets whose hashes share 4 hex digits (birthday bound: a few hundred tries).
    seen: dict[str, int] = {}
    for i in range(100_000):
        digest = hashlib.sha256((canonical_json(ex(i).to_dict()) + "\n").encode()).hexdigest()
        if digest[:4] in seen:
            a, b = seen[digest[:4]], i
            break
        seen[digest[:4]] = i
    va, vb = store.put_dataset("d", [ex(a)]), store.put_dataset("d", [ex(b)])
    with pytest.raises(StoreError, match="matches 2 versions"):
        store.get_dataset("d", va.sha256[:4])
    assert store.get_dataset("d", vb.sha256[:12]) == vb


def test_lineage_and_model_trace_reach_every_ancestor_once(any_store: Store) -> None:
    s = any_store
    raw = s.put_dataset("raw", [ex(1), ex(2), ex(3)])
    extra = s.put_dataset("extra", [ex(9)])
    curated = s.put_dataset("curated", [ex(1), ex(2), ex(9)], kind="curated", parents=[raw, extra.id])
    train = s.put_dataset("train", [ex(1), ex(9)], kind="train", parents=[curated])
    holdout = s.put_dataset("holdout", [ex(2)], kind="holdout", parents=[curated], frozen=True)
    assert curated.parents == (raw.id, extra.id)
    assert holdout.frozen
    assert [v.name for v in s.lineage(train)] == ["curated", "raw", "extra"]
    assert s.lineage(raw.id) == []

    run = s.start_run("support", "train", {"lr": 1e-4})
    s.link_run_dataset(run, train, "train")
    s.link_run_dataset(run, train, "train")  # linking twice is harmless
    model = s.register_model("support", base_model="tiny", path="/m/1", run_id=run)
    assert [v.name for v in s.trace_model(model)] == ["train", "curated", "raw", "extra"]
    assert s.trace_model(s.register_model("support", base_model="tiny", path="/m/2")) == []


def test_a_failed_put_dataset_records_nothing(any_store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"parent dataset version id\(s\) \[12345\]"):
        any_store.put_dataset("d", [ex(1)], parents=[12345])
    assert any_store.list_datasets() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "../escape"}, "invalid dataset name"),
        ({"name": "has space"}, "invalid dataset name"),
        ({"name": "d", "kind": "Raw Data"}, "invalid dataset kind"),
        ({"name": "d", "meta": {"when": object()}}, "is not JSON"),
        ({"name": "d", "meta": {"loss": float("nan")}}, "is not JSON"),
        ({"name": "d", "parents": ["raw"]}, "must be an id"),
    ],
)
def test_bad_dataset_arguments_are_refused_before_anything_is_written(store: Store, kwargs: dict, message: str) -> None:
    with pytest.raises(StoreError, match=message) as e:
        store.put_dataset(examples=[ex(1)], **kwargs)
    assert str(e.value) and not (store.home / "blobs").exists()


# ---- runs, models, evaluations, artifacts ----------------------------------------------------------------------------
def test_run_lifecycle(any_store: Store) -> None:
    s = any_store
    data = s.put_dataset("d", [ex(1)])
    run = s.start_run("support", "eval", {"graders": ["exact"]})
    info = s.get_run(run)
    assert (info.status, info.finished_at, info.config) == ("running", None, {"graders": ["exact"]})
    s.link_run_dataset(run, data, "eval")
    done = s.finish_run(run, "succeeded", metrics={"exact": 0.9})
    assert (done.status, done.metrics, done.datasets) == ("succeeded", {"exact": 0.9}, ((data.id, "eval"),))
    assert done.finished_at is not None and done.finished_at >= done.created_at
    with pytest.raises(StoreError, match="already finished"):
        s.finish_run(run, "failed")
    with pytest.raises(StoreError, match="cannot finish run"):
        s.finish_run(s.start_run("support", "train"), "done")
    failed = s.finish_run(s.start_run("other", "train"), "failed", error="CUDA out of memory")
    assert failed.error == "CUDA out of memory"
    assert [r.kind for r in s.list_runs(job="support")] == ["eval", "train"]
    assert [r.job for r in s.list_runs(kind="train")] == ["support", "other"]
    with pytest.raises(NotFoundError, match="no run with id 999"):
        s.get_run(999)
    with pytest.raises(NotFoundError, match="no dataset version with id 999"):
        s.link_run_dataset(run, 999, "eval")


def test_models_evaluations_and_artifacts(any_store: Store) -> None:
    s = any_store
    run = s.start_run("support", "train")
    m1 = s.register_model("support", base_model="Qwen/Qwen3-0.6B", path=Path("/m/1"), run_id=run, revision="abc")
    m2 = s.register_model("support", base_model="Qwen/Qwen3-0.6B", path="/m/2", meta={"epochs": 2})
    s.register_model("other", base_model="tiny", path="/o/1")
    assert (m1.version, m2.version, m1.ref, m1.path, m1.revision) == (1, 2, "support@1", "/m/1", "abc")
    assert s.get_model("support") == m2 and s.get_model("support", 1) == m1
    assert [m.ref for m in s.list_models("support")] == ["support@1", "support@2"]
    assert len(s.list_models()) == 3
    with pytest.raises(NotFoundError, match="no model version 5") as e:
        s.get_model("support", 5)
    assert "[1, 2]" in (e.value.hint or "")
    with pytest.raises(NotFoundError, match="no run"):
        s.register_model("support", base_model="x", path="/p", run_id=999)

    holdout = s.put_dataset("holdout", [ex(1)], kind="holdout", frozen=True)
    eval_run = s.start_run("support", "eval")
    e1 = s.add_evaluation(eval_run, candidate="prompt", dataset=holdout, metrics={"exact": 0.7})
    e2 = s.add_evaluation(eval_run, candidate=f"model:{m1.ref}", dataset=holdout, metrics={"exact": 0.8}, model=m1)
    assert [e.id for e in s.list_evaluations(run_id=eval_run)] == [e1.id, e2.id]
    assert s.list_evaluations(dataset=holdout)[1].model_id == m1.id
    with pytest.raises(NotFoundError, match="no model with id 999"):
        s.add_evaluation(eval_run, candidate="x", dataset=holdout, metrics={}, model=999)

    a = s.add_artifact(run, "checkpoint", Path("/m/1/adapter.safetensors"), sha256="0" * 64)
    assert s.list_artifacts(run) == [a] and a.path == "/m/1/adapter.safetensors"


def test_decisions_move_production_and_pins_keep_their_history(any_store: Store) -> None:
    s = any_store
    m1, m2, m3 = (s.register_model("support", base_model="tiny", path=f"/m/{i}") for i in (1, 2, 3))
    other = s.register_model("other", base_model="tiny", path="/o/1")
    holdout = s.put_dataset("support:holdout", [ex(1)], kind="holdout", frozen=True)
    run = s.start_run("support", "eval")
    assert s.production_model("support") is None

    d1 = s.record_decision(
        "support",
        kind="gate",
        model=m1,
        promoted=True,
        production_before=None,
        reference="base+full",
        dataset=holdout,
        run_id=run,
        numbers={"p": 0.01},
    )
    assert (d1.kind, d1.version, d1.promoted, d1.reference, d1.numbers) == (
        "gate",
        1,
        True,
        "base+full",
        {"p": 0.01},
    )
    assert (d1.dataset_version_id, d1.run_id, d1.ref) == (holdout.id, run, "support@1")
    assert s.production_model("support") == dataclasses.replace(m1, status="production")
    refused = s.record_decision(
        "support",
        kind="gate",
        model=m2,
        promoted=False,
        production_before=m1,
        reference="support@1+short",
        reference_model=m1,
    )
    assert refused.reference_version == 1 and s.get_model("support", 2).status == "refused"
    s.record_decision("support", kind="gate", model=m3, promoted=True, production_before=m1, reference_model=m1)
    assert [m.status for m in s.list_models("support")] == ["retired", "refused", "production"]
    back = s.record_decision(
        "support", kind="rollback", model=m1, promoted=True, production_before=m3, reference_model=m3
    )
    assert [m.status for m in s.list_models("support")] == ["production", "refused", "rolled_back"]
    assert [d.id for d in s.list_decisions("support")] == [d1.id, refused.id, d1.id + 2, back.id]
    assert [d.id for d in s.list_decisions(model=m1)] == [d1.id, back.id] and s.get_decision(back.id) == back
    assert s.list_decisions("other") == []

    # A decision taken against a production model that has changed since is refused, and nothing moves.
    with pytest.raises(StoreError, match="changed while"):
        s.record_decision("support", kind="gate", model=m2, promoted=True, production_before=m3)
    with pytest.raises(StoreError, match="already the production"):
        s.record_decision("support", kind="gate", model=m1, promoted=False, production_before=m1)
    with pytest.raises(NotFoundError, match="no model with id"):
        s.record_decision("support", kind="gate", model=other, promoted=True, production_before=m1)
    with pytest.raises(StoreError, match="invalid decision kind"):
        s.record_decision("support", kind="vote", model=m2, promoted=True, production_before=m1)
    with pytest.raises(StoreError, match="not JSON"):
        s.record_decision(
            "support", kind="gate", model=m2, promoted=True, production_before=m1, numbers={"p": float("nan")}
        )
    assert len(s.list_decisions("support")) == 4 and s.production_model("support").id == m1.id

    stable = s.set_pin("support", "stable", m1)
    s.set_pin("support", "canary", m3)
    moved = s.set_pin("support", "stable", m2)
    assert (stable.ref, moved.ref) == ("support@1", "support@2")
    assert [(p.name, p.version) for p in s.list_pins("support")] == [("canary", 3), ("stable", 2)]
    removed = s.remove_pin("support", "canary")
    assert (removed.name, removed.version, removed.model_id) == ("canary", 3, m3.id)
    assert [p.name for p in s.list_pins("support")] == ["stable"]
    assert [(p.name, p.version) for p in s.pin_history("support")] == [
        ("stable", 1),
        ("canary", 3),
        ("stable", 2),
        ("canary", None),
    ]
    with pytest.raises(NotFoundError, match="no pin named 'canary'"):
        s.remove_pin("support", "canary")
    with pytest.raises(NotFoundError):
        s.set_pin("support", "x", other)
    with pytest.raises(StoreError, match="invalid pin name"):
        s.set_pin("support", "Not A Name", m1)
    evaluation = s.add_evaluation(run, candidate="support@1+short", dataset=holdout, metrics={}, model=m1)
    assert s.list_evaluations(model=m1) == [evaluation] and s.list_evaluations(model=m2) == []


def test_public_api_is_sorted_and_complete() -> None:
    assert store_pkg.__all__ == sorted(store_pkg.__all__)
    assert all(hasattr(store_pkg, name) for name in store_pkg.__all__)


def test_values_are_frozen_and_outlive_the_store(instil_home: Path) -> None:
    with Store.open() as s:
        v = s.put_dataset("d", [ex(1)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.version = 2  # type: ignore[misc]
    assert (v.ref, v.short_hash) == ("d@1", v.sha256[:12])


# ---- concurrency -----------------------------------------------------------------------------------------------------
# Workers start together at a barrier (spawned interpreters take a while to import), so they really do collide.
def _open_and_count(barrier: Any, results: Any, home: str, url: str | None) -> None:
    barrier.wait()
    with Store.open(url, home=Path(home)) as s:
        results.put(len(s.list_datasets()))


def _write_many(barrier: Any, results: Any, home: str, url: str | None, worker: int, n: int) -> None:
    with Store.open(url, home=Path(home)) as s:
        barrier.wait()
        ids = []
        for i in range(n):
            run = s.start_run(f"job-{worker}", "train", {"i": i})
            s.finish_run(run, "succeeded", metrics={"i": i})
            ids.append(run)
            s.put_dataset("shared", [ex(worker * 10_000 + i)], meta={"worker": worker})
        results.put(ids)


def _run_together(target: Any, args: list[tuple], timeout: float = 120) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(args)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(barrier, results, *a)) for a in args]
    for p in procs:
        p.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < len(procs):  # read before join: a child blocks on exit until its queued result is read
        try:
            out.append(results.get(timeout=0.5))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not failed, f"a worker failed (exit codes {failed}); its traceback is in the captured stderr"
            assert time.monotonic() < deadline, "workers did not finish in time"
    for p in procs:
        p.join(timeout)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_processes_opening_a_fresh_store_at_once_all_succeed(
    backend: str, request: pytest.FixtureRequest, instil_home: Path
) -> None:
    url = url_for(backend, request)
    assert _run_together(_open_and_count, [(str(instil_home), url)] * 4) == [0, 0, 0, 0]
    with Store.open(url) as s, s.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writers_lose_no_row(backend: str, request: pytest.FixtureRequest, instil_home: Path) -> None:
    url, workers, n = url_for(backend, request), 4, 50
    Store.open(url).close()
    run_ids = _run_together(_write_many, [(str(instil_home), url, w, n) for w in range(workers)])
    all_ids = [i for ids in run_ids for i in ids]
    assert len(set(all_ids)) == workers * n
    with Store.open(url) as s:
        runs = s.list_runs()
        assert len(runs) == workers * n and all(r.status == "succeeded" for r in runs)
        versions = s.list_versions("shared")
        assert [v.version for v in versions] == list(range(1, workers * n + 1))
        assert len({v.sha256 for v in versions}) == workers * n
        assert all(s.blobs.verify(v.sha256) for v in versions)


def test_sqlite_write_transactions_take_the_lock_up_front(store: Store) -> None:
    # BEGIN IMMEDIATE: while one store writes, a second connection cannot even start a write transaction.
    engine = create_engine(store.engine.url, connect_args={"timeout": 0.1, "isolation_level": None})
    with store._write() as session, session.begin():
        session.execute(text("SELECT 1"))
        with engine.connect() as other, pytest.raises(Exception, match="locked"):
            other.exec_driver_sql("BEGIN IMMEDIATE")
    engine.dispose()


# ---- liveness: runs whose process died -------------------------------------------------------------------------------
def _set_run(s: Store, run_id: int, **values: Any) -> None:
    """Rewrite columns of a run row behind the API's back (what another host or an old instil would have left)."""
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with s.engine.begin() as conn:
        conn.execute(text(f"UPDATE runs SET {sets} WHERE id = :id"), {**values, "id": run_id})


def _start_run_and_die(home: str, url: str | None, how: str) -> int:
    """In a child interpreter: start a run and die without finishing it (os._exit skips every cleanup, as SIGKILL)."""
    script = f"""
import os, signal, sys
from instil.store import Store
s = Store.open({url!r}, home={home!r})
print(s.start_run("support", "train", {{"lr": 1}}), flush=True)
if {how!r} == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
os._exit(3)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode in (3, -signal.SIGKILL), done.stderr[-2000:]
    return int(done.stdout.split()[0])


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_a_run_whose_process_died_is_interrupted_on_the_next_open(how: str, instil_home: Path) -> None:
    run_id = _start_run_and_die(str(instil_home), None, how)
    with Store.open(home=instil_home) as s:
        run = s.get_run(run_id)
        assert run.status == "interrupted" and run.pid is not None and run.host
        assert run.error is not None and f"its process (pid {run.pid} on {run.host}) is gone" in run.error
        assert run.finished_at == run.heartbeat_at  # its last sign of life is the best guess of when it died
        assert s.mark_interrupted() == []  # marked once
        # It may not be finished twice, but a run marked by mistake that turns up may still say how it ended.
        assert s.finish_run(run_id, "failed", error="came back").status == "failed"


def test_live_runs_stay_running_and_a_late_heartbeat_counts_only_off_this_host(any_store: Store) -> None:
    s = any_store
    mine = s.start_run("support", "train")
    now = datetime.now(UTC)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A run of another live process of this host, with a heartbeat long ago: its pid answers for it... unless
        # that pid started after the run did (the pid was reused by a newer process).
        alive, reused = s.start_run("support", "eval"), s.start_run("support", "eval")
        time.sleep(1.5)  # the sleeper's start time is the run's start time at whole-second resolution
        _set_run(s, alive, pid=sleeper.pid, created_at=now, heartbeat_at=now - timedelta(minutes=2))
        _set_run(s, reused, pid=sleeper.pid, created_at=now - timedelta(hours=1))
        # Another host: only the heartbeat tells.
        fresh, stale = s.start_run("support", "curate"), s.start_run("support", "curate")
        _set_run(s, fresh, host="gpu-7", pid=1, heartbeat_at=now - timedelta(minutes=1))
        _set_run(s, stale, host="gpu-7", pid=1, heartbeat_at=now - timedelta(minutes=12))
        # A run recorded by an instil from before pids and heartbeats.
        legacy = s.start_run("support", "split")
        _set_run(s, legacy, host=None, pid=None, heartbeat_at=None, created_at=now - timedelta(hours=3))

        marked = {r.id: r for r in s.mark_interrupted()}
        assert sorted(marked) == sorted([reused, stale, legacy])
        assert "is gone" in (marked[reused].error or "")
        assert (marked[stale].error or "").startswith("no heartbeat for 12 min (pid 1 on gpu-7)")
        assert (marked[legacy].error or "").startswith("no heartbeat for 180 min;")
        assert [s.get_run(i).status for i in (mine, alive, fresh)] == ["running"] * 3
    finally:
        sleeper.kill()
        sleeper.wait()
    with Store.open(s.engine.url.render_as_string(hide_password=False), home=s.home) as other:
        assert other.get_run(alive).status == "interrupted"  # gone now
        assert other.get_run(mine).status == "running"  # this process's store still beats for it


def test_heartbeats_keep_a_run_alive_and_bring_back_one_marked_by_mistake(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = any_store
    run = s.start_run("support", "train")
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    _set_run(s, run, status="interrupted", error="no heartbeat for 60 min", finished_at=long_ago, heartbeat_at=long_ago)
    s.beat()
    back = s.get_run(run)
    assert (back.status, back.error, back.finished_at) == ("running", None, None)
    assert back.heartbeat_at is not None and back.heartbeat_at > long_ago
    s.finish_run(run, "succeeded")
    s.beat()  # a finished run is no longer beaten for
    assert s.get_run(run).status == "succeeded"

    # The store's own thread beats on its own.
    monkeypatch.setattr("instil.store.store.HEARTBEAT_S", 0.05)
    with Store.open(s.engine.url.render_as_string(hide_password=False), home=s.home) as beating:
        second = beating.start_run("support", "train")
        _set_run(beating, second, heartbeat_at=long_ago)
        deadline = time.monotonic() + 10
        while beating.get_run(second).heartbeat_at == long_ago and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beating.get_run(second).heartbeat_at > long_ago
        thread = beating._beater
    assert thread is not None and not thread.is_alive()  # close() stops it


# ---- paths: a home can be moved --------------------------------------------------------------------------------------
def test_paths_inside_the_home_are_stored_relative_and_follow_a_moved_home(tmp_path: Path) -> None:
    home = tmp_path / "proj" / ".instil"
    with Store.open(home=home) as s:
        run = s.start_run("support", "train")
        folder = home / "models" / "support" / "run-1"
        base = home / "models" / "tiny" / "abc"
        model = s.register_model(
            "support",
            base_model="tiny",
            path=folder,
            run_id=run,
            meta={"model_info": {"path": str(base), "base": "tiny"}, "seed": 1},
        )
        hub = s.register_model(
            "support",
            base_model="Qwen/Qwen3-0.6B",
            path="/srv/exported/support-2",
            meta={"model_info": {"path": "Qwen/Qwen3-0.6B"}},
        )
        s.add_artifact(run, "model", folder, sha256="0" * 64)
        s.add_artifact(run, "report", "/srv/reports/r.html")
        assert model.path == str(folder.resolve()) and model.meta["model_info"]["path"] == str(base.resolve())
        with s.engine.connect() as conn:
            rows = conn.execute(text("SELECT path, meta FROM models ORDER BY id")).all()
            artifacts = [r[0] for r in conn.execute(text("SELECT path FROM artifacts ORDER BY id"))]
        assert [r[0] for r in rows] == ["models/support/run-1", "/srv/exported/support-2"]
        assert '"models/tiny/abc"' in str(rows[0][1]) and "Qwen/Qwen3-0.6B" in str(rows[1][1])
        assert artifacts == ["models/support/run-1", "/srv/reports/r.html"]

    moved = tmp_path / "copy" / ".instil"
    shutil.move(str(tmp_path / "proj"), str(tmp_path / "copy"))
    with Store.open(home=moved) as s:
        again = s.get_model("support", 1)
        assert again.path == str((moved / "models" / "support" / "run-1").resolve())
        assert again.meta["model_info"] == {"path": str((moved / "models/tiny/abc").resolve()), "base": "tiny"}
        assert s.get_model("support", 2).path == "/srv/exported/support-2"  # outside the home: as it was
        assert s.get_model("support", 2).meta["model_info"] == hub.meta["model_info"]  # a hub id is no path
        assert [a.path for a in s.list_artifacts(run)] == [again.path, "/srv/reports/r.html"]


def test_the_migration_makes_an_old_stores_paths_relative(tmp_path: Path) -> None:
    from alembic import command

    from instil.store.db import WRITE, alembic_config, create_store_engine

    home = tmp_path / ".instil"
    home.mkdir()
    engine = create_store_engine(f"sqlite:///{home / 'instil.db'}")
    config = alembic_config()
    with engine.connect() as conn:  # a store as instil left it before paths were relative
        conn.execution_options(**WRITE)
        with conn.begin():
            config.attributes["connection"] = conn
            command.upgrade(config, "0002_registry")
            now = datetime.now(UTC)
            conn.execute(
                text(
                    "INSERT INTO runs (id, job, kind, status, config, created_at) "
                    "VALUES (1, 'support', 'train', 'succeeded', '{}', :now)"
                ),
                {"now": now},
            )
            for i, path in enumerate([home / "models" / "a", Path("/elsewhere/b")], start=1):
                meta = json.dumps({"model_info": {"path": str(home / "models" / "tiny" / "t")}})
                conn.execute(
                    text(
                        "INSERT INTO models (id, job, version, run_id, base_model, path, status, created_at, meta) "
                        "VALUES (:i, 'support', :i, 1, 'tiny', :path, 'candidate', :now, :meta)"
                    ),
                    {"i": i, "path": str(path), "now": now, "meta": meta},
                )
            conn.execute(
                text("INSERT INTO artifacts (run_id, kind, path, created_at) VALUES (1, 'model', :p, :now)"),
                {"p": str(home / "models" / "a"), "now": now},
            )
    engine.dispose()
    with Store.open(home=home) as s, s.engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT path FROM models ORDER BY id"))] == [
            "models/a",
            "/elsewhere/b",
        ]
        assert conn.execute(text("SELECT path FROM artifacts")).scalar() == "models/a"
        assert s.get_model("support", 1).meta["model_info"]["path"] == str((home / "models/tiny/t").resolve())
        assert s.get_run(1).pid is None  # the new columns are there, empty for old runs
