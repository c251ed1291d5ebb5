"""The OpenAI-compatible server (instil.serve) on loopback, spoken to by the real ``openai`` client.

A tiny random model with scaled-up weights (so greedy answers differ from prompt to prompt) serves the protocol
tests; a tiny model trained on a colour job serves the end-to-end test, where the served model as an endpoint
candidate of ``instil eval`` must score exactly as the same model evaluated locally.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from colour_jobs import COLORS, PROMPT, words
from servers import free_port, serve_app

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from instil.data.records import Example, Message  # noqa: E402
from instil.errors import InstilError, NotFoundError  # noqa: E402
from instil.eval.generate import generate_local  # noqa: E402
from instil.serve import ServedRequest, create_app, job_app, load_served  # noqa: E402
from instil.spec import EvalEndpointSpec, JobSpec, load_spec  # noqa: E402
from instil.store import Store  # noqa: E402
from tiny_models import scaled_tiny  # noqa: E402

KEY = "sk-test-key"
NAME = "tiny-chat"
CAP = 24
TICKETS = [
    "Hi",
    "My invoice shows a double charge for March.",
    "The app crashes on start. Urgent!",
    "Cannot log in",
    "Where is my parcel?",
    "Please delete my account.",
    "Change my address",
    "Refund order 1234 please",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple:
    """A tiny Llama whose random weights are scaled up, so that answers vary (tiny_models.scaled_tiny)."""
    texts = [
        Example([Message("system", "Triage."), Message("user", t), Message("assistant", "billing")]) for t in TICKETS
    ]
    return scaled_tiny(texts * 3, tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def server(tiny) -> Iterator[tuple[str, list[ServedRequest]]]:
    model, tokenizer, renderer = tiny
    records: list[ServedRequest] = []
    app = create_app(
        model,
        tokenizer,
        renderer,
        model_name=NAME,
        api_key=KEY,
        max_new_tokens_cap=CAP,
        on_request=records.append,
    )
    with serve_app(app) as url:
        yield url, records


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30.0)


def chat(t: str, system: str | None = "Triage.") -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": t}]


def local(tiny: tuple, messages: list[dict], max_new_tokens: int, tools: list[dict] | None = None):
    """What evaluation generates for these messages: the example's answer slot left for the model."""
    model, tokenizer, renderer = tiny
    example = Example([Message.from_dict(m) for m in messages] + [Message("assistant", "reference")], tools=tools)
    return generate_local(model, tokenizer, renderer, [example], system_prompt=None, max_new_tokens=max_new_tokens)[0]


def prompt_tokens(tiny: tuple, messages: list[dict], tools: list[dict] | None = None) -> int:
    _, tokenizer, renderer = tiny
    return len(tokenizer(renderer.prompt(messages, tools=tools), add_special_tokens=False)["input_ids"])


