"""Runs that died are told from runs still going (pid, host, heartbeat); paths inside the home are kept relative.

Revision ID: 0003_run_liveness
Revises: 0002_registry
Create Date: 2026-12-02

The data step rewrites the model and artifact paths recorded inside the home (and a model's ``model_info.path``)
relative to it, so the home can be moved afterwards. It needs the home, which ``instil.store.db.migrate`` passes;
paths outside it stay absolute. Forward-only: instil never downgrades a store.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op

from instil.store.types import store_meta, store_path

revision = "0003_run_liveness"
down_revision = "0002_registry"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", _TS, nullable=True))

    home = op.get_context().config.attributes.get("home")
    if home is None:
        return
    home = Path(home)
    conn = op.get_bind()
    models = sa.table("models", sa.column("id", sa.Integer), sa.column("path", sa.Text), sa.column("meta", sa.JSON))
    for row in conn.execute(sa.select(models.c.id, models.c.path, models.c.meta)).all():
        path = store_path(row.path, home) if Path(row.path).is_absolute() else row.path
        meta = store_meta(dict(row.meta or {}), home)
        if path != row.path or meta != (row.meta or {}):
            conn.execute(sa.update(models).where(models.c.id == row.id).values(path=path, meta=meta))
    artifacts = sa.table("artifacts", sa.column("id", sa.Integer), sa.column("path", sa.Text))
    for row in conn.execute(sa.select(artifacts.c.id, artifacts.c.path)).all():
        path = store_path(row.path, home) if Path(row.path).is_absolute() else row.path
        if path != row.path:
            conn.execute(sa.update(artifacts).where(artifacts.c.id == row.id).values(path=path))
