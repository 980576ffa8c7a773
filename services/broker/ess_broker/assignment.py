"""Assigning pending files to edges and taking work back from lost edges.

Files are claimed with `FOR UPDATE SKIP LOCKED`, so two brokers never assign the same file;
every state change is a compare-and-set on the status it expects.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_broker.placement import Candidate, choose_edge
from ess_common.db.models import (
    Edge,
    EdgeStatus,
    File,
    FileStatus,
    Request,
    RequestStatus,
    utcnow,
)
from ess_common.events import DatasetFile, FileAssigned, FileWork
from ess_common.messaging.outbox import add_event

log = structlog.get_logger("ess.broker")

#: Files whose bytes an edge holds or is about to hold.
_IN_FLIGHT = (FileStatus.ASSIGNED, FileStatus.CACHED)


async def live_candidates(session: AsyncSession, lost_after: timedelta) -> list[Candidate]:
    edges = (
        await session.scalars(
            select(Edge).where(
                Edge.status == EdgeStatus.ALIVE, Edge.last_heartbeat >= utcnow() - lost_after
            )
        )
    ).all()
    if not edges:
        return []
    promised: dict[str | None, int] = dict(
        (
            await session.execute(
                select(File.edge, func.coalesce(func.sum(File.size), 0))
                .where(File.status.in_(_IN_FLIGHT), File.edge.in_([e.name for e in edges]))
                .group_by(File.edge)
            )
        ).all()
    )
    return [
        Candidate(
            name=e.name,
            site=e.site,
            region=e.region,
            # The heartbeat's free space already counts what the edge holds; what it was
            # promised and has not yet fetched is the part it cannot know about.
            available_bytes=min(e.free_bytes, e.quota_bytes - int(promised.get(e.name, 0))),
            capacity_bytes=e.quota_bytes,
            queued=e.queued,
        )
        for e in edges
    ]


def file_work(request: Request, f: File) -> FileWork:
    assert f.edge is not None
    return FileWork(
        request_id=request.id,
        file_id=f.id,
        attempt=f.attempt,
        edge=f.edge,
        events_per_range=request.events_per_range,
        priority=request.priority,
        file=DatasetFile(
            scope=f.scope,
            lfn=f.lfn,
            guid=f.guid,
            n_events=f.n_events,
            size=f.size,
            adler32=f.adler32,
            sources=list(f.sources),
        ),
    )


async def assign_pending(
    session: AsyncSession, lost_after: timedelta, *, request_id: str | None = None, limit: int = 500
) -> int:
    """Give pending files to live edges; returns how many were assigned."""
    candidates = await live_candidates(session, lost_after)
    if not candidates:
        return 0
    query = (
        select(File, Request)
        .join(Request, Request.id == File.request_id)
        .where(
            File.status == FileStatus.PENDING,
            Request.status.in_((RequestStatus.RECEIVED, RequestStatus.ASSIGNED)),
        )
        .order_by(Request.priority.desc(), File.id)
        .limit(limit)
        .with_for_update(of=File, skip_locked=True)
    )
    if request_id is not None:
        query = query.where(File.request_id == request_id)
    rows = (await session.execute(query)).all()
    taken: dict[str, int] = defaultdict(int)
    assigned = 0
    touched: set[str] = set()
    for f, request in rows:
        pool = [
            Candidate(**{**c.__dict__, "available_bytes": c.available_bytes - taken[c.name]})
            for c in candidates
        ]
        edge = choose_edge(f"{f.scope}:{f.lfn}", f.size, pool)
        if edge is None:
            continue
        # Compare-and-set: SQLite has no SKIP LOCKED, so another assigner (the sweep, a
        # `request.created` handler) may have claimed the file since it was read.
        claimed = await session.execute(
            update(File)
            .where(File.id == f.id, File.status == FileStatus.PENDING, File.attempt == f.attempt)
            .values(status=FileStatus.ASSIGNED, edge=edge.name, attempt=f.attempt + 1, error=None)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue
        await session.refresh(f)
        taken[edge.name] += f.size
        add_event(session, FileAssigned(work=file_work(request, f), correlation_id=request.id))
        touched.add(request.id)
        assigned += 1
    if touched:
        await session.execute(
            update(Request)
            .where(Request.id.in_(touched), Request.status == RequestStatus.RECEIVED)
            .values(status=RequestStatus.ASSIGNED)
        )
    if assigned:
        log.info("files.assigned", count=assigned, edges=dict(taken))
    return assigned


async def reclaim_lost_edges(session: AsyncSession, lost_after: timedelta) -> list[str]:
    """Mark silent edges lost and put their unfinished files back to pending."""
    lost = (
        await session.scalars(
            update(Edge)
            .where(
                Edge.status.in_((EdgeStatus.ALIVE, EdgeStatus.DRAINING)),
                Edge.last_heartbeat < utcnow() - lost_after,
            )
            .values(status=EdgeStatus.LOST)
            .returning(Edge.name)
        )
    ).all()
    if lost:
        moved = await session.execute(
            update(File)
            .where(File.edge.in_(lost), File.status.in_(_IN_FLIGHT))
            .values(status=FileStatus.PENDING, edge=None)
        )
        log.warning("edges.lost", edges=list(lost), files_moved=moved.rowcount)  # type: ignore[attr-defined]
    return list(lost)
