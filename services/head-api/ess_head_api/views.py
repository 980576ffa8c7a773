"""Reading requests and edges out of the bookkeeping for the API."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge, EdgeStatus, File, Range, Request, utcnow
from ess_head_api.schemas import EdgeView, FileProgress, RangePage, RangeView, RequestView


async def request_view(session: AsyncSession, request: Request, *, with_files: bool) -> RequestView:
    counts: dict[str, int] = dict(
        (
            await session.execute(
                select(File.status, func.count())
                .where(File.request_id == request.id)
                .group_by(File.status)
            )
        ).all()
    )
    ranges_per_file: dict[int, int] = {
        file_id: n
        for file_id, n in (
            await session.execute(
                select(Range.file_id, func.count())
                .where(Range.request_id == request.id)
                .group_by(Range.file_id)
            )
        ).all()
        if file_id is not None
    }
    files = None
    if with_files:
        rows = (
            await session.scalars(
                select(File).where(File.request_id == request.id).order_by(File.id)
            )
        ).all()
        files = [
            FileProgress(
                id=f.id,
                scope=f.scope,
                lfn=f.lfn,
                status=f.status,
                edge=f.edge,
                attempt=f.attempt,
                n_events=f.n_events,
                ranges=ranges_per_file.get(f.id, 0),
                error=f.error,
            )
            for f in rows
        ]
    return RequestView(
        id=request.id,
        dataset=request.dataset,
        idempotency_key=request.idempotency_key,
        status=request.status,
        events_per_range=request.events_per_range,
        priority=request.priority,
        error=request.error,
        created_at=request.created_at,
        ready_at=request.ready_at,
        files_total=sum(counts.values()),
        files_by_status=counts,
        ranges=sum(ranges_per_file.values()),
        files=files,
    )


async def range_page(
    session: AsyncSession,
    request: Request,
    *,
    after: int | None,
    limit: int,
    file_id: int | None = None,
) -> RangePage:
    """Keyset pagination on the range id: a page costs the same however deep it is."""
    query = select(Range).where(Range.request_id == request.id).order_by(Range.id).limit(limit)
    if after is not None:
        query = query.where(Range.id > after)
    if file_id is not None:
        query = query.where(Range.file_id == file_id)
    rows = (await session.scalars(query)).all()
    return RangePage(
        request_id=request.id,
        ranges=[
            RangeView(
                id=r.id,
                file_id=r.file_id,
                scope=r.scope,
                lfn=r.lfn,
                first_event=r.first_event,
                last_event=r.last_event,
                key=r.object_key,
                size=r.size,
                adler32=r.adler32,
            )
            for r in rows
        ],
        next_after=rows[-1].id if len(rows) == limit else None,
    )


def edge_view(edge: Edge, lost_after: timedelta) -> EdgeView:
    age = (utcnow() - edge.last_heartbeat).total_seconds()
    return EdgeView(
        name=edge.name,
        site=edge.site,
        region=edge.region,
        url=edge.url,
        status=edge.status,
        alive=edge.status == EdgeStatus.ALIVE and age <= lost_after.total_seconds(),
        last_heartbeat=edge.last_heartbeat,
        seconds_since_heartbeat=round(age, 3),
        quota_bytes=edge.quota_bytes,
        free_bytes=edge.free_bytes,
        queued=edge.queued,
        load=edge.load,
        version=edge.version,
        used_bytes=edge.used_bytes,
        on_demand_slots=edge.on_demand_slots,
        on_demand_busy=edge.on_demand_busy,
    )
