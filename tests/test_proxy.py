"""Proxy mode: the real ``openai`` client through instil's proxy to a real upstream on loopback (an instil server
playing the team's prompted model), streaming chunk by chunk, errors passed through, every answer a trace."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import free_port, serve_app

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")
openai = pytest.importorskip("openai")
pytest.importorskip("torch")

from instil.data.records import Example, Message  # noqa: E402
from instil.serve import create_app  # noqa: E402
from instil.serve.capture import TraceLog  # noqa: E402
from instil.serve.proxy import create_proxy_app  # noqa: E402
from instil.spec import UpstreamSpec  # noqa: E402
from instil.store import Store, TraceFilter  # noqa: E402
from tiny_models import scaled_tiny  # noqa: E402

UPSTREAM_KEY = "sk-upstream"
PROXY_KEY = "sk-proxy"
NAME = "team-model"
TICKETS = ["My invoice is wrong", "The app crashes", "Where is my parcel?", "Delete my account"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Iterator[str]:
    """An instil server on loopback standing in for the team's current, prompted model."""
    texts = [Example([Message("user", t), Message("assistant", "billing")]) for t in TICKETS]
    model, tokenizer, renderer = scaled_tiny(texts * 3, tmp_path_factory.mktemp("tiny") / "llama")
    app = create_app(model, tokenizer, renderer, model_name=NAME, api_key=UPSTREAM_KEY, max_new_tokens_cap=16)
    with serve_app(app) as url:
        yield url


@pytest.fixture
def proxied(upstream: str, store: Store) -> Iterator[tuple[str, TraceLog]]:
    log = TraceLog(store, flush_s=0.0).start()
    up = UpstreamSpec(name="team", base_url=upstream, input_price_per_million=1.0, output_price_per_million=2.0)
    app = create_proxy_app(
        [up], job="triage", api_key=PROXY_KEY, on_trace=log.capture, keys={"team": UPSTREAM_KEY}, trace_log=log
    )
    try:
        with serve_app(app) as url:
            yield url, log
    finally:
        log.close()


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30.0)


def drained(store: Store, log: TraceLog, n: int) -> list:
    import time

    deadline = time.monotonic() + 20
    while store.count_traces() < n:
        assert time.monotonic() < deadline, f"{store.count_traces()} traces, wanted {n}"
        time.sleep(0.02)
    return store.list_traces(limit=None, oldest_first=True)


def test_answers_pass_through_unchanged_and_each_is_a_trace(upstream, proxied, store: Store) -> None:
    url, log = proxied
    messages = [{"role": "user", "content": TICKETS[0]}]
    direct = client(upstream, UPSTREAM_KEY).chat.completions.create(model=NAME, messages=messages, max_tokens=8)
    via = client(url, PROXY_KEY).chat.completions.create(
        model=NAME,
        messages=messages,
        max_tokens=8,
        user="ana",
        metadata={"ticket": "T-1"},
        extra_headers={"X-Instil-Tags": "beta, mobile"},
    )
    assert via.choices[0].message.content == direct.choices[0].message.content  # greedy: the same answer
    assert via.usage == direct.usage and via.model == NAME
    (t,) = drained(store, log, 1)
    assert t.id == via.id and t.source == "proxy" and t.upstream == "team" and t.model == NAME
    assert t.messages == messages and t.output == via.choices[0].message.content and t.status == 200
    assert t.params == {"max_tokens": 8}
    assert (t.prompt_tokens, t.completion_tokens) == (via.usage.prompt_tokens, via.usage.completion_tokens)
    assert t.cost == pytest.approx((t.prompt_tokens * 1.0 + t.completion_tokens * 2.0) / 1e6)
    assert t.user == "ana" and t.meta == {"ticket": "T-1"} and t.tags == ("beta", "mobile")
    assert t.latency_s > 0 and not t.stream


