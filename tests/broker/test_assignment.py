"""Assigning pending files to live edges and taking work back from lost ones, on SQLite and
PostgreSQL: heartbeats register edges, `assign_pending` hands out every file it can (each a new
attempt, each announced in the outbox on the edge's own routing key), silent edges get nothing
and lose what they held, space is respected."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import Executable, Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Update

from ess_broker.assignment import assign_pending, reclaim_lost_edges
from ess_broker.bookkeeping import handle_file_cached, handle_split_done
from ess_common.db.models import (
    Edge,
    EdgeStatus,
    FileStatus,
    OutboxMessage,
    Range,
    Request,
    RequestStatus,
)
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import EdgeHeartbeat
from tests.broker.factories import (
    GiB,
    age_heartbeat,
    assigned_work,
    beat_enrolled,
    count,
    file_cached,
    files,
    heartbeat,
    latest_work,
    request_spec,
    split_done,
)

LOST_AFTER = timedelta(seconds=30)


async def submit(sessions: SessionMaker, key: str = "task-1", **changes: Any) -> str:
    async with unit_of_work(sessions) as session:
        request, created = await record_request(session, request_spec(key, **changes))
    assert created
    return request.id


async def beat(sessions: SessionMaker, edge: str, **changes: Any) -> None:
    async with unit_of_work(sessions) as session:
        await beat_enrolled(session, heartbeat(edge, **changes))


async def assign(sessions: SessionMaker) -> int:
    async with unit_of_work(sessions) as session:
        return await assign_pending(session, LOST_AFTER)


async def silence(sessions: SessionMaker, edge: str) -> None:
    async with unit_of_work(sessions) as session:
        await age_heartbeat(session, edge, LOST_AFTER * 2)


async def edge_status(sessions: SessionMaker, name: str) -> str:
    async with sessions() as session:
        edge = await session.get(Edge, name)
        assert edge is not None
        return edge.status


async def test_every_file_goes_to_a_live_edge_with_a_file_assigned_event(
    sessions: SessionMaker,
) -> None:
    request_id = await submit(sessions, n_files=6)
    await beat(sessions, "edge-a")
    await beat(sessions, "edge-b")

    assert await assign(sessions) == 6

    stored = await files(sessions)
    assert {f.status for f in stored} == {FileStatus.ASSIGNED}
    assert {f.edge for f in stored} <= {"edge-a", "edge-b"}
    assert {f.attempt for f in stored} == {1}
    async with sessions() as session:
        request = await session.get(Request, request_id)
        assert request is not None and request.status == RequestStatus.ASSIGNED

    works = await assigned_work(sessions)
    by_file = {f.id: f for f in stored}
    assert sorted(w.file_id for w in works) == sorted(by_file)
    for work in works:
        f = by_file[work.file_id]
        assert (work.edge, work.attempt, work.request_id) == (f.edge, 1, request_id)
        assert (work.file.lfn, work.file.size, work.file.adler32) == (f.lfn, f.size, f.adler32)
        assert work.events_per_range == 100
    # Nothing is left to assign: a second round does nothing and announces nothing.
    assert await assign(sessions) == 0
    assert len(await assigned_work(sessions)) == 6


async def test_higher_priority_requests_are_assigned_first(sessions: SessionMaker) -> None:
    await submit(sessions, "low", n_files=2, priority=0)
    urgent = await submit(sessions, "urgent", n_files=2, priority=500)
    # Room for two files only: the urgent request gets it.
    await beat(sessions, "edge-a", free_bytes=2000)
    assert await assign(sessions) == 2
    assert {w.request_id for w in await assigned_work(sessions)} == {urgent}


async def test_without_a_live_edge_files_stay_pending(sessions: SessionMaker) -> None:
    request_id = await submit(sessions)
    assert await assign(sessions) == 0
    assert {f.status for f in await files(sessions)} == {FileStatus.PENDING}
    assert await count(sessions, OutboxMessage) == 0
    async with sessions() as session:
        request = await session.get(Request, request_id)
        assert request is not None and request.status == RequestStatus.RECEIVED

    # An edge that comes later gets the files at the next round.
    await beat(sessions, "edge-late")
    assert await assign(sessions) == 3
    assert {f.edge for f in await files(sessions)} == {"edge-late"}


async def test_an_edge_silent_for_longer_than_lost_after_gets_nothing(
    sessions: SessionMaker,
) -> None:
    await submit(sessions, n_files=8)
    await beat(sessions, "edge-quiet")
    await beat(sessions, "edge-live")
    await silence(sessions, "edge-quiet")

    assert await assign(sessions) == 8
    assert {f.edge for f in await files(sessions)} == {"edge-live"}

    # With only silent edges nothing is assigned, even before the edge is marked lost.
    await submit(sessions, "task-2", n_files=2)
    await silence(sessions, "edge-live")
    assert await assign(sessions) == 0
    assert await edge_status(sessions, "edge-live") == EdgeStatus.ALIVE


async def test_a_lost_edge_gives_back_its_unfinished_files_and_returns_on_a_heartbeat(
    sessions: SessionMaker,
) -> None:
    await submit(sessions, n_files=3)
    await beat(sessions, "edge-a")
    assert await assign(sessions) == 3
    first = await latest_work(sessions)
    one, two, three = sorted(first)
    # One file split (finished work stays), one cached, one only assigned.
    async with unit_of_work(sessions) as session:
        await handle_file_cached(session, file_cached(first[one]))
        await handle_split_done(session, split_done(first[one]))
        await handle_file_cached(session, file_cached(first[two]))

    await silence(sessions, "edge-a")
    async with unit_of_work(sessions) as session:
        assert await reclaim_lost_edges(session, LOST_AFTER) == ["edge-a"]
    assert await edge_status(sessions, "edge-a") == EdgeStatus.LOST
    stored = {f.id: f for f in await files(sessions)}
    assert (stored[one].status, stored[one].edge) == (FileStatus.SPLIT, "edge-a")
    for moved in (two, three):
        assert (stored[moved].status, stored[moved].edge) == (FileStatus.PENDING, None)
    # Reclaiming again finds nothing new.
    async with unit_of_work(sessions) as session:
        assert await reclaim_lost_edges(session, LOST_AFTER) == []

    # Another edge takes the work over, as a new attempt.
    await beat(sessions, "edge-b")
    assert await assign(sessions) == 2
    second = await latest_work(sessions)
    assert {(second[f].edge, second[f].attempt) for f in (two, three)} == {("edge-b", 2)}
    assert second[one] == first[one]

    # The lost edge's late result of the old attempt counts for nothing...
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_done(first[two]))
    async with sessions() as session:
        ranges = (await session.scalars(select(Range).where(Range.file_id == two))).all()
        assert ranges == []
    # ...and its heartbeat brings it back to life, for new work only.
    await beat(sessions, "edge-a")
    assert await edge_status(sessions, "edge-a") == EdgeStatus.ALIVE
    stored = {f.id: f for f in await files(sessions)}
    assert {stored[two].edge, stored[three].edge} == {"edge-b"}


async def test_a_heartbeat_updates_what_the_head_knows_of_the_edge(
    sessions: SessionMaker,
) -> None:
    await beat(sessions, "edge-a", free_bytes=5 * GiB)
    await beat(sessions, "edge-a", free_bytes=7 * GiB, site="BNL-ATLAS", region="us")
    async with sessions() as session:
        edge = await session.get(Edge, "edge-a")
        assert edge is not None
        assert (edge.free_bytes, edge.site, edge.region) == (7 * GiB, "BNL-ATLAS", "us")
        assert edge.status == EdgeStatus.ALIVE


async def test_an_edge_whose_clock_runs_behind_stays_alive(sessions: SessionMaker) -> None:
    # The edge stamps its heartbeats by its own clock, ten minutes behind the head's: only
    # the head's clock may decide whether the edge is alive.
    def skewed(free_bytes: int) -> EdgeHeartbeat:
        beat = heartbeat("edge-late-clock", free_bytes=free_bytes)
        return beat.model_copy(update={"occurred_at": beat.occurred_at - timedelta(minutes=10)})

    for free in (GiB, 2 * GiB):
        async with unit_of_work(sessions) as session:
            await beat_enrolled(session, skewed(free))
    async with sessions() as session:
        edge = await session.get(Edge, "edge-late-clock")
        assert edge is not None and edge.free_bytes == 2 * GiB

    await silence(sessions, "edge-late-clock")
    async with unit_of_work(sessions) as session:
        assert await reclaim_lost_edges(session, LOST_AFTER) == ["edge-late-clock"]
    async with unit_of_work(sessions) as session:
        await beat_enrolled(session, skewed(3 * GiB))
    assert await edge_status(sessions, "edge-late-clock") == EdgeStatus.ALIVE
    await submit(sessions, n_files=2)
    assert await assign(sessions) == 2


async def test_an_edge_without_room_for_a_file_is_skipped(sessions: SessionMaker) -> None:
    await submit(sessions, n_files=5, size=1000)
    await beat(sessions, "edge-tiny", free_bytes=999)
    await beat(sessions, "edge-roomy", free_bytes=10_000)
    assert await assign(sessions) == 5
    assert {f.edge for f in await files(sessions)} == {"edge-roomy"}


async def test_files_are_assigned_only_up_to_the_room_an_edge_has(sessions: SessionMaker) -> None:
    await submit(sessions, n_files=3, size=1000)
    await beat(sessions, "edge-a", free_bytes=2500)
    # Room for two files: the third waits, also in later rounds, since the first two are
    # promised to the edge even before its next heartbeat says its disk is fuller.
    assert await assign(sessions) == 2
    assert await assign(sessions) == 0
    assert sorted(f.status for f in await files(sessions)) == [
        FileStatus.ASSIGNED,
        FileStatus.ASSIGNED,
        FileStatus.PENDING,
    ]
    # More room (a larger quota, fresh free space) lets the last one go.
    await beat(sessions, "edge-a", free_bytes=2500, quota_bytes=5000)
    assert await assign(sessions) == 1


async def test_a_finished_or_failed_request_gets_no_more_assignments(
    sessions: SessionMaker,
) -> None:
    request_id = await submit(sessions, n_files=2)
    async with unit_of_work(sessions) as session:
        request = await session.get(Request, request_id)
        assert request is not None
        request.status = RequestStatus.CANCELLED
    await beat(sessions, "edge-a")
    assert await assign(sessions) == 0
    assert {f.status for f in await files(sessions)} == {FileStatus.PENDING}


def _locks_edges(statement: Executable) -> bool:
    """The statement with which an assigner takes the edge locks: the rows `FOR UPDATE` on
    PostgreSQL, the database's write lock on SQLite."""
    table = getattr(statement, "table", None)
    if isinstance(statement, Update):
        return getattr(table, "name", None) == "edges"
    if isinstance(statement, Select) and statement._for_update_arg is not None:
        return any(getattr(f, "name", None) == "edges" for f in statement.get_final_froms())
    return False


