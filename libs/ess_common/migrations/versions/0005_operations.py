"""operations: request histories, trace contexts, edges' cache use and on-demand slots

`request_events` holds each request's history (assigned to, cached, split, retried, failed
with what, notified), written in the transactions of the changes it tells. The outbox keeps
the trace context of each event, a request the one it was recorded in and a notification the
one of the event it tells, so that a request's work is one trace. Edges' rows keep their cache
use and on-demand slots from heartbeats.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "request_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=True),
        sa.Column("edge", sa.String(length=63), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_request_events_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_events")),
    )
    op.create_index(
        "ix_request_events_request_id_id", "request_events", ["request_id", "id"], unique=False
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("headers", sa.JSON(), nullable=True))
    for table in ("requests", "notifications"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("trace_context", sa.JSON(), nullable=True))
    with op.batch_alter_table("edges") as batch:
        batch.add_column(sa.Column("used_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("on_demand_slots", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("on_demand_busy", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("edges") as batch:
        batch.drop_column("on_demand_busy")
        batch.drop_column("on_demand_slots")
        batch.drop_column("used_bytes")
    for table in ("notifications", "requests"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("trace_context")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("headers")
    op.drop_index("ix_request_events_request_id_id", table_name="request_events")
    op.drop_table("request_events")
