"""Dataset requests: PanDA creates, cancels and retries them; PanDA and pilots read their
progress (per file, per range); operators read the dead letters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response, status
from sqlalchemy import select

from ess_common.db.models import DeadLetter, Request, RequestStatus
from ess_common.db.requests import record_request
from ess_common.db.session import unit_of_work
from ess_common.errors import NotFound, TooLarge
from ess_common.events import RequestCreated, RequestSpec
from ess_common.messaging.handlers import flush_quietly
from ess_common.messaging.outbox import add_event
from ess_common.request_urls import check_request_urls
from ess_common.settings import HeadSettings
from ess_head_api import lifecycle
from ess_head_api.auth import READERS, Role, require
from ess_head_api.schemas import (
    CancelBody,
    DeadLetterView,
    RangePage,
    RequestView,
    RetryAnswer,
)
from ess_head_api.state import HeadState, head_state
from ess_head_api.views import range_page, request_view

router = APIRouter(prefix="/v1", tags=["requests"])
State = Annotated[HeadState, Depends(head_state)]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no request of this id"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "the request's state does not allow this"}
}


async def _get(state: HeadState, request_id: str) -> Request:
    async with state.sessions() as session:
        request = await session.get(Request, request_id)
    if request is None:
        raise NotFound("request", request_id)
    return request


def check_limits(spec: RequestSpec, settings: HeadSettings) -> None:
    """Refuse a request past the configured limits, naming the limit (413)."""
    if len(spec.files) > settings.max_request_files:
        raise TooLarge(
            f"the request lists {len(spec.files)} files, more than ESS_MAX_REQUEST_FILES "
            f"({settings.max_request_files})"
        )
    for f in spec.files:
        replica_sources = max((len(r.sources) for r in f.replicas), default=0)
        for what, count, limit, name in (
            ("sources", len(f.sources), settings.max_file_sources, "ESS_MAX_FILE_SOURCES"),
            ("replicas", len(f.replicas), settings.max_file_replicas, "ESS_MAX_FILE_REPLICAS"),
            (
                "sources in a replica",
                replica_sources,
                settings.max_file_sources,
                "ESS_MAX_FILE_SOURCES",
            ),
        ):
            if count > limit:
                raise TooLarge(
                    f"file {f.scope}:{f.lfn} lists {count} {what}, more than {name} ({limit})"
                )


def check_urls(spec: RequestSpec, settings: HeadSettings) -> None:
    """Refuse sources and a callback the URL policy refuses (`ess_common.request_urls`): 422
    with the reason."""
    check_request_urls(spec, settings)


@router.post(
    "/requests",
    response_model=RequestView,
    status_code=status.HTTP_201_CREATED,
    dependencies=[require(Role.PANDA)],
    responses={
        200: {"description": "the same request was already recorded", "model": RequestView},
        409: {"description": "the idempotency key names a request with other content"},
        413: {"description": "past a configured limit (body, files, sources): named"},
    },
)
async def create_request(spec: RequestSpec, state: State, response: Response) -> RequestView:
    """Ask ESS to prepare a dataset. A resubmission with the same idempotency key returns the
    request already recorded (200); the same key with other content is refused (409). Without
    `files`, the dataset is resolved in Rucio: a dataset Rucio does not know, an empty one or
    one with a file without an event count is recorded failed with the reason (and PanDA told);
    Rucio unreachable is a 503."""
    check_limits(spec, state.settings)
    check_urls(spec, state.settings)
    async with unit_of_work(state.sessions) as session:
        request, created = await record_request(session, spec, catalogue=state.catalogue, via="api")
        if created:
            add_event(session, RequestCreated(**spec.model_dump(), correlation_id=request.id))
        else:
            response.status_code = status.HTTP_200_OK
        view = await request_view(session, request, with_files=False)
    await flush_quietly(state.relay)
    response.headers["Location"] = f"/v1/requests/{request.id}"
    return view


@router.get("/requests", response_model=list[RequestView], dependencies=[require(*READERS)])
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


@router.get(
    "/requests/{request_id}",
    response_model=RequestView,
    dependencies=[require(*READERS)],
    responses=_NOT_FOUND,
)
async def get_request(request_id: str, state: State) -> RequestView:
    """Status with per-file progress: which edge has each file, how far it got, its error."""
    async with state.sessions() as session:
        request = await session.get(Request, request_id)
        if request is None:
            raise NotFound("request", request_id)
        return await request_view(session, request, with_files=True)


@router.get(
    "/requests/{request_id}/ranges",
    response_model=RangePage,
    dependencies=[require(*READERS)],
    responses=_NOT_FOUND,
)
async def list_request_ranges(
    request_id: str,
    state: State,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="`next_after`")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    file_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> RangePage:
    """Per-range progress: every event-range file recorded for the request (or one of its
    files), with its object key, size and adler32, a page at a time."""
    request = await _get(state, request_id)
    async with state.sessions() as session:
        return await range_page(session, request, after=after, limit=limit, file_id=file_id)


@router.post(
    "/requests/{request_id}/cancel",
    response_model=RequestView,
    dependencies=[require(Role.PANDA)],
    responses={**_NOT_FOUND, **_CONFLICT},
)
async def cancel_request(
    request_id: str, state: State, body: Annotated[CancelBody | None, Body()] = None
) -> RequestView:
    """Stop the request: files not yet split are cancelled (edges' results for them are
    ignored, the space promised to edges is freed), PanDA is told (`request.cancelled`).
    Cancelling a cancelled request answers the same; a ready request cannot be cancelled."""
    reason = (body or CancelBody()).reason
    async with unit_of_work(state.sessions) as session:
        request = await lifecycle.cancel(session, request_id, reason)
        view = await request_view(session, request, with_files=True)
    await flush_quietly(state.relay)
    return view


@router.post(
    "/requests/{request_id}/retry",
    response_model=RetryAnswer,
    dependencies=[require(Role.PANDA)],
    responses={**_NOT_FOUND, **_CONFLICT},
)
async def retry_request(request_id: str, state: State) -> RetryAnswer:
    """Try a failed request's failed files again (and only those): they go back to pending
    and are assigned anew; the request is open again."""
    async with unit_of_work(state.sessions) as session:
        request, retried = await lifecycle.retry(session, request_id)
        view = await request_view(session, request, with_files=True)
    return RetryAnswer(files_retried=retried, request=view)


@router.get(
    "/dead-letters", response_model=list[DeadLetterView], dependencies=[require(Role.ADMIN)]
)
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
