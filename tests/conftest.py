"""Shared fixtures. Every test gets its own instil home, so no test reads or writes a real store.

    def test_something(store):               # a fresh SQLite store in the test's temp home
    def test_pg(postgres_url):               # a fresh PostgreSQL schema (skipped when no server is running)
    def test_api(fake_openai):               # url, log = fake_openai(lambda body, request: "red"): a fake endpoint

PostgreSQL tests need ``INSTIL_TEST_POSTGRES_URL`` (``eval "$(bash .ci/postgres.sh)"`` sets it); each test gets its own
schema on that database, dropped afterwards, so runs and parallel workers never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

POSTGRES_ENV = "INSTIL_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def instil_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private instil home for each test; INSTIL_DB_URL is unset so the store is SQLite inside it."""
    home = tmp_path / "instil-home"
    monkeypatch.setenv("INSTIL_HOME", str(home))
    monkeypatch.delenv("INSTIL_DB_URL", raising=False)
    # Tests never reach a model hub; the few that test the online path set their own loopback endpoint.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An SQLAlchemy URL whose connections use a fresh schema of the test server; skips when there is no server."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f'{POSTGRES_ENV} is not set (run `eval "$(bash .ci/postgres.sh)"` to start a server)')
    psycopg = pytest.importorskip("psycopg")
    from sqlalchemy.engine import make_url

    url = make_url(base)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as e:
        pytest.skip(f"the PostgreSQL server at {url.render_as_string(hide_password=True)} refused: {e}")
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(instil_home: Path) -> Iterator[object]:
    """A fresh SQLite :class:`instil.store.Store` in the test's home."""
    from instil.store import Store

    with Store.open(home=instil_home) as opened:
        yield opened


@pytest.fixture
def fake_openai() -> Iterator[Callable[..., tuple[str, list[dict]]]]:
    """Starts fake OpenAI-compatible endpoints on loopback for this test (``servers.openai_server``, stopped after it):
    ``url, log = fake_openai(answer)``. Skips without fastapi, uvicorn or the openai client."""
    for module in ("fastapi", "uvicorn", "openai"):
        pytest.importorskip(module)
    from servers import openai_server

    with ExitStack() as servers:
        yield lambda answer: servers.enter_context(openai_server(answer))
