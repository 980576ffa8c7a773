"""Operator routes (admin role only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ess_head_api.auth import Role, require
from ess_head_api.lifecycle import expire
from ess_head_api.schemas import ExpiryAnswer
from ess_head_api.state import HeadState, head_state

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[require(Role.ADMIN)])
State = Annotated[HeadState, Depends(head_state)]


@router.post("/expire", response_model=ExpiryAnswer)
async def expire_now(state: State) -> ExpiryAnswer:
    """Run one expiry round now (it also runs every `expire_interval_s`): delete the requests
    finished more than `request_ttl_s` ago, their range files and their rows."""
    expired = await expire(state.sessions, state.store, state.settings.request_ttl_s)
    return ExpiryAnswer(expired=expired)
