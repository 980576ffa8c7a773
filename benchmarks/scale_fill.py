"""The scale benchmark's bookkeeping: a PostgreSQL database of its own holding the ranges of
earlier requests, filled once and brought back to that state before each run.

The fill is `FILL_FILES`-sized requests of ready files, each file `ranges_per_file` ranges of
`EVENTS_PER_RANGE` events, made by PostgreSQL itself (`INSERT .. SELECT` over
`generate_series`: no row crosses the wire, which is faster than COPY from a client that would
have to make and send every row). Before the rows go in, the table's secondary indexes and
constraints are dropped, and built again afterwards in one sort each, which is what makes a
bulk load fast; the schema afterwards is the migrated one, index for index (checked).

The first `expired_files` files' ranges are old (60 days), the rest a day old: the retention
sweep of a run deletes the old ones, and the next run's reset puts them back under the same
ids (so they are again the lowest, as old rows are in a bookkeeping that has been running).
The reset also deletes what a run added (its request, files, ranges, edges, outbox rows) and
vacuums, so each run starts from the same state. A marker table (`scale_fill`, outside the
migrated schema) says which fill the database holds; a database whose marker does not match
is dropped and filled anew.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.local_servers import ensure_database

SCOPE = "mc16_13TeV"
EVENTS_PER_RANGE = 100
#: Files per request of the fill.
FILL_FILES = 100
OLD = "60 days"
RECENT = "1 day"


@dataclass(frozen=True)
class FillShape:
    ranges: int
    ranges_per_file: int
    #: The files (from the first) whose ranges are past retention.
    expired_files: int

    @property
    def files(self) -> int:
        return -(-self.ranges // self.ranges_per_file)

    @property
    def requests(self) -> int:
        return -(-self.files // FILL_FILES)

    @property
    def expired_ranges(self) -> int:
        return min(self.ranges, self.expired_files * self.ranges_per_file)


def fill_lfn(file_index: int) -> str:
    return f"EVNT.fill._{file_index:07d}.pool.root.1"


@dataclass(frozen=True)
class Prepared:
    pg_version: str
    #: Seconds of the fresh fill (0 when an earlier one was reused) and of the reset.
    fill_s: float
    reset_s: float
    #: Bytes of the ranges table with its indexes, and its row count, after the reset (with
    #: the free space earlier runs' deletes left, which PostgreSQL reuses) and as filled.
    ranges_bytes: int
    ranges_rows: int
    filled_bytes: int
    filled_rows: int


_REQUESTS = """
INSERT INTO requests (id, idempotency_key, dataset, events_per_range, priority,
    notify_message, callback_url, notify_files, spec_digest, status, error, created_at,
    updated_at, ready_at)
SELECT 'fill-' || lpad(r::text, 8, '0'), 'fill-' || r, :dataset || r, :epr, 0, false, NULL,
    false, repeat('0', 64), 'ready', NULL, now(), now(), now()
FROM generate_series(0, :n_requests - 1) AS r
"""

_FILES = """
INSERT INTO files (id, request_id, scope, lfn, guid, n_events, size, adler32, sources,
    replicas, status, edge, attempt, error, updated_at)
SELECT f + 1, 'fill-' || lpad((f / :per_request)::text, 8, '0'), :scope,
    'EVNT.fill._' || lpad(f::text, 7, '0') || '.pool.root.1', '', :n_events, 1000000000,
    '00000001', '["https://dm.example.org/fill"]', '[]', 'split', 'edge-fill', 1, NULL, now()
FROM generate_series(0, :n_files - 1) AS f
"""

#: The ranges of files [first, last), with ids fixed by their place: a file's ranges get the
#: same ids whenever they are put back.
_RANGES = """
INSERT INTO ranges (id, file_id, request_id, scope, lfn, first_event, last_event, object_key,
    size, adler32, created_at)
