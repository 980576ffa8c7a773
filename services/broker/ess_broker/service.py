"""The broker daemon.

Consumes `request.created` (its sources and callback checked by the URL policy the head API
applies: a refused request is recorded failed with the reason, PanDA is told, and the message
is dead-lettered with it), `edge.heartbeat`, the edges' results (`file.cached.*`,
`split.done.*`, `file.failed.*`, and `range.split.*` of on-demand splits) and every dead
letter; produces `file.assigned.<edge>`, `request.ready` and `request.failed` through the
outbox. A periodic sweep marks silent edges
lost (counting only time heartbeats could be recorded), moves their work and assigns what is
pending. A heartbeat or result that is not signed by the enrolled edge it names is
dead-lettered, never handled.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ess_broker.assignment import assign_pending, reclaim_lost_edges
from ess_broker.bookkeeping import handle_file_cached, handle_file_failed, handle_split_done
from ess_broker.dead_letters import record_dead_letter
from ess_broker.edges import RecordingWindow, handle_heartbeat
from ess_broker.enrolled import EnrollmentKeys, enrolled_only
from ess_broker.on_demand import handle_range_split
from ess_broker.orphans import OrphanSweeper
from ess_broker.result_batches import ResultBatches
from ess_broker.retention import RangeRetention
from ess_broker.stuck import sweep_stuck
from ess_common import metrics
from ess_common.catalogue import Catalogue
from ess_common.db.models import Request, utcnow
from ess_common.db.requests import as_spec, record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import Conflict
from ess_common.events import (
    EdgeHeartbeat,
    Event,
    FileCached,
    FileFailed,
    RangeSplitOnDemand,
    RequestCreated,
    SplitDone,
)
from ess_common.messaging.bus import (
    Bus,
    Delivery,
    EventHandler,
    Handler,
    audit_queue,
    dead_exchange,
    subscribe,
)
from ess_common.messaging.handlers import Routes, flush_quietly, parse_for, transactional
from ess_common.messaging.outbox import OutboxRelay
from ess_common.outages import is_outage
from ess_common.request_urls import check_request_urls
from ess_common.runtime import every
from ess_common.settings import HeadSettings
from ess_common.url_policy import UrlRefused

log = structlog.get_logger("ess.broker")

#: A file that failed this many assignments fails its request.
MAX_FILE_ATTEMPTS = 3


#: The edges' results the broker records (`Broker.results_handler` routes each).
RESULTS: tuple[type[Event], ...] = (FileCached, SplitDone, FileFailed, RangeSplitOnDemand)


def consumed_queues(exchange: str) -> dict[str, list[str]]:
    """The queues the broker consumes and the routing keys bound to each, from the event types
    each takes (the last on the dead-letter exchange: every dead letter)."""
    return {
        f"{exchange}.broker.requests": [RequestCreated.binding()],
        f"{exchange}.broker.heartbeats": [EdgeHeartbeat.binding()],
        f"{exchange}.broker.results": [event.binding() for event in RESULTS],
        audit_queue(exchange): ["#"],
    }


class Broker:
    def __init__(
        self,
        settings: HeadSettings,
        bus: Bus,
        sessions: SessionMaker,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.settings = settings
        #: Where a request naming only its dataset has its files resolved (Rucio).
        self.catalogue = catalogue
        self.bus = bus
        self.sessions = sessions
        self.relay = OutboxRelay(sessions, bus)
        #: The keys edges' messages are checked with, read together for a burst of them.
        self.enrollment_keys = EnrollmentKeys(sessions)
        self.lost_after = timedelta(seconds=settings.edge_lost_after_s)
        self.stuck_after = timedelta(seconds=settings.stuck_after_s)
        #: Since when heartbeats could be recorded: only that time counts toward lost edges.
        self.recording = RecordingWindow()
        self.retention = RangeRetention(settings, sessions)
        self.orphans = OrphanSweeper(
            sessions,
            self.retention.store,
            timedelta(seconds=settings.orphan_grace_s),
            timedelta(seconds=settings.orphan_sweep_interval_s),
        )
        #: `split.done` several to a transaction; the other results one each.
        self.results = ResultBatches(
            sessions,
            self.relay,
            Routes[AsyncSession]()
            .on(FileCached, self.handle_file_cached)
            .on(FileFailed, self.handle_file_failed)
            .on(RangeSplitOnDemand, handle_range_split),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._record_request = transactional(
            sessions,
            self.relay,
            Routes[AsyncSession]().on(RequestCreated, self.handle_request_created),
        )

    async def on_request_created(self, delivery: Delivery) -> None:
        """A `request.created` from the bus: refused before anything else is done when the URL
        policy refuses one of its URLs (`ess_common.request_urls`)."""
        event = parse_for(delivery, RequestCreated)
        assert isinstance(event, RequestCreated)
        try:
            check_request_urls(event, self.settings)
        except UrlRefused as refusal:
            async with unit_of_work(self.sessions) as session:
                await self.refuse_request(session, event, str(refusal))
            await flush_quietly(self.relay)
            raise
        await self._record_request(delivery)

    async def refuse_request(
        self, session: AsyncSession, event: RequestCreated, reason: str
    ) -> None:
        """Record the request failed with `reason` (`request.failed` goes to PanDA), unless its
        idempotency key already names a request: that one is left as it is."""
        try:
            request, created = await record_request(
                session,
                as_spec(event),
                request_id=await self._new_request_id(session, event),
                refused=reason,
            )
        except Conflict:
            log.warning("request.refused_conflict", idempotency_key=event.idempotency_key)
            return
        log.warning("request.refused", request_id=request.id, created=created, reason=reason)

    async def handle_request_created(self, session: AsyncSession, event: RequestCreated) -> None:
        request, created = await record_request(
            session,
            as_spec(event),
            request_id=await self._new_request_id(session, event),
            catalogue=self.catalogue,
        )
        structlog.contextvars.bind_contextvars(request_id=request.id)
        if created:
            log.info("request.recorded", dataset=request.dataset, status=request.status)
        await assign_pending(
            session,
            self.lost_after,
            request_id=request.id,
            max_queued=self.settings.edge_max_queued,
        )

    @staticmethod
    async def _new_request_id(session: AsyncSession, event: RequestCreated) -> str | None:
        """The correlation id names a new request when it can: PanDA may set any string (too
        long for an id, or shared by several of its requests), which must not stop the
        request from being recorded."""
        try:
            candidate = str(uuid.UUID(event.correlation_id or ""))
        except ValueError:
            return None
        return None if await session.get(Request, candidate) is not None else candidate

    async def handle_heartbeat(self, session: AsyncSession, event: EdgeHeartbeat) -> None:
        await handle_heartbeat(session, event)

    async def handle_file_cached(self, session: AsyncSession, event: FileCached) -> None:
        await handle_file_cached(session, event)

    async def handle_split_done(self, session: AsyncSession, event: SplitDone) -> None:
        await handle_split_done(session, event)

    async def handle_file_failed(self, session: AsyncSession, event: FileFailed) -> None:
        await handle_file_failed(session, event, max_file_attempts=MAX_FILE_ATTEMPTS)

    async def handle_dead_letter(self, delivery: Delivery) -> None:
        async with unit_of_work(self.sessions) as session:
            await record_dead_letter(session, delivery)

    def heartbeat_handler(self) -> EventHandler:
        """The edges' heartbeats, one transaction each."""
        return transactional(
            self.sessions,
            self.relay,
            Routes[AsyncSession]().on(EdgeHeartbeat, self.handle_heartbeat),
        )

    def results_handler(self) -> EventHandler:
        """The edges' results: what the results queue is bound to and how each is handled
        (`split.done` several to a transaction, `ess_broker.result_batches`)."""
        return self.results.handler

    def from_edges(self, handler: Handler) -> Handler:
        """The handler, behind a check that the message was signed by the enrolled edge it
        names (`ess_broker.enrolled`)."""
        return enrolled_only(self.enrollment_keys, handler)

    async def sweep(self) -> None:
        # Separate transactions: the edge rows locked to reclaim are not held while assigning.
        await self.reclaim()
        # Only once the head has watched for as long: no request is stuck for an outage.
        if self.recording.can_tell_lost(utcnow(), self.stuck_after):
            async with unit_of_work(self.sessions) as session:
                await sweep_stuck(session, self.stuck_after, self.settings.stuck_max_drives)
        async with unit_of_work(self.sessions) as session:
            await assign_pending(session, self.lost_after, max_queued=self.settings.edge_max_queued)
        await flush_quietly(self.relay)
        await self.retention.sweep()
        await self.orphans.maybe_sweep()
        for queue in self.queues:
            metrics.QUEUE_MESSAGES.labels(queue).set(await self.bus.depth(queue))

    async def reclaim(self) -> None:
        """Mark silent edges lost, once heartbeats could have been recorded for a whole
        `edge_lost_after_s`."""
        now = utcnow()
        can_tell = self.recording.can_tell_lost(now, self.lost_after)
        try:
            async with unit_of_work(self.sessions) as session:
                if can_tell:
                    await reclaim_lost_edges(session, self.lost_after)
                else:
                    await session.execute(text("SELECT 1"))
        except Exception as exc:
            if is_outage(exc):
                self.recording.broken()
            raise
        self.recording.recorded(now)

    @property
    def queues(self) -> list[str]:
        """The queues this broker consumes."""
        return list(consumed_queues(self.bus.exchange))

    async def start(self) -> None:
        requests, heartbeats, results, audit = self.queues
        await subscribe(
            self.bus, requests, EventHandler((RequestCreated,), self.on_request_created)
        )
        await subscribe(
            self.bus,
            heartbeats,
            self.heartbeat_handler().wrapped(self.from_edges),
        )
        await subscribe(
            self.bus,
            results,
            self.results_handler().wrapped(self.from_edges),
            prefetch=self.settings.results_prefetch,
        )
        # Every dead letter, whatever its event (or none readable): bound to all keys.
        await self.bus.consume(
            audit,
            ["#"],
            self.handle_dead_letter,
            exchange=dead_exchange(self.bus.exchange),
        )
        self._tasks = [
            asyncio.create_task(
                every(self.settings.sweep_interval_s, self.sweep, "sweep"), name="broker-sweep"
            ),
            asyncio.create_task(self.relay.run(), name="broker-outbox"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.retention.close()
        if self.catalogue is not None:
            await self.catalogue.close()
