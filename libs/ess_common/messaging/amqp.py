"""The RabbitMQ bus (aio-pika): durable topic exchange, persistent messages, publisher
confirms, manual ack after the handler (and so after its commit), retry and dead-letter queues.

Every queue is a quorum queue (`amqp_queues`), and the connection is re-made forever, to the
next node of a cluster, with everything declared and consumed on it (`amqp_connection`). A
message that no queue takes is an error (`Unroutable`), not a silent loss.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
import aiormq.abc
import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from ess_common.errors import Unroutable
from ess_common.messaging import amqp_connection
from ess_common.messaging.amqp_queues import (
    QueueMigrationRequired,
    QueuePolicy,
    server_version,
    supports_at_least_once,
)
from ess_common.messaging.bus import (
    Handler,
    audit_queue,
    dead_exchange,
)
from ess_common.messaging.dispatch import Outcome, Verdict, dispatch, refuse_envelope
from ess_common.messaging.envelope import dead_headers, read_envelope, retry_headers

log = structlog.get_logger("ess.amqp")

#: Deliveries of a message given back unacknowledged before it is dead-lettered (its consumer
#: died holding it each time).
DELIVERY_LIMIT = 10
#: How long a publish waits for a lost connection to be made again before it fails.
PUBLISH_WAIT_S = 60.0
#: What a publish raises when its connection or channel went away under it (a broker's nack,
#: `DeliveryError`, is an answer, not a loss: it goes to the caller).
CONNECTION_LOST = (
    ConnectionError,  # aiormq's AMQPConnectionError too
    OSError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ChannelInvalidStateError,
)


class AmqpBus:
    def __init__(
        self,
        url: str,
        exchange: str = "ess",
        *,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        prefetch: int = 8,
        delivery_limit: int = DELIVERY_LIMIT,
        backoff_max_s: float = 60.0,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.prefetch = prefetch
        self.delivery_limit = delivery_limit
        self._policy: QueuePolicy | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumer_channels: list[AbstractChannel] = []
        self._publish_lock = asyncio.Lock()

    async def start(self) -> None:
        self._connection = await amqp_connection.connect(self.url)
        transport = self._connection.transport
        version = server_version(transport.connection.server_properties if transport else None)
        self._policy = QueuePolicy(self.delivery_limit, supports_at_least_once(version))
        log.info(
            "amqp.queue_policy",
            server=".".join(map(str, version)) or "unknown",
            delivery_limit=self.delivery_limit,
            at_least_once=self._policy.at_least_once,
        )
        self._publish_channel = await self._connection.channel(publisher_confirms=True)
        await self._exchange(self.exchange)
        await self._exchange(dead_exchange(self.exchange))
        # The audit queue exists from the start so that no dead letter misses the record.
        await self._declare(
            self._publish_channel, audit_queue(self.exchange), dead_exchange(self.exchange), ["#"]
        )

    async def close(self) -> None:
        for channel in self._consumer_channels:
            if not channel.is_closed:
                await channel.close()
        self._consumer_channels.clear()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _exchange(self, name: str) -> AbstractExchange:
        if name not in self._exchanges:
            assert self._publish_channel is not None, "bus not started"
            self._exchanges[name] = await self._publish_channel.declare_exchange(
                name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return self._exchanges[name]

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expiration_s: float | None = None,
    ) -> None:
        target = await self._exchange(exchange or self.exchange)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=dict(headers or {}),
            expiration=expiration_s,
        )
        await self._confirmed(target, message, routing_key)

    async def _send_to_queue(
        self, queue: str, message: AbstractIncomingMessage, headers: dict[str, Any], delay: float
    ) -> None:
        assert self._publish_channel is not None
        out = aio_pika.Message(
            message.body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
            expiration=delay if delay > 0 else None,
        )
        await self._confirmed(self._publish_channel.default_exchange, out, queue)

    async def send_to_queue(self, queue: str, body: bytes, headers: Mapping[str, Any]) -> None:
        out = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=dict(headers),
        )
        assert self._publish_channel is not None, "bus not started"
        await self._confirmed(self._publish_channel.default_exchange, out, queue)

    async def _confirmed(
        self, target: AbstractExchange, message: aio_pika.Message, routing_key: str
    ) -> None:
        """Publish with `mandatory` and wait for the broker's confirm. While the connection is
        being re-made the message waits for it (up to `PUBLISH_WAIT_S`) and is sent again: a
        confirm lost with the connection may make it a duplicate, never a loss."""
        assert self._publish_channel is not None, "bus not started"
        deadline = asyncio.get_running_loop().time() + PUBLISH_WAIT_S
        while True:
            try:
                returned = await target.publish(message, routing_key=routing_key, mandatory=True)
                break
            except CONNECTION_LOST as exc:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise
                log.warning("amqp.publish_waits_for_connection", error=type(exc).__name__)
                # The loss may not have been noticed yet: do not spin on a channel that
                # still looks ready.
                await asyncio.sleep(min(left, 0.2))
                try:
                    await asyncio.wait_for(self._publish_channel.ready(), timeout=left)
                except TimeoutError:
                    raise exc from None
        if isinstance(returned, aiormq.abc.DeliveredMessage):
            where = f"exchange {target.name!r}" if target.name else "the default exchange"
            raise Unroutable(f"no queue takes {routing_key!r} on {where}: not sent")

    async def _declare(
        self, channel: AbstractChannel, queue: str, exchange: str, bindings: Sequence[str]
    ) -> AbstractQueue:
        dead = dead_exchange(self.exchange)
        await self._exchange(exchange)
        declared = await self._declare_queue(channel, queue, dead, queue)
        # Expired after its delay, a message goes back to its queue through the default
        # exchange.
        await self._declare_queue(channel, f"{queue}.retry", "", queue)
        # Declared with the arguments `_declare` gives every queue, so that consuming a
        # dead-letter queue (it is a queue like any other) redeclares it without a conflict.
        dead_queue = await self._declare_queue(channel, f"{queue}.dead", dead, f"{queue}.dead")
        await dead_queue.bind(dead, queue)
        for key in bindings:
            await declared.bind(exchange, key)
        return declared

    async def _declare_queue(
        self, channel: AbstractChannel, queue: str, dead: str, dead_key: str
    ) -> AbstractQueue:
        assert self._policy is not None, "bus not started"
        try:
            return await channel.declare_queue(
                queue, durable=True, arguments=self._policy.arguments(dead, dead_key)
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            # The server closed the channel; aio-pika's robust channel opens it again.
            raise QueueMigrationRequired(queue, str(exc)) from exc

    async def declare(self, queue: str, bindings: Sequence[str]) -> None:
        assert self._publish_channel is not None, "bus not started"
        await self._declare(self._publish_channel, queue, self.exchange, bindings)

    async def depth(self, queue: str) -> int:
        assert self._connection is not None, "bus not started"
        # A passive declare on its own channel: a missing queue closes that channel only.
        async with self._connection.channel() as channel:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return 0
            return int(declared.declaration_result.message_count or 0)

    async def consume(
        self,
        queue: str,
        bindings: Sequence[str],
        handler: Handler,
        *,
        exchange: str | None = None,
        prefetch: int | None = None,
    ) -> None:
        assert self._connection is not None, "bus not started"
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch or self.prefetch)
        self._consumer_channels.append(channel)
        declared = await self._declare(channel, queue, exchange or self.exchange, bindings)

        async def on_message(message: AbstractIncomingMessage) -> None:
            envelope = read_envelope(queue, message.routing_key, message.body, message.headers)
            delivery = envelope.delivery
            outcome: Outcome
            if envelope.problem is not None and queue != audit_queue(self.exchange):
                outcome = refuse_envelope(delivery, envelope.problem)
            else:
                # A dead letter is recorded whatever its headers: its reason is what counts.
                outcome = await dispatch(
                    delivery,
                    handler,
                    max_attempts=self.max_attempts,
                    backoff_s=self.backoff_s,
                    backoff_max_s=self.backoff_max_s,
                )
            if outcome.verdict is Verdict.DEAD and queue == audit_queue(self.exchange):
                # The message also waits in its own dead-letter queue: nothing is lost.
                log.error("dead_letter.not_recorded", reason=outcome.reason)
                await message.ack()
                return
            try:
                if outcome.verdict is Verdict.RETRY:
                    again = retry_headers(delivery, outage=outcome.outage)
                    await self._send_to_queue(f"{queue}.retry", message, again, outcome.delay_s)
                elif outcome.verdict is Verdict.DEAD:
                    await self.publish(
                        queue,
                        message.body,
                        exchange=dead_exchange(self.exchange),
                        headers=dead_headers(delivery, outcome.reason, refused=outcome.refused),
                    )
                await message.ack()
            except Exception:
                # The broker keeps the message and delivers it again: nothing is lost.
                log.exception("message.settle_failed", queue=queue)
                await message.nack(requeue=True)

        await declared.consume(on_message, no_ack=False)
