"""Traces: every request ``instil serve`` answered (a local model or an upstream behind the proxy), and their tags.

Revision ID: 0004_traces
Revises: 0003_run_liveness
Create Date: 2026-12-02

Forward-only: instil never downgrades a store.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_traces"
down_revision = "0003_run_liveness"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "traces",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("job", sa.String(128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("upstream", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("tools", sa.JSON(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("tool_calls", sa.JSON(), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("first_token_s", sa.Float(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("grades", sa.JSON(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("redacted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_traces"),
    )
    op.create_index("ix_traces_job", "traces", ["job"])
    op.create_index("ix_traces_created_at", "traces", ["created_at"])
    op.create_index("ix_traces_model", "traces", ["model"])
    op.create_index("ix_traces_user", "traces", ["user"])
    op.create_index("ix_traces_passed", "traces", ["passed"])

    op.create_table(
        "trace_tags",
        sa.Column("trace_id", sa.String(128), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["trace_id"], ["traces.id"], name="fk_trace_tags_trace_id_traces", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("trace_id", "tag", name="pk_trace_tags"),
    )
    op.create_index("ix_trace_tags_tag", "trace_tags", ["tag"])
