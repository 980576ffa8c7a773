"""lookup indexes: a range's last event in the lookup index, files by scope and name

The lookup index held (scope, lfn, first_event): PostgreSQL read every range of the file that
starts before the asked range ends, from the table, to drop those that end before it starts.
With last_event in the index those are dropped in the index, and only the ranges that hold
asked events are read. Files are looked up by scope and name (a lookup of a range nobody
prepared, an on-demand split), which read the whole table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_ranges_lookup", table_name="ranges")
    op.create_index(
        "ix_ranges_lookup", "ranges", ["scope", "lfn", "first_event", "last_event"], unique=False
    )
    op.create_index("ix_files_scope_lfn", "files", ["scope", "lfn"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_files_scope_lfn", table_name="files")
    op.drop_index("ix_ranges_lookup", table_name="ranges")
    op.create_index("ix_ranges_lookup", "ranges", ["scope", "lfn", "first_event"], unique=False)
