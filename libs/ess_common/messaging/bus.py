"""What a message bus offers ESS, whichever backend carries it (RabbitMQ or in-process).

Every consumed queue `Q` comes with `Q.retry` (a delay before redelivery) and `Q.dead`
(bound on the dead-letter exchange `<exchange>.dead` with key `Q`). A dead-lettered message
carries its reason in the `x-ess-reason` header; `<exchange>.dead.audit` sees every one.

Messages of an edge (heartbeats, results) carry `x-ess-edge-signature`, an HMAC-SHA256 of the
body with the upward key of the edge's enrollment token (`ess_common.enrollment`): the broker
refuses unsigned or forged ones, and those of edges not enrolled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pydantic import SecretStr

from ess_common import enrollment, tracing
from ess_common.events import Event

ATTEMPT_HEADER = "x-ess-attempt"
REASON_HEADER = "x-ess-reason"
QUEUE_HEADER = "x-ess-queue"
ROUTING_KEY_HEADER = "x-ess-routing-key"
EDGE_SIGNATURE_HEADER = "x-ess-edge-signature"
#: Redeliveries asked for because a server ESS needs (database, bus) was unreachable: they
#: count apart from the attempts, which only the message's own failures spend.
OUTAGES_HEADER = "x-ess-outages"
#: On a dead letter: "1" when the message was refused (unsigned, forged, not allowed), so that
#: nothing it says (a request it names) is believed.
REFUSED_HEADER = "x-ess-refused"


def edge_signature(body: bytes, token: SecretStr) -> str:
    key = enrollment.key_of(token.get_secret_value())
    return enrollment.sign(enrollment.upward_key(key), body)


def dead_exchange(exchange: str) -> str:
    return f"{exchange}.dead"


def audit_queue(exchange: str) -> str:
    return f"{exchange}.dead.audit"


@dataclass(frozen=True)
class Delivery:
    """One message as a handler sees it."""

    queue: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    #: 1 on the first delivery, counting the retries this consumer asked for.
    attempt: int = 1
    #: Redeliveries this consumer asked for while a server it needs was unreachable.
    outages: int = 0


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass(frozen=True)
class EventHandler:
    """A bus handler with the event types it takes: a queue consuming it is bound to their
    routing keys (`subscribe`), so what a queue receives and what it handles cannot differ."""

    events: tuple[type[Event], ...]
    handle: Handler

    async def __call__(self, delivery: Delivery) -> None:
        await self.handle(delivery)

    def bindings(self, edge: str | None = None) -> list[str]:
        """The routing-key patterns of its events; those of one edge's work for `edge`, or of
        every edge's."""
        return [event.binding(edge) for event in self.events]

    def wrapped(self, wrap: Callable[[Handler], Handler]) -> EventHandler:
        """The same events, handled through `wrap` (a check, a lease, a step after)."""
        return replace(self, handle=wrap(self.handle))


class Bus(Protocol):
    exchange: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expiration_s: float | None = None,
    ) -> None:
        """Publish durably; returns once the broker has confirmed the message."""

    async def declare(self, queue: str, bindings: Sequence[str]) -> None:
        """Make the queue exist and receive its bindings before anyone consumes it."""

    async def depth(self, queue: str) -> int:
        """Messages waiting in the queue (0 when it does not exist)."""

    async def send_to_queue(self, queue: str, body: bytes, headers: Mapping[str, Any]) -> None:
        """Put a message straight on a queue (confirmed), past every binding: a delivery handed
        back to its own queue (`long_work`). Its routing key travels in `x-ess-routing-key`."""

    async def consume(
        self,
        queue: str,
        bindings: Sequence[str],
        handler: Handler,
        *,
        exchange: str | None = None,
        prefetch: int | None = None,
    ) -> None:
        """Deliver each message of the queue to the handler (see `dispatch` for outcomes)."""


async def subscribe(
    bus: Bus,
    queue: str,
    handler: EventHandler,
    *,
    edge: str | None = None,
    prefetch: int | None = None,
) -> None:
    """Consume the queue, bound to the routing keys of the events the handler takes (of
    `edge`'s work only, when given)."""
    await bus.consume(queue, handler.bindings(edge), handler, prefetch=prefetch)


async def publish_event(
    bus: Bus,
    event: Event,
    *,
    exchange: str | None = None,
    expiration_s: float | None = None,
    headers: Mapping[str, Any] | None = None,
    signed_with: SecretStr | None = None,
) -> None:
    """Publish the event, in the current trace; `signed_with` (an edge's token) adds the edge
    signature header."""
    body = event.model_dump_json().encode()
    sent = dict(headers or {})
    tracing.inject(sent)
    if signed_with is not None:
        sent[EDGE_SIGNATURE_HEADER] = edge_signature(body, signed_with)
    await bus.publish(
        event.routing_key(),
        body,
        exchange=exchange,
        expiration_s=expiration_s,
        headers=sent or None,
    )
