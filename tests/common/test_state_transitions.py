"""Each transition of each state machine, on SQLite and PostgreSQL: from every state it
leaves from it happens (and the row is in its target state), from every other state it is
refused and the row is left as it was."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ess_common.db.models import (
    Edge,
    EdgeStatus,
    File,
    FileStatus,
    Notification,
    NotificationStatus,
    Request,
    RequestStatus,
)
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.states import edges, files, notifications, requests
from ess_common.states.transitions import Transition
from tests.common.state_rows import EDGE, make_rows, set_status, work_of

#: A transition done on the rows of `make_rows` (request, file, notification ids): whether
#: it happened.
Move = Callable[[AsyncSession, str, int, int], Awaitable[bool]]


def _done(result: object) -> bool:
    """Whether a transition function's answer says it happened (a row, True, a count or a
    list of what moved)."""
    if isinstance(result, bool | int | list):
        return bool(result)
    if isinstance(result, edges.Disabled):
        return result.disabled
    return result is not None


def _move(call: Callable[[AsyncSession, str, int, int], Awaitable[object]]) -> Move:
    async def move(session: AsyncSession, request_id: str, file_id: int, n_id: int) -> bool:
        return _done(await call(session, request_id, file_id, n_id))

    return move


async def _assign_file(session: AsyncSession, request_id: str, file_id: int, _: int) -> bool:
    f = await session.get(File, file_id)
    assert f is not None
    return await files.assign(session, f, "edge-b")


REQUEST_MOVES: dict[Transition[RequestStatus], Move] = {
    requests.ASSIGN: _move(lambda s, r, f, n: requests.assign(s, [r])),
    requests.MAKE_READY: _move(
        lambda s, r, f, n: requests.ready(s, r, n_files=1, n_ranges=1, detail="1 file")
    ),
    requests.FAIL: _move(lambda s, r, f, n: requests.fail(s, r, "bad file")),
    requests.CANCEL: _move(lambda s, r, f, n: requests.cancel(s, r, "not needed")),
    requests.REOPEN: _move(
        lambda s, r, f, n: requests.reopen(s, r, assigned_before=False, detail="0 files")
    ),
    requests.REOPEN_ASSIGNED: _move(
        lambda s, r, f, n: requests.reopen(s, r, assigned_before=True, detail="1 file")
    ),
}
FILE_MOVES: dict[Transition[FileStatus], Move] = {
    files.ASSIGN: _assign_file,
    files.CACHE: _move(lambda s, r, f, n: files.cache(s, work_of(r, f))),
    files.MAKE_SPLIT: _move(lambda s, r, f, n: files.split(s, work_of(r, f), n_ranges=1, size=1)),
    files.RETRY: _move(lambda s, r, f, n: files.retry(s, work_of(r, f), "passing")),
    files.FAIL: _move(lambda s, r, f, n: files.fail(s, work_of(r, f), "for good")),
    files.TAKE_BACK: _move(lambda s, r, f, n: files.take_back_from_edges(s, [EDGE], "lost")),
    files.GIVE_UP: _move(lambda s, r, f, n: files.give_up(s, r, "stuck")),
    files.CANCEL: _move(lambda s, r, f, n: files.cancel(s, r, "not needed")),
    files.RESET: _move(lambda s, r, f, n: files.reset(s, r)),
    files.LEAVE_ON_DEMAND: _move(lambda s, r, f, n: files.leave_on_demand(s, r)),
}
EDGE_MOVES: dict[Transition[EdgeStatus], Move] = {
    edges.LOSE: _move(lambda s, r, f, n: edges.lose(s, [EDGE])),
    edges.COME_BACK: _move(lambda s, r, f, n: edges.come_back(s, EDGE)),
    edges.DRAIN: _move(lambda s, r, f, n: edges.drain(s, EDGE)),
    edges.DISABLE: _move(lambda s, r, f, n: edges.disable(s, EDGE, "disabled")),
    edges.ENABLE: _move(lambda s, r, f, n: edges.enable(s, EDGE)),
    edges.READMIT: _move(lambda s, r, f, n: edges.readmit(s, EDGE)),
}
NOTIFICATION_MOVES: dict[Transition[NotificationStatus], Move] = {
    notifications.SEND: _move(lambda s, r, f, n: notifications.sent(s, n)),
    notifications.GIVE_UP: _move(lambda s, r, f, n: notifications.give_up(s, n)),
}

CASES: list[tuple[str, Transition[Any], Move, type[StrEnum]]] = [
    *(("requests", t, m, RequestStatus) for t, m in REQUEST_MOVES.items()),
    *(("files", t, m, FileStatus) for t, m in FILE_MOVES.items()),
    *(("edges", t, m, EdgeStatus) for t, m in EDGE_MOVES.items()),
    *(("notifications", t, m, NotificationStatus) for t, m in NOTIFICATION_MOVES.items()),
]


def test_every_transition_is_tested() -> None:
    assert set(REQUEST_MOVES) == set(requests.TRANSITIONS)
    assert set(FILE_MOVES) == set(files.TRANSITIONS)
    assert set(EDGE_MOVES) == set(edges.TRANSITIONS)
    assert set(NOTIFICATION_MOVES) == set(notifications.TRANSITIONS)


def test_tables_name_each_transition_once() -> None:
    for machine in (requests, files, edges, notifications):
        assert len(machine.TABLE) == len(machine.TRANSITIONS)
        for transition in machine.TRANSITIONS:
            assert machine.TABLE[transition.name] == (transition.sources, transition.target)
            assert transition.target not in transition.sources


async def _status(session: AsyncSession, machine: str, key: str | int) -> str:
    model_column = {
        "requests": (Request.status, Request.id),
        "files": (File.status, File.id),
        "edges": (Edge.status, Edge.name),
        "notifications": (Notification.status, Notification.id),
    }
    status, column = model_column[machine]
    found = await session.scalar(select(status).where(column == key))
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("machine", "transition", "move", "states"),
    CASES,
    ids=[f"{machine}-{t.name}" for machine, t, _, _ in CASES],
)
async def test_transition_from_each_state(
    sessions: SessionMaker,
    machine: str,
    transition: Transition[Any],
    move: Move,
    states: type[StrEnum],
) -> None:
    request_id, file_id, notification_id = await make_rows(sessions)
    keys: dict[str, str | int] = {
        "requests": request_id,
        "files": file_id,
        "edges": EDGE,
        "notifications": notification_id,
    }
    key = keys[machine]
    for state in states:
        async with unit_of_work(sessions) as session:
            await set_status(session, machine, key, state)
        async with unit_of_work(sessions) as session:
            happened = await move(session, request_id, file_id, notification_id)
        async with sessions() as session:
            now = await _status(session, machine, key)
        if transition.allows(state):
            assert happened, f"{transition.name} refused from {state}"
            assert now == transition.target
        else:
            assert not happened, f"{transition.name} happened from {state}"
            assert now == state
