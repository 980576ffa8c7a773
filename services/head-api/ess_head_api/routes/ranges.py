"""Pilot lookups: which prepared file(s) hold a PanDA event range, with signed URLs.

The answers are built once, as the shared models, and sent as their JSON: FastAPI does not
validate them again (`response_model` still documents them in the OpenAPI document).

`GET /v1/ranges` is the hot path of the head: its plain requests are answered before routing
(`lookup_shortcut`); this route answers the others, and declares the route for all.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, TypeAdapter

from ess_common import metrics
from ess_common import ranges as shared
from ess_common.db.session import engine_of
from ess_common.errors import EssError
from ess_common.events import MAX_EVENT, JsonInt
from ess_common.ranges import RangeResult, range_result
from ess_head_api.auth import LOOKERS, require
from ess_head_api.lookup import PilotPlace, answer, answer_json, edge_hint
from ess_head_api.schemas import LookupAnswer
from ess_head_api.state import head_state

router = APIRouter(prefix="/v1", tags=["ranges"], dependencies=[require(*LOOKERS)])
_RESULTS = TypeAdapter(list[RangeResult])


class JSONAnswer(JSONResponse):
    """An answer serialised to JSON already, sent as it is."""

    def render(self, content: Any) -> bytes:
        if not isinstance(content, bytes):
            raise TypeError("a JSONAnswer is made of JSON bytes")
        return content


async def lookup_range(
    request: Request,
    scope: str,
    lfn: Annotated[str, Query(alias="LFN")],
    # The lower bound is stated in the document, not checked here: `find_pieces` refuses what
    # breaks the convention (startEvent > lastEvent too, which no schema can say) with a
    # reason and code that name it, as the plain path and the batch route do.
    start_event: Annotated[
        int,
        Query(
            alias="startEvent",
            le=MAX_EVENT,
            json_schema_extra={"minimum": 1},
            description="1-based position in the original file; 1 <= startEvent <= lastEvent",
        ),
    ],
    last_event: Annotated[
        int,
        Query(
            alias="lastEvent",
            le=MAX_EVENT,
            json_schema_extra={"minimum": 1},
            description="1-based, inclusive, in the original file; 1 <= startEvent <= lastEvent "
            "(else 422, code bad_range)",
        ),
    ],
    # Where the pilot runs: each piece then also names the closest live edge (`edge_url`).
    place: Annotated[PilotPlace, Query()],
) -> Response:
    """`startEvent` and `lastEvent` are 1-based, inclusive positions of events in the original
    file (PanDA's in-file numbering). The answer lists every prepared file holding part of
    the range, the events each holds, and how to number them within that file."""
    state = await head_state(request)
    with metrics.lookup("head", "route"):
        body = await answer_json(state, scope, lfn, start_event, last_event, place)
    return JSONAnswer(body)


router.add_api_route(
    "/ranges",
    lookup_range,
    methods=["GET"],
    response_model=LookupAnswer,
    response_class=JSONAnswer,
    responses={404: {"description": "the file is unknown, or the range is not prepared (yet)"}},
)


class PandaEventRange(shared.PandaEventRange):
    """An event range exactly as PanDA hands it to a pilot."""

    model_config = ConfigDict(strict=True)

    # Not bounded below: a range that breaks 1 <= startEvent <= lastEvent comes back failed
    # with its reason and code (bad_range), as every range that cannot be served.
    start_event: JsonInt = Field(
        alias="startEvent",
        le=MAX_EVENT,
        description="1-based; 1 <= startEvent <= lastEvent, else this range fails (bad_range)",
    )
    last_event: JsonInt = Field(alias="lastEvent", le=MAX_EVENT, description="1-based, inclusive")


class BatchLookup(PilotPlace, shared.BatchLookup):
    """PanDA's event ranges, and where the pilot runs (see `GET /v1/ranges`)."""

    # Types as JSON says them (a body, unlike the query of `GET /v1/ranges`).
    model_config = ConfigDict(strict=True)

    event_ranges: list[PandaEventRange] = Field(alias="eventRanges", max_length=10_000)


@router.post("/ranges/lookup", response_model=list[RangeResult], response_class=JSONAnswer)
async def lookup_ranges(body: BatchLookup, request: Request) -> Response:
    """One answer for a batch of PanDA event ranges; a range that cannot be served comes back
    `failed` with the reason and its `code`, never left out."""
    state = await head_state(request)
    settings = state.settings
    engine = engine_of(state.sessions)
    hint = await edge_hint(engine, settings.edge_lost_after_s, body)
    results = []
    for r in body.event_ranges:
        try:
            with metrics.lookup("head", "batch"):
                found: LookupAnswer | EssError = await answer(
                    engine,
                    state.store,
                    settings.signed_url_ttl_s,
                    r.scope,
                    r.lfn,
                    r.start_event,
                    r.last_event,
                    hint,
                )
        except EssError as exc:
            found = exc
        results.append(range_result(r.event_range_id, found))
    return JSONAnswer(_RESULTS.dump_json(results, by_alias=True))
