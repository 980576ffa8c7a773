"""Liveness and readiness; and who a token belongs to, for edges that check pilots' tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy import text

from ess_head_api.auth import Role, authenticated
from ess_head_api.state import HeadState, head_state

router = APIRouter(tags=["health"])
State = Annotated[HeadState, Depends(head_state)]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> dict[str, str]:
    async with state.sessions() as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ready"}


@router.get("/v1/whoami", responses={401: {"description": "no bearer token, or an unknown one"}})
async def whoami(role: Annotated[Role, Depends(authenticated)]) -> dict[str, str]:
    """The role of the caller's bearer token (`admin` for everyone when auth is off): an edge
    asks this, with a pilot's own token, before serving the pilot."""
    return {"role": role.value}
