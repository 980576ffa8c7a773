"""A database outage is no reason to give work up: the broker, behind a proxy to the real
PostgreSQL that the test takes down, retries the edges' results until the database is back,
applies them, and the request becomes ready. Edges that heartbeat all along are not lost for
the time the head could not record their heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from ess_broker.service import Broker
from ess_common.db.models import (
    DeadLetter,
    Edge,
    EdgeStatus,
    File,
    FileStatus,
    Request,
    RequestStatus,
    utcnow,
)
from ess_common.db.session import SessionMaker, make_engine, make_session_maker
from ess_common.events import FileAssigned, FileWork, parse_event
from ess_common.messaging.bus import Bus, Delivery, publish_event
from ess_common.settings import HeadSettings
from tests.broker.factories import (
    enroll_edge,
    file_cached,
    heartbeat,
    request_spec,
    split_done,
)
from tests.common.test_bus_contract import MAX_ATTEMPTS
from tests.conftest import PostgresServer
from tests.helpers import UniqueNames, eventually
from tests.tcp_proxy import TcpRelay

N_FILES = 3


@dataclass
class Proxied:
    proxy: TcpRelay
    #: Sessions through the proxy: the broker's.
    sessions: SessionMaker
    #: Sessions straight to the server: the test's own reads, whatever the proxy does.
    direct: SessionMaker


@pytest.fixture
async def proxied(postgres_server: PostgresServer) -> AsyncIterator[Proxied]:
    await postgres_server.truncate()
    url = await postgres_server.url()
    parsed = make_url(url)
    proxy = TcpRelay(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    proxied_url = parsed.set(host="127.0.0.1", port=proxy.port)
    engine = make_engine(proxied_url.render_as_string(hide_password=False))
    direct = make_engine(url)
    try:
        yield Proxied(proxy, make_session_maker(engine), make_session_maker(direct))
    finally:
        await proxy.close()
        await engine.dispose()
        await direct.dispose()


@dataclass
class CachingEdge:
    """Answers each `file.assigned` with `file.cached` only: the test sends `split.done`."""

    bus: Bus
    #: The enrolled edge's token, which signs what it sends.
    token: SecretStr
    work: list[FileWork] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        event = parse_event(delivery.body)
        assert isinstance(event, FileAssigned), event
        self.work.append(event.work)
        await publish_event(self.bus, file_cached(event.work), signed_with=self.token)


def outage_retries(queue: str) -> float:
    return REGISTRY.get_sample_value("ess_outage_retries_total", {"queue": queue}) or 0.0


async def files_in(sessions: SessionMaker, status: FileStatus) -> int:
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(File).where(File.status == status)
            )
            or 0
        )


async def test_results_sent_during_a_database_outage_are_applied_after_it(
    proxied: Proxied, bus: Bus, unique: UniqueNames
) -> None:
    edge = CachingEdge(bus, await enroll_edge(proxied.direct, "edge-a"))
    await bus.consume(unique("edge"), ["file.assigned.*"], edge)
    settings = HeadSettings.model_validate({"sweep_interval_s": 0.1, "edge_lost_after_s": 60.0})
    broker = Broker(settings, bus, proxied.sessions)
    await broker.start()
    try:
        await publish_event(bus, heartbeat("edge-a"), signed_with=edge.token)
        spec = request_spec("outage", n_files=N_FILES)
        await bus.publish("request.created", spec.model_dump_json().encode())

        async def all_cached() -> bool:
            return await files_in(proxied.direct, FileStatus.CACHED) == N_FILES

        await eventually(all_cached, message="every file cached")

        results = f"{bus.exchange}.broker.results"
        before = outage_retries(results)
        await proxied.proxy.cut()
        for work in edge.work:
            await publish_event(bus, split_done(work), signed_with=edge.token)
        # Each result is retried more often than a failing message may be, the database
        # still down: none is given up.
        await eventually(
            lambda: outage_retries(results) - before >= N_FILES * (MAX_ATTEMPTS + 1),
            timeout=30,
            message="results retried through the outage",
        )
        await proxied.proxy.restore()

        async def ready() -> bool:
            async with proxied.direct() as session:
                status = await session.scalar(select(Request.status))
            return status == RequestStatus.READY

        await eventually(ready, timeout=60, message="request ready after the outage")
        async with proxied.direct() as session:
            assert await session.scalar(select(func.count()).select_from(DeadLetter)) == 0
            edge_row = await session.get(Edge, "edge-a")
            assert edge_row is not None and edge_row.status == EdgeStatus.ALIVE
    finally:
        await broker.stop()


async def test_live_edges_are_not_lost_for_a_database_outage(
    proxied: Proxied, bus: Bus, unique: UniqueNames
) -> None:
    lost_after = timedelta(seconds=2)
    edge = CachingEdge(bus, await enroll_edge(proxied.direct, "edge-a"))
    await bus.consume(unique("edge"), ["file.assigned.*"], edge)
    settings = HeadSettings.model_validate(
        {"sweep_interval_s": 0.1, "edge_lost_after_s": lost_after.total_seconds()}
    )
    broker = Broker(settings, bus, proxied.sessions)
    beating = True

    async def beat() -> None:
        while beating:
            await publish_event(bus, heartbeat("edge-a"), signed_with=edge.token)
            await asyncio.sleep(0.2)

    # Heartbeats once the broker's queue is there: a message nobody takes is not sent.
    await broker.start()
    beats = asyncio.create_task(beat())
    try:
        spec = request_spec("edge-outage", n_files=1)
        await bus.publish("request.created", spec.model_dump_json().encode())

        async def cached() -> bool:
            return await files_in(proxied.direct, FileStatus.CACHED) == 1

        await eventually(cached, message="the file cached on edge-a")

        # The outage lasts longer than an edge may be silent; the edge heartbeats all along.
        await proxied.proxy.cut()
        down_at = utcnow()
        await eventually(
            lambda: broker.recording.since is None and utcnow() - down_at > 2 * lost_after,
            timeout=30,
            message="the outage noticed and lasting twice the lost-edge timeout",
        )
        await proxied.proxy.restore()
        # Back: sweeps run until one could have told a silent edge lost.
        await eventually(
            lambda: broker.recording.can_tell_lost(utcnow(), lost_after),
            timeout=30,
            message="heartbeats recordable for the lost-edge timeout again",
        )
        after = await broker_sweeps(broker, 3)
        async with proxied.direct() as session:
            row = await session.get(Edge, "edge-a")
            file = await session.scalar(select(File))
        assert row is not None and row.status == EdgeStatus.ALIVE
        assert file is not None
        assert (file.edge, file.attempt, file.status) == ("edge-a", 1, FileStatus.CACHED), after

        # Lost detection still works: an edge that stops heartbeating is lost.
        beating = False
        await beats

        async def edge_lost() -> bool:
            async with proxied.direct() as session:
                lost = await session.get(Edge, "edge-a")
            return lost is not None and lost.status == EdgeStatus.LOST

        await eventually(edge_lost, timeout=30, message="a silent edge lost")
    finally:
        beating = False
        await beats
        await broker.stop()


async def broker_sweeps(broker: Broker, rounds: int) -> int:
    """Sweep `rounds` times more, as the broker's periodic sweep would."""
    for _ in range(rounds):
        await broker.sweep()
    return rounds
