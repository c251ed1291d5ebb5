"""Rollouts (instil.rollout, instil.serve.router): the canary guard's error bound and power, rollouts in the store,
and a whole rollout on loopback with the real openai client: traffic captured, a worse canary stopped by the guard,
a shadow compared, a good canary promoted through the gate, and a rollback, all on a running server."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from instil import rollout
from instil.errors import InstilError, NotFoundError
from instil.eval.sequential import CanaryGuard
from instil.spec import load_spec
from instil.store import Store, TraceFilter


# ---- the guard -------------------------------------------------------------------------------------------------------
def _canary(guard: CanaryGuard, p_candidate: float, p_production: float, share: float, n: int, seed: int) -> int | None:
    """Feed ``n`` requests (a ``share`` of them the candidate's) to ``guard``; the request it stopped at, or None."""
    r = random.Random(seed)
    for _ in range(n):
        arm = "candidate" if r.random() < share else "production"
        if guard.update(arm, r.random() < (p_candidate if arm == "candidate" else p_production)):
            return guard.stopped_at
    return None


def _naive_z_stop(p_candidate: float, p_production: float, share: float, n: int, seed: int) -> bool:
    """What a fixed-sample one-sided z-test at 5%, checked after every request, would do on the same stream."""
    r = random.Random(seed)
    k = {"candidate": [0, 0], "production": [0, 0]}
    for _ in range(n):
        arm = "candidate" if r.random() < share else "production"
        k[arm][0] += r.random() < (p_candidate if arm == "candidate" else p_production)
        k[arm][1] += 1
        (fc, nc), (fp, np_) = k["candidate"], k["production"]
        if nc >= 10 and np_ >= 10:
            pooled = (fc + fp) / (nc + np_)
            se = math.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / np_))
            if se > 0 and (fc / nc - fp / np_) / se > 1.645:
                return True
    return False


def test_the_guard_rarely_stops_an_equal_canary_however_often_it_looks_where_a_repeated_z_test_does():
    runs = 150
    stops = sum(_canary(CanaryGuard(alpha=0.05), 0.1, 0.1, 0.2, 2000, s) is not None for s in range(runs))
    naive = sum(_naive_z_stop(0.1, 0.1, 0.2, 2000, s) for s in range(runs))
    # The guard's bound is 5% over an unbounded run; 150 runs of an equal canary put it well under 10%.
    assert stops / runs <= 0.10, stops
    assert naive / runs >= 0.2, naive  # peeking after every request: the fixed-sample test's 5% is long gone


def test_the_guard_stops_a_worse_canary_soon_and_tolerates_the_margin():
    at = [_canary(CanaryGuard(alpha=0.05), 0.3, 0.1, 0.1, 4000, s) for s in range(30)]
    assert all(a is not None for a in at) and sorted(at)[15] < 1500  # 3x the failures, 10% of traffic
    assert _canary(CanaryGuard(alpha=0.05), 1.0, 0.0, 0.5, 500, 1) < 40  # a broken candidate goes in seconds
    within = sum(_canary(CanaryGuard(alpha=0.05, margin=0.1), 0.15, 0.1, 0.3, 2000, s) is not None for s in range(40))
    assert within <= 2  # five points worse is inside a ten-point margin


def test_the_guard_groups_by_arrival_and_says_why():
    g = CanaryGuard(alpha=0.1)
    assert g.wealth == 1.0 and g.threshold == pytest.approx(10.0)
    for _ in range(5):
        g.update("candidate", True)
    assert g.groups == 0 and g.wealth == 1.0  # nothing to compare with until production answers
    g.update("production", False)
    assert g.groups == 1 and g.wealth > 1.0
    arm = "production"
    while not g.update(arm, arm == "candidate"):
        arm = "candidate" if arm == "production" else "production"
    assert g.stopped_at == g.n["candidate"] + g.n["production"]
    g.update("candidate", False)
    assert g.stopped and g.stopped_at == g.n["candidate"] + g.n["production"] - 1  # stopped stays stopped
    assert "worse than production with 90% confidence" in g.reason() and "production 0/" in g.reason()
    for bad in ({"alpha": 0}, {"alpha": 1.5}, {"margin": -0.1}, {"margin": 1.0}):
        with pytest.raises(ValueError):
            CanaryGuard(**bad)
    with pytest.raises(ValueError):
        g.update("shadow", True)


