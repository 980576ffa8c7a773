"""Liveness and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy import text

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
