"""ranges by age: the retention sweep reads the expired ranges, not the whole table

The sweep asked for the ranges older than the retention, oldest first, a batch at a time, with
no index on their age: every sweep (seconds apart) read the whole table, 3.7 s for 10 million
ranges with nothing expired. With the age indexed, a sweep reads what it deletes and one entry
more. Ranges are written in time order, so the index grows at its end.

Building the index reads the table once (seconds per million ranges); writes to `ranges` wait
meanwhile.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_ranges_created_at", "ranges", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ranges_created_at", table_name="ranges")
