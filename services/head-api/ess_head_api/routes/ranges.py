"""Pilot lookups: which prepared file(s) hold a PanDA event range, with signed URLs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from ess_common.errors import EssError
from ess_common.events import MAX_EVENT
from ess_head_api.auth import LOOKERS, require
from ess_head_api.lookup import PilotPlace, answer, edge_hint
from ess_head_api.schemas import LookupAnswer, Piece
from ess_head_api.state import HeadState, head_state

router = APIRouter(prefix="/v1", tags=["ranges"], dependencies=[require(*LOOKERS)])
State = Annotated[HeadState, Depends(head_state)]


@router.get(
    "/ranges",
    response_model=LookupAnswer,
    responses={404: {"description": "the file is unknown, or the range is not prepared (yet)"}},
)
async def lookup_range(
    state: State,
    scope: str,
    lfn: Annotated[str, Query(alias="LFN")],
    # Not bounded here: `find_pieces` refuses what breaks the convention with a reason that
    # names it, for this route and the batch one alike.
    start_event: Annotated[
        int,
        Query(
            alias="startEvent", le=MAX_EVENT, description="1-based position in the original file"
        ),
    ],
    last_event: Annotated[
        int,
        Query(
            alias="lastEvent", le=MAX_EVENT, description="1-based, inclusive, in the original file"
        ),
    ],
    # Where the pilot runs: each piece then also names the closest live edge (`edge_url`).
    place: Annotated[PilotPlace, Query()],
) -> LookupAnswer:
    """`startEvent` and `lastEvent` are 1-based, inclusive positions of events in the original
    file (PanDA's in-file numbering). The answer lists every prepared file holding part of
    the range, the events each holds, and how to number them within that file."""
    async with state.sessions() as session:
        return await answer(
            session,
            state.store,
            state.settings.signed_url_ttl_s,
            scope,
            lfn,
            start_event,
            last_event,
            await edge_hint(session, state.settings.edge_lost_after_s, place),
        )


class PandaEventRange(BaseModel):
    """An event range exactly as PanDA hands it to a pilot."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    event_range_id: str = Field(alias="eventRangeID")
    lfn: str = Field(alias="LFN")
    guid: str = Field(default="", alias="GUID")
    scope: str
    start_event: int = Field(alias="startEvent", le=MAX_EVENT)
    last_event: int = Field(alias="lastEvent", le=MAX_EVENT)


class BatchLookup(PilotPlace):
    event_ranges: list[PandaEventRange] = Field(alias="eventRanges", max_length=10_000)


class RangeResult(BaseModel):
    event_range_id: str = Field(serialization_alias="eventRangeID")
    status: str = Field(description="`ok`, or `failed` with a reason")
    reason: str | None = None
    pieces: list[Piece] = []


@router.post("/ranges/lookup", response_model=list[RangeResult], response_model_by_alias=True)
async def lookup_ranges(body: BatchLookup, state: State) -> list[RangeResult]:
    """One answer for a batch of PanDA event ranges; a range that cannot be served comes back
    `failed` with the reason, never left out."""
    results = []
    async with state.sessions() as session:
        hint = await edge_hint(session, state.settings.edge_lost_after_s, body)
        for r in body.event_ranges:
            try:
                found = await answer(
                    session,
                    state.store,
                    state.settings.signed_url_ttl_s,
                    r.scope,
                    r.lfn,
                    r.start_event,
                    r.last_event,
                    hint,
                )
            except EssError as exc:
                results.append(
                    RangeResult(event_range_id=r.event_range_id, status="failed", reason=str(exc))
                )
                continue
            results.append(
                RangeResult(event_range_id=r.event_range_id, status="ok", pieces=found.pieces)
            )
    return results
