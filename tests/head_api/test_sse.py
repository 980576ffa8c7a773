"""Following a request as Server-Sent Events, on SQLite and PostgreSQL, over a real HTTP
connection (the head API served by uvicorn on a free 127.0.0.1 port in the test's loop): the
current status first, a frame per change, the last frame when the request ends, and a client
that goes away ends its stream on the server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import delete, select, update

from ess_broker.bookkeeping import handle_split_done
from ess_common.db.models import File, FileStatus, Request, RequestStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import DatasetFile, FileWork, RangeInfo, RequestSpec, SplitDone
from ess_common.messaging.memory import MemoryBus
from ess_common.messaging.outbox import OutboxRelay
from ess_common.settings import HeadSettings
from ess_common.store.local import LocalStore
from ess_head_api.app import create_app
from ess_head_api.lifecycle import cancel
from ess_head_api.routes.events import StreamCount
from ess_head_api.state import HeadState
from tests.head_api.support import EDGE, file_entry, request_body
from tests.helpers import eventually, free_port

LFNS = ("EVNT.01.pool.root.1", "EVNT.02.pool.root.1")
TOKEN = "pilot-token-0123456789"


@dataclass(frozen=True)
class Frame:
    event: str
    data: dict[str, Any]
    id: str | None


@dataclass
class Served:
    """The head API behind uvicorn, and an in-process client of the same app."""

    app: FastAPI
    client: httpx.AsyncClient
    url: str

    @property
    def streams(self) -> StreamCount:
        count: StreamCount = self.app.state.streams
        return count


@pytest.fixture
async def served(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Served]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    settings = HeadSettings.model_validate(
        {"events_poll_interval_s": 0.05, "tokens": {"pilot": [TOKEN]}}
    )
    bus = MemoryBus(settings.exchange)
    await bus.start()
    app = create_app(HeadState(settings, sessions, store, OutboxRelay(sessions, bus)))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, message="uvicorn started")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            yield Served(app, client, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await bus.close()


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of an event stream; comments and the retry hint are skipped."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if "event" in fields:
                yield Frame(fields["event"], json.loads("\n".join(data)), fields.get("id"))
            fields, data = {}, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(": ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


async def record(sessions: SessionMaker, key: str) -> str:
    """A request of two files, both at an edge, as PanDA's POST and the broker leave it."""
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(
            session, RequestSpec.model_validate(request_body(key, *LFNS))
        )
        await session.execute(
            update(File)
            .where(File.request_id == request.id)
            .values(status=FileStatus.ASSIGNED, edge=EDGE, attempt=1)
        )
        request.status = RequestStatus.ASSIGNED
        return request.id


async def split(sessions: SessionMaker, request_id: str, lfn: str) -> None:
    async with unit_of_work(sessions) as session:
        f = await session.scalar(select(File).where(File.request_id == request_id, File.lfn == lfn))
        assert f is not None
        work = FileWork(
            request_id=request_id,
            file_id=f.id,
            attempt=1,
            edge=EDGE,
            file=DatasetFile.model_validate(file_entry(lfn)),
            events_per_range=1000,
        )
        ranges = [
            RangeInfo(
                first_event=first,
                last_event=first + 999,
                key=f"r/{f.id}/{first}",
                size=1,
                adler32="1",
            )
            for first in (1, 1001)
        ]
        await handle_split_done(session, SplitDone(work=work, ranges=ranges))


def follow(client: httpx.AsyncClient, url: str, request_id: str) -> Any:
    return client.stream(
        "GET",
        f"{url}/v1/requests/{request_id}/events",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"},
    )


async def test_the_stream_follows_the_request_until_it_is_ready(
    served: Served, sessions: SessionMaker
) -> None:
    request_id = await record(sessions, "sse-ready")
    seen: list[Frame] = []
    async with (
        httpx.AsyncClient(timeout=20) as client,
        follow(client, served.url, request_id) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        stream = frames(response)
        seen.append(await anext(stream))
        await split(sessions, request_id, LFNS[0])
        seen.append(await anext(stream))
        await split(sessions, request_id, LFNS[1])
        seen += [frame async for frame in stream]

    assert [f.event for f in seen] == ["status", "status", "status", "ready"]
    first, partial, done, last = (f.data for f in seen)
    assert (first["id"], first["status"], first["ranges"]) == (request_id, "assigned", 0)
    assert first["files_by_status"] == {"assigned": 2}
    assert "files" not in first
    assert (partial["files_by_status"], partial["ranges"]) == ({"assigned": 1, "split": 1}, 2)
    assert (done["status"], done["ranges"], done["files_by_status"]) == ("ready", 4, {"split": 2})
    assert last == done
    assert [f.id for f in seen] == ["1", "2", "3", "4"]
    await eventually(lambda: served.streams.open == 0, message="stream closed on the server")


async def test_a_cancelled_request_ends_its_stream_with_cancelled(
    served: Served, sessions: SessionMaker
) -> None:
    request_id = await record(sessions, "sse-cancel")
    async with (
        httpx.AsyncClient(timeout=20) as client,
        follow(client, served.url, request_id) as response,
    ):
        stream = frames(response)
        assert (await anext(stream)).event == "status"
        async with unit_of_work(sessions) as session:
            await cancel(session, request_id, "not needed")
        rest = [frame async for frame in stream]
    assert [f.event for f in rest] == ["status", "cancelled"]
    assert rest[-1].data["status"] == "cancelled"
    assert rest[-1].data["error"] == "not needed"


async def test_a_request_that_goes_away_ends_its_stream_with_gone(
    served: Served, sessions: SessionMaker
) -> None:
    request_id = await record(sessions, "sse-gone")
    async with (
        httpx.AsyncClient(timeout=20) as client,
        follow(client, served.url, request_id) as response,
    ):
        stream = frames(response)
        assert (await anext(stream)).event == "status"
        async with unit_of_work(sessions) as session:
            await session.execute(delete(File).where(File.request_id == request_id))
            await session.execute(delete(Request).where(Request.id == request_id))
        rest = [frame async for frame in stream]
    assert [(f.event, f.data["id"]) for f in rest] == [("gone", request_id)]


async def test_a_client_that_leaves_ends_its_stream_on_the_server(
    served: Served, sessions: SessionMaker
) -> None:
    request_id = await record(sessions, "sse-leave")
    async with (
        httpx.AsyncClient(timeout=20) as client,
        follow(client, served.url, request_id) as response,
    ):
        assert (await anext(frames(response))).event == "status"
        assert served.streams.open == 1
    # The connection is closed without reading on; the request never ends by itself.
    await eventually(lambda: served.streams.open == 0, message="server noticed the client left")


async def test_a_finished_request_is_one_status_and_its_end(
    served: Served, sessions: SessionMaker
) -> None:
    request_id = await record(sessions, "sse-done")
    await split(sessions, request_id, LFNS[0])
    await split(sessions, request_id, LFNS[1])
    # The in-process client reads the whole stream: it ends by itself.
    response = await served.client.get(
        f"/v1/requests/{request_id}/events", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("event:")]
    assert events == ["event: status", "event: ready"]
    assert response.text.startswith("retry: ")


async def test_an_unknown_request_or_no_token_is_refused_before_streaming(served: Served) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        missing = await client.get(
            f"{served.url}/v1/requests/nope/events", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        anonymous = await client.get(f"{served.url}/v1/requests/nope/events")
    assert (missing.status_code, missing.headers["content-type"]) == (404, "application/json")
    assert anonymous.status_code == 401
