"""ESS's queues on RabbitMQ are quorum queues with their policy stated (delivery limit,
dead-lettering, at-least-once where the server has it); a classic queue left by an older
deployment stops the service with a clear reason instead of being used or replaced."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.amqp_queues import MIGRATION_DOC, QueueMigrationRequired
from ess_common.messaging.bus import Delivery, audit_queue, dead_exchange
from tests.conftest import AmqpServer
from tests.helpers import eventually

DELIVERY_LIMIT = 2


@pytest.fixture
async def quorum_bus(amqp_server: AmqpServer) -> AsyncIterator[AmqpBus]:
    exchange = f"ess-q-{uuid.uuid4().hex[:12]}"
    bus = AmqpBus(await amqp_server.check(), exchange, delivery_limit=DELIVERY_LIMIT)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()
        family = [
            f"{q}{s}"
            for q in (f"{exchange}.work", audit_queue(exchange), f"{exchange}.old")
            for s in ("", ".retry", ".dead")
        ]
        await amqp_server.delete(family, [exchange, dead_exchange(exchange)])


async def current_argument(url: str, queue: str, expected: dict[str, Any], name: str) -> str:
    """What the server holds for the queue's argument `name`: declared again with the
    `expected` arguments but another value of `name`, the refusal names the one it holds
    (and, if another argument differs first, names that one instead: the test fails)."""
    other = {"x-queue-type": "classic", "x-overflow": "drop-head"}.get(name, "probe")
    probe = {**expected, name: other if isinstance(expected.get(name), str) else 999}
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as refused:
            await channel.declare_queue(queue, durable=True, arguments=probe)
    text = str(refused.value)
    assert f"inequivalent arg '{name}'" in text, text
    found = re.search(r"current is (?:the value )?'?([^' ]*)'?", text)
    assert found, text
    return found.group(1)


async def test_every_queue_is_a_quorum_queue_with_its_policy(quorum_bus: AmqpBus) -> None:
    exchange = quorum_bus.exchange
    queue = f"{exchange}.work"
    await quorum_bus.declare(queue, ["work.#"])
    dead = dead_exchange(exchange)
    declared = {
        queue: (dead, queue),
        f"{queue}.retry": ("", queue),
        f"{queue}.dead": (dead, f"{queue}.dead"),
        audit_queue(exchange): (dead, audit_queue(exchange)),
    }
    for name, (dead_letters_to, dead_key) in declared.items():
        expected: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": dead_letters_to,
            "x-dead-letter-routing-key": dead_key,
            # The machine's RabbitMQ (Debian's 3.10) has at-least-once dead-lettering.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        for argument, value in expected.items():
            held = await current_argument(quorum_bus.url, name, expected, argument)
            assert held == str(value), (name, argument)


async def test_a_message_given_back_too_often_is_dead_lettered(quorum_bus: AmqpBus) -> None:
    """Its consumer died holding it each time: past the delivery limit the queue gives it to
    its dead-letter queue rather than to the next consumer."""
    queue = f"{quorum_bus.exchange}.work"
    await quorum_bus.declare(queue, ["work.#"])
    await quorum_bus.publish("work.1", b"crashes its consumer")
    connection = await aio_pika.connect(quorum_bus.url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        for _ in range(DELIVERY_LIMIT + 1):
            message = await eventually(lambda: declared.get(fail=False), message="redelivered")
            assert message is not None
            await message.reject(requeue=True)
    await eventually(lambda: depth_is(quorum_bus, f"{queue}.dead", 1))
    assert await quorum_bus.depth(queue) == 0


async def depth_is(bus: AmqpBus, queue: str, expected: int) -> bool:
    return await bus.depth(queue) == expected


async def test_a_classic_queue_of_an_older_deployment_stops_the_service(
    quorum_bus: AmqpBus,
) -> None:
    queue = f"{quorum_bus.exchange}.old"
    connection = await aio_pika.connect(quorum_bus.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)

    async def handler(_: Delivery) -> None:
        return None

    with pytest.raises(QueueMigrationRequired) as refused:
        await quorum_bus.consume(queue, ["old.#"], handler)
    assert refused.value.queue == queue
    assert queue in str(refused.value) and MIGRATION_DOC in str(refused.value)
    # The bus itself is still usable: the refused declaration closed one channel only.
    await quorum_bus.declare(f"{quorum_bus.exchange}.work", ["work.#"])
    await quorum_bus.publish("work.1", b"still published")
