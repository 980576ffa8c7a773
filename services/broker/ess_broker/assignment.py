"""Assigning pending files to edges and taking work back from lost edges.

Only edges whose enrollment stands are given work, each file signed for its edge with the
edge's key (`ess_common.enrollment`): an edge does only work the head signed.

Space is reserved at assignment: the bytes promised to an edge are the sizes of its files
assigned or cached and not yet split, so a split, a failure, a cancellation or a move releases
them with the file's status. The candidate edges' rows are locked (`FOR UPDATE`, in name order
so that two lockers never deadlock) before the promised bytes are summed, so two brokers
assigning at once take turns per edge and never over-commit one. Files are claimed with
their requests (`FOR UPDATE SKIP LOCKED`: a request whose result is being recorded waits for
the next sweep) and moved by the file state machine's compare-and-set on their status and
attempt (`ess_common.states.files`), so no file is ever assigned twice.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_broker.placement import Candidate, Round, replica_places
from ess_common import metrics, tracing
from ess_common.db import enrollments
from ess_common.db.models import Edge, EdgeEnrollment, EdgeStatus, File, Request, utcnow
from ess_common.events import DatasetFile, FileAssigned, FileWork, Replica
from ess_common.messaging.outbox import add_event
from ess_common.states import edges, files, requests

log = structlog.get_logger("ess.broker")


async def _lock_live_edges(session: AsyncSession, lost_after: timedelta) -> list[Edge]:
    if session.get_bind().dialect.name == "sqlite":
        # SQLite has no row locks: a write takes the database's write lock now, before the
        # reads below, which is what the row locks do on PostgreSQL.
        await session.execute(
            update(Edge)
            .where(Edge.name.is_(None))
            .values(queued=Edge.queued)
            .execution_options(synchronize_session=False)
        )
    return list(
        (
            await session.scalars(
                select(Edge)
                .where(
                    Edge.status == EdgeStatus.ALIVE,
                    Edge.last_heartbeat >= utcnow() - lost_after,
                    # Only an edge whose enrollment stands is given anything.
                    Edge.name.in_(
                        select(EdgeEnrollment.edge).where(EdgeEnrollment.revoked_at.is_(None))
                    ),
                )
                .order_by(Edge.name)
                .with_for_update()
                # What was waited for may have changed the row: read it as it is now.
                .execution_options(populate_existing=True)
            )
        ).all()
    )


async def live_candidates(session: AsyncSession, lost_after: timedelta) -> list[Candidate]:
    """The edges that may take work, locked until the transaction ends."""
    edges = await _lock_live_edges(session, lost_after)
    if not edges:
        return []
    promised: dict[str | None, tuple[int, int]] = {
        edge: (int(total), int(count))
        for edge, total, count in (
            await session.execute(
                select(File.edge, func.coalesce(func.sum(File.size), 0), func.count())
                .where(File.status.in_(files.IN_FLIGHT), File.edge.in_([e.name for e in edges]))
                .group_by(File.edge)
            )
        ).all()
    }
    candidates = []
    for e in edges:
        promised_bytes, unfinished = promised.get(e.name, (0, 0))
        candidates.append(
            Candidate(
                name=e.name,
                site=e.site,
                region=e.region,
                # What the edge can free already counts what it holds; what it was promised
                # and has not yet fetched is the part it cannot know about.
                available_bytes=min(e.free_bytes, e.quota_bytes - promised_bytes),
                capacity_bytes=e.quota_bytes,
                queued=max(e.queued, unfinished),
            )
        )
    return candidates


def file_work(request: Request, f: File) -> FileWork:
    assert f.edge is not None
    return FileWork(
        request_id=request.id,
        file_id=f.id,
        attempt=f.attempt,
        edge=f.edge,
        events_per_range=request.events_per_range,
        priority=request.priority,
        dataset=request.dataset,
        file=DatasetFile(
            scope=f.scope,
            lfn=f.lfn,
            guid=f.guid,
            n_events=f.n_events,
            size=f.size,
            adler32=f.adler32,
            sources=list(f.sources),
            replicas=[Replica.model_validate(r) for r in f.replicas or []],
        ),
    )


async def assign_pending(
    session: AsyncSession,
    lost_after: timedelta,
    *,
    request_id: str | None = None,
    limit: int = 500,
    max_queued: int | None = None,
) -> int:
    """Give pending files to live edges; returns how many were assigned."""
    candidates = {c.name: c for c in await live_candidates(session, lost_after)}
    if not candidates:
        return 0
    keys = await enrollments.keys_of(session, list(candidates))
    # An enrollment revoked since the edges were locked: that edge is given nothing.
    candidates = {name: c for name, c in candidates.items() if name in keys}
    rows = await files.claim_pending(session, request_id=request_id, limit=limit)
    # Each file's edge first (each choice changes what the edges have room for), then every
    # chosen file claimed in one statement: a round trip per transaction, not per file.
    chosen: list[tuple[File, Request, Candidate]] = []
    placing = Round(list(candidates.values()), max_queued)
    for f, request in rows:
        sites, regions = replica_places(f.replicas or [])
        edge = placing.take(
            f"{f.scope}:{f.lfn}", f.size, replica_sites=sites, replica_regions=regions
        )
        if edge is not None:
            chosen.append((f, request, edge))
    claimed = await files.assign_many(session, [(f, edge.name) for f, _, edge in chosen])
    taken: dict[str, int] = defaultdict(int)
    assigned = 0
    #: Per request, its trace and how many of its files went to each edge: for the logs.
    per_request: dict[str, tuple[str | None, dict[str, int]]] = {}
    touched: set[str] = set()
    for f, request, edge in chosen:
        if f.id not in claimed:
            continue
        taken[edge.name] += f.size
        trace_id, counts = per_request.setdefault(
            request.id, (tracing.trace_id_of(request.trace_context), defaultdict(int))
        )
        counts[edge.name] += 1
        add_event(
            session,
            FileAssigned(work=file_work(request, f), correlation_id=request.id),
            trace_context=request.trace_context,
            signed_for_edge=keys[edge.name],
        )
        metrics.on_commit(session, metrics.FILES_ASSIGNED.labels(edge=edge.name).inc)
        touched.add(request.id)
        assigned += 1
    await requests.assign(session, touched)
    for assigned_of, (trace_id, counts) in per_request.items():
        # One line per request, with its ids, whatever context the assignment runs in.
        log.info(
            "files.assigned",
            request_id=assigned_of,
            trace_id=trace_id or tracing.current_trace_id(),
            edges=dict(counts),
        )
    if assigned:
        log.info("files.assigned.total", count=assigned, bytes_by_edge=dict(taken))
    return assigned


async def reclaim_lost_edges(session: AsyncSession, lost_after: timedelta) -> list[str]:
    """Mark silent edges lost and put their unfinished files back to pending.

    A silent draining edge stays draining (the operator's word outlives the outage) but its
    unfinished files move all the same. Returns the edges whose work was taken back now.
    """
    silent = (
        await session.scalars(
            select(Edge)
            .where(
                Edge.status.in_((EdgeStatus.ALIVE, EdgeStatus.DRAINING)),
                Edge.last_heartbeat < utcnow() - lost_after,
            )
            .order_by(Edge.name)
            .with_for_update()
        )
    ).all()
    if not silent:
        return []
    names = [e.name for e in silent]
    lost = await edges.lose(session, names)
    held: dict[str | None, int] = dict(
        (
            await session.execute(
                select(File.edge, func.count())
                .where(File.edge.in_(names), File.status.in_(files.IN_FLIGHT))
                .group_by(File.edge)
            )
        ).all()
    )
    moved = await edges.take_back(session, names, "lost") if held else 0
    reclaimed = sorted(set(lost) | {name for name in held if name is not None})
    if reclaimed:
        log.warning("edges.lost", edges=reclaimed, files_moved=moved)
    return reclaimed
