"""A message RabbitMQ dead-letters itself (a quorum queue's delivery limit: its consumers died
holding it, again and again) is recorded like ESS's own dead letters, with the server's reason
and the queue it came from."""

from __future__ import annotations

import aio_pika
import pytest
from sqlalchemy import select

from ess_broker.service import Broker
from ess_common.db.models import DeadLetter
from ess_common.db.session import SessionMaker
from ess_common.messaging.amqp import DELIVERY_LIMIT, AmqpBus
from ess_common.messaging.bus import Bus
from ess_common.settings import HeadSettings
from tests.helpers import UniqueNames, eventually


@pytest.mark.parametrize("bus", ["amqp"], indirect=True)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_message_past_its_delivery_limit_is_recorded_with_the_servers_reason(
    sessions: SessionMaker, bus: Bus, unique: UniqueNames
) -> None:
    assert isinstance(bus, AmqpBus)
    broker = Broker(HeadSettings(sweep_interval_s=0.5), bus, sessions)
    await broker.start()
    try:
        queue = unique("crashing")
        await bus.declare(queue, ["crash.#"])
        await bus.publish("crash.1", b'{"request_id": "none-such"}')
        connection = await aio_pika.connect(bus.url)
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            for _ in range(DELIVERY_LIMIT + 1):
                message = await eventually(lambda: declared.get(fail=False))
                assert message is not None
                await message.reject(requeue=True)  # as if its consumer had died

        async def recorded() -> DeadLetter | None:
            async with sessions() as session:
                return await session.scalar(select(DeadLetter).where(DeadLetter.queue == queue))

        letter = await eventually(recorded, message="the dead letter recorded")
        assert letter is not None
        assert "delivered too often" in letter.reason, letter.reason
        assert letter.body == '{"request_id": "none-such"}'
    finally:
        await broker.stop()
