"""The in-process bus of the embedded mode: the same routing, retries and dead letters as
RabbitMQ, inside one event loop. Messages do not survive the process.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ess_common.errors import Unroutable
from ess_common.messaging.bus import (
    Delivery,
    Handler,
    audit_queue,
    dead_exchange,
)
from ess_common.messaging.dispatch import Outcome, Verdict, dispatch, refuse_envelope
from ess_common.messaging.envelope import dead_headers, read_envelope, retry_headers

log = structlog.get_logger("ess.memory_bus")


def topic_pattern(binding: str) -> re.Pattern[str]:
    """AMQP topic matching: `*` is one word, `#` is zero or more words.

    Each word brings its own separator, a dot or the start of the key, so that a `#` that
    takes no words takes no dot either, wherever it stands (`#.a` matches `a`).
    """
    sep = r"(?:\A|\.)"
    parts = []
    for word in binding.split("."):
        if word == "#":
            parts.append(f"(?:{sep}[^.]+)*")
        elif word == "*":
            parts.append(f"{sep}[^.]+")
        else:
            parts.append(sep + re.escape(word))
    return re.compile(r"\A(?!\.)" + "".join(parts) + r"\Z")


@dataclass
class _Queue:
    name: str
    #: Messages as published: their envelope is read when a worker takes them.
    items: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    bindings: list[tuple[str, re.Pattern[str]]] = field(default_factory=list)
    consumers: int = 0


class MemoryBus:
    def __init__(
        self,
        exchange: str = "ess",
        *,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        prefetch: int = 8,
        backoff_max_s: float = 60.0,
    ) -> None:
        self.exchange = exchange
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.prefetch = prefetch
        self._queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._bind(audit_queue(self.exchange), dead_exchange(self.exchange), ["#"])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _bind(self, queue: str, exchange: str, bindings: Sequence[str]) -> _Queue:
        q = self._queues.setdefault(queue, _Queue(queue))
        for key in bindings:
            pattern = topic_pattern(key)
            if (exchange, pattern.pattern) not in [(e, p.pattern) for e, p in q.bindings]:
                q.bindings.append((exchange, pattern))
        return q

    async def depth(self, queue: str) -> int:
        q = self._queues.get(queue)
        return q.items.qsize() if q else 0

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expiration_s: float | None = None,
    ) -> None:
        target = exchange or self.exchange
        given = dict(headers or {})
        for q in self._queues.values():
            if any(e == target and p.match(routing_key) for e, p in q.bindings):
                q.items.put_nowait(Delivery(q.name, routing_key, body, dict(given)))

    async def send_to_queue(self, queue: str, body: bytes, headers: Mapping[str, Any]) -> None:
        q = self._queues.get(queue)
        if q is None:
            raise Unroutable(f"queue {queue!r} does not exist: not sent")
        # The consumer reads the envelope (routing key, attempt) from the headers.
        q.items.put_nowait(Delivery(queue, "", body, dict(headers)))

    async def declare(self, queue: str, bindings: Sequence[str]) -> None:
        self._bind(queue, self.exchange, bindings)
        self._bind(f"{queue}.dead", dead_exchange(self.exchange), [queue])

    async def consume(
        self,
        queue: str,
        bindings: Sequence[str],
        handler: Handler,
        *,
        exchange: str | None = None,
        prefetch: int | None = None,
    ) -> None:
        q = self._bind(queue, exchange or self.exchange, bindings)
        self._bind(f"{queue}.dead", dead_exchange(self.exchange), [queue])
        for _ in range(prefetch or self.prefetch):
            self._spawn(self._worker(q, handler), f"consume:{queue}")
        q.consumers += 1

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _later(delay_s: float, q: _Queue, delivery: Delivery) -> None:
        await asyncio.sleep(delay_s)
        q.items.put_nowait(delivery)

    async def _worker(self, q: _Queue, handler: Handler) -> None:
        while True:
            published = await q.items.get()
            try:
                await self._deliver(q, handler, published)
            finally:
                q.items.task_done()

    async def _deliver(self, q: _Queue, handler: Handler, published: Delivery) -> None:
        # As the RabbitMQ bus reads a delivery: a dead letter keeps the key it first had.
        envelope = read_envelope(q.name, published.routing_key, published.body, published.headers)
        delivery = envelope.delivery
        outcome: Outcome
        if envelope.problem is not None and q.name != audit_queue(self.exchange):
            outcome = refuse_envelope(delivery, envelope.problem)
        else:
            outcome = await dispatch(
                delivery,
                handler,
                max_attempts=self.max_attempts,
                backoff_s=self.backoff_s,
                backoff_max_s=self.backoff_max_s,
            )
        if outcome.verdict is Verdict.RETRY:
            again = Delivery(
                q.name,
                delivery.routing_key,
                delivery.body,
                retry_headers(delivery, outage=outcome.outage),
            )
            self._spawn(self._later(outcome.delay_s, q, again), f"retry:{q.name}")
        elif outcome.verdict is Verdict.DEAD and q.name == audit_queue(self.exchange):
            log.error("dead_letter.not_recorded", reason=outcome.reason)
        elif outcome.verdict is Verdict.DEAD:
            await self.publish(
                q.name,
                delivery.body,
                exchange=dead_exchange(self.exchange),
                headers=dead_headers(delivery, outcome.reason, refused=outcome.refused),
            )
