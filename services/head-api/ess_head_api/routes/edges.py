"""The edges the head knows, with their last heartbeat, and what an operator does to them.

Drain: the edge finishes what it has and takes nothing new. Disable: it takes nothing new and
its unfinished files go back to pending at once, to be assigned elsewhere as a new attempt (so
whatever it still reports of them counts for nothing). Enable: a drained or disabled edge takes
work again; a lost one comes back by heartbeating, not by an operator's word.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge
from ess_common.db.session import unit_of_work
from ess_common.errors import NotFound
from ess_common.states import edges
from ess_head_api.auth import READERS, Role, require
from ess_head_api.schemas import EdgeView
from ess_head_api.state import HeadState, head_state
from ess_head_api.views import edge_view

log = structlog.get_logger("ess.head_api.edges")

router = APIRouter(prefix="/v1", tags=["edges"])
State = Annotated[HeadState, Depends(head_state)]


def _lost_after(state: HeadState) -> timedelta:
    return timedelta(seconds=state.settings.edge_lost_after_s)


async def _locked_edge(session: AsyncSession, name: str) -> Edge:
    edge = await session.get(Edge, name, with_for_update=True)
    if edge is None:
        raise NotFound("edge", name)
    return edge


@router.get("/edges", response_model=list[EdgeView], dependencies=[require(*READERS)])
async def list_edges(state: State) -> list[EdgeView]:
    async with state.sessions() as session:
        edges = (await session.scalars(select(Edge).order_by(Edge.name))).all()
        return [edge_view(e, _lost_after(state)) for e in edges]


@router.get("/edges/{name}", response_model=EdgeView, dependencies=[require(*READERS)])
async def get_edge(name: str, state: State) -> EdgeView:
    async with state.sessions() as session:
        edge = await session.get(Edge, name)
        if edge is None:
            raise NotFound("edge", name)
        return edge_view(edge, _lost_after(state))


@router.post("/edges/{name}/drain", response_model=EdgeView, dependencies=[require(Role.ADMIN)])
async def drain_edge(name: str, state: State) -> EdgeView:
    """The edge finishes the files it has and is given no new ones."""
    async with unit_of_work(state.sessions) as session:
        edge = await _locked_edge(session, name)
        if await edges.drain(session, name):
            log.info("edge.draining", edge=name)
        return edge_view(edge, _lost_after(state))


@router.post("/edges/{name}/disable", response_model=EdgeView, dependencies=[require(Role.ADMIN)])
async def disable_edge(name: str, state: State) -> EdgeView:
    """The edge is given nothing, and its unfinished files are moved to other edges now."""
    async with unit_of_work(state.sessions) as session:
        edge = await _locked_edge(session, name)
        moved = (await edges.disable(session, name, "disabled")).files_moved
        log.warning("edge.disabled", edge=name, files_moved=moved)
        return edge_view(edge, _lost_after(state))


@router.post("/edges/{name}/enable", response_model=EdgeView, dependencies=[require(Role.ADMIN)])
async def enable_edge(name: str, state: State) -> EdgeView:
    """A drained or disabled edge takes work again (while it heartbeats)."""
    async with unit_of_work(state.sessions) as session:
        edge = await _locked_edge(session, name)
        if await edges.enable(session, name):
            log.info("edge.enabled", edge=name)
        return edge_view(edge, _lost_after(state))
