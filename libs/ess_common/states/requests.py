"""The request state machine, and the events its changes announce.

    received ─assign──────────▶ assigned         (a file of it given to an edge)
    received, assigned ─ready─▶ ready            (every file split; or nothing to prepare)
    received, assigned ─fail──▶ failed           (a file failed for good; stuck; refused)
    received, assigned, failed ─cancel─▶ cancelled   (the operator's or PanDA's word)
    failed ─reopen─────────────▶ received        (retried, none of its files ever assigned)
    failed ─reopen_assigned────▶ assigned        (retried)

A request is made `received` (`ess_common.db.requests`); ready, failed and cancelled are
announced by `request.ready`, `request.failed`, `request.cancelled` in the outbox, in the
transaction of the change. `request.stalled` (a drive of a stuck request, no change of state)
is built here too, so that every notice of a request is built in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common import metrics
from ess_common.db import history
from ess_common.db.models import Request, RequestEventKind, RequestStatus, utcnow
from ess_common.events import Event, RequestCancelled, RequestFailed, RequestReady, RequestStalled
from ess_common.messaging.outbox import add_event
from ess_common.states.transitions import Transition, table

RECEIVED, ASSIGNED = RequestStatus.RECEIVED, RequestStatus.ASSIGNED
READY, FAILED, CANCELLED = RequestStatus.READY, RequestStatus.FAILED, RequestStatus.CANCELLED

#: Work is still being done for it.
OPEN = (RECEIVED, ASSIGNED)
#: Nothing more happens to it but a retry (failed) or its expiry.
FINISHED = (READY, FAILED, CANCELLED)

ASSIGN = Transition("assign", (RECEIVED,), ASSIGNED)
MAKE_READY = Transition("ready", OPEN, READY)
FAIL = Transition("fail", OPEN, FAILED)
CANCEL = Transition("cancel", (RECEIVED, ASSIGNED, FAILED), CANCELLED)
REOPEN = Transition("reopen", (FAILED,), RECEIVED)
REOPEN_ASSIGNED = Transition("reopen_assigned", (FAILED,), ASSIGNED)

TRANSITIONS = (ASSIGN, MAKE_READY, FAIL, CANCEL, REOPEN, REOPEN_ASSIGNED)
TABLE = table(TRANSITIONS)


async def lock(session: AsyncSession, request_id: str) -> Request | None:
    """The request, its row locked until the transaction ends (None when unknown): the first
    lock any change of a request or of its files takes, so that the results, cancels and
    retries of one request take turns, and exactly one of them sees its last file."""
    return await session.scalar(
        select(Request)
        .where(Request.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def lock_all(session: AsyncSession, request_ids: Collection[str]) -> None:
    """Lock several requests' rows, in id order (two lockers never wait on each other)."""
    if request_ids:
        await session.execute(
            select(Request.id)
            .where(Request.id.in_(sorted(request_ids)))
            .order_by(Request.id)
            .with_for_update()
        )


async def _move(
    session: AsyncSession, t: Transition[RequestStatus], request_id: str, **values: Any
) -> Request | None:
    return await session.scalar(
        update(Request)
        .where(Request.id == request_id, Request.status.in_(t.sources))
        .values(status=t.target, **values)
        .returning(Request)
        .execution_options(populate_existing=True)
    )


def _identity(request: Request) -> dict[str, Any]:
    return {
        "request_id": request.id,
        "dataset": request.dataset,
        "idempotency_key": request.idempotency_key,
        "correlation_id": request.id,
    }


async def assign(session: AsyncSession, request_ids: Collection[str]) -> list[str]:
    """received -> assigned, for those of `request_ids` still received; returns them."""
    if not request_ids:
        return []
    moved = await session.scalars(
        update(Request)
        .where(Request.id.in_(request_ids), Request.status.in_(ASSIGN.sources))
        .values(status=ASSIGN.target)
        .returning(Request)
        .execution_options(populate_existing=True)
    )
    return [request.id for request in moved]


async def ready(
    session: AsyncSession, request_id: str, *, n_files: int, n_ranges: int, detail: str
) -> Request | None:
    """open -> ready: told in its history and by `request.ready`. None when it was not open."""
    return await _finish(
        session,
        MAKE_READY,
        request_id,
        RequestEventKind.READY,
        detail,
        lambda request: RequestReady(n_files=n_files, n_ranges=n_ranges, **_identity(request)),
        ready_at=utcnow(),
    )


async def fail(session: AsyncSession, request_id: str, reason: str) -> Request | None:
    """open -> failed, with the reason: told in its history and by `request.failed`."""
    return await _finish(
        session,
        FAIL,
        request_id,
        RequestEventKind.FAILED,
        reason,
        lambda request: RequestFailed(reason=reason, **_identity(request)),
        error=reason,
    )


async def cancel(session: AsyncSession, request_id: str, reason: str) -> Request | None:
    """received, assigned or failed -> cancelled: told by `request.cancelled`."""
    return await _finish(
        session,
        CANCEL,
        request_id,
        RequestEventKind.CANCELLED,
        reason,
        lambda request: RequestCancelled(reason=reason, **_identity(request)),
        error=reason,
    )


async def _finish(
    session: AsyncSession,
    t: Transition[RequestStatus],
    request_id: str,
    kind: RequestEventKind,
    detail: str,
    notice: Callable[[Request], Event],
    **values: Any,
) -> Request | None:
    """A move to a finished state, told in the history, counted, and announced by `notice`."""
    request = await _move(session, t, request_id, **values)
    if request is None:
        return None
    history.record(session, request.id, kind, detail=detail)
    metrics.on_commit(session, metrics.REQUESTS_FINISHED.labels(state=t.target.value).inc)
    add_event(session, notice(request))
    return request


async def reopen(
    session: AsyncSession, request_id: str, *, assigned_before: bool, detail: str
) -> Request | None:
    """failed -> assigned (or received, when none of its files was ever assigned), its error
    cleared: an operator's retry, told in its history."""
    request = await _move(
        session, REOPEN_ASSIGNED if assigned_before else REOPEN, request_id, error=None
    )
    if request is not None:
        history.record(session, request.id, RequestEventKind.RETRY_REQUESTED, detail=detail)
    return request


def announce_stalled(
    session: AsyncSession, request: Request, *, reason: str, drive: int, max_drives: int
) -> None:
    """`request.stalled`: an open request's work sent out again (its state does not change)."""
    add_event(
        session,
        RequestStalled(reason=reason, drive=drive, max_drives=max_drives, **_identity(request)),
    )
