"""The registry: gate decisions and rollbacks (the production history), and named pins of model versions.

Revision ID: 0002_registry
Revises: 0001_initial
Create Date: 2025-12-02

Forward-only: instil never downgrades a store.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_registry"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("reference", sa.String(256), nullable=True),
        sa.Column("reference_model_id", sa.Integer(), nullable=True),
        sa.Column("dataset_version_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("numbers", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_decisions_model_id_models", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["reference_model_id"],
            ["models.id"],
            name="fk_decisions_reference_model_id_models",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_version_id"],
            ["dataset_versions.id"],
            name="fk_decisions_dataset_version_id_dataset_versions",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_decisions_run_id_runs", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
    )
    op.create_index("ix_decisions_job", "decisions", ["job"])
    op.create_index("ix_decisions_model_id", "decisions", ["model_id"])
    op.create_index("ix_decisions_reference_model_id", "decisions", ["reference_model_id"])
    op.create_index("ix_decisions_dataset_version_id", "decisions", ["dataset_version_id"])
    op.create_index("ix_decisions_run_id", "decisions", ["run_id"])

    op.create_table(
        "pins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job", sa.String(128), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_pins_model_id_models", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_pins"),
    )
    op.create_index("ix_pins_job", "pins", ["job"])
    op.create_index("ix_pins_model_id", "pins", ["model_id"])
