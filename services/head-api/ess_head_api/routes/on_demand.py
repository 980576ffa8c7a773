"""On-demand asks at the head: a range already prepared is answered at once; one nobody
prepared is passed to the closest live edge, which splits just that range (`ess_edge.on_demand`)
and answers; the edge's answer (200, 202 "ask again", or 503 with Retry-After when its capacity
is in use) comes back as it is. A busy or unreachable edge is passed over for the next closest;
when none can take it the answer is 503 at once.

Closest: the pilot's site, region or coordinates as for lookups; then the edges at the file's
replica sites and regions (they read the source nearby); then any live edge. Within a tier the
file picks the edge by rendezvous hashing: identical asks meet at one edge and share its split,
and the ranges of one file go to the edge that keeps what it fetched of the file (its opening,
the beginnings of its baskets), until it is busy and the next one takes them.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import httpx
import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ess_common.db.models import File
from ess_common.db.session import engine_of
from ess_common.errors import Busy
from ess_common.events import MAX_EVENT, JsonInt
from ess_common.ranges import (
    LookupAnswer,
    RangeFailure,
    RangeNotPrepared,
    not_splittable_on_demand,
)
from ess_head_api.auth import LOOKERS, require
from ess_head_api.lookup import EdgeHint, LiveEdge, PilotPlace, answer, edge_hint, live_edges
from ess_head_api.state import HeadState, head_state

log = structlog.get_logger("ess.head_api.on_demand")

router = APIRouter(prefix="/v1", tags=["ranges"], dependencies=[require(*LOOKERS)])
State = Annotated[HeadState, Depends(head_state)]

#: Edges tried, closest first, before the ask is refused.
_TRIES = 3


class OnDemandAsk(PilotPlace):
    """One PanDA event range, and where the pilot runs (optional)."""

    # Types as JSON says them (a body); positions as the lookup states them: the lower bound
    # and 1 <= startEvent <= lastEvent are refused with the lookup's reason and code.
    model_config = ConfigDict(strict=True)

    scope: str = Field(max_length=255)
    lfn: str = Field(alias="LFN", max_length=255)
    start_event: JsonInt = Field(alias="startEvent", le=MAX_EVENT, json_schema_extra={"minimum": 1})
    last_event: JsonInt = Field(alias="lastEvent", le=MAX_EVENT, json_schema_extra={"minimum": 1})


def _rank(key: str, name: str) -> bytes:
    return hashlib.blake2b(f"{key}|{name}".encode(), digest_size=8).digest()


async def candidate_edges(
    connection: AsyncConnection, state: HeadState, ask: OnDemandAsk, hint: EdgeHint | None
) -> list[tuple[str, str]]:
    """`(name, url)` of the live edges that serve pilots, closest first; `hint` is the
    pilot's closest tier (`edge_hint`)."""
    live = await live_edges(connection.engine, state.settings.edge_lost_after_s)
    replicas = await connection.scalar(
        select(File.replicas)
        .where(File.scope == ask.scope, File.lfn == ask.lfn)
        .order_by(File.id.desc())
        .limit(1)
    )
    sites = {r.get("site") for r in replicas or []}
    regions = {r.get("region") for r in replicas or []} - {"", None}
    closest = {name for name, _ in hint.edges} if hint is not None else set()
    file = f"{ask.scope}:{ask.lfn}"

    def order(edge: LiveEdge) -> tuple[int, bytes]:
        tier = (
            0
            if edge.name in closest
            else 1
            if edge.site in sites
            else 2
            if edge.region in regions
            else 3
        )
        return tier, bytes(255 - b for b in _rank(file, edge.name))

    return [(e.name, e.url.rstrip("/")) for e in sorted(live, key=order)]


def _client(request: Request) -> httpx.AsyncClient:
    http: httpx.AsyncClient | None = getattr(request.app.state, "edge_http", None)
    if http is None:
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        request.app.state.edge_http = http
    return http


@router.post(
    "/ranges/on-demand",
    response_model=LookupAnswer,
    responses={
        202: {"description": "the edge is still splitting: ask again (same body)"},
        404: {"description": "no request holds the file: where to read it is not known"},
        503: {"description": "no edge can split it now: see Retry-After"},
    },
)
async def on_demand(
    ask: OnDemandAsk,
    request: Request,
    state: State,
    wait: Annotated[float | None, Query(ge=0, le=120, description="seconds to wait")] = None,
) -> Response | LookupAnswer:
    """As `GET /v1/ranges` when the range is prepared; otherwise the closest live edge splits
    just that range from the file's source and the answer comes within `wait` seconds (the
    edge's default when not given), else 202: ask again with the same body. Past the edges'
    on-demand capacity: 503 with Retry-After, at once."""
    engine = engine_of(state.sessions)
    hint = await edge_hint(engine, state.settings.edge_lost_after_s, ask)
    try:
        return await answer(
            engine,
            state.store,
            state.settings.signed_url_ttl_s,
            ask.scope,
            ask.lfn,
            ask.start_event,
            ask.last_event,
            hint,
        )
    except RangeNotPrepared as exc:
        if exc.code == RangeFailure.UNKNOWN_FILE:
            raise not_splittable_on_demand(
                ask.scope, ask.lfn, ask.start_event, ask.last_event
            ) from None
    async with state.sessions() as session:
        edges = await candidate_edges(await session.connection(), state, ask, hint)
    if not edges:
        raise Busy("no live edge serves pilots: nothing can split on demand now", 30)
    body = {
        "scope": ask.scope,
        "LFN": ask.lfn,
        "startEvent": ask.start_event,
        "lastEvent": ask.last_event,
    }
    params = {} if wait is None else {"wait": wait}
    headers = {}
    if "authorization" in request.headers:
        headers["Authorization"] = request.headers["authorization"]
    timeout = httpx.Timeout(10.0, read=(wait if wait is not None else 120.0) + 10.0)
    refused: list[int] = []
    for name, url in edges[:_TRIES]:
        try:
            response = await _client(request).post(
                f"{url}/v1/ranges/on-demand",
                params=params,
                json=body,
                headers=headers,
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("on_demand.edge_unreachable", edge=name, reason=type(exc).__name__)
            continue
        if response.status_code == 503:
            refused.append(int(response.headers.get("retry-after", "5") or 5))
            continue
        passed = {"X-ESS-Edge": name}
        if "retry-after" in response.headers:
            passed["Retry-After"] = response.headers["retry-after"]
        return Response(
            response.content,
            status_code=response.status_code,
            headers=passed,
            media_type=response.headers.get("content-type", "application/json"),
        )
    if refused:
        return JSONResponse(
            {"detail": f"the on-demand capacity of {len(refused)} close edge(s) is in use"},
            status_code=503,
            headers={"Retry-After": str(min(refused))},
        )
    raise Busy("no close edge could be reached to split on demand", 5)
