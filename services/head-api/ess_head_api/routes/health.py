"""Liveness and readiness; and who a token belongs to, for edges that check pilots' tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ess_common import readiness
from ess_head_api.auth import Role, authenticated
from ess_head_api.state import HeadState, head_state

router = APIRouter(tags=["health"])
State = Annotated[HeadState, Depends(head_state)]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "a dependency does not answer: `failed` names each, why"}},
)
async def readyz(state: State) -> JSONResponse:
    """Whether the database, the bus and the object store answer (`ess_common.readiness`)."""
    failed = await readiness.failures(
        {
            "database": readiness.database_probe(state.sessions),
            "bus": readiness.bus_probe(state.relay.bus),
            "store": readiness.store_probe(state.store),
        }
    )
    if failed:
        return JSONResponse({"status": "unready", "failed": failed}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/v1/whoami", responses={401: {"description": "no bearer token, or an unknown one"}})
async def whoami(role: Annotated[Role, Depends(authenticated)]) -> dict[str, str]:
    """The role of the caller's bearer token (`admin` for everyone when auth is off): an edge
    asks this, with a pilot's own token, before serving the pilot."""
    return {"role": role.value}
