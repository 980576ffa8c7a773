"""Edge registry: heartbeats register an edge, keep it alive and bring a lost one back.

The head records as an edge's free space what the edge could make free: its free bytes plus
what it would evict (cached inputs and pulled-through range files nothing pins), since that is
the room a new file can have. An operator's drain or disable outlives heartbeats; a lost edge
that heartbeats again is alive, for new work only (its old files were moved, and results of
their old attempts count for nothing).

An edge is lost after `edge_lost_after_s` without a heartbeat recorded, counting only the time
the head could record them (`RecordingWindow`): after a database outage, or a broker that was
down, live edges have a full period to be heard again before any is declared lost.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge, EdgeStatus, utcnow
from ess_common.events import EdgeHeartbeat
from ess_common.states import edges

log = structlog.get_logger("ess.edges")


class RecordingWindow:
    """Since when the head has been able to record heartbeats without a break."""

    def __init__(self) -> None:
        self.since: datetime | None = None

    def recorded(self, at: datetime) -> None:
        """The database answered at `at`: the window goes on (or opens)."""
        if self.since is None:
            self.since = at
            log.info("edges.heartbeats_recordable", since=at.isoformat())

    def broken(self) -> None:
        """The database did not answer: heartbeats may be going unrecorded."""
        if self.since is not None:
            log.warning("edges.heartbeats_unrecordable")
        self.since = None

    def can_tell_lost(self, now: datetime, lost_after: timedelta) -> bool:
        """Whether silence of `lost_after` could have been heard: the window is that long."""
        return self.since is not None and now - self.since >= lost_after


def _apply(edge: Edge, beat: EdgeHeartbeat) -> None:
    edge.site, edge.region, edge.url = beat.site, beat.region, beat.url
    edge.latitude, edge.longitude = beat.latitude, beat.longitude
    edge.quota_bytes = beat.quota_bytes
    edge.free_bytes = min(beat.quota_bytes, beat.free_bytes + beat.evictable_bytes)
    edge.queued, edge.load, edge.version = beat.queued, beat.load, beat.version
    edge.used_bytes = max(0, beat.quota_bytes - beat.free_bytes)
    edge.on_demand_slots, edge.on_demand_busy = beat.on_demand_slots, beat.on_demand_busy
    edge.last_heartbeat = utcnow()


async def handle_heartbeat(session: AsyncSession, beat: EdgeHeartbeat) -> None:
    edge = await session.get(Edge, beat.edge, with_for_update=True)
    if edge is None:
        try:
            async with session.begin_nested():
                edge = Edge(name=beat.edge, registered_at=utcnow())  # alive: the default
                _apply(edge, beat)
                session.add(edge)
            log.info("edge.registered", edge=beat.edge, site=beat.site, region=beat.region)
            return
        except IntegrityError:
            edge = await session.get(Edge, beat.edge, with_for_update=True)
            assert edge is not None
    # No "older than the last one" check: `last_heartbeat` is the head's clock, `occurred_at`
    # the edge's, and an edge whose clock runs behind would have every heartbeat after its
    # first ignored, go lost and never come back. Heartbeats expire in the queue, so a late
    # one is at most seconds old; the next one corrects what it says.
    # Read first: the row is locked, and most heartbeats are of an edge already alive.
    if edge.status == EdgeStatus.LOST and await edges.come_back(session, beat.edge):
        log.info("edge.returned", edge=beat.edge)
    _apply(edge, beat)
