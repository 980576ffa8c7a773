"""The edges the head knows, with their last heartbeat."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy import select

from ess_common.db.models import Edge
from ess_head_api.schemas import EdgeView
from ess_head_api.state import HeadState, head_state
from ess_head_api.views import edge_view

router = APIRouter(prefix="/v1", tags=["edges"])
State = Annotated[HeadState, Depends(head_state)]


@router.get("/edges", response_model=list[EdgeView])
async def list_edges(state: State) -> list[EdgeView]:
    lost_after = timedelta(seconds=state.settings.edge_lost_after_s)
    async with state.sessions() as session:
        edges = (await session.scalars(select(Edge).order_by(Edge.name))).all()
        return [edge_view(e, lost_after) for e in edges]
