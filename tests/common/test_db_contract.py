"""The bookkeeping contract, on SQLite and the real PostgreSQL alike: schema by migrations,
idempotent request recording, the outbox relay, UTC timestamps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ess_common.db.migrate import upgrade
from ess_common.db.models import (
    Base,
    File,
    FileStatus,
    OutboxMessage,
    Request,
    RequestStatus,
)
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, make_engine, unit_of_work
from ess_common.errors import Conflict
from ess_common.events import EdgeHeartbeat, RequestCreated, RequestSpec, parse_event
from ess_common.messaging.bus import Delivery
from ess_common.messaging.memory import MemoryBus
from ess_common.messaging.outbox import OutboxRelay, add_event, wrote_events
from tests.helpers import eventually


def spec(key: str = "jedi-4242", **changes: Any) -> RequestSpec:
    data: dict[str, Any] = {
        "dataset": "mc15_13TeV:mc15_13TeV.EVNT.e1234",
        "idempotency_key": key,
        "events_per_range": 100,
        "files": [
            {
                "scope": "mc15_13TeV",
                "lfn": f"EVNT.08716373._00006{i}.pool.root.1",
                "n_events": 5000,
                "size": 1000 + i,
                "adler32": f"{i + 1:x}",
                "sources": [f"https://dm.example.org/EVNT.{i}"],
            }
            for i in range(3)
        ],
    }
    data.update(changes)
    return RequestSpec.model_validate(data)


async def count(sessions: SessionMaker, model: type[Base]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


# --- schema -------------------------------------------------------------------------------------


def _schema(connection: Connection) -> tuple[set[str], list[Any]]:
    tables = set(inspect(connection).get_table_names())
    differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    return tables, differences


async def test_migrations_create_the_schema_of_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as connection:
            tables, differences = await connection.run_sync(_schema)
    finally:
        await engine.dispose()
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert differences == [], "the migrations and the models disagree"


async def test_upgrade_again_is_harmless(db_url: str, sessions: SessionMaker) -> None:
    async with unit_of_work(sessions) as session:
        await record_request(session, spec())
    await upgrade(db_url)
    assert await count(sessions, Request) == 1


# --- recording requests -------------------------------------------------------------------------


async def test_record_request_creates_the_request_and_its_files(sessions: SessionMaker) -> None:
    async with unit_of_work(sessions) as session:
        request, created = await record_request(session, spec())
    assert created
    async with sessions() as session:
        stored = await session.get(Request, request.id)
        assert stored is not None
        assert stored.status == RequestStatus.RECEIVED
        assert stored.idempotency_key == "jedi-4242"
        files = (await session.scalars(select(File).order_by(File.lfn))).all()
    assert [f.lfn for f in files] == [f.lfn for f in spec().files]
    assert {f.request_id for f in files} == {request.id}
    assert {f.status for f in files} == {FileStatus.PENDING}
    assert files[0].adler32 == "00000001"
    assert files[0].sources == ["https://dm.example.org/EVNT.0"]


async def test_a_resubmission_is_the_same_request(sessions: SessionMaker) -> None:
    async with unit_of_work(sessions) as session:
        first, created = await record_request(session, spec())
    assert created
    # The same request as a `request.created` event: another envelope, the same content.
    event = RequestCreated.model_validate(spec().model_dump())
    async with unit_of_work(sessions) as session:
        again, created_again = await record_request(session, event)
    assert not created_again
    assert again.id == first.id
    assert await count(sessions, Request) == 1
    assert await count(sessions, File) == 3


async def test_the_same_key_with_other_content_is_a_conflict(sessions: SessionMaker) -> None:
    async with unit_of_work(sessions) as session:
        first, _ = await record_request(session, spec())
    with pytest.raises(Conflict, match=first.id):
        async with unit_of_work(sessions) as session:
            await record_request(session, spec(events_per_range=50))
    assert await count(sessions, Request) == 1
    assert await count(sessions, File) == 3


async def test_request_id_can_be_chosen(sessions: SessionMaker) -> None:
    chosen = str(uuid.uuid4())
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(session, spec(), request_id=chosen)
    assert request.id == chosen


class _LookedUp:
    """Holds every session after its first query until all have made theirs, so that all of
    them find no request under the key before any inserts one."""

    def __init__(self, parties: int) -> None:
        self.barrier = asyncio.Barrier(parties)

    def session_class(self) -> type[AsyncSession]:
        barrier = self.barrier

        class HeldSession(AsyncSession):
            held = False

            async def scalar(self, *args: Any, **kwargs: Any) -> Any:
                result = await super().scalar(*args, **kwargs)
                if not self.held:
                    self.held = True
                    await asyncio.wait_for(barrier.wait(), timeout=10)
                return result

        return HeldSession


async def test_concurrent_submissions_make_one_request(db_url: str) -> None:
    parties = 3
    engine = make_engine(db_url)
    try:
        held: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, expire_on_commit=False, class_=_LookedUp(parties).session_class()
        )

        async def submit() -> tuple[str, bool]:
            async with unit_of_work(held) as session:
                request, created = await record_request(session, spec())
                return request.id, created

        results = await asyncio.gather(*(submit() for _ in range(parties)))
    finally:
        await engine.dispose()

    assert len({request_id for request_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * (parties - 1) + [True]
    plain_engine = make_engine(db_url)
    try:
        sessions = async_sessionmaker(plain_engine)
        assert await count(sessions, Request) == 1
        assert await count(sessions, File) == 3
    finally:
        await plain_engine.dispose()


# --- the outbox ---------------------------------------------------------------------------------


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus(f"ess-t-{uuid.uuid4().hex[:12]}", max_attempts=3, backoff_s=0.05)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


def heartbeat(n: int) -> EdgeHeartbeat:
    return EdgeHeartbeat(
        edge=f"edge-{n}",
        site="site",
        region="region",
        quota_bytes=100,
        free_bytes=50,
        queued=n,
        load=0.0,
        version="test",
    )


async def test_outbox_relay_publishes_in_order_exactly_once(
    sessions: SessionMaker, memory_bus: MemoryBus
) -> None:
    await memory_bus.declare("outbox-watch", ["#"])
    events = [heartbeat(n) for n in range(5)]
    async with unit_of_work(sessions) as session:
        for event in events[:3]:
            add_event(session, event)
    async with unit_of_work(sessions) as session:
        for event in events[3:]:
            add_event(session, event)

    relay = OutboxRelay(sessions, memory_bus, batch=2)  # several rounds of the loop
    assert await relay.flush() == 5
    assert await memory_bus.depth("outbox-watch") == 5
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    assert all(row.published_at is not None for row in rows)
    assert [row.routing_key for row in rows] == ["edge.heartbeat"] * 5

    assert await relay.flush() == 0
    assert await memory_bus.depth("outbox-watch") == 5

    received: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery)

    await memory_bus.consume("outbox-watch", ["#"], handler, prefetch=1)
    await eventually(lambda: len(received) == 5)
    assert [parse_event(d.body) for d in received] == events
    assert {d.routing_key for d in received} == {"edge.heartbeat"}


async def test_an_event_rolled_back_with_its_change_is_never_published(
    sessions: SessionMaker, memory_bus: MemoryBus
) -> None:
    await memory_bus.declare("outbox-watch", ["#"])
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessions) as session:
            add_event(session, heartbeat(1))
            await session.flush()
            raise RuntimeError("the change failed")
    assert await OutboxRelay(sessions, memory_bus).flush() == 0
    assert await memory_bus.depth("outbox-watch") == 0


async def test_a_session_tells_whether_it_wrote_to_the_outbox(sessions: SessionMaker) -> None:
    """What decides whether a handler's commit is followed by a flush of the outbox."""
    async with unit_of_work(sessions) as session:
        await session.execute(select(OutboxMessage).limit(1))
    assert not wrote_events(session)
    async with unit_of_work(sessions) as session:
        add_event(session, heartbeat(1))
    assert wrote_events(session)


# --- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=UTC),
        datetime(2026, 3, 29, 3, 30, 15, 654321, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 12, 31, 20, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5))),
    ],
    ids=["utc", "plus-2h", "minus-5h"],
)
async def test_utc_datetime_round_trips_the_instant(
    sessions: SessionMaker, moment: datetime
) -> None:
    async with unit_of_work(sessions) as session:
        row = OutboxMessage(routing_key="k", body="{}", created_at=moment, published_at=moment)
        session.add(row)
    async with sessions() as session:
        stored = await session.get(OutboxMessage, row.id)
        assert stored is not None
        assert stored.created_at == moment
        assert stored.created_at.utcoffset() == timedelta(0)
        assert stored.published_at == moment
        # Comparisons in SQL see the same instant as Python does.
        earlier = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.created_at < moment + timedelta(seconds=1))
            .where(OutboxMessage.created_at > moment - timedelta(seconds=1))
        )
        assert earlier == 1


async def test_utc_datetime_refuses_naive_values(sessions: SessionMaker) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with unit_of_work(sessions) as session:
            session.add(
                OutboxMessage(routing_key="k", body="{}", created_at=datetime(2026, 1, 1, 12))
            )
