"""`/readyz` asks the database, the bus and the object store, and answers 503 naming each one
that did not answer; `/healthz` (the process is alive) answers all the same."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ess_common.db.session import make_engine, make_session_maker
from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.bus import audit_queue, dead_exchange
from ess_common.messaging.outbox import OutboxRelay
from ess_common.settings import HeadSettings
from ess_common.store.base import ObjectStore
from ess_common.store.s3 import S3Store
from ess_head_api.app import create_app
from ess_head_api.state import HeadState
from tests.conftest import AmqpServer
from tests.helpers import S3Settings, free_port
from tests.tcp_proxy import TcpRelay, relay_to


@pytest.fixture
async def relayed_bus(amqp_server: AmqpServer) -> AsyncIterator[tuple[AmqpBus, TcpRelay]]:
    """A started bus on the real RabbitMQ, through a relay the test can cut."""
    url = urlsplit(await amqp_server.check())
    exchange = f"ess-ready-{uuid.uuid4().hex[:12]}"
    async with relay_to(url.hostname or "127.0.0.1", url.port or 5672) as relay:
        login = f"{url.username}:{url.password}@" if url.username else ""
        bus = AmqpBus(f"amqp://{login}127.0.0.1:{relay.port}{url.path or '/'}", exchange)
        await bus.start()
        try:
            yield bus, relay
        finally:
            await bus.close()
    family = [f"{audit_queue(exchange)}{s}" for s in ("", ".retry", ".dead")]
    await amqp_server.delete(family, [exchange, dead_exchange(exchange)])


async def probes(state: HeadState) -> tuple[httpx.Response, httpx.Response]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(state)), base_url="http://testserver"
    ) as client:
        return await client.get("/healthz"), await client.get("/readyz")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("store", ["s3"], indirect=True)
async def test_ready_when_database_bus_and_store_answer(
    db_url: str, relayed_bus: tuple[AmqpBus, TcpRelay], store: ObjectStore
) -> None:
    bus, _ = relayed_bus
    engine = make_engine(db_url)
    try:
        sessions = make_session_maker(engine)
        state = HeadState(HeadSettings(), sessions, store, OutboxRelay(sessions, bus))
        health, ready = await probes(state)
    finally:
        await engine.dispose()
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_unready_names_each_dependency_that_does_not_answer(
    relayed_bus: tuple[AmqpBus, TcpRelay], s3_settings: S3Settings, tmp_path: Path
) -> None:
    bus, relay = relayed_bus
    await relay.cut()  # RabbitMQ out of reach
    nobody = free_port()
    engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{nobody}/ess")
    store = S3Store(
        "ess-ready",
        endpoint_url=f"http://127.0.0.1:{nobody}",
        access_key=s3_settings.access_key,
        secret_key=s3_settings.secret_key,
        region=s3_settings.region,
        create_bucket=False,
    )
    await store.start()
    try:
        sessions = make_session_maker(engine)
        state = HeadState(HeadSettings(), sessions, store, OutboxRelay(sessions, bus))
        health, ready = await probes(state)
    finally:
        await store.close()
        await engine.dispose()
    assert health.status_code == 200, "the process is alive"
    assert ready.status_code == 503
    answer = ready.json()
    assert answer["status"] == "unready"
    assert set(answer["failed"]) == {"database", "bus", "store"}, answer
    assert all(answer["failed"].values())
