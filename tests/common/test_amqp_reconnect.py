"""The RabbitMQ bus survives its connection: cut mid-flow (a relay between the bus and the real
server drops it), it connects again, to the next address when there are several, re-declares
its queues and resumes consuming; what was published meanwhile waits and is delivered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.bus import Delivery, audit_queue, dead_exchange
from tests.conftest import AmqpServer
from tests.helpers import eventually
from tests.tcp_proxy import TcpRelay, relay_to


class Seen:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.bodies.append(delivery.body)


def through(relays: list[TcpRelay], url: str) -> str:
    """`url` with its host and port replaced by each relay's, as one bus URL."""
    parts = urlsplit(url)
    login = f"{parts.username}:{parts.password}@" if parts.username else ""
    return ",".join(f"amqp://{login}127.0.0.1:{r.port}{parts.path or '/'}" for r in relays)


@pytest.fixture
async def server(amqp_server: AmqpServer) -> AsyncIterator[tuple[str, str, int]]:
    """The test server's URL, host and port; this test's exchange and queues deleted after."""
    url = await amqp_server.check()
    parts = urlsplit(url)
    exchange = f"ess-rc-{uuid.uuid4().hex[:12]}"
    yield exchange, parts.hostname or "127.0.0.1", parts.port or 5672
    family = [
        f"{q}{s}"
        for q in (f"{exchange}.work", audit_queue(exchange))
        for s in ("", ".retry", ".dead")
    ]
    await amqp_server.delete(family, [exchange, dead_exchange(exchange)])


async def test_a_cut_connection_is_made_again_and_consuming_resumes(
    server: tuple[str, str, int], amqp_server: AmqpServer
) -> None:
    exchange, host, port = server
    async with relay_to(host, port) as relay:
        bus = AmqpBus(through([relay], amqp_server.url), exchange, backoff_s=0.05)
        await bus.start()
        try:
            seen = Seen()
            await bus.consume(f"{exchange}.work", ["work.#"], seen)
            for n in range(5):
                await bus.publish("work.before", f"before-{n}".encode())
            await eventually(lambda: len(seen.bodies) >= 5, message="first messages handled")

            await relay.cut()
            # Published while the connection is down: it waits for the next one.
            waiting = asyncio.create_task(bus.publish("work.during", b"during"))
            await eventually(lambda: relay.accepted == 1 and not waiting.done())
            await relay.restore()
            await asyncio.wait_for(waiting, 30)
            for n in range(5):
                await bus.publish("work.after", f"after-{n}".encode())

            expected = {
                *(f"before-{n}".encode() for n in range(5)),
                b"during",
                *(f"after-{n}".encode() for n in range(5)),
            }
            await eventually(
                lambda: set(seen.bodies) == expected, timeout=30, message="all handled"
            )
            assert relay.accepted >= 2, "the bus connected again"
        finally:
            await bus.close()


async def test_a_lost_node_moves_the_bus_to_the_next_address(
    server: tuple[str, str, int], amqp_server: AmqpServer
) -> None:
    exchange, host, port = server
    async with relay_to(host, port) as first, relay_to(host, port) as second:
        bus = AmqpBus(through([first, second], amqp_server.url), exchange, backoff_s=0.05)
        await bus.start()
        try:
            assert (first.accepted, second.accepted) == (1, 0)
            seen = Seen()
            await bus.consume(f"{exchange}.work", ["work.#"], seen)
            await first.cut()  # and it stays down
            await bus.publish("work.1", b"after the first address went")
            await eventually(lambda: seen.bodies == [b"after the first address went"])
            assert second.accepted == 1
        finally:
            await bus.close()
