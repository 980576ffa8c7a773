"""Two transactions moving the same row at once, on PostgreSQL: the second waits for the
first's lock, then finds the row no longer in a state it may leave, so exactly one wins.
And the lock order of `ess_common.states`: an edge's `file.cached` and `split.done` of one
file, handled at once, queue on the request's row instead of deadlocking on the file's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge, EdgeStatus, File, FileStatus, Request, RequestStatus
from ess_common.db.session import SessionMaker, make_engine, make_session_maker, unit_of_work
from ess_common.states import edges, files, notifications, requests
from tests.common.state_rows import EDGE, make_rows, set_status, work_of

if TYPE_CHECKING:
    from tests.conftest import PostgresServer

Step = Callable[[AsyncSession], Coroutine[Any, Any, object]]
WAIT_S = 10.0


@pytest.fixture
async def pg_sessions(postgres_server: PostgresServer) -> AsyncIterator[SessionMaker]:
    await postgres_server.truncate()
    engine = make_engine(await postgres_server.url())
    try:
        yield make_session_maker(engine)
    finally:
        await engine.dispose()


def _won(result: object) -> bool:
    return result is not None and result is not False


async def _blocked(watcher: AsyncSession, pid: int) -> None:
    """Until the backend `pid` waits for a lock another transaction holds."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    query = text("SELECT cardinality(pg_blocking_pids(:pid)) > 0")
    while not await watcher.scalar(query, {"pid": pid}):
        assert asyncio.get_running_loop().time() < deadline, "the second never waited"
        await asyncio.sleep(0.02)


async def _race(sessions: SessionMaker, first: Step, second: Step) -> tuple[bool, bool]:
    """`first` moves the row and holds its locks; `second` starts and waits for them; then
    `first` commits. Whether each happened."""
    async with sessions() as one, sessions() as two, sessions() as watcher:
        won_first = _won(await first(one))
        pid = await two.scalar(text("SELECT pg_backend_pid()"))
        assert isinstance(pid, int)
        racing = asyncio.create_task(second(two))
        try:
            await _blocked(watcher, pid)
            assert not racing.done()
        finally:
            await one.commit()
        won_second = _won(await racing)
        await two.commit()
    return won_first, won_second


async def test_request_ready_and_failed_at_once(pg_sessions: SessionMaker) -> None:
    request_id, _, _ = await make_rows(pg_sessions)
    won = await _race(
        pg_sessions,
        lambda s: requests.ready(s, request_id, n_files=1, n_ranges=1, detail="1 file"),
        lambda s: requests.fail(s, request_id, "a file failed"),
    )
    assert won == (True, False)
    async with pg_sessions() as session:
        request = await session.get(Request, request_id)
        assert request is not None and request.status == RequestStatus.READY


async def test_file_split_and_failed_at_once(pg_sessions: SessionMaker) -> None:
    request_id, file_id, _ = await make_rows(pg_sessions)
    async with unit_of_work(pg_sessions) as session:
        await set_status(session, "files", file_id, FileStatus.CACHED)
    work = work_of(request_id, file_id)
    won = await _race(
        pg_sessions,
        lambda s: files.split(s, work, n_ranges=1, size=1),
        lambda s: files.fail(s, work, "split failed"),
    )
    assert won == (True, False)


async def test_file_assigned_twice_at_once(pg_sessions: SessionMaker) -> None:
    _, file_id, _ = await make_rows(pg_sessions)

    async def assign(session: AsyncSession, edge: str) -> bool:
        f = await session.get(File, file_id)
        assert f is not None
        return await files.assign(session, f, edge)

    won = await _race(pg_sessions, lambda s: assign(s, "edge-b"), lambda s: assign(s, "edge-c"))
    assert won == (True, False)
    async with pg_sessions() as session:
        f = await session.get(File, file_id)
        assert f is not None and (f.edge, f.attempt) == ("edge-b", 2)


async def test_edge_enabled_twice_at_once(pg_sessions: SessionMaker) -> None:
    await make_rows(pg_sessions)
    async with unit_of_work(pg_sessions) as session:
        await set_status(session, "edges", EDGE, EdgeStatus.DISABLED)
    won = await _race(pg_sessions, lambda s: edges.enable(s, EDGE), lambda s: edges.enable(s, EDGE))
    assert won == (True, False)
    async with pg_sessions() as session:
        assert await session.scalar(select(Edge.status)) == EdgeStatus.ALIVE


async def test_notification_sent_and_given_up_at_once(pg_sessions: SessionMaker) -> None:
    _, _, notification_id = await make_rows(pg_sessions)
    won = await _race(
        pg_sessions,
        lambda s: notifications.sent(s, notification_id),
        lambda s: notifications.give_up(s, notification_id),
    )
    assert won == (True, False)


async def test_cached_and_split_of_one_file_queue_on_the_request(
    pg_sessions: SessionMaker,
) -> None:
    """`file.cached` holds the request's row (taken first) and the file's; `split.done` of the
    same file waits on the request's row, not holding it while it waits on the file's: when
    the first commits, the split goes through. (Locking the file first, the two deadlocked.)"""
    request_id, file_id, _ = await make_rows(pg_sessions)
    work = work_of(request_id, file_id)
    async with unit_of_work(pg_sessions) as session:
        await set_status(session, "files", file_id, FileStatus.ASSIGNED)

    async def split(session: AsyncSession) -> object:
        # As the bookkeeping does: the request first, then the file.
        await requests.lock(session, request_id)
        return await files.split(session, work, n_ranges=1, size=1)

    won = await _race(pg_sessions, lambda s: files.cache(s, work), split)
    assert won == (True, True)
    async with pg_sessions() as session:
        f = await session.get(File, file_id)
        assert f is not None and f.status == FileStatus.SPLIT
