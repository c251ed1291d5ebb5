"""Property test of the server under hostile requests: whatever the body, the answer is never a 5xx and never hangs.

Random bodies are drawn around the chat completions schema (the right fields with wrong types, sizes and unicode,
lone surrogates, unknown fields, and raw bytes that are not JSON or not UTF-8) and sent over loopback to a real
server; each must be answered within the client's timeout with a 2xx (a whole answer, or a whole stream) or a 4xx in
OpenAI's error shape.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from servers import serve_app

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from instil.data.records import Example, Message  # noqa: E402
from instil.serve import create_app  # noqa: E402
from tiny_models import scaled_tiny  # noqa: E402

NAME = "fuzz"

unicode = st.text(
    alphabet=st.characters(codec=None) | st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e", "\ufffd", "🦙"]),
    max_size=40,
)
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | unicode,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(unicode, inner, max_size=4),
    max_leaves=12,
)
ints = st.integers() | st.sampled_from([0, 1, 2, 24, 25, -1, 2**63, 2**64, -(2**63) - 1])


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the right kind of value, sometimes anything at all."""
    return st.one_of(strategy, strategy, anything)


message = st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))},
    optional={
        "content": maybe(
            unicode | st.lists(st.fixed_dictionaries({"type": maybe(st.just("text")), "text": maybe(unicode)}))
        ),
        "name": maybe(unicode),
        "tool_calls": maybe(st.lists(anything, max_size=2)),
        "tool_call_id": maybe(unicode),
    },
)
tool = st.fixed_dictionaries(
    {
        "type": maybe(st.just("function")),
        "function": maybe(
            st.fixed_dictionaries(
                {"name": maybe(unicode)},
                optional={"parameters": maybe(st.just({"type": "object", "properties": {}})) | anything},
            )
        ),
    }
)
body = st.fixed_dictionaries(
    {"model": maybe(st.just(NAME)), "messages": maybe(st.lists(message, max_size=4))},
    optional={
        "max_tokens": maybe(ints),
        "max_completion_tokens": maybe(ints),
        "temperature": maybe(st.floats(-1, 3)),
        "top_p": maybe(st.floats(-1, 2)),
        "n": maybe(ints),
        "seed": maybe(ints),
        "stop": maybe(unicode | st.lists(unicode, max_size=5)),
        "stream": maybe(st.booleans()),
        "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
        "tools": maybe(st.lists(tool, max_size=2)),
        "tool_choice": maybe(st.sampled_from(["auto", "none", "required"])),
        "response_format": maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(["text", "json_object"]))})),
        "logprobs": maybe(st.booleans()),
        "presence_penalty": maybe(st.floats(-2, 2)),
        "user": maybe(unicode),
        "metadata": anything,
    },
)
# Requests a client means seriously: valid, with unicode and edge values where the schema allows them, so that a good
# share is generated for (and streamed), not only refused.
valid = st.fixed_dictionaries(
    {
        "model": st.just(NAME),
        "messages": st.tuples(
            st.lists(
                st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]), "content": unicode}),
                max_size=2,
            ),
            st.fixed_dictionaries({"role": st.just("user"), "content": unicode}),
        ).map(lambda m: [*m[0], m[1]]),
    },
    optional={
        "max_tokens": st.integers(1, 24),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": st.lists(unicode.filter(bool), max_size=4),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "user": unicode,
    },
)
raw_bytes = st.binary(max_size=200) | st.just(b'{"model": "fuzz", "messages": [{"role": "user", "content": "\xff"}]}')


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    texts = [Example([Message("user", f"ticket {i}"), Message("assistant", "billing")]) for i in range(8)]
    model, tokenizer, renderer = scaled_tiny(texts * 3, tmp_path_factory.mktemp("fuzz") / "llama")
    app = create_app(model, tokenizer, renderer, model_name=NAME, max_new_tokens_cap=24)
    with serve_app(app) as base:
        yield base


def send(url: str, data: bytes) -> tuple[int, bytes]:
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)  # a hang fails as a timeout
    try:
        conn.request("POST", where.path + "/chat/completions", data, headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=valid | body | raw_bytes)
def test_no_request_gets_a_server_error_or_hangs(url, request):
    # ensure_ascii: lone surrogates travel as JSON escapes, as a client's encoder would send them.
    data = request if isinstance(request, bytes) else json.dumps(request, ensure_ascii=True).encode()
    status, answer = send(url, data)
    event(f"status {status}")  # --hypothesis-show-statistics: how many were answered, how many refused
    assert status < 500, (status, answer[:300])
    if status >= 400:
        error = json.loads(answer)["error"]
        assert error["message"] and error["type"], error
    elif answer.startswith(b"data: "):
        events = [e for e in answer.decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]" and not any('"error"' in e for e in events), events[-3:]
    else:
        assert json.loads(answer)["choices"][0]["message"]["role"] == "assistant"
