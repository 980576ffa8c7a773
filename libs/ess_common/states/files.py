"""The file state machine: a request's input file, from pending to split.

    pending ─assign─────────────▶ assigned     (given to an edge, as a new attempt)
    assigned ─cache─────────────▶ cached       (the edge holds a verified copy)
    assigned, cached ─split─────▶ split        (every range of it is in the object store)
    assigned, cached ─retry─────▶ pending      (the edge failed it, a passing fault)
    assigned, cached ─fail──────▶ failed       (the edge failed it for good, or too often)
    assigned, cached ─take_back─▶ pending      (its edge lost, disabled, revoked; or its
                                                request stuck and driven again)
    pending, assigned, cached ─give_up─▶ failed      (its request failed stuck)
    pending, assigned, cached ─cancel──▶ cancelled   (its request cancelled)
    failed ─reset───────────────▶ pending      (its request retried by an operator)
    pending ─leave_on_demand────▶ on_demand    (its request prepares nothing ahead)

A result of an edge (cache, split, retry, fail) counts only for the file's current attempt on
that edge (`FileWork.attempt`, `FileWork.edge`): a late result of an older attempt changes
nothing. Every transition locks the file's request first (`requests.lock`): the lock order of
`ess_common.states`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, and_, case, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from ess_common import metrics
from ess_common.db import history
from ess_common.db.models import File, FileStatus, Request, RequestEventKind
from ess_common.events import FileReady, FileWork
from ess_common.messaging.outbox import add_event
from ess_common.states import requests
from ess_common.states.transitions import Transition, table

PENDING, ASSIGNED, CACHED = FileStatus.PENDING, FileStatus.ASSIGNED, FileStatus.CACHED
SPLIT, FAILED, CANCELLED = FileStatus.SPLIT, FileStatus.FAILED, FileStatus.CANCELLED
ON_DEMAND = FileStatus.ON_DEMAND

#: Files whose bytes an edge holds or is about to hold.
IN_FLIGHT = (ASSIGNED, CACHED)
#: Files whose work is not done.
UNFINISHED = (PENDING, ASSIGNED, CACHED)

ASSIGN = Transition("assign", (PENDING,), ASSIGNED)
CACHE = Transition("cache", (ASSIGNED,), CACHED)
MAKE_SPLIT = Transition("split", IN_FLIGHT, SPLIT)
RETRY = Transition("retry", IN_FLIGHT, PENDING)
FAIL = Transition("fail", IN_FLIGHT, FAILED)
TAKE_BACK = Transition("take_back", IN_FLIGHT, PENDING)
GIVE_UP = Transition("give_up", UNFINISHED, FAILED)
CANCEL = Transition("cancel", UNFINISHED, CANCELLED)
RESET = Transition("reset", (FAILED,), PENDING)
LEAVE_ON_DEMAND = Transition("leave_on_demand", (PENDING,), ON_DEMAND)

TRANSITIONS = (
    ASSIGN,
    CACHE,
    MAKE_SPLIT,
    RETRY,
    FAIL,
    TAKE_BACK,
    GIVE_UP,
    CANCEL,
    RESET,
    LEAVE_ON_DEMAND,
)
TABLE = table(TRANSITIONS)


@dataclass(frozen=True)
class Moved:
    """A file taken back from an edge."""

    file_id: int
    request_id: str
    edge: str | None
    attempt: int


def _current(t: Transition[FileStatus], work: FileWork) -> ColumnElement[bool]:
    """The file of `work`, at the attempt and on the edge the result is for, in a state `t`
    leaves from."""
    return and_(
        File.id == work.file_id,
        File.request_id == work.request_id,
        File.attempt == work.attempt,
        File.edge == work.edge,
        File.status.in_(t.sources),
    )


async def _move_current(
    session: AsyncSession, t: Transition[FileStatus], work: FileWork, **values: Any
) -> File | None:
    await requests.lock(session, work.request_id)
    return await session.scalar(
        update(File)
        .where(_current(t, work))
        .values(status=t.target, **values)
        .returning(File)
        .execution_options(populate_existing=True)
    )


async def claim_pending(
    session: AsyncSession, *, request_id: str | None = None, limit: int = 500
) -> list[tuple[File, Request]]:
    """Pending files of open requests, most urgent first, with their requests: both rows
    locked, those another transaction holds skipped (never waited for)."""
    query = (
        select(File, Request)
        .join(Request, Request.id == File.request_id)
        .where(File.status == PENDING, Request.status.in_(requests.OPEN))
        .order_by(Request.priority.desc(), File.id)
        .limit(limit)
        .with_for_update(of=(Request, File), skip_locked=True)
    )
    if request_id is not None:
        query = query.where(File.request_id == request_id)
    return [(f, r) for f, r in (await session.execute(query)).all()]


async def assign(session: AsyncSession, f: File, edge: str) -> bool:
    """pending -> assigned to `edge`, as attempt `f.attempt + 1`; for a file claimed with its
    request (`claim_pending`). False when another assigner took it first (SQLite has no SKIP
    LOCKED)."""
    return f.id in await assign_many(session, [(f, edge)])


async def assign_many(session: AsyncSession, chosen: Sequence[tuple[File, str]]) -> set[int]:
    """`assign` of each file to its edge, in one statement (a round trip per assignment
    round, not per file); returns the ids of the files assigned. Compare-and-set on status and
    attempt: a file another assigner took first is left out."""
    if not chosen:
        return set()
    claimed = set(
        await session.scalars(
            update(File)
            .where(
                tuple_(File.id, File.attempt).in_([(f.id, f.attempt) for f, _ in chosen]),
                File.status.in_(ASSIGN.sources),
            )
            .values(
                status=ASSIGN.target,
                edge=case({f.id: edge for f, edge in chosen}, value=File.id),
                attempt=File.attempt + 1,
                error=None,
            )
            .returning(File.id)
            .execution_options(synchronize_session=False)
        )
    )
    told: list[history.Entry] = []
    for f, edge in chosen:
        if f.id not in claimed:
            continue
        # What the claim wrote, without reading the row back.
        for name, value in (
            ("status", ASSIGN.target),
            ("edge", edge),
            ("attempt", f.attempt + 1),
            ("error", None),
        ):
            set_committed_value(f, name, value)
        told.append(
            history.Entry(
                f.request_id,
                RequestEventKind.ASSIGNED,
                file_id=f.id,
                edge=edge,
                attempt=f.attempt,
                detail=f"{f.scope}:{f.lfn}",
            )
        )
    await history.record_many(session, told)
    return claimed


async def cache(session: AsyncSession, work: FileWork) -> bool:
    """assigned -> cached: the edge of the current attempt holds a verified copy."""
    cached = await _move_current(session, CACHE, work)
    if cached is not None:
        history.record(
            session,
            work.request_id,
            RequestEventKind.CACHED,
            file_id=work.file_id,
            edge=work.edge,
            attempt=work.attempt,
        )
    return cached is not None


@dataclass(frozen=True)
class SplitResult:
    """What an edge reports of a split file: for which attempt, how many ranges, how big."""

    work: FileWork
    n_ranges: int
    size: int


async def split(session: AsyncSession, work: FileWork, *, n_ranges: int, size: int) -> File | None:
    """assigned or cached -> split: told in the history, and by `file.ready` when its request
    asked for it. None when the result is not for the file's current attempt."""
    (f,) = await split_many(session, [SplitResult(work, n_ranges, size)])
    return f


