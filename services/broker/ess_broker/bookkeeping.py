"""The head's record of edge results: cached files, split files and their ranges, failures.

Every result names the assignment attempt it belongs to; a result of an older attempt (the
file was moved to another edge meanwhile) changes nothing, so nothing is counted twice.
When the last file of a request is split, `request.ready` goes to the outbox in the same
transaction; each split file is announced as `file.ready` when the request asked for it. A
result for a file of a cancelled request changes nothing: the file is no longer in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import structlog
from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_broker.range_rows import insert_ranges
from ess_common import metrics
from ess_common.db.models import File, FileStatus, Range, Request
from ess_common.errors import BadMessage
from ess_common.events import FileCached, FileFailed, FileWork, SplitDone
from ess_common.states import files, requests

log = structlog.get_logger("ess.bookkeeping")


async def _locked_request(session: AsyncSession, request_id: str) -> Request:
    """The request of a result, its row locked first (the lock order of `ess_common.states`:
    the results of one request take turns, and exactly one of them sees its last file)."""
    request = await requests.lock(session, request_id)
    if request is None:
        raise BadMessage(f"request {request_id} is unknown")
    return request


def _check_file(f: File | None, work: FileWork) -> None:
    """That the result names a known file of its request."""
    if f is None:
        raise BadMessage(f"file {work.file_id} is unknown")
    if f.request_id != work.request_id:
        raise BadMessage(f"file {work.file_id} is not part of request {work.request_id}")


async def _locked_result(session: AsyncSession, work: FileWork) -> Request:
    """The request of a result, locked, after checking that the result names a file of it."""
    request = await _locked_request(session, work.request_id)
    _check_file(await session.get(File, work.file_id), work)
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
    await handle_splits_done(session, [event])


async def handle_splits_done(session: AsyncSession, events: Sequence[SplitDone]) -> None:
    """Record split files' results in the session's one transaction: each event as it would
    be alone (a stale or cancelled one changes nothing), with one statement for their files,
    one for all their ranges, and one readiness check per request. Any bad event fails them
    all (the caller then handles each alone, so that only the bad one is refused)."""
    for event in events:
        check_ranges(event)
    # In id order, so that two batches never wait on each other's locks.
    locked = {
        request_id: await _locked_request(session, request_id)
        for request_id in sorted({e.work.request_id for e in events})
    }
    # One read for every file, kept loaded while the batch is recorded.
    ids = sorted({e.work.file_id for e in events})
    loaded = {f.id: f for f in await session.scalars(select(File).where(File.id.in_(ids)))}
    for event in events:
        _check_file(loaded.get(event.work.file_id), event.work)
    results = [
        files.SplitResult(event.work, len(event.ranges), sum(r.size for r in event.ranges))
        for event in events
    ]
    recorded: list[tuple[File, SplitDone]] = []
    for event, f in zip(events, await files.split_many(session, results), strict=True):
        if f is None:
            await _not_counted(session, event.work)
        else:
            recorded.append((f, event))
    await insert_ranges(session, [(f, event.ranges) for f, event in recorded])
    for f, event in recorded:
        log.info("file.split", file_id=f.id, ranges=len(event.ranges), edge=f.edge)
        prepared = metrics.RANGES_PREPARED.labels(edge=event.work.edge)
        metrics.on_commit(session, partial(prepared.inc, len(event.ranges)))
    for request in locked.values():
        await _finish_if_complete(session, request)


async def _finish_if_complete(session: AsyncSession, request: Request) -> None:
    if request.status not in requests.OPEN:
        return
    # Whether any file is left, not how many: one index probe per status
    # (`ix_files_request_status`), where a count read every file of the request for each
    # result.
    unfinished = await session.scalar(
        select(
            exists().where(
                File.request_id == request.id,
                File.status.in_([s for s in FileStatus if s != FileStatus.SPLIT]),
            )
        )
    )
    if unfinished:
        return
    # Through the request's files: ranges have no index by request.
    n_files, n_ranges = (
        await session.execute(
            select(func.count(func.distinct(Range.file_id)), func.count())
            .select_from(Range)
            .join(File, File.id == Range.file_id)
            .where(File.request_id == request.id)
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
    request = await _locked_result(session, event.work)
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