SELECT (f.id - 1)::bigint * :rpf + g + 1, f.id, f.request_id, f.scope, f.lfn, g * :epr + 1,
    (g + 1) * :epr,
    'ranges/' || f.scope || '/' || f.lfn || '/e' || :epr || '/f' || f.id || '.a1/'
        || lpad((g * :epr + 1)::text, 9, '0') || '-' || lpad(((g + 1) * :epr)::text, 9, '0')
        || '.root',
    50000, '0a1b2c3d',
    now() - CASE WHEN f.id <= :n_expired THEN interval '60 days' ELSE interval '1 day' END
FROM files AS f CROSS JOIN generate_series(0, :rpf - 1) AS g
WHERE f.id > :first AND f.id <= :last AND (f.id - 1)::bigint * :rpf + g < :n_ranges
"""


async def _params(connection: AsyncConnection, statement: str, **values: object) -> None:
    used = {k: v for k, v in values.items() if f":{k}" in statement}
    await connection.execute(text(statement), used)


def _values(shape: FillShape) -> dict[str, object]:
    return {
        "scope": SCOPE,
        "dataset": f"{SCOPE}:fill.",
        "epr": EVENTS_PER_RANGE,
        "n_requests": shape.requests,
        "per_request": FILL_FILES,
        "n_files": shape.files,
        "n_events": shape.ranges_per_file * EVENTS_PER_RANGE,
        "rpf": shape.ranges_per_file,
        "n_ranges": shape.ranges,
        "n_expired": shape.expired_files,
    }


async def _secondary(connection: AsyncConnection) -> tuple[list[tuple[str, str]], list[str]]:
    """The ranges table's constraints other than its key (name, definition) and its indexes
    that no constraint owns (definitions)."""
    constraints = [
        (str(name), str(definition))
        for name, definition in (
            await connection.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'ranges'::regclass AND contype IN ('u', 'f') "
                    "ORDER BY conname"
                )
            )
        ).all()
    ]
    indexes = [
        str(definition)
        for (definition,) in (
            await connection.execute(
                text(
                    "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index AS i "
                    "WHERE i.indrelid = 'ranges'::regclass AND NOT i.indisprimary "
                    "AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c "
                    "WHERE c.conindid = i.indexrelid) ORDER BY 1"
                )
            )
        ).all()
    ]
    return constraints, indexes


async def _fill(url: str, shape: FillShape) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
            values = _values(shape)
            constraints, indexes = await _secondary(connection)
            for name, _ in constraints:
                await connection.execute(text(f'ALTER TABLE ranges DROP CONSTRAINT "{name}"'))
            for definition in indexes:
                name = definition.split(" INDEX ", 1)[1].split(" ON ", 1)[0]
                await connection.execute(text(f"DROP INDEX {name}"))
            await _params(connection, _REQUESTS, **values)
            await _params(connection, _FILES, **values)
            await connection.execute(
                text("SELECT setval(pg_get_serial_sequence('files', 'id'), :n)"),
                {"n": shape.files},
            )
            step = 2000
            for first in range(0, shape.files, step):
                await _params(connection, _RANGES, first=first, last=first + step, **values)
            await connection.execute(
                text("SELECT setval(pg_get_serial_sequence('ranges', 'id'), :n)"),
                {"n": shape.files * shape.ranges_per_file},
            )
            for definition in indexes:
                await connection.execute(text(definition))
            for name, definition in constraints:
                await connection.execute(
                    text(f'ALTER TABLE ranges ADD CONSTRAINT "{name}" {definition}')
                )
            if await _secondary(connection) != (constraints, indexes):
                raise RuntimeError("the ranges table's indexes differ from the migrated ones")
            await connection.execute(
                text(
                    "CREATE TABLE scale_fill (ranges bigint, ranges_per_file int, "
                    "expired_files int)"
                )
            )
            await connection.execute(
                text("INSERT INTO scale_fill VALUES (:r, :rpf, :e)"),
                {"r": shape.ranges, "rpf": shape.ranges_per_file, "e": shape.expired_files},
            )
    finally:
        await engine.dispose()


async def _reset(url: str, shape: FillShape) -> None:
    """Back to the fill: what a run added deleted, the expired ranges put back, vacuumed."""
    engine = create_async_engine(url, poolclass=NullPool)
    last_id = shape.files * shape.ranges_per_file
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM ranges WHERE id > :n"), {"n": last_id})
            await connection.execute(text("DELETE FROM requests WHERE id NOT LIKE 'fill-%'"))
            for table in ("outbox", "edges", "edge_enrollments", "dead_letters", "request_events"):
                await connection.execute(text(f"DELETE FROM {table}"))
            kept = await connection.scalar(
                text("SELECT count(*) FROM ranges WHERE file_id <= :n"),
                {"n": shape.expired_files},
            )
            if kept != shape.expired_ranges:
                await connection.execute(
                    text("DELETE FROM ranges WHERE file_id <= :n"), {"n": shape.expired_files}
                )
                await _params(
                    connection, _RANGES, first=0, last=shape.expired_files, **_values(shape)
                )
            for sequence, value in (("files", shape.files), ("ranges", last_id)):
                await connection.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{sequence}', 'id'), :n)"),
                    {"n": value},
                )
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM (ANALYZE) ranges, files, requests, outbox"))
    finally:
        await engine.dispose()


async def _holds(url: str, shape: FillShape) -> bool:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            if not await connection.scalar(text("SELECT to_regclass('scale_fill') IS NOT NULL")):
                return False
            row = (await connection.execute(text("SELECT * FROM scale_fill"))).one_or_none()
            return row is not None and tuple(row) == (
                shape.ranges,
                shape.ranges_per_file,
                shape.expired_files,
            )
    finally:
        await engine.dispose()


async def ranges_size(url: str) -> tuple[int, int]:
    """Bytes of the ranges table with its indexes (and TOAST), and its rows."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            size = await connection.scalar(text("SELECT pg_total_relation_size('ranges')"))
            rows = await connection.scalar(text("SELECT count(*) FROM ranges"))
            return int(size or 0), int(rows or 0)
    finally:
        await engine.dispose()


