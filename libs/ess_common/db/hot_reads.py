"""A pool of plain asyncpg connections for the hot reads of a served process.

A pilot's lookup is one indexed query. Through SQLAlchemy, taking a pooled connection and
giving it back costs about as much CPU as the query itself; an asyncpg pool of its own costs
a tenth of that. `hot_reads(engine)` keeps such a pool beside the engine's for the block (a
served app's lifespan), and `hot_fetch` runs a module-level statement on it. Where there is
no such pool (SQLite, a process that did not open one), or it fails for any reason (the
server restarted, a value asyncpg cannot send), the statement runs through SQLAlchemy as
`read` and `fetch` run it, which retries a lost connection and raises as it always does.

The pool opens no connection before the first read, keeps at most as many as the engine's
pool, and takes a connection back without a reset query.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from ess_common.db.session import fetch, native_text, read

#: SQLAlchemy's own options among the connect arguments, which asyncpg does not take.
_DIALECT_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")

_pools: weakref.WeakKeyDictionary[AsyncEngine, Any] = weakref.WeakKeyDictionary()


async def _nothing_to_reset(_: Any) -> None:
    """A hot read changes nothing in its session (one statement, no transaction), so a
    connection goes back to the pool as it is: without the round trip of asyncpg's reset
    query (RESET ALL, UNLISTEN *...)."""


@asynccontextmanager
async def hot_reads(engine: AsyncEngine) -> AsyncIterator[None]:
    """`hot_fetch` on `engine` uses a pool of its own within the block (PostgreSQL only)."""
    if engine.dialect.driver != "asyncpg" or engine in _pools:
        yield
        return
    _, kwargs = engine.dialect.create_connect_args(engine.sync_engine.url)
    for option in _DIALECT_ONLY:
        kwargs.pop(option, None)
    size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 5
    pool = await asyncpg.create_pool(
        min_size=0, max_size=max(1, size), reset=_nothing_to_reset, **kwargs
    )
    _pools[engine] = pool
    try:
        yield
    finally:
        del _pools[engine]
        await pool.close()


async def hot_fetch(
    engine: AsyncEngine, statement: Select[*tuple[Any, ...]], params: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """The rows of `statement` (module-level, with parameters and columns that need no
    conversion by SQLAlchemy's types), read outside any transaction."""
    pool = _pools.get(engine)
    if pool is not None:
        sql, names = native_text(statement, engine.dialect)
        try:
            async with pool.acquire() as connection:
                rows: Sequence[Sequence[Any]] = await connection.fetch(
                    sql, *(params[n] for n in names)
                )
                return rows
        except Exception:
            # Whatever it was, SQLAlchemy meets it again below and raises it as its own.
            pass
    return await read(engine, lambda connection: fetch(connection, statement, params))
