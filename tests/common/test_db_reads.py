"""Reads outside any transaction (`ess_common.db.session.read`, and the hot reads of
`ess_common.db.hot_reads`), on SQLite and the real PostgreSQL: what they see, and how they get
over a connection the server ended."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from ess_common.db import hot_reads as hot
from ess_common.db.hot_reads import hot_fetch, hot_reads
from ess_common.db.models import DeadLetter
from ess_common.db.session import is_sqlite, make_engine, make_session_maker, read, unit_of_work

if TYPE_CHECKING:
    from tests.conftest import PostgresServer


async def test_each_statement_of_a_read_sees_what_is_committed(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_session_maker(engine)
    try:

        async def work(connection: AsyncConnection) -> tuple[int, int]:
            before = await connection.scalar(select(func.count()).select_from(DeadLetter))
            async with unit_of_work(sessions) as session:
                session.add(DeadLetter(queue="q", routing_key="k", reason="r", body="{}"))
            after = await connection.scalar(select(func.count()).select_from(DeadLetter))
            return int(before or 0), int(after or 0)

        assert await read(engine, work) == (0, 1)
    finally:
        await engine.dispose()


async def test_a_read_opens_no_transaction(db_url: str) -> None:
    engine = make_engine(db_url)
    try:

        async def work(connection: AsyncConnection) -> bool:
            await connection.execute(text("SELECT 1"))
            if is_sqlite(db_url):
                raw = await connection.get_raw_connection()
                return not raw.driver_connection.in_transaction  # type: ignore[union-attr]
            # now() is when the transaction began: the same for every statement of one.
            first = await connection.scalar(text("SELECT now()"))
            await connection.execute(text("SELECT pg_sleep(0.01)"))
            return bool(await connection.scalar(text("SELECT now()")) > first)

        assert await read(engine, work)
    finally:
        await engine.dispose()


async def test_a_read_runs_again_once_when_its_connection_was_lost(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.url()
    engine = make_engine(url)
    admin = create_async_engine(url, poolclass=NullPool)
    runs: list[int] = []

    async def work(connection: AsyncConnection) -> int:
        runs.append(1)
        return int(await connection.scalar(text("SELECT 41 + 1")) or 0)

    try:
        assert await read(engine, work) == 42
        async with admin.connect() as connection:
            await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        runs.clear()

        assert await read(engine, work) == 42
        assert len(runs) == 2, "the pooled connection was lost: one failed run, one good"
        runs.clear()
        assert await read(engine, work) == 42
        assert len(runs) == 1
    finally:
        await admin.dispose()
        await engine.dispose()


async def test_a_read_the_database_refuses_is_not_run_again(db_url: str) -> None:
    engine = make_engine(db_url)
    runs: list[int] = []

    async def work(connection: AsyncConnection) -> None:
        runs.append(1)
        await connection.execute(text("SELECT * FROM no_such_table"))

    try:
        with pytest.raises(DBAPIError):
            await read(engine, work)
    finally:
        await engine.dispose()
    assert len(runs) == 1


_BY_QUEUE = select(DeadLetter.queue, DeadLetter.reason).where(
    DeadLetter.queue == bindparam("queue")
)


async def test_a_hot_read_runs_on_its_own_pool_when_one_is_open(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL, within `hot_reads`, without SQLAlchemy's pool; elsewhere through it."""
    engine = make_engine(db_url)
    sessions = make_session_maker(engine)
    through_sqlalchemy: list[int] = []

    async def counted(*args: Any) -> Any:
        through_sqlalchemy.append(1)
        return await read(*args)

    monkeypatch.setattr(hot, "read", counted)
    try:
        async with unit_of_work(sessions) as session:
            session.add(DeadLetter(queue="q", routing_key="k", reason="r", body="{}"))
        async with hot_reads(engine):
            rows = await hot_fetch(engine, _BY_QUEUE, {"queue": "q"})
            none = await hot_fetch(engine, _BY_QUEUE, {"queue": "other"})
        after = await hot_fetch(engine, _BY_QUEUE, {"queue": "q"})
    finally:
        await engine.dispose()

    assert [tuple(r) for r in rows] == [tuple(r) for r in after] == [("q", "r")]
    assert list(none) == []
    assert len(through_sqlalchemy) == (3 if is_sqlite(db_url) else 1)


async def test_a_hot_read_gets_over_a_lost_connection(postgres_server: PostgresServer) -> None:
    url = await postgres_server.url()
    engine = make_engine(url)
    admin = create_async_engine(url, poolclass=NullPool)
    try:
        async with hot_reads(engine):
            assert list(await hot_fetch(engine, _BY_QUEUE, {"queue": "lost"})) == []
            async with admin.connect() as connection:
                ended = await connection.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            assert ended
            assert list(await hot_fetch(engine, _BY_QUEUE, {"queue": "lost"})) == []
            assert list(await hot_fetch(engine, _BY_QUEUE, {"queue": "lost"})) == []
    finally:
        await admin.dispose()
        await engine.dispose()


async def test_a_hot_read_of_a_value_the_database_refuses_raises_as_a_read_does(
    db_url: str,
) -> None:
    engine = make_engine(db_url)
    try:
        async with hot_reads(engine):
            if is_sqlite(db_url):
                # SQLite stores any text: the refusal is PostgreSQL's.
                return
            with pytest.raises(DBAPIError):
                await hot_fetch(engine, _BY_QUEUE, {"queue": "nul\x00"})
    finally:
        await engine.dispose()
