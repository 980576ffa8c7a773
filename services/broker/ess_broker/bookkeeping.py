"""The head's record of edge results: cached files, split files and their ranges, failures.

Every result names the assignment attempt it belongs to; a result of an older attempt (the
file was moved to another edge meanwhile) changes nothing, so nothing is counted twice.
When the last file of a request is split, `request.ready` goes to the outbox in the same
transaction; each split file is announced as `file.ready` when the request asked for it. A
result for a file of a cancelled request changes nothing: the file is no longer in flight.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from ess_broker.range_rows import insert_ranges
from ess_common import metrics
from ess_common.db import history
from ess_common.db.models import (
    File,
    FileStatus,
    Range,
    Request,
    RequestEventKind,
    RequestStatus,
    utcnow,
)
from ess_common.errors import BadMessage
from ess_common.events import (
    FileCached,
    FileFailed,
    FileReady,
    FileWork,
    RequestFailed,
    RequestReady,
    SplitDone,
)
from ess_common.messaging.outbox import add_event

log = structlog.get_logger("ess.bookkeeping")

_OPEN = (RequestStatus.RECEIVED, RequestStatus.ASSIGNED)


async def _current_file(session: AsyncSession, work: FileWork) -> File | None:
    """The file if this result is for its current attempt on this edge, else None (stale)."""
    f = await session.get(File, work.file_id)
    if f is None:
        raise BadMessage(f"file {work.file_id} is unknown")
    if f.request_id != work.request_id:
        raise BadMessage(f"file {work.file_id} is not part of request {work.request_id}")
    if f.attempt != work.attempt or f.edge != work.edge:
        log.info("result.stale", file_id=f.id, attempt=work.attempt, current=f.attempt)
        return None
    return f


async def _lock_request(session: AsyncSession, request_id: str) -> Request:
    # Serialises the results of one request, so that exactly one of them sees the last file.
    request = await session.scalar(
        select(Request).where(Request.id == request_id).with_for_update()
    )
    if request is None:
        raise BadMessage(f"request {request_id} is unknown")
    return request


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
    cached = await session.execute(
        update(File)
        .where(
            File.id == event.work.file_id,
            File.attempt == event.work.attempt,
            File.edge == event.work.edge,
            File.status == FileStatus.ASSIGNED,
        )
        .values(status=FileStatus.CACHED)
    )
    if cached.rowcount == 1:  # type: ignore[attr-defined]
        history.record(
            session,
            event.work.request_id,
            RequestEventKind.CACHED,
            file_id=event.work.file_id,
            edge=event.work.edge,
            attempt=event.work.attempt,
        )


async def handle_split_done(session: AsyncSession, event: SplitDone) -> None:
    await handle_splits_done(session, [event])


async def handle_splits_done(session: AsyncSession, events: Sequence[SplitDone]) -> None:
    """Record split files' results in the session's one transaction: each event as it would
    be alone (a stale or cancelled one changes nothing), with one statement for all their
    ranges, one for their files, and one readiness check per request. Any bad event fails
    them all (the caller then handles each alone, so that only the bad one is refused)."""
    for event in events:
        check_ranges(event)
    # In id order, so that two batches never wait on each other's locks.
    requests = {
        request_id: await _lock_request(session, request_id)
        for request_id in sorted({e.work.request_id for e in events})
    }
    # One read for every file; `_current_file` then finds each in the session (which holds
    # its objects only as long as something else does: `loaded` does).
    ids = sorted({e.work.file_id for e in events})
    loaded = (await session.scalars(select(File).where(File.id.in_(ids)))).all()
    split: list[tuple[File, SplitDone]] = []
    for event in events:
        f = await _current_file(session, event.work)
        if f is None or f.status not in (FileStatus.ASSIGNED, FileStatus.CACHED):
            if f is not None and f.status == FileStatus.CANCELLED:
                log.info("result.for_cancelled_request", file_id=f.id)
            continue
        split.append((f, event))
    if split:
        # One statement for every file, the same the ORM would flush one file at a time.
        await session.execute(
            update(File)
            .where(File.id.in_([f.id for f, _ in split]))
            .values(status=FileStatus.SPLIT)
            .execution_options(synchronize_session=False)
        )
        for f, _ in split:
            set_committed_value(f, "status", FileStatus.SPLIT)
    await insert_ranges(session, [(f, event.ranges) for f, event in split])
    for f, event in split:
        _split_recorded(session, requests[f.request_id], f, event)
    for request in requests.values():
        await _finish_if_complete(session, request)
    del loaded


def _split_recorded(session: AsyncSession, request: Request, f: File, event: SplitDone) -> None:
    log.info("file.split", file_id=f.id, ranges=len(event.ranges), edge=f.edge)
    history.record(
        session,
        request.id,
        RequestEventKind.SPLIT,
        file_id=f.id,
        edge=f.edge,
        attempt=f.attempt,
        detail=f"{len(event.ranges)} ranges, {sum(r.size for r in event.ranges)} bytes",
    )
    prepared = metrics.RANGES_PREPARED.labels(edge=event.work.edge)
    metrics.on_commit(session, lambda: prepared.inc(len(event.ranges)))
    if request.notify_files:
        add_event(
            session,
            FileReady(
                request_id=request.id,
                dataset=request.dataset,
                idempotency_key=request.idempotency_key,
                file_id=f.id,
                scope=f.scope,
                lfn=f.lfn,
                n_events=f.n_events,
                n_ranges=len(event.ranges),
                correlation_id=request.id,
            ),
        )


async def _finish_if_complete(session: AsyncSession, request: Request) -> None:
    if request.status not in _OPEN:
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
    request.status = RequestStatus.READY
    request.ready_at = utcnow()
    history.record(
        session, request.id, RequestEventKind.READY, detail=f"{n_files} files, {n_ranges} ranges"
    )
    took = (request.ready_at - request.created_at).total_seconds()
    metrics.on_commit(session, metrics.REQUESTS_FINISHED.labels(state="ready").inc)
    metrics.on_commit(session, lambda: metrics.REQUEST_READY_SECONDS.observe(took))
    add_event(
        session,
        RequestReady(
            request_id=request.id,
            dataset=request.dataset,
            idempotency_key=request.idempotency_key,
            n_files=n_files,
            n_ranges=n_ranges,
            correlation_id=request.id,
        ),
    )
    log.info("request.ready", request_id=request.id, files=n_files, ranges=n_ranges)


async def handle_file_failed(
    session: AsyncSession, event: FileFailed, *, max_file_attempts: int
) -> None:
    request = await _lock_request(session, event.work.request_id)
    f = await _current_file(session, event.work)
    if f is None or f.status not in (FileStatus.ASSIGNED, FileStatus.CACHED):
        return
    reason = f"{event.stage} on {event.work.edge}: {event.reason}"
    if event.retryable and f.attempt < max_file_attempts:
        # Back to the pool: the next sweep assigns it again, as a new attempt.
        f.status, f.edge, f.error = FileStatus.PENDING, None, reason
        log.warning("file.retry", file_id=f.id, attempt=f.attempt, reason=reason)
        history.record(
            session,
            request.id,
            RequestEventKind.RETRIED,
            file_id=f.id,
            edge=event.work.edge,
            attempt=f.attempt,
            detail=reason,
        )
        metrics.on_commit(session, metrics.FILE_RETRIES.labels(stage=event.stage).inc)
        return
    f.status, f.error = FileStatus.FAILED, reason
    log.error("file.failed", file_id=f.id, reason=reason)
    history.record(
        session,
        request.id,
        RequestEventKind.FILE_FAILED,
        file_id=f.id,
        edge=event.work.edge,
        attempt=f.attempt,
        detail=reason,
    )
    metrics.on_commit(session, metrics.FILES_FAILED.labels(stage=event.stage).inc)
    if request.status in _OPEN:
        request.status = RequestStatus.FAILED
        request.error = f"{f.scope}:{f.lfn}: {reason}"
        history.record(session, request.id, RequestEventKind.FAILED, detail=request.error)
        metrics.on_commit(session, metrics.REQUESTS_FINISHED.labels(state="failed").inc)
        add_event(
            session,
            RequestFailed(
                request_id=request.id,
                dataset=request.dataset,
                idempotency_key=request.idempotency_key,
                reason=request.error,
                correlation_id=request.id,
            ),
        )
