"""The edges' enrollments: made, revoked and looked up here only.

Revoking an edge also disables it and takes its unfinished files back, so that nothing waits
on an edge that can no longer report; enrolling it again lets it take work again.
"""

from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import enrollment
from ess_common.db.models import Edge, EdgeEnrollment, utcnow
from ess_common.states import edges

log = structlog.get_logger("ess.enrollments")


async def enroll(session: AsyncSession, edge: str) -> str:
    """Enroll the edge with a new token, which replaces any earlier one; returns the token,
    which is not kept."""
    token = enrollment.new_token(edge)
    row = await session.get(EdgeEnrollment, edge, with_for_update=True)
    was_revoked = row is not None and row.revoked_at is not None
    if row is None:
        session.add(EdgeEnrollment(edge=edge, key=enrollment.key_of(token), enrolled_at=utcnow()))
    else:
        row.key, row.enrolled_at, row.revoked_at = enrollment.key_of(token), utcnow(), None
    known = await session.get(Edge, edge, with_for_update=True)
    if was_revoked and known is not None:
        await edges.readmit(session, edge)
    log.info("edge.enrolled", edge=edge, again=row is not None)
    return token


async def revoke(session: AsyncSession, edge: str) -> bool:
    """End the edge's enrollment; False when it had none standing."""
    row = await session.get(EdgeEnrollment, edge, with_for_update=True)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    known = await session.get(Edge, edge, with_for_update=True)
    moved = 0
    if known is not None:
        moved = (await edges.disable(session, edge, "revoked")).files_moved
    log.warning("edge.revoked", edge=edge, files_moved=moved)
    return True


async def key_of(session: AsyncSession, edge: str) -> str | None:
    """The key of the edge's standing enrollment, or None."""
    row = await session.get(EdgeEnrollment, edge)
    return row.key if row is not None and row.revoked_at is None else None


async def keys_of(session: AsyncSession, edges: list[str]) -> dict[str, str]:
    rows = await session.scalars(
        select(EdgeEnrollment).where(
            EdgeEnrollment.edge.in_(edges), EdgeEnrollment.revoked_at.is_(None)
        )
    )
    return {row.edge: row.key for row in rows}
