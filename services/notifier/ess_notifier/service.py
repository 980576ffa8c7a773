"""The notifier daemon.

Consumes `request.ready`, `request.failed`, `request.cancelled`, `request.stalled` and
`file.ready`; records one
notification per target (a message on the PanDA exchange, an HTTP callback) under a unique
key, so a redelivered event adds nothing; then delivers the due ones, each claimed with
`FOR UPDATE SKIP LOCKED` and marked sent in the same transaction. Failed callbacks are retried
with backoff up to a limit.

Messages go to `panda_exchange` with the event's name as routing key unless
`panda_routing_keys` names another, and, with `stomp_notice_destination`, the same body to that
STOMP destination (PanDA's message broker), each confirmed by a receipt. `file.ready` is a
message only (one per file and target; the file is part of the notice's key), sent when the
request asked for messages and for files. `request.stalled` (the broker's stuck sweep sent a
request's work out again) is a message only too, once per drive.
An event that no longer matches its request (a `request.failed` after the request was retried
or cancelled) is not announced.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import metrics, tracing
from ess_common.db import history
from ess_common.db.models import (
    Notification,
    NotificationStatus,
    Request,
    RequestEventKind,
    RequestStatus,
    utcnow,
)
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import BadMessage, PermanentError
from ess_common.events import (
    NOTICE_EVENTS,
    FileReady,
    RequestCancelled,
    RequestFailed,
    RequestReady,
    RequestStalled,
)
from ess_common.messaging.bus import Bus, Delivery, EventHandler, Handler, subscribe
from ess_common.messaging.dispatch import backoff
from ess_common.messaging.handlers import Routes, transactional
from ess_common.messaging.outbox import OutboxRelay
from ess_common.messaging.stomp import StompPublisher
from ess_common.runtime import every
from ess_common.settings import HeadSettings
from ess_common.states import notifications
from ess_notifier.delivery import HTTP, MESSAGE, STOMP, send

log = structlog.get_logger("ess.notifier")


RequestEvent = RequestReady | RequestFailed | RequestCancelled
Notice = RequestEvent | RequestStalled | FileReady

#: The request status each request event announces.
_STATUS_OF: dict[str, RequestStatus] = {
    "request.ready": RequestStatus.READY,
    "request.failed": RequestStatus.FAILED,
    "request.cancelled": RequestStatus.CANCELLED,
}


def notices_queue(exchange: str) -> str:
    return f"{exchange}.notifier"


def consumed_queues(exchange: str) -> dict[str, list[str]]:
    """The queue the notifier consumes and the routing keys bound to it: those of the events
    it tells PanDA about (`Notifier.notices_handler` takes the same types)."""
    return {notices_queue(exchange): [event.binding() for event in NOTICE_EVENTS]}


def payload(event: Notice, request: Request) -> dict[str, Any]:
    """What PanDA receives (message body and callback body alike)."""
    details: dict[str, Any]
    if isinstance(event, RequestReady):
        details = {"n_files": event.n_files, "n_ranges": event.n_ranges}
    elif isinstance(event, RequestFailed | RequestCancelled):
        details = {"reason": event.reason}
    elif isinstance(event, RequestStalled):
        details = {"reason": event.reason, "drive": event.drive, "max_drives": event.max_drives}
    else:
        details = {
            "file_id": event.file_id,
            "scope": event.scope,
            "lfn": event.lfn,
            "n_events": event.n_events,
            "n_ranges": event.n_ranges,
        }
    return {
        "event": event.event_type,
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(),
        "request_id": request.id,
        "dataset": request.dataset,
        "idempotency_key": request.idempotency_key,
        "status": request.status,
        **details,
    }


def notice_key(event: Notice) -> str:
    """The notice's event in its unique key: per-file events are once per file, a stalled
    request's once per drive."""
    if isinstance(event, FileReady):
        return f"{event.event_type}/{event.file_id}"
    if isinstance(event, RequestStalled):
        return f"{event.event_type}/{event.drive}"
    return event.event_type


