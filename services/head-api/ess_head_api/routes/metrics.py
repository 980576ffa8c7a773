"""`GET /metrics`: the head's Prometheus metrics, summed over its worker processes, and the
bookkeeping's gauges (requests, files and edges by state, heartbeat ages, the outbox backlog)
read at each scrape. Open like `/healthz`: keep it inside the site's network."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from ess_common.db.gauges import bookkeeping_gauges
from ess_common.metrics_export import CONTENT_TYPE, render
from ess_head_api.state import HeadState, head_state

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(state: Annotated[HeadState, Depends(head_state)]) -> Response:
    async with state.sessions() as session:
        gauges = await bookkeeping_gauges(session)
    return Response(render(gauges), media_type=CONTENT_TYPE)
