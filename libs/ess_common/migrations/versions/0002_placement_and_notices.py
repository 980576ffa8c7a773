"""replicas for placement, edge coordinates, per-file notices

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(
            sa.Column("notify_files", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("replicas", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("edges") as batch:
        batch.add_column(sa.Column("latitude", sa.Double(), nullable=True))
        batch.add_column(sa.Column("longitude", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("edges") as batch:
        batch.drop_column("longitude")
        batch.drop_column("latitude")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("replicas")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("notify_files")
