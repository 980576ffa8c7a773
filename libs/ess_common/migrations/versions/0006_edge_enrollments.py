"""edge enrollments: the edges the operator let in, each with its own revocable credential

Only the key derived from an edge's token is kept (`ess_common.enrollment`); the broker takes
heartbeats and results only from enrolled edges, signed with their keys.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "edge_enrollments",
        sa.Column("edge", sa.String(length=63), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("edge", name=op.f("pk_edge_enrollments")),
    )


def downgrade() -> None:
    op.drop_table("edge_enrollments")
