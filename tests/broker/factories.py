"""Building what the broker tests feed it: request specs, heartbeats, an edge's results, and
reading back what the broker wrote to its outbox."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_broker.edges import handle_heartbeat
from ess_common.db import enrollments
from ess_common.db.models import Base, Edge, File, OutboxMessage, utcnow
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import (
    EdgeHeartbeat,
    FileAssigned,
    FileCached,
    FileFailed,
    FileWork,
    RangeInfo,
    RequestSpec,
    SplitDone,
    parse_event,
)

SCOPE = "mc16_13TeV"
GiB = 1024**3


def request_spec(
    key: str,
    *,
    n_files: int = 3,
    n_events: int = 250,
    events_per_range: int = 100,
    size: int = 1000,
    **changes: Any,
) -> RequestSpec:
    """A request of `n_files` files of `n_events` events and `size` bytes each."""
    data: dict[str, Any] = {
        "dataset": f"{SCOPE}:{SCOPE}.EVNT.{key}",
        "idempotency_key": key,
        "events_per_range": events_per_range,
        "files": [
            {
                "scope": SCOPE,
                "lfn": f"EVNT.{key}._{i:06d}.pool.root.1",
                "n_events": n_events,
                "size": size,
                "adler32": f"{i + 1:08x}",
                "sources": [f"https://dm.example.org/{key}/{i}"],
            }
            for i in range(n_files)
        ],
    }
    data.update(changes)
    return RequestSpec.model_validate(data)


def heartbeat(
    edge: str,
    *,
    free_bytes: int = 100 * GiB,
    quota_bytes: int | None = None,
    site: str = "CERN-PROD",
    region: str = "europe",
) -> EdgeHeartbeat:
    return EdgeHeartbeat(
        edge=edge,
        site=site,
        region=region,
        url=f"http://{edge}.example.org:8001",
        quota_bytes=free_bytes if quota_bytes is None else quota_bytes,
        free_bytes=free_bytes,
        queued=0,
        load=0.0,
        version="test",
    )


def ranges_for(work: FileWork, *, first: int = 1, last: int | None = None) -> list[RangeInfo]:
    """The event-range files a splitter makes of `work`, covering events first..last."""
    end = work.file.n_events if last is None else last
    return [
        RangeInfo(
            first_event=start,
            last_event=min(start + work.events_per_range - 1, end),
            key=f"{work.file.scope}/{work.file.lfn}/{start}",
            size=10 + start,
            adler32=f"{start:08x}",
        )
        for start in range(first, end + 1, work.events_per_range)
    ]


def file_cached(work: FileWork) -> FileCached:
    return FileCached(
        work=work, cache_path=f"/cache/{work.file.lfn}", correlation_id=work.request_id
    )


def split_done(work: FileWork, ranges: list[RangeInfo] | None = None) -> SplitDone:
    return SplitDone(
        work=work,
        ranges=ranges_for(work) if ranges is None else ranges,
        correlation_id=work.request_id,
    )


def file_failed(work: FileWork, *, retryable: bool, reason: str = "source gone") -> FileFailed:
    return FileFailed(
        work=work,
        stage="precache",
        reason=reason,
        retryable=retryable,
        correlation_id=work.request_id,
    )


async def outbox(session: AsyncSession, routing_key_prefix: str = "") -> list[OutboxMessage]:
    """The outbox rows whose routing key starts with the prefix, oldest first."""
    return list(
        (
            await session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.routing_key.startswith(routing_key_prefix))
                .order_by(OutboxMessage.id)
            )
        ).all()
    )


async def assigned_work(sessions: SessionMaker) -> list[FileWork]:
    """The work of every `file.assigned` event in the outbox, oldest first."""
    async with sessions() as session:
        rows = await outbox(session, "file.assigned.")
    works = []
    for row in rows:
        event = parse_event(row.body)
        assert isinstance(event, FileAssigned)
        assert row.routing_key == f"file.assigned.{event.work.edge}"
        works.append(event.work)
    return works


async def latest_work(sessions: SessionMaker) -> dict[int, FileWork]:
    """The last assignment of each file, by file id."""
    return {work.file_id: work for work in await assigned_work(sessions)}


async def files(sessions: SessionMaker) -> list[File]:
    async with sessions() as session:
        return list((await session.scalars(select(File).order_by(File.id))).all())


async def count(sessions: SessionMaker, model: type[Base]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def age_heartbeat(session: AsyncSession, edge: str, by: timedelta) -> None:
    """Make the edge's last heartbeat look `by` old, as if the edge had gone silent."""
    await session.execute(
        update(Edge).where(Edge.name == edge).values(last_heartbeat=utcnow() - by)
    )


async def beat_enrolled(session: AsyncSession, beat: EdgeHeartbeat) -> None:
    """The heartbeat handled as the broker does once the edge's signature was checked: the
    edge is enrolled first (only enrolled edges are heard and given work)."""
    if await enrollments.key_of(session, beat.edge) is None:
        await enrollments.enroll(session, beat.edge)
    await handle_heartbeat(session, beat)


async def enroll_edge(sessions: SessionMaker, edge: str) -> SecretStr:
    """Enroll `edge` as the head's admin route does: its token signs what it sends."""
    async with unit_of_work(sessions) as session:
        return SecretStr(await enrollments.enroll(session, edge))
