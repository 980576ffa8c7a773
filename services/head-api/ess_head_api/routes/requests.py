"""Dataset requests: PanDA creates them; anyone with access reads their progress."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy import select

from ess_common.db.models import DeadLetter, Request, RequestStatus
from ess_common.db.requests import record_request
from ess_common.db.session import unit_of_work
from ess_common.errors import NotFound
from ess_common.events import RequestCreated, RequestSpec
from ess_common.messaging.handlers import flush_quietly
from ess_common.messaging.outbox import add_event
from ess_head_api.schemas import DeadLetterView, RequestView
from ess_head_api.state import HeadState, head_state
from ess_head_api.views import request_view

router = APIRouter(prefix="/v1", tags=["requests"])
State = Annotated[HeadState, Depends(head_state)]


@router.post(
    "/requests",
    response_model=RequestView,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "the same request was already recorded"}, 409: {}},
)
async def create_request(spec: RequestSpec, state: State, response: Response) -> RequestView:
    """Ask ESS to prepare a dataset. A resubmission with the same idempotency key returns the
    request already recorded (200); the same key with other content is refused (409)."""
    async with unit_of_work(state.sessions) as session:
        request, created = await record_request(session, spec)
        if created:
            add_event(session, RequestCreated(**spec.model_dump(), correlation_id=request.id))
        else:
            response.status_code = status.HTTP_200_OK
        view = await request_view(session, request, with_files=False)
    await flush_quietly(state.relay)
    response.headers["Location"] = f"/v1/requests/{request.id}"
    return view


@router.get("/requests", response_model=list[RequestView])
async def list_requests(
    state: State,
    status_: Annotated[RequestStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RequestView]:
    async with state.sessions() as session:
        query = select(Request).order_by(Request.created_at.desc()).limit(limit)
        if status_ is not None:
            query = query.where(Request.status == status_)
        return [
            await request_view(session, r, with_files=False)
            for r in (await session.scalars(query)).all()
        ]


@router.get("/requests/{request_id}", response_model=RequestView)
async def get_request(request_id: str, state: State) -> RequestView:
    """Status with per-file progress: which edge has each file, how far it got, its error."""
    async with state.sessions() as session:
        request = await session.get(Request, request_id)
        if request is None:
            raise NotFound("request", request_id)
        return await request_view(session, request, with_files=True)


@router.get("/dead-letters", response_model=list[DeadLetterView])
async def list_dead_letters(
    state: State,
    request_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterView]:
    """Messages ESS gave up on, newest first, with the reason."""
    async with state.sessions() as session:
        query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
        if request_id is not None:
            query = query.where(DeadLetter.request_id == request_id)
        rows = (await session.scalars(query)).all()
        return [DeadLetterView.model_validate(r, from_attributes=True) for r in rows]


@router.get("/schemas/request-created")
async def request_created_schema() -> dict[str, Any]:
    """JSON Schema of the `request.created` message PanDA publishes."""
    return RequestCreated.model_json_schema()
