"""Turning typed event handlers into bus handlers.

`Routes` maps each event type a queue takes to its handler; the handlers built from it
(`transactional`, `event_handler`) carry those types, from which the queue's bindings come
(`ess_common.messaging.bus.subscribe`).

`transactional` gives each message its own session: the handler changes the database and
writes its outgoing events to the outbox; the commit happens here, the outbox is flushed after
it when the handler wrote to it, and only then does the bus ack the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import tracing
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import BadMessage
from ess_common.events import Event, parse_event
from ess_common.messaging.bus import Delivery, EventHandler
from ess_common.messaging.outbox import OutboxRelay, wrote_events
from ess_common.outages import is_outage

log = structlog.get_logger("ess.handlers")

E = TypeVar("E", bound=Event)
C = TypeVar("C")


def parse_for(delivery: Delivery, *accepted: type[Event]) -> Event:
    """The delivery's event, of one of the `accepted` types; its ids go to the log context
    (and its request to the trace), for as long as the delivery is handled (`dispatch`)."""
    # A queue that takes one kind of event reads it without needing `event_type` in the
    # body: PanDA may publish a bare request on `request.created`.
    event = (
        accepted[0].model_validate_json(delivery.body)
        if len(accepted) == 1
        else parse_event(delivery.body)
    )
    if not isinstance(event, accepted):
        raise BadMessage(f"queue {delivery.queue} does not take {event.routing_key()} events")
    tracing.bind_event(str(event.event_id))
    if event.correlation_id:
        tracing.bind_request(event.correlation_id)
    return event


class Routes(Generic[C]):
    """Which handler takes each event type: the one map a queue's bindings (`Event.binding`)
    and its dispatch both come from. Each handler is given a `C` (a session, the delivery)
    and the event; `on` takes only a handler of its event type, so a wrong wiring is a type
    error."""

    def __init__(self) -> None:
        self._handlers: dict[type[Event], Callable[[C, Any], Awaitable[None]]] = {}

    def on(self, event: type[E], handler: Callable[[C, E], Awaitable[None]]) -> Routes[C]:
        if event in self._handlers:
            raise ValueError(f"{event.__name__} is routed twice")
        self._handlers[event] = handler
        return self

    @property
    def events(self) -> tuple[type[Event], ...]:
        return tuple(self._handlers)

    def handler_of(self, event: Event) -> Callable[[C, Any], Awaitable[None]]:
        return self._handlers[type(event)]


def event_handler(routes: Routes[Delivery]) -> EventHandler:
    """A bus handler that parses the event and calls the handler of its type with the
    delivery and the event."""

    async def handle(delivery: Delivery) -> None:
        event = parse_for(delivery, *routes.events)
        await routes.handler_of(event)(delivery, event)

    return EventHandler(routes.events, handle)


def transactional(
    sessions: SessionMaker, relay: OutboxRelay, routes: Routes[AsyncSession]
) -> EventHandler:
    """A bus handler that calls the handler of the event's type with a session of its own,
    commits, then flushes the outbox."""

    async def handle(delivery: Delivery) -> None:
        event = parse_for(delivery, *routes.events)
        async with unit_of_work(sessions) as session:
            await routes.handler_of(event)(session, event)
        if wrote_events(session):
            await flush_quietly(relay)

    return EventHandler(routes.events, handle)


async def flush_quietly(relay: OutboxRelay) -> None:
    # The commit is done: a failed publish now is the relay loop's to repeat, not a reason
    # to handle the message again.
    try:
        await relay.flush()
    except Exception as exc:
        if is_outage(exc):
            log.warning("outbox.flush_after_commit_outage", reason=f"{type(exc).__name__}: {exc}")
        else:
            log.exception("outbox.flush_after_commit_failed")
