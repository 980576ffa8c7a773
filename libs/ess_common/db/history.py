"""A request's history: what happened to it and its files, told in the transaction of the change
itself (so that the history never says what did not happen, nor misses what did), for
`GET /v1/requests/{id}/events`, the dashboard and `ess request`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import tracing
from ess_common.db.models import RequestEvent, RequestEventKind, utcnow


def record(
    session: AsyncSession,
    request_id: str,
    kind: RequestEventKind,
    *,
    file_id: int | None = None,
    edge: str | None = None,
    attempt: int | None = None,
    detail: str | None = None,
) -> None:
    session.add(
        RequestEvent(
            request_id=request_id,
            kind=kind,
            file_id=file_id,
            edge=edge,
            attempt=attempt,
            detail=detail[:4000] if detail else None,
            trace_id=tracing.current_trace_id(),
        )
    )


@dataclass(frozen=True)
class Entry:
    """One entry of `record_many`."""

    request_id: str
    kind: RequestEventKind
    file_id: int | None = None
    edge: str | None = None
    attempt: int | None = None
    detail: str | None = None


async def record_many(session: AsyncSession, entries: Sequence[Entry]) -> None:
    """`record` of each entry, in order, in one statement: a round of thousands of files
    writes its history without an ORM object (and its bookkeeping) per entry."""
    if not entries:
        return
    at, trace_id = utcnow(), tracing.current_trace_id()
    await session.execute(
        insert(RequestEvent),
        [
            {
                **asdict(entry),
                "detail": entry.detail[:4000] if entry.detail else None,
                "at": at,
                "trace_id": trace_id,
            }
            for entry in entries
        ],
    )


async def history(
    session: AsyncSession, request_id: str, *, after: int | None = None, limit: int = 1000
) -> list[RequestEvent]:
    """The request's history in the order it happened, `limit` entries after id `after`."""
    query = (
        select(RequestEvent)
        .where(RequestEvent.request_id == request_id)
        .order_by(RequestEvent.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(RequestEvent.id > after)
    return list((await session.scalars(query)).all())
