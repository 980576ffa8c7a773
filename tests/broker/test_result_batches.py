"""`split.done` results that arrive while one is being recorded are recorded together, on SQLite
and PostgreSQL: every result recorded once, the request ready once; a bad result in a batch
is refused alone, the others recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_broker import bookkeeping, result_batches
from ess_broker.assignment import assign_pending
from ess_broker.result_batches import ResultBatches
from ess_common.db.models import FileStatus, Range
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import BadMessage
from ess_common.events import FileWork, SplitDone
from ess_common.messaging.bus import Delivery
from ess_common.messaging.handlers import Routes
from ess_common.messaging.memory import MemoryBus
from ess_common.messaging.outbox import OutboxRelay
from tests.broker.factories import (
    beat_enrolled,
    files,
    heartbeat,
    latest_work,
    outbox,
    ranges_for,
    request_spec,
    split_done,
)


@pytest.fixture
async def assigned(sessions: SessionMaker) -> list[FileWork]:
    """A request of four files of 250 events, each assigned to `edge-a`."""
    async with unit_of_work(sessions) as session:
        await record_request(session, request_spec("task-9", n_files=4))
        await beat_enrolled(session, heartbeat("edge-a"))
    async with unit_of_work(sessions) as session:
        await assign_pending(session, timedelta(seconds=30))
    works = await latest_work(sessions)
    return [works[file_id] for file_id in sorted(works)]


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each batch recorded (the real recording, watched)."""
    sizes: list[int] = []
    record = bookkeeping.handle_splits_done

    async def watched(session: AsyncSession, events: Sequence[SplitDone]) -> None:
        sizes.append(len(events))
        await record(session, events)

    monkeypatch.setattr(result_batches, "handle_splits_done", watched)
    return sizes


def delivery(event: SplitDone) -> Delivery:
    return Delivery("ess.broker.results", event.routing_key(), event.model_dump_json().encode())


async def test_results_waiting_are_recorded_together_and_the_request_ready_once(
    sessions: SessionMaker, assigned: list[FileWork], batch_sizes: list[int]
) -> None:
    batches = ResultBatches(sessions, OutboxRelay(sessions, MemoryBus()), Routes[AsyncSession]())
    # A redelivery of the first result comes with the others: it changes nothing.
    events = [split_done(work) for work in assigned] + [split_done(assigned[0])]

    await asyncio.gather(*(batches.handle(delivery(e)) for e in events))

    # The first was recorded alone, the rest, which waited meanwhile, together.
    assert batch_sizes == [1, len(events) - 1]
    assert {f.status for f in await files(sessions)} == {FileStatus.SPLIT}
    async with sessions() as session:
        ranges = await session.scalar(select(func.count()).select_from(Range))
        assert ranges == sum(len(ranges_for(work)) for work in assigned)
        assert len(await outbox(session, "request.ready")) == 1


async def test_a_bad_result_in_a_batch_is_refused_alone(
    sessions: SessionMaker, assigned: list[FileWork], batch_sizes: list[int]
) -> None:
    batches = ResultBatches(sessions, OutboxRelay(sessions, MemoryBus()), Routes[AsyncSession]())
    gap = ranges_for(assigned[2])[1:]  # the first range missing
    events = [split_done(w) for w in assigned[:2]] + [split_done(assigned[2], gap)]
    events.append(split_done(assigned[3]))

    outcomes: list[Any] = await asyncio.gather(
        *(batches.handle(delivery(e)) for e in events), return_exceptions=True
    )

    assert [type(o) for o in outcomes] == [type(None), type(None), BadMessage, type(None)]
    # The batch of three failed and was recorded again one by one.
    assert batch_sizes == [1, 3, 1, 1, 1]
    statuses = [f.status for f in await files(sessions)]
    assert statuses == [FileStatus.SPLIT, FileStatus.SPLIT, FileStatus.ASSIGNED, FileStatus.SPLIT]
    async with sessions() as session:
        assert await outbox(session, "request.ready") == []