def test_canary_buckets_are_sticky_per_user_and_split_by_share():
    from instil.serve.router import canary_bucket

    assert canary_bucket("j", 3, "ana") == canary_bucket("j", 3, "ana")
    buckets = [canary_bucket("j", 3, f"user-{i}") for i in range(4000)]
    assert min(buckets) >= 0 and max(buckets) < 100
    assert 0.08 < sum(b < 10 for b in buckets) / 4000 < 0.12
    # raising the share keeps everyone already in the canary in it
    assert {i for i, b in enumerate(buckets) if b < 10} <= {i for i, b in enumerate(buckets) if b < 30}


# ---- rollouts in the store -------------------------------------------------------------------------------------------
def _models(store: Store, job: str, n: int) -> list:
    return [store.register_model(job, base_model="tiny", path=f"/nowhere/{k}") for k in range(n)]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_one_rollout_runs_per_job_and_a_decision_ends_it(backend, request, instil_home: Path):
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    with Store.open(url, home=instil_home) as store:
        v1, v2, v3 = _models(store, "j", 3)
        store.record_decision("j", kind="gate", model=v1, promoted=True, production_before=None)
        with pytest.raises(InstilError, match="production version already"):
            store.start_rollout("j", v1, mode="canary", percent=10)
        r = store.start_rollout("j", v2, mode="shadow", percent=100, settings={"alpha": 0.05})
        assert (r.running, r.version, r.production_version, r.ref) == (True, 2, 1, "j@2")
        with pytest.raises(InstilError, match="already being rolled out") as e:
            store.start_rollout("j", v3, mode="canary", percent=10)
        assert "instil rollout abort" in e.value.hint
        canary = store.start_rollout("j", v2, mode="canary", percent=25)  # the same version: replaces the shadow
        assert [x.status for x in store.list_rollouts("j")] == ["replaced", "running"]
        assert store.running_rollout("j") == canary
        with pytest.raises(NotFoundError):
            store.end_rollout("j", "stopped", "a guard of an older rollout", rollout_id=r.id)
        for bad in (
            {"mode": "blue", "percent": 10},
            {"mode": "canary", "percent": 0},
            {"mode": "canary", "percent": 101},
        ):  # noqa: E501
            with pytest.raises(InstilError):
                store.start_rollout("j", v2, **bad)

        # production moving under a canary ends it; promoting its own candidate ends it as promoted
        store.record_decision("j", kind="gate", model=v3, promoted=True, production_before=v1)
        ended = store.list_rollouts("j")[-1]
        assert ended.status == "aborted" and "production changed" in ended.reason and ended.ended_at is not None
        store.start_rollout("j", v2, mode="canary", percent=10)
        store.record_decision("j", kind="gate", model=v2, promoted=True, production_before=v3)
        assert store.list_rollouts("j")[-1].status == "promoted"
        with pytest.raises(NotFoundError):
            store.end_rollout("j", "aborted", "nothing runs")


