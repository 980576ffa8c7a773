"""A request's events: its history (`Accept: application/json`), or its progress followed as
Server-Sent Events (`text/event-stream`, the default): `GET /v1/requests/{id}/events`.

The history lists what happened to the request and its files, oldest first (received,
assigned to an edge, cached, split, retried, moved, failed with what, ready, notified, ...),
as the bookkeeping wrote it with each change; `after` (the last `id` seen) gives what came
since.

The stream opens with the request's current status (`event: status`, the same JSON as
`GET /v1/requests/{id}` without the file list), then sends a new `status` frame each time the
request's status, its files' statuses or its number of ranges change, looking every
`events_poll_interval_s`. When the request is ready, failed or cancelled the last frame is
`event: ready`, `event: failed` or `event: cancelled` with the same JSON, and the stream ends;
`event: gone` ends it when the request no longer exists (expired). A comment line keeps idle
connections open through proxies. A stream ends after `events_max_s` at the latest, with a
`retry` hint: EventSource clients reconnect by themselves.

`Last-Event-ID` is ignored: a reconnecting client is sent the current status first, which is
all it needs, since every frame carries the whole state and no change is lost by skipping
intermediate ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi import Request as HttpRequest
from fastapi.responses import Response, StreamingResponse
from pydantic import TypeAdapter
from sqlalchemy import text

from ess_common.db.history import history
from ess_common.db.models import Request, RequestStatus
from ess_common.errors import NotFound
from ess_head_api.auth import READERS, require
from ess_head_api.schemas import RequestEventView
from ess_head_api.state import HeadState, head_state
from ess_head_api.views import request_view

router = APIRouter(prefix="/v1", tags=["requests"])
State = Annotated[HeadState, Depends(head_state)]

#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE_S = 15.0
#: What an EventSource waits before reconnecting after the stream ends early (ms).
RETRY_MS = 3000
_LAST = {
    RequestStatus.READY: "ready",
    RequestStatus.FAILED: "failed",
    RequestStatus.CANCELLED: "cancelled",
}


@dataclass
class StreamCount:
    """Streams open now: a gauge for operators, and how tests see a stream end."""

    open: int = 0


async def stream_count(request: HttpRequest) -> StreamCount:
    count: StreamCount = request.app.state.streams
    return count


def frame(event: str, data: str, frame_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if frame_id is not None:
        lines.append(f"id: {frame_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()


async def _current(state: HeadState, request_id: str) -> tuple[str, str] | None:
    """The request's status and its JSON, or None when it no longer exists."""
    async with state.sessions() as session:
        # One snapshot for the request and its files' counts: a change committed between the
        # reads would be streamed as a state the request was never in.
        if session.get_bind().dialect.name == "postgresql":
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        else:
            # SQLite's driver begins no transaction for reads: each would see its own.
            await session.execute(text("BEGIN"))
        request = await session.get(Request, request_id)
        if request is None:
            return None
        view = await request_view(session, request, with_files=False)
    return view.status, view.model_dump_json(exclude={"files"})


async def follow(
    state: HeadState, http: HttpRequest, request_id: str, streams: StreamCount
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    started = last_sent = loop.time()
    interval = state.settings.events_poll_interval_s
    sent: str | None = None
    frame_id = 0
    streams.open += 1
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            if await http.is_disconnected():
                return
            current = await _current(state, request_id)
            if current is None:
                yield frame("gone", json.dumps({"id": request_id, "detail": "no longer exists"}))
                return
            status, body = current
            if body != sent:
                frame_id += 1
                yield frame("status", body, frame_id)
                sent, last_sent = body, loop.time()
            last = _LAST.get(RequestStatus(status))
            if last is not None:
                frame_id += 1
                yield frame(last, body, frame_id)
                return
            now = loop.time()
            if now - started >= state.settings.events_max_s:
                return
            if now - last_sent >= KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = now
            await asyncio.sleep(interval)
    finally:
        streams.open -= 1


_HISTORY = TypeAdapter(list[RequestEventView])
#: One event of the stream, as OpenAPI 3.1 describes the events of `text/event-stream` (3.2
#: calls it `itemSchema`): its name, its `id`, and its `data`, the JSON of a RequestView without
#: `files` (status, ready, failed, cancelled) or of what is gone.
GONE_SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["id", "detail"],
}
EVENT_SCHEMA = {
    "type": "object",
    "description": "one Server-Sent Event: a `status` frame per change, then `ready`, "
    "`failed`, `cancelled` or `gone`; the stream also sends a `retry` hint and keep-alive "
    "comments",
    "properties": {
        "event": {"enum": ["status", *_LAST.values(), "gone"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "if": {"properties": {"event": {"const": "gone"}}, "required": ["event"]},
    "then": {"properties": {"data": {"contentSchema": GONE_SCHEMA}}},
    "else": {
        "properties": {"data": {"contentSchema": {"$ref": "#/components/schemas/RequestView"}}}
    },
}


def wants_history(accept: str | None) -> bool:
    """The history is asked for by `Accept: application/json` (and not the stream)."""
    asked = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
    return "application/json" in asked and "text/event-stream" not in asked


@router.get(
    "/requests/{request_id}/events",
    dependencies=[require(*READERS)],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "with `Accept: application/json`, the request's history (oldest "
            "first); else a stream of `status` frames ending with `ready`, `failed`, "
            "`cancelled` or `gone`",
            "content": {
                "text/event-stream": {"schema": EVENT_SCHEMA},
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/RequestEventView"},
                    }
                },
            },
        },
        404: {"description": "no request of this id"},
    },
)
async def request_events(
    request_id: str,
    state: Annotated[HeadState, Depends(head_state)],
    http: HttpRequest,
    streams: Annotated[StreamCount, Depends(stream_count)],
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="history: entries after this id")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="history: entries at most")] = 1000,
) -> Response:
    """The request's history, or its progress as Server-Sent Events (see the module's
    description)."""
    async with state.sessions() as session:
        if await session.get(Request, request_id) is None:
            raise NotFound("request", request_id)
        if wants_history(http.headers.get("accept")):
            rows = await history(session, request_id, after=after, limit=limit)
            views = [RequestEventView.model_validate(r, from_attributes=True) for r in rows]
            return Response(_HISTORY.dump_json(views), media_type="application/json")
    return StreamingResponse(
        follow(state, http, request_id, streams),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
