"""Rollouts (canary and shadow), and each trace's place in one.

Revision ID: 0005_rollouts
Revises: 0004_traces
Create Date: 2026-12-03

Forward-only: instil never downgrades a store.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_rollouts"
down_revision = "0004_traces"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job", sa.String(128), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("production_model_id", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_rollouts_model_id_models", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["production_model_id"], ["models.id"], name="fk_rollouts_production_model_id_models", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("ix_rollouts_job", "rollouts", ["job"])
    op.create_index("ix_rollouts_model_id", "rollouts", ["model_id"])
    op.create_index("ix_rollouts_status", "rollouts", ["status"])
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("rollout_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("arm", sa.String(16), nullable=True))
        batch.add_column(sa.Column("pair_id", sa.String(64), nullable=True))
    op.create_index("ix_traces_rollout_id", "traces", ["rollout_id"])
    op.create_index("ix_traces_pair_id", "traces", ["pair_id"])