# ---- a whole rollout on loopback -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(spec file, home) of the always-``red`` job with three versions: v1 trained on ``blue`` answers and put in
    production by hand (short answers, all wrong), v2 trained on the real ``red`` ones (right), v3 a single step
    (it says nothing, which the job's reference-free ``short`` grader, 1 to 8 characters, fails online)."""
    pytest.importorskip("torch")
    from instil.data.records import Example, Message
    from instil.jobdata import curate_job, dataset_name, split_job
    from instil.train.sft import train_sft
    from test_registry import write_job

    root = tmp_path_factory.mktemp("rollout")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTIL_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("INSTIL_DB_URL", raising=False)
        spec_file = write_job(root / "job")
        text = spec_file.read_text(encoding="utf-8")
        assert "max_chars: 8}" in text
        spec_file.write_text(text.replace("max_chars: 8}", "min_chars: 1, max_chars: 8}"), encoding="utf-8")
        spec = load_spec(spec_file)
        with Store.open(home=home) as store:
            curate_job(spec, store)
            split_job(spec, store)
            train = store.get_dataset(dataset_name(spec, "train"))
            wrong = [
                Example([*e.messages[:-1], Message("assistant", "blue")], id=e.id) for e in store.iter_examples(train)
            ]
            blue = store.put_dataset("colors:blue", wrong, parents=[train])
            v1 = train_sft(spec, store, max_steps=8, progress=False, dataset=blue).model
            train_sft(spec, store, max_steps=8, progress=False, dataset=train)
            train_sft(spec, store, max_steps=1, progress=False, dataset=train)
            store.record_decision(spec.name, kind="gate", model=v1, promoted=True, production_before=None)
    return root / "job" / "instil.yaml", home


@pytest.fixture
def served(versions, instil_home: Path) -> Iterator[tuple]:
    """The job served on loopback with capture and the rollout router (re-reading the store every 0.1 s)."""
    import shutil

    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from instil.serve.job import job_app, job_catalog, trace_log
    from instil.serve.router import RolloutRouter
    from servers import serve_app

    spec_file, home = versions
    shutil.copytree(home, instil_home)
    spec = load_spec(spec_file)
    with Store.open(home=instil_home) as store:
        catalog = job_catalog(spec, store, versions=[1, 2, 3])
        catalog.refresh_s = 0.1
        traces = trace_log(spec, store).start()
        router = RolloutRouter(store, spec.name, refresh_s=0.1, traces=traces).start()
        app = job_app(spec, store, catalog=catalog, traces=traces, router=router, max_new_tokens_cap=8)
        try:
            with serve_app(app) as url:
                yield spec, store, url, router
        finally:
            router.close()
            traces.close()


def _ask(url: str) -> Callable[..., object]:
    import openai

    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)

    def ask(user: str | None = None, model: str = "colors", stream: bool = False) -> object:
        kwargs = {"user": user} if user else {}
        r = c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "colour of item 7?"}], max_tokens=8, stream=stream,
            **kwargs,
        )  # fmt: skip
        if stream:
            parts = list(r)
            return parts[0].model, "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
        return r.model, r.choices[0].message.content

    return ask


def _until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_rollout_end_to_end_on_a_running_server(served):
    spec, store, url, router = served
    ask = _ask(url)
    job = spec.name
    assert ask() == ("colors@1", "blue")  # production, before any rollout
    assert ask(model="colors@3")[0] == "colors@3"  # a version asked by name is never routed

    # A canary of the one-step version: half the users get it, each always the same, until the guard stops it.
    r = rollout.start(spec, store, 3, percent=50)
    _until(lambda: router.current is not None)
    seen: dict[str, set[str]] = {}
    for k in range(200):
        if router.current is None:  # the guard stopped it (the store hears within a refresh)
            break
        user = f"user-{k % 20}"
        model, _ = ask(user)
        if router.current is not None:  # answered while the canary ran (not just after its stop)
            seen.setdefault(user, set()).add(model)
    _until(lambda: store.running_rollout(job) is None)
    stopped = store.list_rollouts(job)[-1]
    assert stopped.id == r.id and stopped.status == "stopped", stopped
    assert "worse than production" in stopped.reason and stopped.summary["stopped"]
    assert all(len(models) == 1 for models in seen.values())  # sticky: nobody flipped between versions
    assert {m for models in seen.values() for m in models} == {"colors@1", "colors@3"}
    _until(lambda: router.current is None)
    assert {ask(f"user-{k}")[0] for k in range(20)} == {"colors@1"}  # stopped: production answers everyone

    status = rollout.status(spec, store, r.id)
    cand, prod = status.arm("candidate"), status.arm("production")
    assert cand.versions == (3,) and prod.versions == (1,)
    assert cand.pass_rate.estimate < prod.pass_rate.estimate and prod.pass_rate.estimate == 1.0
    assert status.guard.stopped and status.graded
    routed = store.list_traces(TraceFilter(job=job, rollout_id=r.id), limit=None)
    assert {(t.arm, t.version) for t in routed} == {("candidate", 3), ("production", 1)}

    # A shadow of v2: callers get production's answer; v2 answers the same requests unseen, and the pair is compared.
    sh = rollout.start(spec, store, 2, mode="shadow")
    _until(lambda: router.current is not None and router.current.id == sh.id)
    answers = [ask("ana"), ask(None, stream=True), ask("bo")]
    assert [a[1] for a in answers] == ["blue"] * 3 and {a[0] for a in answers} == {"colors@1"}
    _until(lambda: store.count_traces(TraceFilter(job=job, rollout_id=sh.id, arm="shadow")) == 3)
    shadowed = rollout.status(spec, store, sh.id)
    assert shadowed.pairs == 3 and shadowed.agreed == 0 and len(shadowed.disagreements) == 3
    shadow_traces = store.list_traces(TraceFilter(job=job, rollout_id=sh.id, arm="shadow"), limit=None)
    assert {t.output for t in shadow_traces} == {"red"} and {t.version for t in shadow_traces} == {2}
    assert {t.user for t in shadow_traces} == {"ana", "bo", None}

    # The same version as a canary, then promoted: the online evidence, then the gate on the frozen holdout.
    rollout.start(spec, store, 2, percent=50)
    _until(lambda: router.current is not None and router.current.mode == "canary")
    with pytest.raises(InstilError, match="answered .* of the 50 requests"):
        rollout.promote(spec, store, min_requests=50)
    for k in range(30):
        ask(f"user-{k}")
    done = rollout.promote(spec, store, min_requests=5)
    assert done.promotion.promoted and done.rollout.status == "promoted"
    assert store.production_model(job).version == 2
    _until(lambda: ask("user-1")[0] == "colors@2", timeout_s=5)  # a running server, no restart

    # Rollback reaches the running server too.
    from instil.registry import rollback

    rollback(store, job)
    _until(lambda: ask("user-1") == ("colors@1", "blue"), timeout_s=5)


