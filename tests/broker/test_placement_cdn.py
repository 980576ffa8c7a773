"""Placement as a CDN does it, on SQLite and PostgreSQL: files go near their replicas, an edge
with a full queue waits, drained and disabled edges get nothing new, what an edge can evict is
room, and two assigners at once (two brokers) never promise an edge more than it can hold."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import Executable, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Update

from ess_broker.assignment import assign_pending, reclaim_lost_edges
from ess_broker.bookkeeping import handle_file_cached, handle_split_done
from ess_broker.placement import Candidate, choose_edge, replica_places
from ess_common.db.models import Edge, EdgeStatus, File, FileStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from tests.broker.factories import (
    age_heartbeat,
    assigned_work,
    beat_enrolled,
    file_cached,
    files,
    heartbeat,
    latest_work,
    request_spec,
    split_done,
)

LOST_AFTER = timedelta(seconds=30)


async def submit(sessions: SessionMaker, key: str, **changes: Any) -> str:
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(session, request_spec(key, **changes))
    return request.id


async def beat(sessions: SessionMaker, edge: str, **changes: Any) -> None:
    async with unit_of_work(sessions) as session:
        await beat_enrolled(session, heartbeat(edge, **changes))


async def assign(sessions: SessionMaker, **options: Any) -> int:
    async with unit_of_work(sessions) as session:
        return await assign_pending(session, LOST_AFTER, **options)


async def set_status(sessions: SessionMaker, edge: str, status: EdgeStatus) -> None:
    async with unit_of_work(sessions) as session:
        row = await session.get(Edge, edge)
        assert row is not None
        row.status = status


async def edge_row(sessions: SessionMaker, name: str) -> Edge:
    async with sessions() as session:
        row = await session.get(Edge, name)
        assert row is not None
        return row


def with_replicas(key: str, n: int, replicas: list[dict[str, str]]) -> list[dict[str, Any]]:
    spec = request_spec(key, n_files=n)
    return [{**f.model_dump(), "replicas": replicas} for f in spec.files]


def test_an_edge_whose_queue_is_full_takes_nothing_more() -> None:
    busy = Candidate("busy", "BNL-ATLAS", "us", 10**12, 10**12, queued=5)
    idle = Candidate("idle", "CERN-PROD", "europe", 10**12, 10**12, queued=4)
    # The busy edge is at the replica's site, but its queue is at the cap.
    chosen = choose_edge("s:f", 1, [busy, idle], replica_sites=["BNL-ATLAS"], max_queued=5)
    assert chosen == idle
    assert choose_edge("s:f", 1, [busy], max_queued=5) is None
    assert choose_edge("s:f", 1, [busy]) == busy


def test_replica_places_reads_sites_and_regions() -> None:
    replicas = [{"site": "BNL-ATLAS", "region": "us"}, {"site": "MWT2", "region": ""}]
    assert replica_places(replicas) == (["BNL-ATLAS", "MWT2"], ["us"])


async def test_files_go_to_the_edge_at_their_replicas_site_then_region(
    sessions: SessionMaker,
) -> None:
    await beat(sessions, "edge-cern", site="CERN-PROD", region="europe")
    await beat(sessions, "edge-bnl", site="BNL-ATLAS", region="us")
    await beat(sessions, "edge-mwt2", site="MWT2", region="us")
    at_bnl = await submit(
        sessions,
        "at-bnl",
        files=with_replicas("at-bnl", 6, [{"site": "BNL-ATLAS", "region": "us"}]),
    )
    in_europe = await submit(
        sessions,
        "in-europe",
        files=with_replicas("in-europe", 6, [{"site": "DESY-HH", "region": "europe"}]),
    )

    assert await assign(sessions) == 12

    edges = {(f.request_id, f.edge) for f in await files(sessions)}
    assert edges == {(at_bnl, "edge-bnl"), (in_europe, "edge-cern")}
    # The edge hears where the copies are, too.
    works = await assigned_work(sessions)
    assert {r.site for w in works if w.request_id == at_bnl for r in w.file.replicas} == {
        "BNL-ATLAS"
    }


async def test_an_edge_with_its_queue_full_gets_more_only_as_it_finishes(
    sessions: SessionMaker,
) -> None:
    await submit(sessions, "queue", n_files=5)
    await beat(sessions, "edge-a")

    assert await assign(sessions, max_queued=2) == 2
    assert await assign(sessions, max_queued=2) == 0
    first = next(iter((await latest_work(sessions)).values()))
    async with unit_of_work(sessions) as session:
        await handle_file_cached(session, file_cached(first))
    # Cached is not finished: the file still takes its place in the queue.
    assert await assign(sessions, max_queued=2) == 0
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_done(first))
    assert await assign(sessions, max_queued=2) == 1


async def test_drained_and_disabled_edges_get_no_new_files_and_heartbeats_keep_them_so(
    sessions: SessionMaker,
) -> None:
    for name in ("edge-a", "edge-drained", "edge-disabled"):
        await beat(sessions, name)
    await set_status(sessions, "edge-drained", EdgeStatus.DRAINING)
    await set_status(sessions, "edge-disabled", EdgeStatus.DISABLED)
    for name in ("edge-drained", "edge-disabled"):
        await beat(sessions, name)

    await submit(sessions, "drain", n_files=20)
    assert await assign(sessions) == 20

    assert {f.edge for f in await files(sessions)} == {"edge-a"}
    assert (await edge_row(sessions, "edge-drained")).status == EdgeStatus.DRAINING
    assert (await edge_row(sessions, "edge-disabled")).status == EdgeStatus.DISABLED


async def test_a_silent_draining_edge_loses_its_work_but_stays_draining(
    sessions: SessionMaker,
) -> None:
    await beat(sessions, "edge-a")
    await submit(sessions, "silent-drain", n_files=3)
    assert await assign(sessions) == 3
    await set_status(sessions, "edge-a", EdgeStatus.DRAINING)
    async with unit_of_work(sessions) as session:
        await age_heartbeat(session, "edge-a", LOST_AFTER * 2)

    async with unit_of_work(sessions) as session:
        assert await reclaim_lost_edges(session, LOST_AFTER) == ["edge-a"]
    async with unit_of_work(sessions) as session:
        assert await reclaim_lost_edges(session, LOST_AFTER) == []

    assert {(f.status, f.edge) for f in await files(sessions)} == {(FileStatus.PENDING, None)}
    assert (await edge_row(sessions, "edge-a")).status == EdgeStatus.DRAINING
    await beat(sessions, "edge-a")
    assert (await edge_row(sessions, "edge-a")).status == EdgeStatus.DRAINING


async def test_what_an_edge_could_evict_counts_as_room(sessions: SessionMaker) -> None:
    beat_with = heartbeat("edge-a", free_bytes=1000, quota_bytes=10_000)
    beat_with = beat_with.model_copy(
        update={"evictable_bytes": 4000, "latitude": 46.2, "longitude": 6.1}
    )
    async with unit_of_work(sessions) as session:
        await beat_enrolled(session, beat_with)
    row = await edge_row(sessions, "edge-a")
    assert (row.free_bytes, row.latitude, row.longitude) == (5000, 46.2, 6.1)

    await submit(sessions, "room", n_files=6, size=1000)
    assert await assign(sessions) == 5


def _takes_edge_locks(statement: Executable) -> bool:
    if isinstance(statement, Update):
        return getattr(getattr(statement, "table", None), "name", None) == "edges"
    if isinstance(statement, Select) and statement._for_update_arg is not None:
        return any(getattr(f, "name", None) == "edges" for f in statement.get_final_froms())
    return False


async def test_two_assigners_of_different_requests_never_over_commit_an_edge(
    sessions: SessionMaker,
) -> None:
    # Two brokers each handle a `request.created`: each sees only its own request's files, so
    # only the edge's lock keeps them from both filling the same room.
    first = await submit(sessions, "first", n_files=3, size=1000)
    second = await submit(sessions, "second", n_files=3, size=1000)
    await beat(sessions, "edge-a", free_bytes=4000)
    second_locking = asyncio.Event()

    class FirstHolds(AsyncSession):
        held = False

        async def execute(self, statement: Executable, *args: Any, **kwargs: Any) -> Any:
            if isinstance(statement, Update) and not _takes_edge_locks(statement) and not self.held:
                # Claims are about to be made: let the second assigner try its luck now.
                self.held = True
                await asyncio.wait_for(second_locking.wait(), timeout=10)
            return await super().execute(statement, *args, **kwargs)

    class SecondTells(AsyncSession):
        async def execute(self, statement: Executable, *args: Any, **kwargs: Any) -> Any:
            if _takes_edge_locks(statement):
                second_locking.set()
            return await super().execute(statement, *args, **kwargs)

    async def assigner(session_class: type[AsyncSession], request_id: str) -> int:
        made = async_sessionmaker(sessions.kw["bind"], expire_on_commit=False, class_=session_class)
        async with made() as session, session.begin():
            return await assign_pending(session, LOST_AFTER, request_id=request_id)

    counts = await asyncio.gather(assigner(FirstHolds, first), assigner(SecondTells, second))

    assert list(counts) == [3, 1]
    async with sessions() as session:
        promised = await session.scalar(
            select(func.sum(File.size)).where(File.status == FileStatus.ASSIGNED)
        )
    assert promised == 4000
