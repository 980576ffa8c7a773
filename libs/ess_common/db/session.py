"""Engines and sessions: one session per HTTP request or per message; the boundary commits.

Reads that need no transaction of their own (the pilots' lookups) take a pooled connection in
autocommit instead (`read`): no BEGIN and ROLLBACK around their one query.

PostgreSQL connections are not pinged before each use (a round trip, and with it a
transaction, per checkout): a connection found lost when used invalidates the whole pool, so
only the statement that found it fails. `read` runs its work once more on a fresh connection
then; a unit of work fails and is retried by its boundary (a message is redelivered).
Connections are also replaced after `pool_recycle` seconds, before anything in between (a
firewall, a proxy) can have dropped them unseen.

A hot read (`fetch`) runs on PostgreSQL straight on the asyncpg connection of the pooled one,
as a statement asyncpg prepares once per connection: SQLAlchemy's execution and result layers
cost more CPU than the query itself takes PostgreSQL.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Dialect, Select, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import QueuePool

T = TypeVar("T")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_recycle", 1800)
    return create_async_engine(url, **kwargs)


SessionMaker = async_sessionmaker[AsyncSession]


def make_session_maker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def engine_of(sessions: SessionMaker) -> AsyncEngine:
    """The engine a session maker is bound to."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, AsyncEngine):
        raise TypeError("the session maker is not bound to an AsyncEngine")
    return engine


@asynccontextmanager
async def unit_of_work(sessions: SessionMaker) -> AsyncIterator[AsyncSession]:
    """Commit when the block ends normally, roll back when it raises."""
    async with sessions() as session, session.begin():
        yield session


#: Per engine, the same engine (the same pool) whose connections are in autocommit.
_autocommit: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def _reader(engine: AsyncEngine) -> AsyncEngine:
    if is_sqlite(engine.url.drivername):
        # Its driver opens no transaction for a SELECT: nothing to leave out.
        return engine
    reader = _autocommit.get(engine)
    if reader is None:
        reader = _autocommit[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return reader


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection of `engine` for reads, outside any transaction: each statement
    sees what was committed when it started."""
    async with _reader(engine).connect() as connection:
        yield connection


#: Per engine, as many reads at once as its pool keeps connections (and the loop they wait
#: in): a read beyond that waits for a pooled connection rather than open an overflow one,
#: which the pool closes again on return: a server process and a login per read, under load.
_read_slots: weakref.WeakKeyDictionary[
    AsyncEngine, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]
] = weakref.WeakKeyDictionary()


def _slots(engine: AsyncEngine) -> asyncio.Semaphore | None:
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None
    loop = asyncio.get_running_loop()
    held = _read_slots.get(engine)
    if held is None or held[0] is not loop:
        held = _read_slots[engine] = (loop, asyncio.Semaphore(max(1, pool.size())))
    return held[1]


async def read(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """`work` on a `reading` connection; run again, once, on a fresh connection when the
    pooled one turns out to be lost (the server restarted, the connection was cut). `work`
    must only read: it may run twice."""
    slots = _slots(engine)
    if slots is None:
        return await _read(engine, work)
    async with slots:
        return await _read(engine, work)


async def _read(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    try:
        async with reading(engine) as connection:
            return await work(connection)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    async with reading(engine) as connection:
        return await work(connection)


#: Per statement, its PostgreSQL text for asyncpg and the names of its parameters in order.
_native: weakref.WeakKeyDictionary[Select[*tuple[Any, ...]], tuple[str, tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _driver_connection(connection: AsyncConnection) -> Any | None:
    """The asyncpg connection under a `reading` connection; None on any other driver, or when
    the connection is not in autocommit or is lost (SQLAlchemy handles those)."""
    if connection.dialect.driver != "asyncpg":
        return None
    sync = connection.sync_connection
    if sync is None or sync.closed or sync.invalidated:
        return None
    if sync.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        return None
    return sync.connection.driver_connection


def native_text(
    statement: Select[*tuple[Any, ...]], dialect: Dialect
) -> tuple[str, tuple[str, ...]]:
    """The PostgreSQL text of a module-level statement for asyncpg, and the names of its
    parameters in order; compiled once per statement."""
    native = _native.get(statement)
    if native is None:
        compiled = statement.compile(dialect=dialect)
        native = _native[statement] = (compiled.string, tuple(compiled.positiontup or ()))
    return native


async def fetch(
    connection: AsyncConnection,
    statement: Select[*tuple[Any, ...]],
    params: Mapping[str, Any],
) -> Sequence[Sequence[Any]]:
    """The rows of `statement` (a module-level one: its text is kept per statement object) on a
    `reading` connection. Its parameters and columns must need no conversion by SQLAlchemy's
    types (numbers, text). Whatever asyncpg refuses (a lost connection, a value it cannot
    send) is run again through SQLAlchemy, which raises as it always does (a `DBAPIError`,
    the connection invalidated when lost)."""
    driver = _driver_connection(connection)
    if driver is not None:
        sql, names = native_text(statement, connection.dialect)
        try:
            rows: Sequence[Sequence[Any]] = await driver.fetch(sql, *(params[n] for n in names))
            return rows
        except Exception:
            # Whatever it was, SQLAlchemy meets it again below and raises it as its own.
            pass
    result = await connection.execute(statement, params)
    return result.all()