def test_a_stream_is_relayed_chunk_by_chunk_and_traced_whole(upstream, proxied, store: Store) -> None:
    url, log = proxied
    messages = [{"role": "user", "content": TICKETS[1]}]

    def chunks(base: str, key: str) -> list:
        stream = client(base, key).chat.completions.create(
            model=NAME, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
        return list(stream)

    direct, via = chunks(upstream, UPSTREAM_KEY), chunks(url, PROXY_KEY)
    deltas = [[c.choices[0].delta.content for c in got if c.choices] for got in (direct, via)]
    assert deltas[0] == deltas[1] and len(deltas[1]) > 2  # the same chunks, one by one, not one buffered blob
    (t,) = drained(store, log, 1)
    text = "".join(d or "" for d in deltas[1])
    assert t.id == via[0].id and t.stream and t.output == text and t.finish_reason in ("stop", "length")
    assert t.completion_tokens == via[-1].usage.completion_tokens
    assert t.first_token_s is not None and 0 < t.first_token_s <= t.latency_s


def raw(url: str, path: str, body: bytes, key: str | None) -> tuple[int, dict, dict]:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_the_upstreams_errors_come_back_as_they_are_and_are_traced(upstream, proxied, store: Store) -> None:
    url, log = proxied
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    want = raw(upstream, "/chat/completions", json.dumps(body).encode(), UPSTREAM_KEY)
    got = raw(url, "/chat/completions", json.dumps(body).encode(), PROXY_KEY)
    assert got[0] == want[0] == 404 and got[1] == want[1]
    bad = {"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}
    got = raw(url, "/chat/completions", json.dumps(bad).encode(), PROXY_KEY)
    assert got[0] == 400 and got[1]["error"]["param"] == "messages[0].role"  # the upstream's own 400
    traces = drained(store, log, 2)
    assert [t.status for t in traces] == [404, 400] and traces[0].error == want[1]
    assert all(t.id.startswith("trace-") for t in traces)  # an error has no response id
    assert raw(url, "/chat/completions", json.dumps(body).encode(), None)[0] == 401  # the proxy's own key
    no_store = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "store": False}
    assert raw(url, "/chat/completions", json.dumps(no_store).encode(), PROXY_KEY)[0] == 200
    assert store.count_traces(TraceFilter(status=200)) == 0  # store: false is forwarded, never kept


def test_an_unreachable_upstream_is_a_502_and_models_are_routed_by_name(store: Store) -> None:
    dead = UpstreamSpec(name="dead", base_url=f"http://127.0.0.1:{free_port()}/v1", models=["gpt-dead"])
    with serve_app(create_proxy_app([dead], job="triage")) as url:
        body = json.dumps({"model": "gpt-dead", "messages": [{"role": "user", "content": "hi"}]}).encode()
        status, error, _ = raw(url, "/chat/completions", body, None)
        assert (
            status == 502 and error["error"]["code"] == "upstream_unreachable" and "dead" in error["error"]["message"]
        )
        other = json.dumps({"model": "gpt-other", "messages": [{"role": "user", "content": "hi"}]}).encode()
        status, error, _ = raw(url, "/chat/completions", other, None)
        assert status == 404 and error["error"]["code"] == "model_not_found" and "gpt-dead" in error["error"]["message"]
        with pytest.raises(openai.BadRequestError, match="X-Instil-Tags"):
            client(url, "k").chat.completions.create(
                model="gpt-dead", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Instil-Tags": "a b"}
            )


def test_the_clients_key_is_forwarded_when_the_upstream_has_none(upstream, store: Store) -> None:
    up = UpstreamSpec(name="team", base_url=upstream)
    with serve_app(create_proxy_app([up], job="triage")) as url:  # no proxy key, no upstream key: pass-through
        ok = client(url, UPSTREAM_KEY).chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert ok.choices[0].message is not None
        with pytest.raises(openai.AuthenticationError):
            client(url, "sk-wrong").chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}])