class _Rendezvous:
    """Holds each session at its first claim of a file until every party has either come to
    take the edge locks or finished: a second assigner starts while the first one's claims
    are not yet committed.
    """

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.everyone = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.everyone.set()

    def session_class(self) -> type[AsyncSession]:
        rendezvous = self

        class HeldSession(AsyncSession):
            arrived = False
            held = False

            async def execute(self, statement: Executable, *args: Any, **kwargs: Any) -> Any:
                if not self.arrived and _locks_edges(statement):
                    self.arrived = True
                    rendezvous.arrive()
                elif isinstance(statement, Update) and not self.held:
                    self.held = True
                    if not self.arrived:
                        self.arrived = True
                        rendezvous.arrive()
                    await asyncio.wait_for(rendezvous.everyone.wait(), timeout=10)
                return await super().execute(statement, *args, **kwargs)

        return HeldSession


async def test_two_assigners_at_once_never_assign_a_file_twice(sessions: SessionMaker) -> None:
    # The sweep and a `request.created` handler (or two brokers) may assign at the same time.
    # They take turns on the edges' locks, PostgreSQL's SKIP LOCKED hides claimed files from
    # the other, and the claim itself is a compare-and-set.
    await submit(sessions, n_files=4)
    await beat(sessions, "edge-a")
    rendezvous = _Rendezvous(parties=2)
    held = async_sessionmaker(
        sessions.kw["bind"], expire_on_commit=False, class_=rendezvous.session_class()
    )

    async def assigner() -> int:
        async with held() as session:
            try:
                async with session.begin():
                    return await assign_pending(session, LOST_AFTER)
            finally:
                if not session.arrived:  # type: ignore[attr-defined]
                    rendezvous.arrive()

    counts = await asyncio.gather(assigner(), assigner())

    assert sum(counts) == 4
    works = await assigned_work(sessions)
    assert len(works) == 4
    assert len({w.file_id for w in works}) == 4
    stored = await files(sessions)
    assert {(f.status, f.attempt) for f in stored} == {(FileStatus.ASSIGNED, 1)}
