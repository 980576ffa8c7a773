"""What the head API tests share: the app on an in-process client, request bodies, and files
prepared through the broker's own bookkeeping (`handle_split_done`), as an edge would leave them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import update

from ess_broker.bookkeeping import handle_split_done
from ess_common import enrollment
from ess_common.checksums import adler32_of_bytes
from ess_common.db import enrollments
from ess_common.db.models import File, FileStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import (
    DatasetFile,
    FileAssigned,
    FileWork,
    RangeInfo,
    RequestSpec,
    SplitDone,
)
from ess_common.messaging.memory import MemoryBus
from ess_common.messaging.outbox import OutboxRelay
from ess_common.settings import HeadSettings
from ess_common.store.base import ObjectStore, range_key
from ess_common.work_guard import WorkGuard
from ess_head_api.app import create_app
from ess_head_api.state import HeadState

SCOPE = "mc15_13TeV"
EDGE = "edge-a"
EDGE_LOST_AFTER_S = 30.0
SIGNED_URL_TTL_S = 600


@dataclass
class Head:
    """The head API app behind an in-process HTTP client, and the bus its outbox relay feeds."""

    client: httpx.AsyncClient
    state: HeadState
    bus: MemoryBus


@asynccontextmanager
async def running_head(
    sessions: SessionMaker, store: ObjectStore, **settings: Any
) -> AsyncIterator[Head]:
    head_settings = HeadSettings.model_validate(
        {
            "edge_lost_after_s": EDGE_LOST_AFTER_S,
            "signed_url_ttl_s": SIGNED_URL_TTL_S,
            "exchange": "ess-head-test",
            **settings,
        }
    )
    bus = MemoryBus(head_settings.exchange)
    await bus.start()
    state = HeadState(head_settings, sessions, store, OutboxRelay(sessions, bus))
    app = create_app(state)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            yield Head(client, state, bus)
    finally:
        await bus.close()


def file_entry(lfn: str, *, n_events: int = 2000, size: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "scope": SCOPE,
        "lfn": lfn,
        "guid": "2FC641BA-0000-0000-0000-000000000000",
        "n_events": n_events,
        "size": size,
        "adler32": "0a1b2c3d",
        "sources": [f"https://storage.example.org/{SCOPE}/{lfn}"],
        **extra,
    }


def request_body(key: str, *lfns: str, events_per_range: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": f"{SCOPE}:mc15.dataset.{key}",
        "idempotency_key": key,
        "events_per_range": events_per_range,
        "priority": 5,
        "files": [file_entry(lfn) for lfn in lfns or ("EVNT.01.pool.root.1",)],
        **extra,
    }


def range_content(lfn: str, first: int, last: int) -> bytes:
    """What the prepared object of a range holds in these tests: recognisable bytes."""
    return f"{lfn} events {first}-{last}\n".encode() * 50


@dataclass(frozen=True)
class Prepared:
    request_id: str
    file_id: int
    ranges: list[RangeInfo]

    def content(self, lfn: str, first: int) -> bytes:
        (r,) = [r for r in self.ranges if r.first_event == first]
        return range_content(lfn, r.first_event, r.last_event)


async def record(sessions: SessionMaker, key: str, lfn: str, n_events: int, epr: int) -> int:
    """Record a request for one file, as the head API's POST does; returns the file's id."""
    spec = RequestSpec.model_validate(
        {
            "dataset": f"{SCOPE}:mc15.dataset.{key}",
            "idempotency_key": key,
            "events_per_range": epr,
            "files": [file_entry(lfn, n_events=n_events)],
        }
    )
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(session, spec)
        await session.flush()
        file_id: int = (
            await session.scalars(
                update(File)
                .where(File.request_id == request.id)
                .values(status=FileStatus.ASSIGNED, edge=EDGE, attempt=1)
                .returning(File.id)
            )
        ).one()
        return file_id


async def prepare(
    sessions: SessionMaker,
    store: ObjectStore,
    workdir: Path,
    *,
    key: str,
    lfn: str,
    n_events: int,
    events_per_range: int,
) -> Prepared:
    """A file requested, split by an edge into ranges uploaded to the store, and the split
    recorded by the broker's bookkeeping."""
    file_id = await record(sessions, key, lfn, n_events, events_per_range)
    async with unit_of_work(sessions) as session:
        f = await session.get(File, file_id)
        assert f is not None
        work = FileWork(
            request_id=f.request_id,
            file_id=f.id,
            attempt=1,
            edge=EDGE,
            file=DatasetFile.model_validate(file_entry(lfn, n_events=n_events)),
            events_per_range=events_per_range,
        )
    ranges = []
    workdir.mkdir(parents=True, exist_ok=True)
    for first in range(1, n_events + 1, events_per_range):
        last = min(first + events_per_range - 1, n_events)
        data = range_content(lfn, first, last)
        object_key = range_key(SCOPE, lfn, events_per_range, file_id, 1, first, last)
        local = workdir / f"{file_id}-{first}.root"
        local.write_bytes(data)
        await store.put_file(object_key, local)
        ranges.append(
            RangeInfo(
                first_event=first,
                last_event=last,
                key=object_key,
                size=len(data),
                adler32=adler32_of_bytes(data),
            )
        )
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, SplitDone(work=work, ranges=ranges))
    async with unit_of_work(sessions) as session:
        f = await session.get(File, file_id)
        assert f is not None and f.status == FileStatus.SPLIT
    return Prepared(work.request_id, file_id, ranges)


@dataclass(frozen=True)
class EdgeAtHead:
    """An enrolled edge whose work a running head knows: what its workers check work with."""

    head: Head
    token: SecretStr
    key: str
    guard: WorkGuard

    def signed(self, event: FileAssigned) -> dict[str, str]:
        """The headers the broker gives the work it assigns to this edge."""
        body = event.model_dump_json().encode()
        signature = enrollment.sign(enrollment.downward_key(self.key), body)
        return {enrollment.HEAD_SIGNATURE_HEADER: signature}


@asynccontextmanager
async def edge_work_at_head(
    sessions: SessionMaker, store: ObjectStore, work: FileWork, *, status: FileStatus
) -> AsyncIterator[tuple[EdgeAtHead, FileWork]]:
    """The head records a request of the work's file, which `work.edge` (enrolled here) has at
    `work.attempt` in `status`; yields the edge's view and the work with the head's ids."""
    spec = RequestSpec.model_validate(
        {
            "dataset": f"{work.file.scope}:edge-work.{work.edge}",
            "idempotency_key": f"edge-work-{work.edge}-{work.file.lfn}",
            "events_per_range": work.events_per_range,
            "files": [work.file.model_dump()],
        }
    )
    async with unit_of_work(sessions) as session:
        token = await enrollments.enroll(session, work.edge)
        request, _ = await record_request(session, spec)
        await session.flush()
        file_id: int = (
            await session.scalars(
                update(File)
                .where(File.request_id == request.id)
                .values(status=status, edge=work.edge, attempt=work.attempt)
                .returning(File.id)
            )
        ).one()
        current = work.model_copy(update={"request_id": request.id, "file_id": file_id})
    async with running_head(sessions, store) as head:
        secret = SecretStr(token)
        guard = WorkGuard(work.edge, secret, "http://testserver", http=head.client)
        yield EdgeAtHead(head, secret, enrollment.key_of(token), guard), current
