"""Taking unfinished files back from an edge (lost, or disabled by an operator): the broker's
sweep and the head's `disable` move them the same way, each move told in its request's
history."""

from __future__ import annotations

from functools import partial

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import metrics
from ess_common.db import history
from ess_common.db.models import File, FileStatus, RequestEventKind

#: Files whose bytes an edge holds or is about to hold.
IN_FLIGHT = (FileStatus.ASSIGNED, FileStatus.CACHED)


async def take_back(session: AsyncSession, edges: list[str], why: str) -> int:
    """Put the unfinished files of `edges` (lost, disabled) back to pending, each noted in its
    request's history; returns how many."""
    total = 0
    for edge in edges:
        moved = (
            await session.execute(
                update(File)
                .where(File.edge == edge, File.status.in_(IN_FLIGHT))
                .values(status=FileStatus.PENDING, edge=None)
                .returning(File.id, File.request_id, File.attempt)
                .execution_options(synchronize_session=False)
            )
        ).all()
        for file_id, request_id, attempt in moved:
            history.record(
                session,
                request_id,
                RequestEventKind.MOVED,
                file_id=file_id,
                edge=edge,
                attempt=attempt,
                detail=f"taken back: edge {why}",
            )
        if moved:
            metrics.on_commit(
                session, partial(metrics.FILES_MOVED.labels(edge, why).inc, len(moved))
            )
        total += len(moved)
    return total
