"""A request's life after creation: cancel, retry of its failed files, expiry.

Cancel: a request that is received, assigned or failed becomes cancelled (compare-and-set on
those states); its files not yet split become cancelled, so that edges' late results change
nothing and the space promised to edges is free at once (it is derived from the files in
flight). `request.cancelled` goes to the outbox in the same transaction: the notifier tells
PanDA, edges may drop the work. Cancelling a cancelled request is answered as done; a ready
one cannot be cancelled (409).

Retry: only a failed request, and only its failed files: they go back to pending (the broker's
sweep assigns them as a new attempt; their attempt counter goes on), the request is open
again and its error cleared. The notices of the failure that was retried are kept under
`request.failed@<id>`, so that a new failure is announced again.

Expiry: a request that has been ready, failed or cancelled for longer than
`HeadSettings.request_ttl_s` is deleted: its range files from the object store, then its
rows (ranges, files, notifications, the request), in batches, each batch its own transaction;
then every object under its files' keys (`attempts_prefix`), of attempts whose results never
counted (late, failed or cancelled half way) included.
Deleted, not marked: the data is gone, so a resubmission under the same idempotency key must
make a new request that prepares the dataset again, rather than find an empty one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import String, cast, delete, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import File, Notification, Range, Request, RequestStatus, utcnow
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.errors import Conflict, NotFound
from ess_common.states import files, requests
from ess_common.store.base import ObjectStore, attempts_prefix

log = structlog.get_logger("ess.head_api.lifecycle")

_FAILED = "request.failed"


async def _locked(session: AsyncSession, request_id: str) -> Request:
    # The same lock the bookkeeping takes for a result: a cancel or retry and the result of
    # the request's last file are serialised, so only one of them decides the end.
    request = await requests.lock(session, request_id)
    if request is None:
        raise NotFound("request", request_id)
    return request


async def cancel(session: AsyncSession, request_id: str, reason: str) -> Request:
    request = await _locked(session, request_id)
    if request.status == RequestStatus.CANCELLED:
        return request
    cancelled = await requests.cancel(session, request_id, reason)
    if cancelled is None:
        raise Conflict(f"request {request_id} is {request.status}: it cannot be cancelled")
    await files.cancel(session, request_id, reason)
    log.info("request.cancelled", request_id=request_id, reason=reason)
    return cancelled


async def retry(session: AsyncSession, request_id: str) -> tuple[Request, int]:
    """Returns the request and how many files go back to pending."""
    request = await _locked(session, request_id)
    if request.status != RequestStatus.FAILED:
        raise Conflict(
            f"request {request_id} is {request.status}: only a failed request can be retried"
        )
    has_files = await session.scalar(select(File.id).where(File.request_id == request_id).limit(1))
    if has_files is None:
        raise Conflict(
            f"request {request_id} has no files to retry: its dataset was refused ({request.error})"
            "; ask again under a new idempotency key once the dataset is fixed"
        )
    failed = await files.reset(session, request_id)
    assigned_before = await session.scalar(
        select(func.count())
        .select_from(File)
        .where(File.request_id == request_id, File.attempt > 0)
    )
    reopened = await requests.reopen(
        session, request_id, assigned_before=bool(assigned_before), detail=f"{len(failed)} files"
    )
    if reopened is None:
        raise Conflict(f"request {request_id} changed meanwhile; ask again")
    # The notices of this failure stay on record under another name: a later failure of the
    # retried request is a new event and must be announced again.
    await session.execute(
        update(Notification)
        .where(
            Notification.request_id == request_id,
            Notification.event == _FAILED,
        )
        .values(event=literal(f"{_FAILED}@") + cast(Notification.id, String))
        .execution_options(synchronize_session=False)
    )
    log.info("request.retried", request_id=request_id, files=len(failed))
    return reopened, len(failed)


async def expire(
    sessions: SessionMaker,
    store: ObjectStore,
    ttl_s: float,
    *,
    requests_per_round: int = 20,
    ranges_per_batch: int = 500,
) -> list[str]:
    """Delete the requests finished more than `ttl_s` ago; returns their ids."""
    if ttl_s <= 0:
        return []
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    expired: list[str] = []
    while True:
        async with unit_of_work(sessions) as session:
            # SKIP LOCKED: several head processes may run the expiry at once.
            ids = (
                await session.scalars(
                    select(Request.id)
                    .where(Request.status.in_(requests.FINISHED), Request.updated_at < cutoff)
                    .order_by(Request.updated_at)
                    .limit(requests_per_round)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        if not ids:
            return expired
        for request_id in ids:
            if await _delete_request(sessions, store, request_id, cutoff, ranges_per_batch):
                expired.append(request_id)
        if len(ids) < requests_per_round:
            return expired


async def _still_expired(session: AsyncSession, request_id: str, cutoff: datetime) -> bool:
    # Locked for the batch: a retry (which takes the same lock) either went first and the
    # request is no longer expired, or waits until the batch is done.
    return (
        await session.scalar(
            select(Request.id)
            .where(
                Request.id == request_id,
                Request.status.in_(requests.FINISHED),
                Request.updated_at < cutoff,
            )
            .with_for_update()
        )
    ) is not None


async def _delete_request(
    sessions: SessionMaker, store: ObjectStore, request_id: str, cutoff: datetime, batch: int
) -> bool:
    while True:
        async with unit_of_work(sessions) as session:
            if not await _still_expired(session, request_id, cutoff):
                return False
            rows = (
                await session.execute(
                    select(Range.id, Range.object_key)
                    .where(Range.request_id == request_id)
                    .order_by(Range.id)
                    .limit(batch)
                )
            ).all()
            if not rows:
                break
            # Objects first: a crash between the two leaves rows whose objects are gone,
            # which the next round deletes again; never objects nobody knows of.
            for _, key in rows:
                await store.delete(key)
            await session.execute(
                delete(Range)
                .where(Range.id.in_([range_id for range_id, _ in rows]))
                .execution_options(synchronize_session=False)
            )
    async with sessions() as session:
        held = (
            await session.execute(
                select(File.id, File.scope, File.lfn, Request.events_per_range)
                .join(Request, Request.id == File.request_id)
                .where(File.request_id == request_id)
            )
        ).all()
    # What attempts left that no range row names: an edge's result that came too late, the
    # uploads of an attempt that failed or was cancelled half way.
    for file_id, scope, lfn, events_per_range in held:
        await store.delete_prefix(attempts_prefix(scope, lfn, events_per_range, file_id))
    async with unit_of_work(sessions) as session:
        if not await _still_expired(session, request_id, cutoff):
            return False
        await session.execute(delete(Notification).where(Notification.request_id == request_id))
        # No range outlives its file (ranges hold no foreign key): any row the batches above
        # did not see goes with the files, found through them (`uq_ranges_file_id`). Their
        # objects went with the attempts' prefixes.
        await session.execute(
            delete(Range)
            .where(Range.file_id.in_(select(File.id).where(File.request_id == request_id)))
            .execution_options(synchronize_session=False)
        )
        await session.execute(delete(File).where(File.request_id == request_id))
        await session.execute(delete(Request).where(Request.id == request_id))
    log.info("request.expired", request_id=request_id)
    return True
