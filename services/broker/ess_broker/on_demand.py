"""The head's record of ranges split on demand: one row per asked span, belonging to no
request, so that the next lookup of the same events (at the head or at any edge) finds the file
instead of splitting again. Two edges that split the same span record it once; the object key
is the same for both (`on_demand_key`), so the second upload only rewrote identical bytes.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import metrics
from ess_common.db.models import File, Range
from ess_common.errors import BadMessage
from ess_common.events import RangeSplitOnDemand
from ess_common.store.base import on_demand_key

log = structlog.get_logger("ess.on_demand")


async def handle_range_split(session: AsyncSession, event: RangeSplitOnDemand) -> None:
    r = event.range
    expected = on_demand_key(event.scope, event.lfn, r.first_event, r.last_event)
    if r.key != expected:
        raise BadMessage(f"an on-demand range of {event.scope}:{event.lfn} must be at {expected}")
    n_events = await session.scalar(
        select(func.max(File.n_events)).where(File.scope == event.scope, File.lfn == event.lfn)
    )
    if n_events is None:
        raise BadMessage(f"{event.scope}:{event.lfn} is not a file of any request")
    if r.last_event > n_events:
        raise BadMessage(
            f"events {r.first_event}-{r.last_event} are beyond the {n_events} events of "
            f"{event.scope}:{event.lfn}"
        )
    known = await session.scalar(
        select(Range.id).where(
            Range.file_id.is_(None),
            Range.scope == event.scope,
            Range.lfn == event.lfn,
            Range.first_event == r.first_event,
            Range.last_event == r.last_event,
        )
    )
    if known is not None:
        log.info("on_demand.known", range_id=known, edge=event.edge)
        return
    session.add(
        Range(
            file_id=None,
            request_id=None,
            edge=event.edge,
            scope=event.scope,
            lfn=event.lfn,
            first_event=r.first_event,
            last_event=r.last_event,
            object_key=r.key,
            size=r.size,
            adler32=r.adler32,
        )
    )
    await session.flush()
    metrics.on_commit(session, metrics.RANGES_ON_DEMAND_RECORDED.labels(event.edge).inc)
    log.info(
        "on_demand.recorded",
        scope=event.scope,
        lfn=event.lfn,
        first=r.first_event,
        last=r.last_event,
        edge=event.edge,
    )