class Notifier:
    def __init__(
        self,
        settings: HeadSettings,
        bus: Bus,
        sessions: SessionMaker,
        http: httpx.AsyncClient,
        stomp: StompPublisher | None = None,
    ) -> None:
        self.settings = settings
        #: PanDA's STOMP broker, for the notices to `stomp_notice_destination`.
        self.stomp = stomp
        self.bus = bus
        self.sessions = sessions
        self.http = http
        self.relay = OutboxRelay(sessions, bus)
        self._task: asyncio.Task[None] | None = None
        # SQLite has no SKIP LOCKED: within one process, one delivery round at a time.
        self._delivering = asyncio.Lock()

    def message_target(self, event_type: str) -> str:
        routing_key = self.settings.panda_routing_keys.get(event_type, event_type)
        return f"{self.settings.panda_exchange}:{routing_key}"

    def targets(self, event: Notice, request: Request) -> list[tuple[str, str]]:
        messages = [(MESSAGE, self.message_target(event.event_type))]
        if self.settings.stomp_notice_destination:
            messages.append((STOMP, self.settings.stomp_notice_destination))
        if isinstance(event, FileReady):
            wanted = request.notify_message and request.notify_files
            return messages if wanted else []
        if isinstance(event, RequestStalled):
            # Not an outcome: told where PanDA listens for news, not to the request's callback.
            return messages if request.notify_message else []
        targets: list[tuple[str, str]] = []
        if request.notify_message:
            targets += messages
        if request.callback_url:
            targets.append((HTTP, request.callback_url))
        return targets

    async def handle_request_event(self, session: AsyncSession, event: Notice) -> None:
        request = await session.get(Request, event.request_id)
        if request is None:
            raise BadMessage(f"request {event.request_id} is unknown")
        expected = _STATUS_OF.get(event.event_type)
        if expected is not None and request.status != expected:
            log.info("notice.outdated", event_type=event.event_type, status=request.status)
            return
        body = payload(event, request)
        for kind, target in self.targets(event, request):
            try:
                async with session.begin_nested():
                    session.add(
                        Notification(
                            request_id=request.id,
                            event=notice_key(event),
                            kind=kind,
                            target=target,
                            payload=body,
                            trace_context=tracing.current_headers() or None,
                        )
                    )
            except IntegrityError:
                log.info("notification.exists", kind=kind, target=target)

    def notices_handler(self) -> EventHandler:
        """The events the notifier tells PanDA about (`NOTICE_EVENTS`), each recorded as
        notifications in a transaction of its own."""
        return transactional(
            self.sessions,
            self.relay,
            Routes[AsyncSession]()
            .on(RequestReady, self.handle_request_event)
            .on(RequestFailed, self.handle_request_event)
            .on(RequestCancelled, self.handle_request_event)
            .on(RequestStalled, self.handle_request_event)
            .on(FileReady, self.handle_request_event),
        )

    async def deliver_due(self) -> int:
        """Send every notification that is due; returns how many were sent."""
        sent = 0
        async with self._delivering:
            while True:
                async with unit_of_work(self.sessions) as session:
                    n = await session.scalar(
                        select(Notification)
                        .where(
                            Notification.status == NotificationStatus.PENDING,
                            Notification.next_attempt_at <= utcnow(),
                        )
                        .order_by(Notification.id)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    )
                    if n is None:
                        return sent
                    await self._attempt(session, n)
                    sent += n.status == NotificationStatus.SENT

    async def _attempt(self, session: AsyncSession, n: Notification) -> None:
        # In the trace of the event it tells, whichever round delivers it.
        with tracing.continued(n.trace_context, f"notify {n.event}", target=n.kind):
            structlog.contextvars.bind_contextvars(request_id=n.request_id)
            try:
                await self._deliver(session, n)
            finally:
                structlog.contextvars.unbind_contextvars("request_id")

    async def _deliver(self, session: AsyncSession, n: Notification) -> None:
        n.attempts += 1
        what = f"{n.event} by {n.kind} to {n.target}"
        try:
            await send(n, self.bus, self.http, self.stomp, self.settings.callback_policy)
        except Exception as exc:
            n.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            if isinstance(exc, PermanentError) or n.attempts >= self.settings.callback_max_attempts:
                await notifications.give_up(session, n.id)
                log.error("notification.failed", id=n.id, target=n.target, reason=n.last_error)
                history.record(
                    session,
                    n.request_id,
                    RequestEventKind.NOTIFICATION_FAILED,
                    attempt=n.attempts,
                    detail=f"{what}: {n.last_error}",
                )
                outcome = "failed"
            else:
                delay = backoff(n.attempts, self.settings.retry_backoff_s, cap_s=300)
                n.next_attempt_at = utcnow() + timedelta(seconds=delay)
                log.warning("notification.retry", id=n.id, target=n.target, delay_s=delay)
                outcome = "retry"
            metrics.on_commit(session, metrics.NOTIFICATIONS.labels(n.kind, outcome).inc)
            return
        await notifications.sent(session, n.id)
        log.info("notification.sent", id=n.id, kind=n.kind, target=n.target)
        history.record(
            session, n.request_id, RequestEventKind.NOTIFIED, attempt=n.attempts, detail=what
        )
        metrics.on_commit(session, metrics.NOTIFICATIONS.labels(n.kind, "sent").inc)

    async def start(self) -> None:
        handler = self.notices_handler()

        def then_deliver(handle: Handler) -> Handler:
            async def handle_then_deliver(delivery: Delivery) -> None:
                await handle(delivery)
                await self.deliver_due()

            return handle_then_deliver

        await subscribe(self.bus, notices_queue(self.bus.exchange), handler.wrapped(then_deliver))
        self._task = asyncio.create_task(
            every(self.settings.sweep_interval_s, self.deliver_due, "deliver"),
            name="notifier-deliver",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