async def split_many(session: AsyncSession, results: Sequence[SplitResult]) -> list[File | None]:
    """`split` of several files in one statement (their requests locked first, in id order);
    for each result, its file, or None when the result is not for the file's current attempt
    (or names a file an earlier result of the same call split)."""
    if not results:
        return []
    await requests.lock_all(session, {r.work.request_id for r in results})
    moved = {
        f.id: f
        for f in await session.scalars(
            update(File)
            .where(or_(*(_current(MAKE_SPLIT, r.work) for r in results)))
            .values(status=MAKE_SPLIT.target)
            .returning(File)
            # The rows returned are the files' state: no need to evaluate the criteria
            # against every file the session holds (a batch's criteria name each of them).
            .execution_options(populate_existing=True, synchronize_session=False)
        )
    }
    split: list[File | None] = []
    told: list[history.Entry] = []
    for r in results:
        f = moved.pop(r.work.file_id, None)
        split.append(f)
        if f is None:
            continue
        told.append(
            history.Entry(
                f.request_id,
                RequestEventKind.SPLIT,
                file_id=f.id,
                edge=f.edge,
                attempt=f.attempt,
                detail=f"{r.n_ranges} ranges, {r.size} bytes",
            )
        )
        request = await session.get(Request, f.request_id)
        if request is not None and request.notify_files:
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
                    n_ranges=r.n_ranges,
                    correlation_id=request.id,
                ),
            )
    await history.record_many(session, told)
    return split


