"""The bus contract, for the in-process bus and the real RabbitMQ alike: topic routing, retries
with an attempt counter, dead letters with their reason (never blocking the queue), depth."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika
import pytest

from ess_common.errors import PermanentError, Unroutable
from ess_common.events import parse_event
from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.bus import (
    ATTEMPT_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    ROUTING_KEY_HEADER,
    Bus,
    Delivery,
    audit_queue,
    dead_exchange,
)
from tests.helpers import UniqueNames, eventually

#: What the bus fixture is made with (see conftest).
MAX_ATTEMPTS = 3


@dataclass
class Recorder:
    """A handler that records what it saw and can be told to fail."""

    fail: Callable[[Delivery], Exception | None] = lambda _: None
    seen: list[Delivery] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        self.seen.append(delivery)
        error = self.fail(delivery)
        if error is not None:
            raise error

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.seen]

    def got(self, count: int) -> Callable[[], bool]:
        """A predicate for `eventually` that names what was seen when it fails."""
        return _Got(self, count)


@dataclass
class _Got:
    recorder: Recorder
    count: int

    def __call__(self) -> bool:
        return len(self.recorder.seen) >= self.count

    def __repr__(self) -> str:
        seen = [(d.routing_key, d.attempt) for d in self.recorder.seen]
        return f"{self.count} deliveries, got {len(seen)}: {seen}"


async def watch_dead_letters(bus: Bus, queue: str) -> tuple[Recorder, Recorder]:
    """Consume the queue's own dead-letter queue and the exchange's audit queue."""
    dead, audit = Recorder(), Recorder()
    await bus.consume(f"{queue}.dead", [queue], dead, exchange=dead_exchange(bus.exchange))
    await bus.consume(audit_queue(bus.exchange), ["#"], audit, exchange=dead_exchange(bus.exchange))
    return dead, audit


async def test_topic_bindings_route_by_event_and_edge(bus: Bus, unique: UniqueNames) -> None:
    cached, edge_a, files = Recorder(), Recorder(), Recorder()
    await bus.consume(unique("cached"), ["file.cached.*"], cached, prefetch=1)
    await bus.consume(unique("edge-a"), ["*.*.edge-a", "#.edge-a"], edge_a, prefetch=1)
    await bus.consume(unique("files"), ["file.#"], files, prefetch=1)

    keys = [
        "split.done.edge-a",
        "file.cached.edge-a",
        "file.cached",
        "file.cached.edge-a.extra",
        "edge-a",
        "file.cached.edge-b",
    ]
    for key in keys:
        await bus.publish(key, key.encode())

    # Published in order on one connection: once the last one a queue wants has arrived, any
    # earlier one it should not get would have arrived before it.
    await eventually(cached.got(2))
    await eventually(edge_a.got(3))
    await eventually(files.got(4))
    assert [d.routing_key for d in cached.seen] == ["file.cached.edge-a", "file.cached.edge-b"]
    assert [d.routing_key for d in edge_a.seen] == [
        "split.done.edge-a",
        "file.cached.edge-a",
        "edge-a",
    ]
    assert [d.routing_key for d in files.seen] == [
        "file.cached.edge-a",
        "file.cached",
        "file.cached.edge-a.extra",
        "file.cached.edge-b",
    ]
    first = cached.seen[0]
    assert first.body == b"file.cached.edge-a"
    assert first.attempt == 1
    assert first.queue.startswith("cached-")


async def test_permanent_error_dead_letters_with_the_reason_without_blocking(
    bus: Bus, unique: UniqueNames
) -> None:
    queue = unique("perm")

    def poison(delivery: Delivery) -> Exception | None:
        return PermanentError("poison pill: no such dataset") if delivery.body == b"bad" else None

    handler = Recorder(fail=poison)
    dead, audit = await watch_dead_letters(bus, queue)
    await bus.consume(queue, ["work.*"], handler, prefetch=1)

    await bus.publish("work.one", b"bad")
    await bus.publish("work.two", b"good")

    await eventually(handler.got(2))
    await eventually(dead.got(1))
    await eventually(audit.got(1))
    assert handler.bodies == [b"bad", b"good"], "a dead letter is handled once, then the next"
    for letter in (dead.seen[0], audit.seen[0]):
        assert letter.body == b"bad"
        reason = str(letter.headers[REASON_HEADER])
        assert "PermanentError" in reason
        assert "poison pill: no such dataset" in reason
        assert letter.headers[QUEUE_HEADER] == queue
        assert letter.headers[ROUTING_KEY_HEADER] == "work.one"
        assert letter.routing_key == "work.one", "a dead letter keeps its original key"
    assert await bus.depth(queue) == 0


async def test_a_failing_handler_is_retried_and_succeeds(bus: Bus, unique: UniqueNames) -> None:
    queue = unique("flaky")

    def first_time(delivery: Delivery) -> Exception | None:
        return RuntimeError("the handler blinked") if delivery.attempt == 1 else None

    handler = Recorder(fail=first_time)
    await bus.consume(queue, ["work.*"], handler)
    await bus.publish("work.retry", b"payload")

    await eventually(handler.got(2))
    assert [d.attempt for d in handler.seen] == [1, 2]
    retried = handler.seen[1]
    assert retried.body == b"payload"
    assert retried.routing_key == "work.retry", "a retry keeps the original routing key"
    assert int(retried.headers[ATTEMPT_HEADER]) == 2
    assert await bus.depth(f"{queue}.dead") == 0
    assert await bus.depth(queue) == 0


async def test_retries_run_out_then_the_message_is_dead_lettered(
    bus: Bus, unique: UniqueNames
) -> None:
    queue = unique("broken")
    handler = Recorder(fail=lambda _: RuntimeError("the backend is down"))
    audit = Recorder()
    await bus.consume(audit_queue(bus.exchange), ["#"], audit, exchange=dead_exchange(bus.exchange))
    await bus.consume(queue, ["work.*"], handler)
    await bus.publish("work.doomed", b"doomed")

    await eventually(audit.got(1))
    assert [d.attempt for d in handler.seen] == list(range(1, MAX_ATTEMPTS + 1))
    reason = str(audit.seen[0].headers[REASON_HEADER])
    assert f"after {MAX_ATTEMPTS} attempts" in reason
    assert "RuntimeError: the backend is down" in reason
    assert audit.seen[0].headers[ROUTING_KEY_HEADER] == "work.doomed"
    # Nobody consumes the queue's own dead-letter queue here: the letter waits there.
    await eventually(lambda: bus.depth(f"{queue}.dead"), message=f"{queue}.dead stays empty")
    assert await bus.depth(f"{queue}.dead") == 1
    assert len(handler.seen) == MAX_ATTEMPTS

    # Whoever consumes the dead letters later has the whole retry budget again.
    def first_time(delivery: Delivery) -> Exception | None:
        return RuntimeError("recorder blinked") if delivery.attempt == 1 else None

    recorder = Recorder(fail=first_time)
    await bus.consume(f"{queue}.dead", [queue], recorder, exchange=dead_exchange(bus.exchange))
    await eventually(recorder.got(2))
    assert [d.attempt for d in recorder.seen] == [1, 2]
    assert [d.routing_key for d in recorder.seen] == ["work.doomed"] * 2
    assert "after 3 attempts" in str(recorder.seen[1].headers[REASON_HEADER])
    assert await bus.depth(f"{queue}.dead.dead") == 0


async def test_a_message_that_does_not_parse_is_dead_lettered_at_once(
    bus: Bus, unique: UniqueNames
) -> None:
    queue = unique("parse")
    parsed: list[str] = []
    calls = Recorder()

    async def handler(delivery: Delivery) -> None:
        await calls(delivery)
        parsed.append(parse_event(delivery.body).routing_key())

    dead, _ = await watch_dead_letters(bus, queue)
    await bus.consume(queue, ["#"], handler, prefetch=1)
    await bus.publish("request.created", b"{not json")
    await bus.publish("request.created", b'{"event_type": "request.exploded"}')
    ready = b'{"event_type":"request.ready","request_id":"r","dataset":"s:d",'
    ready += b'"idempotency_key":"k","n_files":1,"n_ranges":1}'
    await bus.publish("request.ready", ready)

    await eventually(dead.got(2))
    await eventually(lambda: parsed == ["request.ready"])
    assert [d.attempt for d in calls.seen] == [1, 1, 1], "invalid messages are not retried"
    reasons = [str(d.headers[REASON_HEADER]) for d in dead.seen]
    assert all(reason.startswith("invalid message") for reason in reasons), reasons
    assert "event_type" in reasons[1]


async def test_depth_counts_waiting_persistent_messages(bus: Bus, unique: UniqueNames) -> None:
    queue = unique("depth")
    assert await bus.depth(queue) == 0, "a queue that does not exist is empty"
    await bus.declare(queue, ["depth.*"])
    assert await bus.depth(queue) == 0
    for n in range(3):
        await bus.publish("depth.x", str(n).encode())
    if isinstance(bus, AmqpBus):
        # Published with `mandatory`: a message no queue takes is an error, not a loss.
        with pytest.raises(Unroutable, match=r"other\.x"):
            await bus.publish("other.x", b"not for this queue")
    else:
        await bus.publish("other.x", b"not for this queue")

    await eventually(lambda: _equals(bus.depth(queue), 3))
    if isinstance(bus, AmqpBus):
        # A persistent message (in a durable queue): it survives a broker restart.
        async with await aio_pika.connect(bus.url) as connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            message = await declared.get(no_ack=True)
            assert message is not None
            assert message.body == b"0"
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await eventually(lambda: _equals(bus.depth(queue), 2))

    # Declared before anyone consumes it, the queue kept its messages for the consumer.
    handler = Recorder()
    await bus.consume(queue, ["depth.*"], handler)
    await eventually(lambda: len(handler.seen) == (2 if isinstance(bus, AmqpBus) else 3))
    await eventually(lambda: _equals(bus.depth(queue), 0))


@pytest.mark.parametrize("bus", ["amqp"], indirect=True)
async def test_a_message_is_acked_only_after_its_handler_returns(
    bus: Bus, unique: UniqueNames
) -> None:
    assert isinstance(bus, AmqpBus)
    queue = unique("ack")
    await bus.declare(queue, ["ack.*"])
    started = asyncio.Event()
    release = asyncio.Event()

    async def stuck(delivery: Delivery) -> None:
        started.set()
        await release.wait()

    consumer = AmqpBus(bus.url, bus.exchange, max_attempts=MAX_ATTEMPTS, backoff_s=0.05)
    await consumer.start()
    try:
        await consumer.consume(queue, ["ack.*"], stuck)
        await bus.publish("ack.one", b"unfinished")
        await eventually(started.is_set)
        assert await bus.depth(queue) == 0, "delivered, so no longer waiting"
    finally:
        await consumer.close()
        release.set()

    # The consumer went away mid-handler: the broker gives the message back.
    await eventually(lambda: _equals(bus.depth(queue), 1))
    handler = Recorder()
    await bus.consume(queue, ["ack.*"], handler)
    await eventually(handler.got(1))
    assert handler.seen[0].body == b"unfinished"
    assert handler.seen[0].attempt == 1


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
