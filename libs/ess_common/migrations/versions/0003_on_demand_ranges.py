"""ranges split on demand: no request's file, one per asked range

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ON_DEMAND = sa.text("file_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("ranges") as batch:
        batch.alter_column("file_id", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("request_id", existing_type=sa.String(length=36), nullable=True)
        batch.add_column(sa.Column("edge", sa.String(length=63), nullable=True))
        batch.create_index(
            "uq_ranges_on_demand",
            ["scope", "lfn", "first_event", "last_event"],
            unique=True,
            postgresql_where=_ON_DEMAND,
            sqlite_where=_ON_DEMAND,
        )


def downgrade() -> None:
    op.execute("DELETE FROM ranges WHERE file_id IS NULL")
    with op.batch_alter_table("ranges") as batch:
        batch.drop_index("uq_ranges_on_demand")
        batch.drop_column("edge")
        batch.alter_column("request_id", existing_type=sa.String(length=36), nullable=False)
        batch.alter_column("file_id", existing_type=sa.Integer(), nullable=False)