async def retry(session: AsyncSession, work: FileWork, reason: str) -> File | None:
    """assigned or cached -> pending, off its edge: the next sweep assigns it again."""
    return await _failed_on_edge(session, RETRY, work, RequestEventKind.RETRIED, reason, edge=None)


async def fail(session: AsyncSession, work: FileWork, reason: str) -> File | None:
    """assigned or cached -> failed, with the reason."""
    return await _failed_on_edge(session, FAIL, work, RequestEventKind.FILE_FAILED, reason)


async def _failed_on_edge(
    session: AsyncSession,
    t: Transition[FileStatus],
    work: FileWork,
    kind: RequestEventKind,
    reason: str,
    **values: Any,
) -> File | None:
    """A failure the edge of the current attempt reported, with its reason in the history."""
    f = await _move_current(session, t, work, error=reason, **values)
    if f is not None:
        history.record(
            session,
            f.request_id,
            kind,
            file_id=f.id,
            edge=work.edge,
            attempt=f.attempt,
            detail=reason,
        )
    return f


async def _take_back(
    session: AsyncSession, where: ColumnElement[bool], request_ids: Sequence[str], why: str
) -> list[Moved]:
    await requests.lock_all(session, request_ids)
    rows = (
        await session.execute(
            select(File.id, File.request_id, File.edge, File.attempt)
            .where(where, File.request_id.in_(request_ids), File.status.in_(TAKE_BACK.sources))
            .order_by(File.id)
            .with_for_update()
        )
    ).all()
    if not rows:
        return []
    moved = [Moved(*row) for row in rows]
    await session.execute(
        update(File)
        .where(File.id.in_([m.file_id for m in moved]), File.status.in_(TAKE_BACK.sources))
        .values(status=TAKE_BACK.target, edge=None)
        .execution_options(synchronize_session=False)
    )
    await history.record_many(
        session,
        [
            history.Entry(
                m.request_id,
                RequestEventKind.MOVED,
                file_id=m.file_id,
                edge=m.edge,
                attempt=m.attempt,
                detail=f"taken back: {why}",
            )
            for m in moved
        ],
    )
    return moved


async def take_back_from_edges(session: AsyncSession, edges: Sequence[str], why: str) -> int:
    """assigned or cached -> pending, every file of `edges` (lost, disabled, revoked: `why`),
    each noted in its request's history; returns how many. The edges' rows are the caller's
    to lock first."""
    total = 0
    for edge in edges:
        holding = (
            await session.scalars(
                select(File.request_id)
                .where(File.edge == edge, File.status.in_(TAKE_BACK.sources))
                .distinct()
            )
        ).all()
        moved = await _take_back(session, File.edge == edge, holding, f"edge {why}")
        if moved:
            metrics.on_commit(
                session, partial(metrics.FILES_MOVED.labels(edge, why).inc, len(moved))
            )
        total += len(moved)
    return total


async def take_back_of_request(session: AsyncSession, request_id: str, why: str) -> list[Moved]:
    """assigned or cached -> pending, every file of the request (stuck, driven again)."""
    return await _take_back(session, File.request_id == request_id, [request_id], why)


async def _move_all(
    session: AsyncSession, t: Transition[FileStatus], request_id: str, **values: Any
) -> list[int]:
    await requests.lock(session, request_id)
    return list(
        await session.scalars(
            update(File)
            .where(File.request_id == request_id, File.status.in_(t.sources))
            .values(status=t.target, **values)
            .returning(File.id)
            .execution_options(synchronize_session=False)
        )
    )


async def give_up(session: AsyncSession, request_id: str, reason: str) -> list[int]:
    """pending, assigned or cached -> failed: the files of a request failed stuck."""
    return await _move_all(session, GIVE_UP, request_id, error=reason)


async def cancel(session: AsyncSession, request_id: str, reason: str) -> list[int]:
    """pending, assigned or cached -> cancelled: edges' late results change nothing, and the
    space promised to edges is free at once."""
    return await _move_all(session, CANCEL, request_id, error=f"cancelled: {reason}")


async def reset(session: AsyncSession, request_id: str) -> list[int]:
    """failed -> pending, off any edge: an operator's retry (the attempt counter goes on)."""
    return await _move_all(session, RESET, request_id, edge=None)


async def leave_on_demand(session: AsyncSession, request_id: str) -> list[int]:
    """pending -> on_demand: a request that prepares nothing ahead."""
    return await _move_all(session, LEAVE_ON_DEMAND, request_id)
