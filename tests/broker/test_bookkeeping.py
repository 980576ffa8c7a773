"""The head's record of edge results, on SQLite and PostgreSQL: cached and split files, their
ranges, readiness announced exactly once, redeliveries and results of older attempts changing
nothing, malformed results refused, failures retried or failing the request once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from ess_broker.assignment import assign_pending
from ess_broker.bookkeeping import handle_file_cached, handle_file_failed, handle_split_done
from ess_common.db.models import File, FileStatus, Range, Request, RequestStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import BadMessage
from ess_common.events import (
    FileWork,
    RangeInfo,
    RequestFailed,
    RequestReady,
    parse_event,
)
from tests.broker.factories import (
    beat_enrolled,
    count,
    file_cached,
    file_failed,
    files,
    heartbeat,
    latest_work,
    outbox,
    ranges_for,
    request_spec,
    split_done,
)

LOST_AFTER = timedelta(seconds=30)
MAX_FILE_ATTEMPTS = 3


@pytest.fixture
async def assigned(sessions: SessionMaker) -> list[FileWork]:
    """A request of three files of 250 events (100 per range), each assigned to `edge-a`."""
    async with unit_of_work(sessions) as session:
        await record_request(session, request_spec("task-7"))
        await beat_enrolled(session, heartbeat("edge-a"))
    await reassign(sessions)
    works = await latest_work(sessions)
    return [works[file_id] for file_id in sorted(works)]


async def reassign(sessions: SessionMaker) -> None:
    async with unit_of_work(sessions) as session:
        await assign_pending(session, LOST_AFTER)


async def request_of(sessions: SessionMaker, work: FileWork) -> Request:
    async with sessions() as session:
        request = await session.get(Request, work.request_id)
        assert request is not None
        return request


async def file_of(sessions: SessionMaker, work: FileWork) -> File:
    async with sessions() as session:
        f = await session.get(File, work.file_id)
        assert f is not None
        return f


async def ranges_of(sessions: SessionMaker, work: FileWork) -> list[tuple[int, int, str]]:
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(Range).where(Range.file_id == work.file_id).order_by(Range.first_event)
            )
        ).all()
    return [(r.first_event, r.last_event, r.object_key) for r in rows]


async def ready_events(sessions: SessionMaker) -> list[RequestReady]:
    async with sessions() as session:
        rows = await outbox(session, "request.ready")
    events = [parse_event(row.body) for row in rows]
    assert all(isinstance(e, RequestReady) for e in events)
    return [e for e in events if isinstance(e, RequestReady)]


async def failed_events(sessions: SessionMaker) -> list[RequestFailed]:
    async with sessions() as session:
        rows = await outbox(session, "request.failed")
    events = [parse_event(row.body) for row in rows]
    return [e for e in events if isinstance(e, RequestFailed)]


async def test_cached_then_split_records_the_file_and_its_ranges(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    work = assigned[0]
    async with unit_of_work(sessions) as session:
        await handle_file_cached(session, file_cached(work))
    assert (await file_of(sessions, work)).status == FileStatus.CACHED

    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_done(work))
    assert (await file_of(sessions, work)).status == FileStatus.SPLIT
    lfn = work.file.lfn
    assert await ranges_of(sessions, work) == [
        (1, 100, f"{work.file.scope}/{lfn}/1"),
        (101, 200, f"{work.file.scope}/{lfn}/101"),
        (201, 250, f"{work.file.scope}/{lfn}/201"),
    ]
    async with sessions() as session:
        stored = (await session.scalars(select(Range).where(Range.file_id == work.file_id))).all()
    assert {(r.request_id, r.scope, r.lfn) for r in stored} == {
        (work.request_id, work.file.scope, lfn)
    }
    assert {r.adler32 for r in stored} == {"00000001", "00000065", "000000c9"}
    # One file of three: the request is not ready yet.
    assert (await request_of(sessions, work)).status == RequestStatus.ASSIGNED
    assert await ready_events(sessions) == []


async def test_split_done_without_file_cached_still_counts(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    # `file.cached` may arrive late or be lost: the split is what matters.
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_done(assigned[1]))
    assert (await file_of(sessions, assigned[1])).status == FileStatus.SPLIT
    # A late `file.cached` does not take the file back to cached.
    async with unit_of_work(sessions) as session:
        await handle_file_cached(session, file_cached(assigned[1]))
    assert (await file_of(sessions, assigned[1])).status == FileStatus.SPLIT


async def test_the_last_split_makes_the_request_ready_once(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    for work in assigned:
        async with unit_of_work(sessions) as session:
            await handle_split_done(session, split_done(work))

    request = await request_of(sessions, assigned[0])
    assert request.status == RequestStatus.READY
    assert request.ready_at is not None
    (ready,) = await ready_events(sessions)
    assert (ready.request_id, ready.dataset, ready.idempotency_key) == (
        request.id,
        request.dataset,
        "task-7",
    )
    assert (ready.n_files, ready.n_ranges) == (3, 9)
    assert ready.correlation_id == request.id
    assert await count(sessions, Range) == 9


async def test_a_redelivered_split_done_changes_nothing(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    events = [split_done(work) for work in assigned]
    for event in events:
        async with unit_of_work(sessions) as session:
            await handle_split_done(session, event)
    ready_at = (await request_of(sessions, assigned[0])).ready_at

    # The same events again, as the bus redelivers them after a lost ack.
    for event in [*events, events[-1]]:
        async with unit_of_work(sessions) as session:
            await handle_split_done(session, event)

    assert await count(sessions, Range) == 9
    assert len(await ready_events(sessions)) == 1
    request = await request_of(sessions, assigned[0])
    assert (request.status, request.ready_at) == (RequestStatus.READY, ready_at)


async def test_a_result_of_an_older_attempt_is_ignored(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    old = assigned[0]
    # The first attempt fails in a way worth retrying; the file is assigned again.
    async with unit_of_work(sessions) as session:
        await handle_file_failed(
            session, file_failed(old, retryable=True), max_file_attempts=MAX_FILE_ATTEMPTS
        )
    await reassign(sessions)
    new = (await latest_work(sessions))[old.file_id]
    assert new.attempt == old.attempt + 1

    # The first attempt's edge finishes after all: its results count for nothing.
    async with unit_of_work(sessions) as session:
        await handle_file_cached(session, file_cached(old))
        await handle_split_done(session, split_done(old))
        await handle_file_failed(
            session, file_failed(old, retryable=False), max_file_attempts=MAX_FILE_ATTEMPTS
        )
    f = await file_of(sessions, old)
    assert (f.status, f.attempt) == (FileStatus.ASSIGNED, new.attempt)
    assert await ranges_of(sessions, old) == []
    assert (await request_of(sessions, old)).status == RequestStatus.ASSIGNED

    # The current attempt's result is recorded.
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_done(new))
    assert (await file_of(sessions, new)).status == FileStatus.SPLIT
    assert len(await ranges_of(sessions, new)) == 3


async def test_a_result_from_another_edge_is_ignored(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    work = assigned[0]
    impostor = work.model_copy(update={"edge": "edge-z"})
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_done(impostor))
    assert (await file_of(sessions, work)).status == FileStatus.ASSIGNED
    assert await ranges_of(sessions, work) == []


def _range(first: int, last: int) -> RangeInfo:
    return RangeInfo(first_event=first, last_event=last, key=f"k/{first}", size=1, adler32="1")


@pytest.mark.parametrize(
    ("ranges", "problem"),
    [
        ([(1, 100), (102, 250)], "gap at 101"),
        ([(2, 250)], "gap at 1"),
        ([(1, 100), (101, 200)], "end at 200"),
        ([(1, 100), (101, 260)], "end at 260"),
        ([(1, 150), (101, 250)], "gap at 151"),
    ],
)
async def test_split_done_with_ranges_that_do_not_tile_the_file_is_refused(
    sessions: SessionMaker,
    assigned: list[FileWork],
    ranges: list[tuple[int, int]],
    problem: str,
) -> None:
    work = assigned[0]
    event = split_done(work, [_range(first, last) for first, last in ranges])
    with pytest.raises(BadMessage, match=problem):
        async with unit_of_work(sessions) as session:
            await handle_split_done(session, event)
    assert (await file_of(sessions, work)).status == FileStatus.ASSIGNED
    assert await count(sessions, Range) == 0


async def test_ranges_in_any_order_are_accepted(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    work = assigned[0]
    shuffled = list(reversed(ranges_for(work)))
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_done(work, shuffled))
    assert [r[:2] for r in await ranges_of(sessions, work)] == [(1, 100), (101, 200), (201, 250)]


async def test_a_result_for_an_unknown_file_or_request_is_refused(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    work = assigned[0]
    unknown_file = work.model_copy(update={"file_id": 10_000})
    with pytest.raises(BadMessage, match="unknown"):
        async with unit_of_work(sessions) as session:
            await handle_split_done(session, split_done(unknown_file))
    other_request = work.model_copy(update={"request_id": "not-this-request"})
    with pytest.raises(BadMessage):
        async with unit_of_work(sessions) as session:
            await handle_split_done(session, split_done(other_request))
    assert await count(sessions, Range) == 0


async def test_a_retryable_failure_under_the_limit_puts_the_file_back_to_pending(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    work = assigned[0]
    async with unit_of_work(sessions) as session:
        await handle_file_cached(session, file_cached(work))
        await handle_file_failed(
            session,
            file_failed(work, retryable=True, reason="connection reset"),
            max_file_attempts=MAX_FILE_ATTEMPTS,
        )
    f = await file_of(sessions, work)
    assert (f.status, f.edge, f.attempt) == (FileStatus.PENDING, None, 1)
    assert f.error is not None and "connection reset" in f.error and "edge-a" in f.error
    assert (await request_of(sessions, work)).status == RequestStatus.ASSIGNED
    assert await failed_events(sessions) == []


async def test_a_retryable_failure_at_the_attempt_limit_fails_the_request(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    work = assigned[0]
    for attempt in range(1, MAX_FILE_ATTEMPTS + 1):
        assert work.attempt == attempt
        async with unit_of_work(sessions) as session:
            await handle_file_failed(
                session, file_failed(work, retryable=True), max_file_attempts=MAX_FILE_ATTEMPTS
            )
        if attempt < MAX_FILE_ATTEMPTS:
            assert (await file_of(sessions, work)).status == FileStatus.PENDING
            await reassign(sessions)
            work = (await latest_work(sessions))[work.file_id]
    assert (await file_of(sessions, work)).status == FileStatus.FAILED
    assert (await request_of(sessions, work)).status == RequestStatus.FAILED
    assert len(await failed_events(sessions)) == 1


async def test_a_permanent_failure_fails_the_file_and_the_request_once(
    sessions: SessionMaker, assigned: list[FileWork]
) -> None:
    work = assigned[1]
    event = file_failed(work, retryable=False, reason="adler32 of every source is wrong")
    for _ in range(2):  # the second time is a redelivery
        async with unit_of_work(sessions) as session:
            await handle_file_failed(session, event, max_file_attempts=MAX_FILE_ATTEMPTS)

    f = await file_of(sessions, work)
    assert f.status == FileStatus.FAILED
    assert f.error is not None and "adler32 of every source is wrong" in f.error
    request = await request_of(sessions, work)
    assert request.status == RequestStatus.FAILED
    assert request.error is not None and work.file.lfn in request.error
    (failed,) = await failed_events(sessions)
    assert (failed.request_id, failed.idempotency_key) == (request.id, "task-7")
    assert failed.reason == request.error

    # A second file failing, or the others finishing, changes the outcome no more.
    async with unit_of_work(sessions) as session:
        await handle_file_failed(
            session, file_failed(assigned[2], retryable=False), max_file_attempts=3
        )
        await handle_split_done(session, split_done(assigned[0]))
    assert (await request_of(sessions, work)).status == RequestStatus.FAILED
    assert len(await failed_events(sessions)) == 1
    assert await ready_events(sessions) == []
    assert {f.status for f in await files(sessions)} == {FileStatus.SPLIT, FileStatus.FAILED}
