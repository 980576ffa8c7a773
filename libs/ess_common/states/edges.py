"""The edge state machine: what the head lets an edge do.

    alive ─lose─────────────────────────▶ lost       (no heartbeat for `edge_lost_after_s`)
    lost ─come_back─────────────────────▶ alive      (it heartbeats again)
    alive, lost ─drain──────────────────▶ draining   (operator: finish, take nothing new)
    alive, lost, draining ─disable──────▶ disabled   (operator, or its enrollment revoked)
    draining, disabled ─enable──────────▶ alive      (operator)
    disabled ─readmit───────────────────▶ alive      (enrolled again after a revocation)

An edge is registered `alive` by its first heartbeat. Losing or disabling an edge takes its
unfinished files back (`files.take_back_from_edges`): the one way work leaves an edge, for the
broker's sweep and the head's routes alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge, EdgeStatus
from ess_common.states import files
from ess_common.states.transitions import Transition, table

ALIVE, LOST = EdgeStatus.ALIVE, EdgeStatus.LOST
DRAINING, DISABLED = EdgeStatus.DRAINING, EdgeStatus.DISABLED

LOSE = Transition("lose", (ALIVE,), LOST)
COME_BACK = Transition("come_back", (LOST,), ALIVE)
DRAIN = Transition("drain", (ALIVE, LOST), DRAINING)
DISABLE = Transition("disable", (ALIVE, LOST, DRAINING), DISABLED)
ENABLE = Transition("enable", (DRAINING, DISABLED), ALIVE)
READMIT = Transition("readmit", (DISABLED,), ALIVE)

TRANSITIONS = (LOSE, COME_BACK, DRAIN, DISABLE, ENABLE, READMIT)
TABLE = table(TRANSITIONS)


async def _move(session: AsyncSession, t: Transition[EdgeStatus], name: str) -> Edge | None:
    return await session.scalar(
        update(Edge)
        .where(Edge.name == name, Edge.status.in_(t.sources))
        .values(status=t.target)
        .returning(Edge)
        .execution_options(populate_existing=True)
    )


async def lose(session: AsyncSession, silent: Sequence[str]) -> list[str]:
    """alive -> lost, for those of the `silent` edges that were alive; returns them. Their
    files are taken back by the caller (`take_back`), with those of silent draining edges."""
    if not silent:
        return []
    return sorted(
        await session.scalars(
            update(Edge)
            .where(Edge.name.in_(silent), Edge.status.in_(LOSE.sources))
            .values(status=LOSE.target)
            .returning(Edge.name)
            .execution_options(synchronize_session=False)
        )
    )


async def take_back(session: AsyncSession, names: Sequence[str], why: str) -> int:
    """The unfinished files of edges whose rows the caller locked go back to pending."""
    return await files.take_back_from_edges(session, names, why)


async def come_back(session: AsyncSession, name: str) -> bool:
    """lost -> alive: a lost edge heartbeats again (for new work only)."""
    return await _move(session, COME_BACK, name) is not None


async def drain(session: AsyncSession, name: str) -> bool:
    """alive or lost -> draining."""
    return await _move(session, DRAIN, name) is not None


class Disabled(NamedTuple):
    #: Whether the edge became disabled now (it may have been disabled already).
    disabled: bool
    files_moved: int


async def disable(session: AsyncSession, name: str, why: str) -> Disabled:
    """alive, lost or draining -> disabled, and its unfinished files taken back (even when it
    was disabled already)."""
    disabled = await _move(session, DISABLE, name) is not None
    return Disabled(disabled, await take_back(session, [name], why))


async def enable(session: AsyncSession, name: str) -> bool:
    """draining or disabled -> alive."""
    return await _move(session, ENABLE, name) is not None


async def readmit(session: AsyncSession, name: str) -> bool:
    """disabled -> alive: an edge enrolled again after its enrollment was revoked."""
    return await _move(session, READMIT, name) is not None
