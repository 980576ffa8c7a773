"""The head's record of edge results: cached files, split files and their ranges, failures.

Every result names the assignment attempt it belongs to; a result of an older attempt (the
file was moved to another edge meanwhile) changes nothing, so nothing is counted twice.
When the last file of a request is split, `request.ready` goes to the outbox in the same
transaction; each split file is announced as `file.ready` when the request asked for it. A
result for a file of a cancelled request changes nothing: the file is no longer in flight.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import metrics
from ess_common.db.models import File, FileStatus, Range, Request
from ess_common.errors import BadMessage
from ess_common.events import FileCached, FileFailed, FileWork, SplitDone
from ess_common.states import files, requests

log = structlog.get_logger("ess.bookkeeping")


async def _locked_request(session: AsyncSession, work: FileWork) -> Request:
    """The request of a result, locked first (the lock order of `ess_common.states`), after
    checking that the result names a file of it."""
    request = await requests.lock(session, work.request_id)
    if request is None:
        raise BadMessage(f"request {work.request_id} is unknown")
    f = await session.get(File, work.file_id)
    if f is None:
        raise BadMessage(f"file {work.file_id} is unknown")
    if f.request_id != work.request_id:
        raise BadMessage(f"file {work.file_id} is not part of request {work.request_id}")
    return request


async def _not_counted(session: AsyncSession, work: FileWork) -> None:
    """Why a result changed nothing, in the log."""
    f = await session.get(File, work.file_id)
    if f is None:
        return
    if f.attempt != work.attempt or f.edge != work.edge:
        log.info("result.stale", file_id=f.id, attempt=work.attempt, current=f.attempt)
    elif f.status == FileStatus.CANCELLED:
        log.info("result.for_cancelled_request", file_id=f.id)


def check_ranges(event: SplitDone) -> None:
    expected = 1
    for r in sorted(event.ranges, key=lambda r: r.first_event):
        if r.first_event != expected:
            raise BadMessage(f"ranges of file {event.work.file_id} leave a gap at {expected}")
        expected = r.last_event + 1
    if expected != event.work.file.n_events + 1:
        raise BadMessage(
            f"ranges of file {event.work.file_id} end at {expected - 1}, "
            f"the file has {event.work.file.n_events} events"
        )


async def handle_file_cached(session: AsyncSession, event: FileCached) -> None:
    await files.cache(session, event.work)


async def handle_split_done(session: AsyncSession, event: SplitDone) -> None:
    check_ranges(event)
    request = await _locked_request(session, event.work)
    size = sum(r.size for r in event.ranges)
    f = await files.split(session, event.work, n_ranges=len(event.ranges), size=size)
    if f is None:
        await _not_counted(session, event.work)
        return
    session.add_all(
        Range(
            file_id=f.id,
            request_id=f.request_id,
            scope=f.scope,
            lfn=f.lfn,
            first_event=r.first_event,
            last_event=r.last_event,
            object_key=r.key,
            size=r.size,
            adler32=r.adler32,
        )
        for r in event.ranges
    )
    await session.flush()
    log.info("file.split", file_id=f.id, ranges=len(event.ranges), edge=f.edge)
    prepared = metrics.RANGES_PREPARED.labels(edge=event.work.edge)
    metrics.on_commit(session, lambda: prepared.inc(len(event.ranges)))
    await _finish_if_complete(session, request)


async def _finish_if_complete(session: AsyncSession, request: Request) -> None:
    if request.status not in requests.OPEN:
        return
    unfinished = await session.scalar(
        select(func.count())
        .select_from(File)
        .where(File.request_id == request.id, File.status != FileStatus.SPLIT)
    )
    if unfinished:
        return
    n_files, n_ranges = (
        await session.execute(
            select(func.count(func.distinct(Range.file_id)), func.count()).where(
                Range.request_id == request.id
            )
        )
    ).one()
    ready = await requests.ready(
        session,
        request.id,
        n_files=n_files,
        n_ranges=n_ranges,
        detail=f"{n_files} files, {n_ranges} ranges",
    )
    if ready is None or ready.ready_at is None:
        return
    took = (ready.ready_at - ready.created_at).total_seconds()
    metrics.on_commit(session, lambda: metrics.REQUEST_READY_SECONDS.observe(took))
    log.info("request.ready", request_id=request.id, files=n_files, ranges=n_ranges)


async def handle_file_failed(
    session: AsyncSession, event: FileFailed, *, max_file_attempts: int
) -> None:
    request = await _locked_request(session, event.work)
    reason = f"{event.stage} on {event.work.edge}: {event.reason}"
    if event.retryable and event.work.attempt < max_file_attempts:
        # Back to the pool: the next sweep assigns it again, as a new attempt.
        if await files.retry(session, event.work, reason) is None:
            await _not_counted(session, event.work)
            return
        log.warning(
            "file.retry", file_id=event.work.file_id, attempt=event.work.attempt, reason=reason
        )
        metrics.on_commit(session, metrics.FILE_RETRIES.labels(stage=event.stage).inc)
        return
    f = await files.fail(session, event.work, reason)
    if f is None:
        await _not_counted(session, event.work)
        return
    log.error("file.failed", file_id=f.id, reason=reason)
    metrics.on_commit(session, metrics.FILES_FAILED.labels(stage=event.stage).inc)
    await requests.fail(session, request.id, f"{f.scope}:{f.lfn}: {reason}")
