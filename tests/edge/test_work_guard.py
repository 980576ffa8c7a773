"""An edge works only for assignments the head signed for it and that still stand: forged or
unsigned work, and work of a file the head does not know, is refused before any download;
work of an assignment that moved on (the edge was lost, its files went elsewhere) is dropped."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from ess_broker.assignment import assign_pending
from ess_broker.edges import handle_heartbeat
from ess_common import enrollment
from ess_common.db import enrollments
from ess_common.db.models import Edge, EdgeStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.edge_work import work_handler
from ess_common.errors import BadMessage, Forbidden, HeadUnavailable
from ess_common.events import FileAssigned, FileCached, parse_event
from ess_common.messaging.bus import Delivery, edge_signature
from ess_common.messaging.memory import MemoryBus
from ess_common.outages import is_outage
from ess_common.states.files import take_back_from_edges
from ess_common.store.local import LocalStore
from ess_common.work_guard import WorkGuard
from tests.broker.factories import heartbeat, outbox, request_spec
from tests.head_api.support import running_head
from tests.helpers import free_port

LOST_AFTER = timedelta(seconds=60)
ADMIN = "admin-token-of-the-guard-tests"


async def enroll(sessions: SessionMaker, edge: str) -> SecretStr:
    async with unit_of_work(sessions) as session:
        token = SecretStr(await enrollments.enroll(session, edge))
        await handle_heartbeat(session, heartbeat(edge))
    return token


async def assigned(sessions: SessionMaker) -> list[Delivery]:
    """Every `file.assigned` the broker wrote, as an edge receives it, oldest first."""
    async with sessions() as session:
        rows = await outbox(session, "file.assigned.")
    return [Delivery("q", r.routing_key, r.body.encode(), dict(r.headers or {})) for r in rows]


def work_of(delivery: Delivery) -> FileAssigned:
    event = parse_event(delivery.body)
    assert isinstance(event, FileAssigned)
    return event


async def test_only_signed_current_assignments_are_worked(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store, tokens={"admin": [ADMIN]}) as head:
        token = await enroll(sessions, "edge-a")
        async with unit_of_work(sessions) as session:
            await record_request(session, request_spec("guarded", n_files=2))
            assert await assign_pending(session, LOST_AFTER) == 2
        first, second = await assigned(sessions)
        # The head's client carries no token: the guard's own (the edge's) is what is sent.
        guard = WorkGuard("edge-a", token, "http://testserver", http=head.client)
        worked: list[int] = []

        async def precache(event: FileAssigned) -> FileCached:
            worked.append(event.work.file_id)
            return FileCached(work=event.work, cache_path="/cache/x")

        bus = MemoryBus("ess-guard-test")
        await bus.start()
        handle = work_handler(bus, FileAssigned, "precache", 3, precache, guard=guard)

        # Signed by the head for this edge, and current: worked.
        await handle(first)
        assert worked == [work_of(first).work.file_id]

        # Unsigned, signed with another key, altered after signing, signed the edge's way
        # instead of the head's: refused, nothing fetched.
        unsigned = Delivery("q", first.routing_key, first.body)
        other_key = enrollment.downward_key(enrollment.key_of(enrollment.new_token("edge-a")))
        forged = Delivery(
            "q",
            first.routing_key,
            first.body,
            {enrollment.HEAD_SIGNATURE_HEADER: enrollment.sign(other_key, first.body)},
        )
        altered_body = first.body.replace(b"https://dm.example.org", b"https://evil.example.org")
        altered = Delivery("q", first.routing_key, altered_body, first.headers)
        as_edge = Delivery(
            "q",
            first.routing_key,
            first.body,
            {enrollment.HEAD_SIGNATURE_HEADER: edge_signature(first.body, token)},
        )
        for refused in (unsigned, forged, altered, as_edge):
            with pytest.raises(Forbidden):
                await handle(refused)

        # Signed with this edge's key but for a file the head does not know (a request
        # unknown or gone): refused, nothing fetched.
        async with sessions() as session:
            key = await enrollments.key_of(session, "edge-a")
        assert key is not None
        ghost = work_of(first).model_copy(
            update={"work": work_of(first).work.model_copy(update={"file_id": 999_999})}
        )
        body = ghost.model_dump_json().encode()
        signed = {
            enrollment.HEAD_SIGNATURE_HEADER: enrollment.sign(enrollment.downward_key(key), body)
        }
        with pytest.raises(BadMessage, match=r"file 999999 of request \S+ is unknown"):
            await handle(Delivery("q", first.routing_key, body, signed))
        # Another edge's work, signed for this one: refused.
        elsewhere = Delivery("q", first.routing_key, first.body, first.headers)
        with pytest.raises(BadMessage, match="work of edge edge-a, not of this edge"):
            await work_handler(
                bus,
                FileAssigned,
                "precache",
                3,
                precache,
                guard=WorkGuard("edge-b", token, "http://testserver", http=head.client),
            )(elsewhere)

        # The edge is lost, its files move to another edge: the old assignment is dropped.
        await enroll(sessions, "edge-b")
        async with unit_of_work(sessions) as session:
            lost = await session.get(Edge, "edge-a")
            assert lost is not None
            lost.status = EdgeStatus.LOST
            await take_back_from_edges(session, ["edge-a"], "lost")
            assert await assign_pending(session, LOST_AFTER) == 2
        await handle(second)
        assert worked == [work_of(first).work.file_id]
        await bus.close()
        await guard.close()


async def test_a_revoked_edge_is_refused_at_the_head(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store, tokens={"admin": [ADMIN]}) as head:
        token = await enroll(sessions, "edge-a")
        async with unit_of_work(sessions) as session:
            await record_request(session, request_spec("revoked", n_files=1))
            assert await assign_pending(session, LOST_AFTER) == 1
        (delivery,) = await assigned(sessions)
        async with unit_of_work(sessions) as session:
            assert await enrollments.revoke(session, "edge-a")
        guard = WorkGuard("edge-a", token, "http://testserver", http=head.client)
        with pytest.raises(Forbidden, match="the head refused this edge's token"):
            await guard.admit(delivery, work_of(delivery))


async def test_a_head_that_cannot_be_reached_is_an_outage_not_a_failure() -> None:
    """Work waits out the head's outage (retried for as long as it lasts) instead of using up
    its attempts and being dead-lettered."""
    guard = WorkGuard("edge-a", SecretStr("edge-a.secret"), f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(HeadUnavailable) as raised:
            await guard.where_it_stands(1)
    finally:
        await guard.close()
    assert is_outage(raised.value)