def raw(url: str, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    """A request without the openai client, for what it would not send (bad JSON, no key)."""
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url + path, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- the protocol ----------------------------------------------------------------------------------------------------
def test_answers_equal_local_generation_and_usage_counts_the_tokens(tiny, server):
    url, records = server
    c = client(url)
    texts = []
    for t in TICKETS[:4]:
        r = c.chat.completions.create(model=NAME, messages=chat(t), max_tokens=12, temperature=0)
        g = local(tiny, chat(t), 12)
        [choice] = r.choices
        assert r.object == "chat.completion" and r.model == NAME and r.id.startswith("chatcmpl-")
        assert choice.message.role == "assistant" and choice.message.content == g.text
        assert choice.finish_reason == g.finish_reason and choice.message.tool_calls is None
        assert r.usage.prompt_tokens == prompt_tokens(tiny, chat(t)) == g.input_tokens
        assert r.usage.completion_tokens == g.output_tokens and r.usage.total_tokens == g.input_tokens + g.output_tokens
        if g.finish_reason == "length":
            assert r.usage.completion_tokens == 12
        texts.append(g.text)
    assert len(set(texts)) >= 2  # the answers differ, so equal answers are not equal by accident
    last = records[-1]
    assert last.messages == chat(TICKETS[3]) and last.text == texts[-1] and last.latency_s > 0
    assert last.usage == r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})

    # A multi-turn conversation keeps its earlier turns (assistant and tool ones too); tools reach the prompt.
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    turns = [
        *chat("Where is my parcel?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "in transit"},
        {"role": "assistant", "content": "It is in transit."},
        {"role": "user", "content": "Thanks! When?"},
    ]
    r = c.chat.completions.create(model=NAME, messages=turns, tools=tools, max_completion_tokens=6)
    assert r.usage.prompt_tokens == prompt_tokens(tiny, turns, tools) > prompt_tokens(tiny, turns) + 10
    assert r.choices[0].message.content == local(tiny, turns, 6, tools).text
    assert records[-1].tools == tools and len(records[-1].messages) == 6


def test_stop_strings_streaming_and_sampling(tiny, server):
    url, _ = server
    c = client(url)
    whole = c.chat.completions.create(model=NAME, messages=chat(TICKETS[1]), max_tokens=CAP)
    text = whole.choices[0].message.content
    assert len(text) > 4
    stop = text[2:4]
    cut = c.chat.completions.create(model=NAME, messages=chat(TICKETS[1]), max_tokens=CAP, stop=[stop, "zzz"])
    assert cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"

    stream = c.chat.completions.create(
        model=NAME,
        messages=chat(TICKETS[1]),
        max_tokens=CAP,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {ch.object for ch in chunks} == {"chat.completion.chunk"} and len({ch.id for ch in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) >= whole.usage.completion_tokens // 4  # token by token, not the whole answer in one chunk
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    # A stop string is held back while it may still be forming, so the stream never sends what the answer cuts.
    streamed_cut = c.chat.completions.create(
        model=NAME, messages=chat(TICKETS[1]), max_tokens=CAP, stop=[stop], stream=True
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed_cut if ch.choices) == text[: text.find(stop)]

    # Sampling: a seed makes it repeatable.
    a, b = (
        c.chat.completions.create(model=NAME, messages=chat(TICKETS[2]), max_tokens=10, temperature=1.5, seed=7)
        .choices[0]
        .message.content
        for _ in range(2)
    )
    assert a == b


def test_models_health_and_errors_in_openai_shape(tiny, server):
    url, _ = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == [NAME]
    assert c.models.retrieve(NAME).owned_by == "instil"
    assert raw(url.removesuffix("/v1"), "/health", key=None) == (200, {"status": "ok", "model": NAME, "models": [NAME]})

    with pytest.raises(openai.AuthenticationError) as e:
        client(url, "sk-wrong").chat.completions.create(model=NAME, messages=chat("Hi"))
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    status, body = raw(url, "/models", key=None)
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    assert raw(url, "/chat/completions", b"{not json", key="sk-wrong")[0] == 401  # the key is checked first
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-9", messages=chat("Hi"))
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-9")

    def bad(param: str, **request) -> dict:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(**{"model": NAME, "messages": chat("Hi"), **request})
        assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
        return e.value.body

    assert (
        "messages[2].role"
        in bad("messages[2].role", messages=[*chat("Hi"), {"role": "robot", "content": "x"}])["message"]
    )
    bad("messages", messages=[])
    bad("max_tokens", max_tokens=0)
    assert f"at most {CAP}" in bad("max_tokens", max_tokens=CAP + 1)["message"]
    bad("n", n=2)
    bad("temperature", temperature=3)
    bad("tool_choice", tool_choice="required")
    bad("messages[2].role", messages=[*chat("Hi"), {"role": "assistant", "content": "Hel"}])
    bad(
        "messages[1].content[0]",
        messages=[
            {"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        ],
    )
    too_long = bad("messages", messages=chat(" ".join(f"w{i}" for i in range(3000))), max_tokens=CAP)
    assert too_long["code"] == "context_length_exceeded"
    status, body = raw(url, "/chat/completions", b"{not json")
    assert status == 400 and body["error"]["message"] == "the request body is not valid JSON"
    assert raw(url, "/embeddings", b"{}")[0] == 404
    # Still answering after every refusal.
    assert c.chat.completions.create(model=NAME, messages=chat("Hi"), max_tokens=2).usage.completion_tokens >= 1


def post(url: str, body: bytes, content_type: str | None = "application/json", chunked: bool = False) -> tuple:
    """A raw POST to /chat/completions: (status, the error body)."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    headers = {"authorization": f"Bearer {KEY}"} | ({"content-type": content_type} if content_type else {})
    if chunked:
        conn.request(
            "POST",
            where.path + "/chat/completions",
            iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
            headers=headers,
            encode_chunked=True,
        )
    else:
        conn.request("POST", where.path + "/chat/completions", body, headers=headers)
    response = conn.getresponse()
    status, data = response.status, json.loads(response.read() or b"{}")
    conn.close()
    return status, data.get("error", data)


def test_bad_input_is_the_clients_fault_and_says_which_field(tiny, server):
    url, _ = server
    ok = {"model": NAME, "messages": chat("Hi"), "max_tokens": 2}

    def refused(body: object, status: int = 400, **kw: object) -> dict:
        raw_body = body if isinstance(body, bytes) else json.dumps(body).encode()
        got, error = post(url, raw_body, **kw)
        assert got == status, (got, error)
        return error

    # A seed outside int64 was a 500 ("Overflow when unpacking long long"), even with greedy decoding.
    assert refused({**ok, "seed": 2**64})["param"] == "seed"
    # A lone surrogate, valid JSON escape, was a 500 from the tokenizer.
    lone = json.dumps({**ok, "messages": chat("x")}).replace('"x"', '"\\ud800"').encode()
    assert refused(lone)["param"] == "messages[1]"
    # Strict booleans: "yes" is not true.
    assert refused({**ok, "stream": "yes"})["param"] == "stream"
    # A tool whose parameters are not a JSON Schema was accepted with 200.
    tool = {"type": "function", "function": {"name": "f", "parameters": "zzz"}}
    error = refused({**ok, "tools": [tool]})
    assert error["param"] == "tools[0].function.parameters" and "JSON Schema" in error["message"]
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
    assert refused({**ok, "tools": [bad_schema]})["param"] == "tools[0].function.parameters"
    # A body sent as another content type: say that it must be JSON.
    error = refused(json.dumps(ok).encode(), content_type="text/plain")
    assert "must be a JSON object" in error["message"] and "application/json" in error["message"]
    # Over the context: honest counts, never negative ones.
    error = refused({**ok, "messages": chat(" ".join(f"w{i}" for i in range(3000))), "max_tokens": None})
    assert error["code"] == "context_length_exceeded" and "-" not in error["message"].split("tokens")[0]
    assert "positions" in error["message"]
    # A positive temperature too small to divide by (found by the fuzz test: NaN probabilities, a 500) is greedy.
    assert post(url, json.dumps({**ok, "temperature": 1e-99}).encode())[0] == 200
    # Still answering after every refusal.
    assert post(url, json.dumps(ok).encode())[0] == 200


def test_bodies_past_the_bound_are_refused_before_they_are_read(tiny):
    model, tokenizer, renderer = tiny
    app = create_app(model, tokenizer, renderer, model_name=NAME, api_key=KEY, max_body_bytes=256 * 1024)
    big = json.dumps({"model": NAME, "messages": chat("x " * 200_000)}).encode()  # about 400 KB
    with serve_app(app) as url:
        for chunked in (False, True):  # by Content-Length, and counted as a chunked body streams in
            status, error = post(url, big, chunked=chunked)
            assert (status, error["code"]) == (413, "body_too_large"), (chunked, error)
            assert "262,144 bytes" in error["message"]
        # Under the bound but far past the context (4,096 positions, 32 characters each): refused at once, before
        # rendering or tokenizing.
        long = json.dumps({"model": NAME, "messages": chat("x " * 80_000)}).encode()  # about 160 KB
        status, error = post(url, long)
        assert status == 400 and error["code"] == "context_length_exceeded" and "characters" in error["message"]
        assert post(url, json.dumps({"model": NAME, "messages": chat("Hi"), "max_tokens": 2}).encode())[0] == 200


def test_concurrent_requests_are_all_answered_correctly(tiny, server):
    url, records = server
    c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60.0)
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(k: int) -> None:
        try:
            r = c.chat.completions.create(model=NAME, messages=chat(TICKETS[k]), max_tokens=8 + k % 3)
            answers[k] = r.choices[0].message.content
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    before = len(records)
    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(TICKETS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert answers == {k: local(tiny, chat(TICKETS[k]), 8 + k % 3).text for k in range(len(TICKETS))}
    assert len(records) - before == len(TICKETS)
    # Different max_tokens no longer keep requests apart: each row stops at its own limit within one batch.
    assert max(r.batch_size for r in records[before:]) > 1


# ---- under load: cancelled clients, a full queue, tokenizing off the engine --------------------------------------
LONG = [TICKETS[0], TICKETS[4]]
"""Tickets the tiny model answers for 400 tokens without ending its turn (about 0.5 s each on 2 cores)."""


def test_the_engine_drops_or_stops_cancelled_jobs_and_their_batch_mates_go_on(tiny):
    from instil.serve.engine import Engine, Job

    model, tokenizer, renderer = tiny

    def job(t: str, n: int) -> Job:
        ids = tokenizer(renderer.prompt(chat(t)), add_special_tokens=False)["input_ids"]
        return Job(list(ids), max_tokens=n)

    engine = Engine(model, tokenizer, renderer, batch_size=4, max_queue=16)
    try:
        keeper = job(LONG[0], 400)
        engine.submit(keeper)
        gone = [job(t, 400) for t in TICKETS]
        for j in gone:
            engine.submit(j)
            j.cancel()  # dropped while queued, or stopped at its next token if its batch had begun
        kept = job(LONG[1], 30)
        engine.submit(kept)
        assert kept.future.result(timeout=60).text == local(tiny, chat(LONG[1]), 30).text
        assert keeper.future.result(timeout=60).output_tokens == 400
        for j in gone:
            assert j.future.cancelled() or j.future.result(timeout=60).output_tokens <= 1
        assert engine.stats.cancelled == len(gone) and engine.stats.generated == 2
    finally:
        engine.stop()


def test_clients_that_hang_up_are_not_generated_for(tiny):
    import socket
    import time as clock

    model, tokenizer, renderer = tiny
    app = create_app(model, tokenizer, renderer, model_name=NAME, max_new_tokens_cap=400, batch_size=2)
    with serve_app(app) as url:
        port = int(url.split(":")[2].split("/")[0])
        for k in range(8):  # eight clients send a long request and hang up at once
            body = json.dumps({"model": NAME, "messages": chat(LONG[k % 2]), "max_tokens": 400}).encode()
            head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        engine = app.state.engine
        deadline = clock.monotonic() + 30
        while engine.stats.cancelled < 8 and clock.monotonic() < deadline:
            clock.sleep(0.05)
        assert engine.stats.cancelled == 8 and engine.stats.generated == 0
        began = clock.monotonic()
        r = client(url, "none").chat.completions.create(model=NAME, messages=chat("Hi"), max_tokens=4)
        assert r.usage.completion_tokens == 4
        assert clock.monotonic() - began < 5  # nothing left of the eight to wait for (they were 8 x 0.5 s)


def test_a_full_queue_answers_429_with_retry_after(tiny):
    model, tokenizer, renderer = tiny
    app = create_app(model, tokenizer, renderer, model_name=NAME, max_new_tokens_cap=400, batch_size=1, max_queue=1)
    statuses: list[int] = []
    retry_after: list[str] = []
    with serve_app(app) as url:

        def ask(k: int) -> None:
            body = json.dumps({"model": NAME, "messages": chat(LONG[k % 2]), "max_tokens": 400}).encode()
            request = urllib.request.Request(
                url + "/chat/completions", data=body, headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    statuses.append(r.status)
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
                error = json.loads(e.read())["error"]
                assert error["code"] == "server_busy" and error["type"] == "rate_limit_error", error
                retry_after.append(e.headers["Retry-After"])

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    # One generating and one waiting at any time: of six at once, at least two are answered and the rest told when
    # to come back.
    assert sorted(set(statuses)) == [200, 429] and statuses.count(200) >= 2 and len(statuses) == 6
    assert all(r.isdigit() and int(r) >= 1 for r in retry_after)


def test_prompts_are_tokenized_off_the_engines_thread(tiny):
    model, tokenizer, renderer = tiny
    threads: set[str] = set()

    class Watched:  # the real tokenizer, noting which thread encodes
        def __call__(self, *args, **kwargs):
            threads.add(threading.current_thread().name)
            return tokenizer(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    app = create_app(model, Watched(), renderer, model_name=NAME)
    with serve_app(app) as url:
        c = client(url, "none")
        for t in TICKETS[:3]:
            c.chat.completions.create(model=NAME, messages=chat(t), max_tokens=3)
    assert threads and "instil-serve-generate" not in threads


# ---- a job's model as an endpoint candidate --------------------------------------------------------------------------
def item(i: int) -> str:
    # Inputs unlike each other, so that curation keeps them all (no near-duplicates across the split).
    hint = ["cherry", "leaf", "sky", "lemon"][i % 4]  # the colour follows from the input: a model can learn it
    return f"{words(i)}: item {i}, the colour of a {hint}?"


def colour_job(root: Path) -> JobSpec:
    root.mkdir(parents=True, exist_ok=True)

    def rows(start: int, n: int) -> str:
        return "".join(
            json.dumps(
                Example(
                    [
                        Message("system", PROMPT),
                        Message("user", item(i)),
                        Message("assistant", COLORS[i % 4]),
                    ],
                    id=f"c{i}",
                ).to_dict()
            )
            + "\n"
            for i in range(start, start + n)
        )

    (root / "train.jsonl").write_text(rows(0, 16), encoding="utf-8")
    (root / "holdout.jsonl").write_text(rows(100, 8), encoding="utf-8")
    (root / "instil.yaml").write_text(
        f"""name: colors
system_prompt: {PROMPT}
short_prompt: Name the colour.
graders:
  - {{name: em, type: exact_match, primary: true}}
  - {{name: short, type: length, max_chars: 5}}
data: [{{path: train.jsonl}}, {{path: holdout.jsonl, role: holdout}}]
model: {{base: tiny}}
training: {{adapter: full, batch_size: 8, learning_rate: 3.0e-3}}
""",
        encoding="utf-8",
    )
    return load_spec(root / "instil.yaml")


def test_a_served_model_scores_as_an_endpoint_exactly_as_it_does_locally(tmp_path: Path, store: Store):
    from instil.eval.compare import evaluate, select_candidates
    from instil.jobdata import curate_job, split_job
    from instil.train.sft import train_sft

    spec = colour_job(tmp_path / "job")
    curate_job(spec, store)
    split_job(spec, store)
    train_sft(spec, store, max_steps=30, progress=False)
    served = load_served(spec, store)
    assert served.name == "colors@1" and served.system_prompt == "Name the colour."
    records: list[ServedRequest] = []
    with serve_app(job_app(spec, store, served=served, api_key=KEY, on_request=records.append)) as url:
        endpoint = EvalEndpointSpec(
            name="served", base_url=url, model="colors@1", prompt="short", api_key_env="TEST_SERVE_KEY"
        )
        with_endpoint = spec.model_copy(update={"eval": spec.eval.model_copy(update={"endpoints": [endpoint]})})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEST_SERVE_KEY", KEY)
            report = evaluate(
                with_endpoint,
                store,
                select_candidates(with_endpoint, store, ["colors@1+short", "served"]),
                max_new_tokens=4,
            )
    here, there = report.candidate("colors@1+short"), report.candidate("served")
    rows = {(r.candidate, r.example_id): r for r in report.examples}
    ids = sorted({r.example_id for r in report.examples})
    for i in ids:
        a, b = rows["colors@1+short", i], rows["served", i]
        assert (a.output, a.scores, a.passed, a.finish_reason) == (
            b.output,
            b.scores,
            b.passed,
            b.finish_reason,
        )
        assert (a.input_tokens, a.output_tokens) == (b.input_tokens, b.output_tokens)
    assert {g: s.mean for g, s in here.graders.items()} == {g: s.mean for g, s in there.graders.items()}
    assert len({rows["served", i].output for i in ids}) >= 2  # the trained model names different colours
    assert len(records) == len(ids) and records[0].messages[0] == {
        "role": "system",
        "content": "Name the colour.",
    }


def test_load_served_names_and_refusals(tmp_path: Path, store: Store):
    spec = colour_job(tmp_path / "job")
    with pytest.raises(NotFoundError, match="has no model") as e:
        load_served(spec, store)
    assert "--base" in e.value.hint
    with pytest.raises(InstilError, match="not both"):
        load_served(spec, store, version=1, base=True)
    with pytest.raises(NotFoundError, match="names a model of job 'other'"):
        load_served(spec, store, version="other@1")


def test_cli_serve_refuses_clearly(tmp_path: Path, capsys, monkeypatch):
    from instil.cli import main

    colour_job(tmp_path / "job")
    path = str(tmp_path / "job" / "instil.yaml")
    assert main(["serve", path, "--version", "1", "--base"]) == 1
    assert "has no model version 1" in capsys.readouterr().err
    assert main(["serve", path]) == 1
    out = capsys.readouterr().err
    assert "has no model" in out and "--base" in out and "Traceback" not in out
    monkeypatch.delenv("TEST_SERVE_UNSET", raising=False)
    assert main(["serve", path, "--base", "--api-key-env", "TEST_SERVE_UNSET"]) == 1
    assert "TEST_SERVE_UNSET holds no API key" in capsys.readouterr().err


def test_cli_serve_runs_the_server_until_interrupted(tmp_path: Path, store: Store, instil_home: Path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from instil.jobdata import curate_job, split_job

    spec = colour_job(tmp_path / "job")
    curate_job(spec, store)
    split_job(spec, store)
    port = free_port()
    env = {**os.environ, "INSTIL_HOME": str(instil_home), "TEST_SERVE_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instil.cli",
            "serve",
            str(spec.file),
            "--base",
            "--port",
            str(port),
            "--api-key-env",
            "TEST_SERVE_KEY",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if raw(url.removesuffix("/v1"), "/health", key=None)[1]["model"] == "colors:base":
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        r = client(url).chat.completions.create(
            model="colors:base", messages=[{"role": "user", "content": item(1)}], max_tokens=3
        )
        assert r.usage.completion_tokens >= 1 and r.model == "colors:base"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"serving colors:base at {url}" in out
    assert "1 traces captured, 1 stored" in out  # the answer was kept, and drained before the server exited
    with Store.open(home=instil_home) as store:
        (kept,) = store.list_traces()
    assert kept.id == r.id and kept.model == "colors:base" and kept.source == "local" and kept.version is None


def test_metrics_show_the_queue_the_batches_and_the_tokens(server):
    url, _ = server
    r = client(url).chat.completions.create(model=NAME, messages=chat(TICKETS[1]), max_tokens=4)
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as got:  # no key needed
        text = got.read().decode()
    assert "instil_queue_depth 0.0" in text and "instil_batches " in text
    assert f'instil_tokens_total{{kind="completion",model="{NAME}"}}' in text
    assert f'instil_time_to_first_token_seconds_count{{model="{NAME}"}}' in text
    assert 'instil_requests_total{path="/v1/chat/completions",status="200"}' in text
    assert r.usage.completion_tokens >= 1


# ---- response_format: constrained decoding ---------------------------------------------------------------------------
TRIAGE = {
    "type": "object",
    "properties": {"queue": {"type": "string", "enum": ["billing", "tech", "other"]}, "urgent": {"type": "boolean"}},
    "required": ["queue", "urgent"],
    "additionalProperties": False,
}


def test_response_format_is_enforced_streamed_or_not_and_refused_when_it_cannot_be(tiny):
    pytest.importorskip("llguidance")
    import concurrent.futures

    import jsonschema

    model, tokenizer, renderer = tiny
    records: list[ServedRequest] = []
    app = create_app(
        model, tokenizer, renderer, model_name=NAME, api_key=KEY, max_new_tokens_cap=120, on_request=records.append
    )
    fmt = {"type": "json_schema", "json_schema": {"name": "triage", "schema": TRIAGE, "strict": True}}
    with serve_app(app) as url:
        c = client(url)
        free = c.chat.completions.create(model=NAME, messages=chat(TICKETS[1]), max_tokens=120)
        with pytest.raises(ValueError):  # the random model's own answer is not JSON at all
            json.loads(free.choices[0].message.content)

        def ask(k: int) -> tuple:
            r = c.chat.completions.create(
                model=NAME, messages=chat(TICKETS[k]), max_tokens=120, response_format=fmt if k % 2 else None
            )
            return k, r.choices[0].message.content, r.choices[0].finish_reason

        with concurrent.futures.ThreadPoolExecutor(6) as pool:  # constrained and free requests batched together
            answers = list(pool.map(ask, range(6)))
        for k, text, finish in answers:
            if k % 2:
                assert finish == "stop"
                jsonschema.validate(json.loads(text), TRIAGE)
        assert max(r.batch_size for r in records) > 1

        stream = c.chat.completions.create(
            model=NAME, messages=chat(TICKETS[3]), max_tokens=120, response_format=fmt, stream=True
        )
        jsonschema.validate(
            json.loads("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)), TRIAGE
        )
        any_object = c.chat.completions.create(
            model=NAME, messages=chat(TICKETS[4]), max_tokens=120, response_format={"type": "json_object"}
        )
        # Any object: the random model may write one string until max_tokens cuts it, but never anything else.
        text = any_object.choices[0].message.content
        if any_object.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("{") and any_object.usage.completion_tokens == 120
        assert records[-1].params["response_format"] == {"type": "json_object"}

        def bad(param: str, **request) -> str:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(**{"model": NAME, "messages": chat("Hi"), **request})
            assert e.value.body["param"] == param, e.value.body
            return e.value.body["message"]

        bad("response_format.type", response_format={"type": "yaml"})
        bad("response_format.json_schema", response_format={"type": "json_schema"})
        schema_error = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
        bad("response_format.json_schema.schema", response_format=schema_error)
        unenforceable = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
        message = bad(
            "response_format", response_format={"type": "json_schema", "json_schema": {"schema": unenforceable}}
        )
        assert "cannot be enforced" in message
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        assert "tool_choice" in bad("response_format", response_format=fmt, tools=[tool])
        with_tools = c.chat.completions.create(
            model=NAME, messages=chat("Hi"), max_tokens=120, response_format=fmt, tools=[tool], tool_choice="none"
        )
        jsonschema.validate(json.loads(with_tools.choices[0].message.content), TRIAGE)


def test_the_shared_system_prompt_is_computed_once_and_answers_stay_the_same(tiny):
    import concurrent.futures

    model, tokenizer, renderer = tiny
    system = "You triage support tickets for a large shop. Read each one with care before you answer. " * 5
    records: list[ServedRequest] = []
    app = create_app(
        model,
        tokenizer,
        renderer,
        model_name=NAME,
        api_key=KEY,
        default_system_prompt=system,
        on_request=records.append,
    )
    with serve_app(app) as url:
        c = client(url)

        def ask(k: int) -> str:
            r = c.chat.completions.create(model=NAME, messages=chat(TICKETS[k], system=None), max_tokens=8)
            return r.choices[0].message.content

        answers = [ask(0)]  # alone: the prefix is computed
        with concurrent.futures.ThreadPoolExecutor(7) as pool:  # then taken from the cache, in batches
            answers += list(pool.map(ask, range(1, 8)))
        with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as got:
            text = got.read().decode()
    stats = app.state.engine.stats
    assert stats.prefix_misses == 1 and stats.prefix_hits >= 1  # computed once, for the first batch
    assert f"instil_prefix_cache_hits {float(stats.prefix_hits)}" in text
    for k, text_k in enumerate(answers):
        assert text_k == local(tiny, chat(TICKETS[k], system=system), 8).text, k


def test_a_batch_waits_a_moment_for_requests_on_their_way_and_not_when_none_are(tiny):
    from instil.serve.engine import Engine, Job

    model, tokenizer, renderer = tiny

    def job(t: str) -> Job:
        return Job(list(tokenizer(renderer.prompt(chat(t)), add_special_tokens=False)["input_ids"]), max_tokens=4)

    engine = Engine(model, tokenizer, renderer, batch_size=4, max_queue=16, gather_s=2.0)
    try:
        alone = job(TICKETS[0])
        engine.submit(alone)  # nothing announced, no batch before it: it starts at once
        alone.future.result(timeout=60)
        assert alone.batch_size == 1
        engine.expect(1)  # a request being tokenized: the next batch waits for it
        first, late = job(TICKETS[1]), job(TICKETS[2])
        engine.submit(first)
        time.sleep(0.1)
        engine.submit(late)
        engine.expect(-1)
        assert first.future.result(timeout=60).text == local(tiny, chat(TICKETS[1]), 4).text
        assert late.future.result(timeout=60) is not None and first.batch_size == late.batch_size == 2
    finally:
        engine.stop()