def test_instil_serve_proxy_from_the_cli_captures_to_the_store(upstream, tmp_path: Path, instil_home: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "data.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n"
    )
    spec = tmp_path / "instil.yaml"
    spec.write_text(
        "name: triage\nsystem_prompt: Triage.\ngraders: [{name: ok, type: length, max_chars: 400, primary: true}]\n"
        "data: [{path: data.jsonl}]\n"
        f"serve:\n  upstream: {{name: team, base_url: '{upstream}', api_key_env: TEAM_KEY}}\n"
    )
    port = free_port()
    env = os.environ | {"TEAM_KEY": UPSTREAM_KEY, "INSTIL_HOME": str(instil_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "instil.cli", "serve", str(spec), "--proxy", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.2)
        r = client(url, "unused").chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "proxy to team" in out and "1 traces captured, 1 stored" in out
    with Store.open(home=instil_home) as store:
        (t,) = store.list_traces()
    assert t.id == r.id and t.upstream == "team" and t.passed is True and set(t.grades) == {"ok"}


def test_metrics_and_access_logs_count_every_request(proxied, store: Store, caplog) -> None:
    import logging

    url, log = proxied
    caplog.set_level(logging.INFO, logger="instil.serve.access")
    ok = client(url, PROXY_KEY).chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    with pytest.raises(openai.AuthenticationError):
        client(url, "sk-wrong").chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}])
    drained(store, log, 1)
    deadline = time.monotonic() + 10
    while log.stats().spool_bytes:  # stored, and the writer's place moved past it
        assert time.monotonic() < deadline
        time.sleep(0.02)
    base = url.removesuffix("/v1")
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:  # open, like /health: scrapers send no key
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    assert 'instil_requests_total{path="/v1/chat/completions",status="200"} 1.0' in text
    assert 'instil_requests_total{path="/v1/chat/completions",status="401"} 1.0' in text
    assert f'instil_tokens_total{{kind="completion",model="{NAME}"}} {float(ok.usage.completion_tokens)}' in text
    assert "instil_request_seconds_bucket" in text, text
    assert "instil_trace_spool_bytes 0.0" in text, text
    assert "instil_traces_stored 1.0" in text and "instil_trace_store_ok 1.0" in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "instil.serve.access"]
    pairs = {(line["path"], line["status"]) for line in lines}  # the upstream (in this process) logs too
    assert {("/v1/chat/completions", 200), ("/v1/chat/completions", 401)} <= pairs
    assert all(line["ms"] > 0 and line["client"] == "127.0.0.1" for line in lines)
    assert not any(PROXY_KEY in r.getMessage() for r in caplog.records)  # no header reaches the log
    with pytest.raises(urllib.error.HTTPError) as probed:
        urllib.request.urlopen(base + "/probe/a1b2c3", timeout=10)
    assert probed.value.code == 404
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        assert 'path="other",status="404"' in r.read().decode()  # probed URLs share one label


def test_a_missing_upstream_key_or_upstream_is_refused_before_listening(tmp_path: Path, capsys, monkeypatch) -> None:
    from instil.cli import main

    monkeypatch.delenv("NOPE_KEY", raising=False)
    head = "name: j\nsystem_prompt: p\ngraders: [{name: g, type: length, max_chars: 9, primary: true}]\n"
    (tmp_path / "d.jsonl").write_text("")
    spec = tmp_path / "instil.yaml"
    spec.write_text(head + "data: [{path: d.jsonl}]\n")
    assert main(["serve", str(spec), "--proxy"]) == 1
    assert "has no upstream to proxy to" in capsys.readouterr().err
    spec.write_text(
        head + "data: [{path: d.jsonl}]\nserve: {upstream: {base_url: 'http://a/v1', api_key_env: NOPE_KEY}}\n"
    )
    assert main(["serve", str(spec), "--proxy"]) == 1
    said = capsys.readouterr().err
    assert "NOPE_KEY holds no key for the upstream 'default'" in said and "export NOPE_KEY" in said
    assert not (tmp_path / ".instil" / "spool").exists() or not any((tmp_path / ".instil" / "spool").rglob("*.jsonl"))
