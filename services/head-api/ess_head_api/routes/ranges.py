"""Pilot lookups: which prepared file(s) hold a PanDA event range, with signed URLs.

The answers are built once, as the shared models, and sent as their JSON: FastAPI does not
validate them again (`response_model` still documents them in the OpenAPI document).

`GET /v1/ranges` is the hot path of the head. Its route (`LookupRoute`) answers a plain
request (a token of a role that may look up, four well-formed positions and names) without
FastAPI's dependency and parameter machinery, about half the route's CPU; anything else
(no token, a bad one, a value FastAPI would refuse or convert) goes through the route as
declared, which gives the answers and refusals, and the OpenAPI document, as always.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import Field, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from ess_common import ranges as shared
from ess_common.db.session import engine_of, read
from ess_common.errors import EssError
from ess_common.events import MAX_EVENT
from ess_common.ranges import RangeResult, range_result
from ess_head_api.auth import LOOKERS, admits, require
from ess_head_api.lookup import PilotPlace, answer, edge_hint
from ess_head_api.schemas import LookupAnswer
from ess_head_api.state import head_state

router = APIRouter(prefix="/v1", tags=["ranges"], dependencies=[require(*LOOKERS)])
_ANSWER = TypeAdapter(LookupAnswer)
_RESULTS = TypeAdapter(list[RangeResult])


class JSONAnswer(JSONResponse):
    """An answer serialised to JSON already, sent as it is."""

    def render(self, content: Any) -> bytes:
        if not isinstance(content, bytes):
            raise TypeError("a JSONAnswer is made of JSON bytes")
        return content


#: A position as FastAPI takes it without converting anything: plain decimal digits.
_POSITION = re.compile(r"[0-9]{1,10}")
_PLACE_KEYS = tuple(PilotPlace.model_fields)


def _position(value: str | None) -> int | None:
    if value is None or _POSITION.fullmatch(value) is None:
        return None
    number = int(value)
    return number if number <= MAX_EVENT else None


def plain_lookup(request: Request) -> tuple[str, str, int, int, PilotPlace | None] | None:
    """The parameters of a lookup that FastAPI would take as they are, and an admitted caller;
    None for anything else (the route as declared answers it)."""
    if not admits(request, LOOKERS):
        return None
    query = request.query_params
    scope, lfn = query.get("scope"), query.get("LFN")
    start, last = _position(query.get("startEvent")), _position(query.get("lastEvent"))
    if not scope or not lfn or start is None or last is None:
        return None
    place = None
    if any(key in query for key in _PLACE_KEYS):
        try:
            place = PilotPlace.model_validate({k: query[k] for k in _PLACE_KEYS if k in query})
        except ValidationError:
            return None
    return scope, lfn, start, last, place


async def look_up_range(
    request: Request, scope: str, lfn: str, start: int, last: int, place: PilotPlace | None
) -> Response:
    state = await head_state(request)
    settings = state.settings

    async def look_up(connection: AsyncConnection) -> LookupAnswer:
        hint = await edge_hint(connection, settings.edge_lost_after_s, place)
        return await answer(
            connection, state.store, settings.signed_url_ttl_s, scope, lfn, start, last, hint
        )

    found = await read(engine_of(state.sessions), look_up)
    return JSONAnswer(_ANSWER.dump_json(found))


class LookupRoute(APIRoute):
    """A route whose plain requests (`plain_lookup`) skip FastAPI's machinery. The token is
    checked here as `authenticated` and `require(*LOOKERS)` check it; any other dependency
    given to this route would be skipped on that path, so it takes none."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        declared = super().get_route_handler()

        async def handle(request: Request) -> Response:
            asked = plain_lookup(request)
            if asked is None:
                return await declared(request)
            return await look_up_range(request, *asked)

        return handle


async def lookup_range(
    request: Request,
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
) -> Response:
    """`startEvent` and `lastEvent` are 1-based, inclusive positions of events in the original
    file (PanDA's in-file numbering). The answer lists every prepared file holding part of
    the range, the events each holds, and how to number them within that file."""
    return await look_up_range(request, scope, lfn, start_event, last_event, place)


router.add_api_route(
    "/ranges",
    lookup_range,
    methods=["GET"],
    response_model=LookupAnswer,
    response_class=JSONAnswer,
    responses={404: {"description": "the file is unknown, or the range is not prepared (yet)"}},
    route_class_override=LookupRoute,
)


class PandaEventRange(shared.PandaEventRange):
    """An event range exactly as PanDA hands it to a pilot."""

    start_event: int = Field(alias="startEvent", le=MAX_EVENT)
    last_event: int = Field(alias="lastEvent", le=MAX_EVENT)


class BatchLookup(PilotPlace, shared.BatchLookup):
    """PanDA's event ranges, and where the pilot runs (see `GET /v1/ranges`)."""

    event_ranges: list[PandaEventRange] = Field(alias="eventRanges", max_length=10_000)


@router.post("/ranges/lookup", response_model=list[RangeResult], response_class=JSONAnswer)
async def lookup_ranges(body: BatchLookup, request: Request) -> Response:
    """One answer for a batch of PanDA event ranges; a range that cannot be served comes back
    `failed` with the reason and its `code`, never left out."""
    state = await head_state(request)
    settings = state.settings

    async def look_up(connection: AsyncConnection) -> list[RangeResult]:
        hint = await edge_hint(connection, settings.edge_lost_after_s, body)
        results = []
        for r in body.event_ranges:
            try:
                found: LookupAnswer | EssError = await answer(
                    connection,
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
        return results

    results = await read(engine_of(state.sessions), look_up)
    return JSONAnswer(_RESULTS.dump_json(results, by_alias=True))
