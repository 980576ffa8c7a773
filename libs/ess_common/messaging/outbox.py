"""The transactional outbox: events are written with the change they announce, in the same
transaction, and a relay publishes them (with confirms) after the commit. A crash between
commit and publish delays the event; it never loses it.

Each event keeps the trace context it was written in (`ess_common.tracing`), or the one of the
request it belongs to when written outside any (a periodic sweep), and is published with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta

import structlog
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import enrollment, metrics, tracing
from ess_common.db.models import OutboxMessage, utcnow
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import Unroutable
from ess_common.events import Event
from ess_common.messaging.bus import Bus
from ess_common.outages import is_outage

log = structlog.get_logger("ess.outbox")

#: Set in a session's `info` once it wrote to the outbox (`wrote_events`).
_WROTE = "ess.outbox.wrote"


def add_event(
    session: AsyncSession,
    event: Event,
    *,
    exchange: str | None = None,
    trace_context: Mapping[str, str] | None = None,
    signed_for_edge: str | None = None,
) -> None:
    """Write `event` to the outbox; `trace_context` is the request's, for an event written
    outside the request's trace. `signed_for_edge` (an enrollment's key) signs it for that
    edge, which does only work the head signed (`ess_common.enrollment`)."""
    headers = tracing.current_headers() or dict(trace_context or {})
    body = event.model_dump_json()
    if signed_for_edge is not None:
        headers[enrollment.HEAD_SIGNATURE_HEADER] = enrollment.sign(
            enrollment.downward_key(signed_for_edge), body.encode()
        )
    session.add(
        OutboxMessage(
            exchange=exchange,
            routing_key=event.routing_key(),
            body=body,
            headers=headers or None,
        )
    )
    session.info[_WROTE] = True


def wrote_events(session: AsyncSession) -> bool:
    """Whether `add_event` wrote to the outbox in this session: after its commit, a flush
    then has something of its own to publish; without, it would only cost a round trip
    (what other sessions leave is the relay loop's)."""
    return bool(session.info.get(_WROTE))


class OutboxRelay:
    def __init__(
        self,
        sessions: SessionMaker,
        bus: Bus,
        *,
        batch: int = 200,
        keep_published: timedelta = timedelta(hours=1),
    ) -> None:
        self.sessions = sessions
        self.bus = bus
        self.batch = batch
        self.keep_published = keep_published
        self._lock = asyncio.Lock()

    async def flush(self) -> int:
        """Publish everything not yet published; returns how many were sent."""
        sent = 0
        # Past the rows of this flush that no queue took: they stay for the next flush, and
        # do not hold back the rows after them.
        after = 0
        async with self._lock:
            while True:
                async with unit_of_work(self.sessions) as session:
                    # SKIP LOCKED: several relays (one per head process) share the table.
                    rows = (
                        await session.scalars(
                            select(OutboxMessage)
                            .where(OutboxMessage.published_at.is_(None), OutboxMessage.id > after)
                            .order_by(OutboxMessage.id)
                            .limit(self.batch)
                            .with_for_update(skip_locked=True)
                        )
                    ).all()
                    for row in rows:
                        after = row.id
                        try:
                            await self.bus.publish(
                                row.routing_key,
                                row.body.encode(),
                                exchange=row.exchange,
                                headers=row.headers,
                            )
                        except Unroutable as exc:
                            log.error("outbox.unroutable", outbox_id=row.id, reason=str(exc))
                            continue
                        row.published_at = utcnow()
                        sent += 1
                if len(rows) < self.batch:
                    return sent

    async def purge(self) -> None:
        async with unit_of_work(self.sessions) as session:
            await session.execute(
                delete(OutboxMessage).where(
                    OutboxMessage.published_at < utcnow() - self.keep_published
                )
            )

    async def run(self, interval_s: float = 1.0) -> None:
        """Publish what a crashed or busy process left behind, forever."""
        rounds = 0
        while True:
            try:
                await self.flush()
                rounds += 1
                if rounds % 600 == 0:
                    await self.purge()
            except Exception as exc:
                if is_outage(exc):
                    # One line a round, not a traceback: the outage is what is to be seen.
                    log.warning("outbox.flush_outage", reason=f"{type(exc).__name__}: {exc}")
                    metrics.OUTAGE_RETRIES.labels("periodic:outbox").inc()
                else:
                    log.exception("outbox.flush_failed")
            await asyncio.sleep(interval_s)