async def prepare(url: str, shape: FillShape, *, refill: bool) -> Prepared:
    """Make the database hold the fill and nothing else: reuse and reset an earlier fill of
    the same shape, or drop, migrate and fill anew."""
    from ess_common.db.migrate import upgrade

    fill_s = 0.0
    await ensure_database(url, fresh=False)
    if refill or not await _holds(url, shape):
        started = time.perf_counter()
        await ensure_database(url, fresh=True)
        await upgrade(url)
        await _fill(url, shape)
        fill_s = time.perf_counter() - started
    else:
        await upgrade(url)  # a reused fill takes the migrations made since
    started = time.perf_counter()
    await _reset(url, shape)
    reset_s = time.perf_counter() - started
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            version = str(await connection.scalar(text("SHOW server_version")))
    finally:
        await engine.dispose()
    size, rows = await ranges_size(url)
    filled = await _filled_size(url, (size, rows) if fill_s else None)
    return Prepared(version, fill_s, reset_s, size, rows, *filled)


async def _filled_size(url: str, fresh: tuple[int, int] | None) -> tuple[int, int]:
    """The ranges table's size as filled: kept beside the fill when it was just made."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            if fresh is not None:
                await connection.execute(
                    text("CREATE TABLE scale_fill_size (bytes bigint, n bigint)")
                )
                await connection.execute(
                    text("INSERT INTO scale_fill_size VALUES (:b, :n)"),
                    {"b": fresh[0], "n": fresh[1]},
                )
                return fresh
            row = (await connection.execute(text("SELECT bytes, n FROM scale_fill_size"))).one()
            return int(row[0]), int(row[1])
    finally:
        await engine.dispose()
