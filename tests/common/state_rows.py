"""Rows for the state machines' tests: a request with one file on `edge-a` at attempt 1, the
edge, a notification; each put in the state a test asks for (written directly: the tests set
the stage, the owners under test move it)."""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import Edge, File, Notification, Request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import DatasetFile, FileWork

EDGE = "edge-a"


async def make_rows(sessions: SessionMaker) -> tuple[str, int, int]:
    """A request, its file (attempt 1 on `EDGE`), the edge and a notification: their ids."""
    request_id = str(uuid.uuid4())
    async with unit_of_work(sessions) as session:
        session.add(
            Request(
                id=request_id,
                idempotency_key=request_id,
                dataset="mc16:mc16.EVNT.1",
                events_per_range=10,
                spec_digest="0" * 64,
            )
        )
        await session.flush()
        f = File(
            request_id=request_id,
            scope="mc16",
            lfn="EVNT.1.pool.root",
            n_events=10,
            size=1000,
            adler32="00000001",
            sources=["https://dm.example.org/1"],
            edge=EDGE,
            attempt=1,
        )
        n = Notification(
            request_id=request_id, event="request.ready", kind="http", target="x", payload={}
        )
        session.add_all([f, n])
        session.add(
            Edge(
                name=EDGE,
                site="CERN-PROD",
                region="europe",
                quota_bytes=10**9,
                free_bytes=10**9,
                version="test",
            )
        )
        await session.flush()
        return request_id, f.id, n.id


async def set_status(session: AsyncSession, machine: str, key: str | int, status: str) -> None:
    """Put the row of `machine` (requests, files, edges, notifications) in `status`; a file
    back at attempt 1 on `EDGE` too."""
    if machine == "requests":
        statement = update(Request).where(Request.id == key).values(status=status)
    elif machine == "files":
        statement = update(File).where(File.id == key).values(status=status, edge=EDGE, attempt=1)
    elif machine == "edges":
        statement = update(Edge).where(Edge.name == key).values(status=status)
    else:
        statement = update(Notification).where(Notification.id == key).values(status=status)
    await session.execute(statement.execution_options(synchronize_session=False))


def work_of(request_id: str, file_id: int) -> FileWork:
    """What the edge's result says of the file: attempt 1 on `EDGE`."""
    return FileWork(
        request_id=request_id,
        file_id=file_id,
        attempt=1,
        edge=EDGE,
        events_per_range=10,
        file=DatasetFile(
            scope="mc16",
            lfn="EVNT.1.pool.root",
            n_events=10,
            size=1000,
            adler32="00000001",
            sources=["https://dm.example.org/1"],
        ),
    )
