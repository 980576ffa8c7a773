"""Edge registry: heartbeats register an edge and keep it alive."""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge, EdgeStatus, utcnow
from ess_common.events import EdgeHeartbeat

log = structlog.get_logger("ess.edges")


def _apply(edge: Edge, beat: EdgeHeartbeat) -> None:
    edge.site, edge.region, edge.url = beat.site, beat.region, beat.url
    edge.quota_bytes, edge.free_bytes = beat.quota_bytes, beat.free_bytes
    edge.queued, edge.load, edge.version = beat.queued, beat.load, beat.version
    edge.last_heartbeat = utcnow()


async def handle_heartbeat(session: AsyncSession, beat: EdgeHeartbeat) -> None:
    edge = await session.get(Edge, beat.edge, with_for_update=True)
    if edge is None:
        try:
            async with session.begin_nested():
                edge = Edge(name=beat.edge, status=EdgeStatus.ALIVE, registered_at=utcnow())
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
    if edge.status == EdgeStatus.LOST:
        # Back from the dead: it gets new work only; its old files were already moved.
        edge.status = EdgeStatus.ALIVE
        log.info("edge.returned", edge=beat.edge)
    _apply(edge, beat)