def test_promotion_refuses_a_stopped_or_unready_rollout_and_abort_ends_routing(served):
    spec, store, url, router = served
    ask = _ask(url)
    with pytest.raises(NotFoundError, match="no running rollout"):
        rollout.promote(spec, store)
    with pytest.raises(InstilError, match="unknown rollout mode"):
        rollout.start(spec, store, 2, mode="blue")
    rollout.start(spec, store, 2, percent=100)
    _until(lambda: router.current is not None)
    assert ask("x")[0] == "colors@2"
    with pytest.raises(InstilError, match="needs before promotion"):
        rollout.promote(spec, store)  # the spec's 200 requests
    rollout.abort(store, spec.name, "changed my mind")
    _until(lambda: router.current is None)
    assert ask("x")[0] == "colors@1"
    assert store.list_rollouts(spec.name)[-1].reason == "changed my mind"


def test_cli_rollout_start_status_promote_abort(versions, instil_home: Path, capsys, monkeypatch):
    import json
    import shutil

    from instil.cli import main

    spec_file, home = versions
    shutil.copytree(home, instil_home)
    monkeypatch.chdir(spec_file.parent)
    assert main(["rollout", "status", str(spec_file)]) == 1
    assert "never been rolled out" in capsys.readouterr().err
    assert main(["rollout", "start", str(spec_file), "--version", "2", "--canary", "5", "--shadow"]) == 2
    assert main(["rollout", "start", str(spec_file), "--version", "9"]) == 1
    assert "has no model version 9" in capsys.readouterr().err
    assert main(["rollout", "start", str(spec_file), "--version", "2", "--canary", "5"]) == 0
    assert "5% of requests for 'colors' go to colors@2" in capsys.readouterr().out
    assert main(["rollout", "status", str(spec_file), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["candidate"], shown["mode"], shown["status"], shown["guard"]["stopped"]) == (
        "colors@2",
        "canary",
        "running",
        False,
    )
    assert [a["arm"] for a in shown["arms"]] == ["production", "candidate"]
    assert main(["rollout", "status", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "rollout 1: colors@2 as a canary on 5%" in out and "no evidence yet" in out
    assert main(["rollout", "promote", str(spec_file)]) == 1  # no traffic yet: not enough evidence
    assert "needs before promotion" in capsys.readouterr().err
    assert main(["rollout", "promote", str(spec_file), "--min-requests", "0"]) == 0  # then the gate passes it
    assert "rollout 1: promoted" in capsys.readouterr().out
    assert main(["rollout", "start", str(spec_file), "--version", "3", "--shadow", "--percent", "20"]) == 0
    assert main(["rollout", "abort", str(spec_file), "--reason", "enough"]) == 0
    assert "aborted" in capsys.readouterr().out
    assert main(["rollout", "abort", str(spec_file)]) == 1
    assert "no running rollout" in capsys.readouterr().err


def _post(url: str, body: dict) -> tuple[int, dict]:
    """POST /v1/feedback (no client of ours sends it: the openai client has no such call)."""
    import json

    from test_serve import raw

    return raw(url, "/feedback", json.dumps(body).encode(), key=None)


def test_feedback_over_http_joins_the_review_queue(served, monkeypatch):
    import openai

    import instil.serve.feedback

    spec, store, url, _ = served
    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    r = c.chat.completions.create(model="colors", messages=[{"role": "user", "content": "colour?"}], max_tokens=4)
    status, body = _post(url, {"id": r.id, "rating": 0, "correction": "red", "user": "ana"})
    assert status == 200, body  # straight after the answer: the route waits for the trace
    assert (body["object"], body["trace_id"], body["status"]) == ("feedback", r.id, "queued")
    (item,) = store.list_review_items(spec.name, kind="feedback")
    assert (item.id, item.output, item.suggestion, item.rating, item.meta["by"]) == (
        body["id"],
        "blue",
        "red",
        0,
        "ana",
    )
    status, bad = _post(url, {"id": r.id, "rating": 7})
    assert status == 400 and bad["error"]["param"] is not None
    assert _post(url, {"id": r.id})[0] == 400  # nothing said
    monkeypatch.setattr(instil.serve.feedback, "WAIT_S", 0.1)
    status, gone = _post(url, {"id": "chatcmpl-nosuchanswer", "rating": 1})
    assert status == 404 and gone["error"]["code"] == "trace_not_found"


def test_the_servers_guard_takes_outcomes_in_arrival_order_whenever_they_come():
    from datetime import UTC, datetime

    from instil.serve.router import _Watch
    from instil.store import RolloutInfo, Trace

    r = RolloutInfo(1, "j", 2, 2, "canary", 50.0, "running", datetime.now(UTC), 1, {"alpha": 0.05, "margin": 0.0})
    w = _Watch(r)

    def trace(rid: str, arm: str, passed: bool) -> Trace:
        return Trace(rid, "j", datetime.now(UTC), "local", "j@2", [], rollout_id=1, arm=arm, passed=passed)

    first, second, third, fourth = (
        w.arrive("candidate"),
        w.arrive("production"),
        w.arrive("candidate"),
        w.arrive("production"),
    )
    w.end(second, "production", 200, "b", traced=True)
    w.graded([trace("b", "production", True)])
    assert w.guard.n == {"candidate": 0, "production": 0}  # the first in line is still out: nothing taken yet
    w.graded([trace("a", "candidate", False)])  # its grades come before its request ends
    w.end(first, "candidate", 200, "a", traced=True)
    assert w.guard.n == {"candidate": 1, "production": 1} and w.guard.failures["candidate"] == 1
    w.end(third, "candidate", 404, None, traced=True)  # the candidate could not be served: a failure
    w.end(fourth, "production", 400, None, traced=True)  # the client's mistake: no verdict
    assert w.guard.n == {"candidate": 2, "production": 1} and w.guard.failures["candidate"] == 2
    fifth = w.arrive("production")
    w.end(fifth, "production", 503, None, traced=True)  # a server error fails production just the same
    w.graded([trace("zz", "production", False), Trace("x", "j", datetime.now(UTC), "local", "j@1", [], passed=False)])
    assert w.guard.failures["production"] == 1 and w.guard.n["production"] == 2
    sixth = w.arrive("candidate")
    w.end(sixth, "candidate", 200, "c", traced=False)  # not kept (store: false): no verdict, the line moves on
    seventh = w.arrive("production")
    w.end(seventh, "production", None, None, traced=True)  # gone before any answer
    assert w.guard.n == {"candidate": 2, "production": 2}


def test_a_full_turn_from_feedback_to_a_promoted_version_on_a_running_server(served):
    """The loop closed on live traffic: users say production's answers are wrong, a scripted reviewer takes their
    corrections through the queue, the watch trains the next version, gates it on the frozen holdout, puts it on a
    canary, and promotes it once it has answered enough; the running server answers with it, no restart."""
    from instil import review
    from instil.watch import turn

    spec, store, url, router = served
    spec.rollout = spec.rollout.model_copy(update={"canary_percent": 50.0, "min_requests": 6})
    spec.monitor = spec.monitor.model_copy(update={"retrain_after_failures": 3})
    ask = _ask(url)
    import openai

    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    started = time.monotonic()
    assert turn(spec, store).action == "waiting"  # nothing said yet
    for k in range(4):  # production answers "blue"; four users say it should have been "red"
        r = c.chat.completions.create(model="colors", messages=[{"role": "user", "content": f"colour of item {k}?"}],
                                      max_tokens=8, user=f"user-{k}")  # fmt: skip
        assert r.choices[0].message.content == "blue"
        assert _post(url, {"id": r.id, "rating": 0, "correction": "red", "user": f"user-{k}"})[0] == 200
    assert turn(spec, store).action == "nothing to learn"  # due, but nobody reviewed anything yet

    for g in review.groups(spec, store):  # the scripted reviewer: look, then take each user's correction
        assert all(i.kind == "feedback" and i.suggestion == "red" for i in g.items)
        review.decide(spec, store, g.ids, "correct", correction="red", by="script")

    trained = turn(spec, store, max_steps=8)
    assert trained.action == "canary started", trained.detail
    new = trained.model.version
    assert trained.promotion.dry_run and trained.promotion.decision.promoted  # gated before any user saw it
    assert trained.rollout.settings["started_by"] == "watch"
    _until(lambda: router.current is not None and router.current.version == new)
    assert turn(spec, store).action == "canary running"
    for k in range(40):
        ask(f"user-{k}")
    done = turn(spec, store)
    assert done.action == "promoted", done.detail
    assert store.production_model(spec.name).version == new
    _until(lambda: ask("anyone") == (f"colors@{new}", "red"), timeout_s=5)
    again = turn(spec, store, force=True)  # the same reviewed data: a version learnt from it already
    assert again.action == "nothing to learn", again.detail
    print(f"a full turn (feedback to a promoted version) took {time.monotonic() - started:.1f} s")


def test_the_learn_stage_can_take_the_pool_through_the_served_api_as_traces(versions, instil_home: Path):
    """What the quickstart's second turn does: the pool replayed through the served production model with the real
    openai client, each answer a trace, judged against the pool's references and corrected through the queue."""
    import shutil

    from colour_jobs import PROMPT, ticket
    from instil.data.records import Example, Message
    from instil.learn import learn_from_failures
    from instil.serve.replay import REPLAY_TAG, replay

    spec_file, home = versions
    shutil.copytree(home, instil_home)
    spec = load_spec(spec_file)
    with Store.open(home=instil_home) as store:
        pool = [
            Example(
                [Message("system", PROMPT), Message("user", ticket(300 + i)), Message("assistant", "red")], id=f"p{i}"
            )
            for i in range(6)
        ]
        store.put_dataset("colors:pool", pool, kind="pool")
        v1 = store.production_model(spec.name)
        outcome = learn_from_failures(spec, store, v1, traffic=replay)
        assert "through the served API (6 requests, each a trace)" in outcome.summary()
        assert (outcome.scored, outcome.failed, outcome.added) == (6, 6, 6)  # v1 says blue, the pool says red
        traced = store.list_traces(TraceFilter(job=spec.name, tag=REPLAY_TAG), limit=None)
        assert len(traced) == 6 and {t.output for t in traced} == {"blue"} and {t.version for t in traced} == {1}
        assert all(t.messages[0]["content"] == spec.short_prompt for t in traced)  # the server added its prompt
        items = store.list_review_items(spec.name, kind="failed")
        assert {i.trace_id for i in items} == {t.id for t in traced}
        assert {i.decided_by for i in items} == {review_name()}
        sft = list(store.iter_examples(outcome.corrections))
        assert {e.key() for e in sft} == {f"p{i}" for i in range(6)} and {e.messages[-1].content for e in sft} == {
            "red"
        }


def review_name() -> str:
    from instil.review import ReferenceReviewer

    return ReferenceReviewer.name
