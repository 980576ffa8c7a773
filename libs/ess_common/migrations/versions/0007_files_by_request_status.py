"""files by request and status: whether a request has files left, without reading the rest

Each split file's result asked whether its request had any file not yet split, which read
every file of the request (the index by request, scope and name holds no status): a request of
20,000 files read 20,000 rows per result, 400 million over the request. With the status in an
index after the request, the question is one probe per status.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_files_request_status", "files", ["request_id", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_files_request_status", table_name="files")
