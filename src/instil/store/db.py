"""Engine setup and schema migrations for the store.

    engine = create_store_engine(resolve_url(None, home))   # SQLite under home, or $INSTIL_DB_URL, or a given URL
    migrate(engine)                                          # brings the schema to the newest migration

SQLite is set up for several writers at once: WAL journal (readers never block the writer), a busy timeout (a writer
waits for the lock instead of failing), foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE`` so
two writers never both hold a read lock and then deadlock upgrading it (SQLITE_BUSY that no timeout cures). A
connection opts into that with the ``instil_write`` execution option (:data:`WRITE`); reads use a plain ``BEGIN``.

Migrations run on every open, under a lock (SQLite's write lock, PostgreSQL's advisory lock), so two processes that
open a fresh store at once never both create it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from instil.errors import DependencyError, StoreError

__all__ = [
    "BUSY_TIMEOUT_S",
    "DB_URL_ENV",
    "WRITE",
    "alembic_config",
    "create_store_engine",
    "migrate",
    "resolve_url",
    "safe_url",
]

DB_URL_ENV = "INSTIL_DB_URL"
"""Environment variable naming the database (an SQLAlchemy URL); unset means SQLite in the home folder."""

BUSY_TIMEOUT_S = 60.0
"""How long an SQLite writer waits for another writer's lock before giving up."""

WRITE: dict[str, Any] = {"instil_write": True}
"""Execution options of a write transaction (``BEGIN IMMEDIATE`` on SQLite)."""

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Any fixed 64-bit number: the PostgreSQL advisory lock that serialises migrations of one database.
_PG_MIGRATION_LOCK = 0x1E57_11_0001


def resolve_url(url: str | None, home: Path) -> str:
    """The database URL: ``url`` if given, else ``$INSTIL_DB_URL``, else ``sqlite:///<home>/instil.db``."""
    if url:
        return url
    env = os.environ.get(DB_URL_ENV)
    if env:
        return env
    return f"sqlite:///{(home / 'instil.db').resolve()}"


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def create_store_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout, foreign keys and ``BEGIN IMMEDIATE`` writes."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"{DB_URL_ENV} or the store URL is not a database URL: {url!r}",
            hint="Use sqlite:///path/to/instil.db or postgresql+psycopg://user:pass@host/db.",
        ) from None
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        if not parsed.database or parsed.database == ":memory:":
            raise StoreError(
                f"the store needs an SQLite file, not an in-memory database: {url!r}",
                hint="Use sqlite:///path/to/instil.db, or unset INSTIL_DB_URL to use the home folder.",
            )
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(
            parsed,
            connect_args={"timeout": BUSY_TIMEOUT_S} if sqlite else {},
            pool_pre_ping=not sqlite,
        )
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise DependencyError(
            f"no database driver for {safe_url(parsed)}: {e}",
            hint="For PostgreSQL: pip install 'instil[postgres]' and use a postgresql+psycopg:// URL.",
        ) from None
    if sqlite:
        _setup_sqlite(engine)
    return engine


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module, so the "begin" hook below decides which BEGIN is sent.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL is a property of the file: switch once (it needs a moment of exclusive access), then keep it.
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no committed transaction
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("instil_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def alembic_config() -> Config:
    """Alembic's configuration, built in code: the migrations ship inside the package, no alembic.ini needed."""
    config = Config()
    # ConfigParser interpolates %, so a % in the install path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def migrate(engine: Engine, home: Path | None = None) -> str:
    """Bring the schema to the newest migration; returns the revision it is at. Safe to call from many processes.

    ``home`` is the instil home the database belongs to: data migrations that record paths relative to it need it.
    """
    config = alembic_config()
    if home is not None:
        config.attributes["home"] = Path(home)
    head = ScriptDirectory.from_config(config).get_current_head()
    where = safe_url(engine.url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_heads()
            conn.rollback()
        if current == (head,):
            return head  # the common case: nothing to do, and no lock taken
        with engine.connect() as conn:
            conn.execution_options(**WRITE)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # Held until commit: a second process waits here, then finds the schema already at head.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
    except OperationalError as e:
        raise StoreError(
            f"cannot open the store database {where}: {e.orig}",
            hint="Check that the server is running and the URL (INSTIL_DB_URL) is right; for SQLite, that the "
            "folder is writable and no other process holds a long write lock.",
        ) from None
    except SQLAlchemyError as e:
        raise StoreError(f"migrating the store database {where} failed: {e}") from None
    except Exception as e:
        # Alembic raises its own CommandError when the database is at a revision this instil does not know.
        if type(e).__module__.startswith("alembic"):
            raise StoreError(
                f"the store database {where} is at a schema this version of instil does not know ({e})",
                hint="It was written by a newer instil: upgrade instil (pip install -U instil), or point "
                "INSTIL_HOME / INSTIL_DB_URL at another store.",
            ) from None
        raise
    return head
