"""Writing split files' ranges: all of them in one statement, in the caller's transaction.

On PostgreSQL the rows go in by COPY on the session's own asyncpg connection (one round trip
for any number of rows, no per-row work in SQLAlchemy); elsewhere (SQLite) as one multi-row
INSERT. An ORM object per range (what this replaced) cost more CPU in the broker than the
database spent storing the row, and the result bookkeeping of a request of thousands of files
of hundreds of ranges each was bound by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import File, Range, utcnow
from ess_common.events import RangeInfo

_COLUMNS = (
    "file_id",
    "request_id",
    "scope",
    "lfn",
    "first_event",
    "last_event",
    "object_key",
    "size",
    "adler32",
    "created_at",
)


async def insert_ranges(
    session: AsyncSession, split: Sequence[tuple[File, Sequence[RangeInfo]]]
) -> None:
    """Record the ranges of each split file."""
    now = utcnow()
    rows: list[tuple[Any, ...]] = []
    for f, ranges in split:
        # The file's columns read once (ORM attributes cost a lookup each), not per range.
        file_id, request_id, scope, lfn = f.id, f.request_id, f.scope, f.lfn
        rows += [
            (
                file_id,
                request_id,
                scope,
                lfn,
                r.first_event,
                r.last_event,
                r.key,
                r.size,
                r.adler32,
                now,
            )
            for r in ranges
        ]
    if not rows:
        return
    connection = await session.connection()
    if connection.dialect.driver == "asyncpg":
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.copy_records_to_table(Range.__tablename__, records=rows, columns=_COLUMNS)
        return
    await session.execute(insert(Range), [dict(zip(_COLUMNS, row, strict=True)) for row in rows])
