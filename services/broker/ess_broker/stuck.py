"""Stuck requests: an open request whose files made no progress for `stuck_after_s` (a result
dead-lettered or lost, an edge that vanished, no edge to take the work) is driven again or
failed, never left waiting.

Progress is the latest change of the request, of any of its files, or of its history. A drive
takes its unfinished files back to pending (the sweep then assigns them as new attempts) and
is told in the request's history (`driven`) and to PanDA (`request.stalled`, with the drive's
number); after `stuck_max_drives` drives since the request
was received or last retried by an operator, a stuck request fails with the reason: its
unfinished files fail, `request.failed` goes to the outbox (the notifier tells PanDA and the
callback), and `POST /v1/requests/{id}/retry` may send it out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db import history
from ess_common.db.models import File, Request, RequestEvent, RequestEventKind, utcnow
from ess_common.states import files, requests

log = structlog.get_logger("ess.broker.stuck")


@dataclass(frozen=True)
class StuckSweep:
    """What one sweep did: requests driven again, and failed."""

    driven: int = 0
    failed: int = 0


async def _last_progress(session: AsyncSession, request: Request) -> datetime:
    of_files = await session.scalar(
        select(func.max(File.updated_at)).where(File.request_id == request.id)
    )
    told = await session.scalar(
        select(func.max(RequestEvent.at)).where(RequestEvent.request_id == request.id)
    )
    # SQLite gives its times back without their zone: all are UTC.
    return max(
        t if t.tzinfo is not None else t.replace(tzinfo=UTC)
        for t in (request.updated_at, of_files, told)
        if t is not None
    )


async def _drives_since_retry(session: AsyncSession, request_id: str) -> int:
    retried = await session.scalar(
        select(func.max(RequestEvent.id)).where(
            RequestEvent.request_id == request_id,
            RequestEvent.kind == RequestEventKind.RETRY_REQUESTED,
        )
    )
    return int(
        await session.scalar(
            select(func.count()).where(
                RequestEvent.request_id == request_id,
                RequestEvent.kind == RequestEventKind.DRIVEN,
                RequestEvent.id > (retried or 0),
            )
        )
        or 0
    )


async def _drive(session: AsyncSession, request: Request, why: str, drive: int, of: int) -> None:
    moved = await files.take_back_of_request(session, request.id, why)
    detail = f"{why}: drive {drive} of {of}, {len(moved)} files sent out again"
    history.record(session, request.id, RequestEventKind.DRIVEN, detail=detail)
    requests.announce_stalled(session, request, reason=why, drive=drive, max_drives=of)
    log.warning("request.driven", request_id=request.id, drive=drive, files=len(moved), why=why)


async def _fail(session: AsyncSession, request: Request, why: str) -> None:
    reason = f"stuck: {why}"
    failed = await files.give_up(session, request.id, reason)
    await requests.fail(session, request.id, reason)
    log.error("request.stuck_failed", request_id=request.id, files=len(failed), reason=reason)


async def sweep_stuck(
    session: AsyncSession, stuck_after: timedelta, max_drives: int, *, batch: int = 100
) -> StuckSweep:
    """Drive again, or fail, the open requests that made no progress for `stuck_after`."""
    now = utcnow()
    cutoff = now - stuck_after
    candidates = (
        await session.scalars(
            select(Request)
            .where(Request.status.in_(requests.OPEN), Request.updated_at < cutoff)
            .order_by(Request.updated_at)
            .limit(batch)
            # Another broker's sweep takes the others; a result being recorded keeps its own.
            .with_for_update(skip_locked=True)
        )
    ).all()
    driven = failed = 0
    for request in candidates:
        last = await _last_progress(session, request)
        if last >= cutoff:
            continue
        idle = int((now - last).total_seconds())
        drives = await _drives_since_retry(session, request.id)
        if drives >= max_drives:
            why = f"no progress for {idle} s after {drives} drives"
            await _fail(session, request, why)
            failed += 1
        else:
            await _drive(session, request, f"no progress for {idle} s", drives + 1, max_drives)
            driven += 1
    if driven or failed:
        log.info("stuck.swept", driven=driven, failed=failed)
    return StuckSweep(driven, failed)
