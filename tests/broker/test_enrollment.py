"""Only enrolled edges are heard: a heartbeat or result of an edge nobody enrolled, of a
revoked one, unsigned, forged, or signed by one edge in another's name is dead-lettered with
its reason and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import event, select

from ess_broker.enrolled import EnrollmentKeys
from ess_broker.service import Broker
from ess_common import enrollment
from ess_common.db import enrollments
from ess_common.db.models import DeadLetter, Edge, EdgeStatus
from ess_common.db.session import SessionMaker, engine_of, unit_of_work
from ess_common.events import DatasetFile, FileWork
from ess_common.messaging.bus import EDGE_SIGNATURE_HEADER, Bus, edge_signature, publish_event
from ess_common.settings import EdgeSettings, HeadSettings
from ess_edge.heartbeat import send_heartbeat
from tests.broker.factories import heartbeat, split_done
from tests.helpers import eventually


async def dead_letters(sessions: SessionMaker, n: int) -> list[str]:
    async def enough() -> list[str]:
        async with sessions() as session:
            rows = (await session.scalars(select(DeadLetter).order_by(DeadLetter.id))).all()
        return sorted(r.reason for r in rows) if len(rows) >= n else []

    return await eventually(enough, message=f"{n} dead letters")


async def edges(sessions: SessionMaker) -> dict[str, str]:
    async with sessions() as session:
        return {e.name: e.status for e in (await session.scalars(select(Edge))).all()}


async def enroll(sessions: SessionMaker, edge: str) -> SecretStr:
    async with unit_of_work(sessions) as session:
        return SecretStr(await enrollments.enroll(session, edge))


@pytest.fixture
async def broker(sessions: SessionMaker, bus: Bus) -> AsyncIterator[Broker]:
    settings = HeadSettings.model_validate({"sweep_interval_s": 0.1, "edge_lost_after_s": 60.0})
    broker = Broker(settings, bus, sessions)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def test_only_heartbeats_of_enrolled_edges_register_them(
    broker: Broker, sessions: SessionMaker, bus: Bus, tmp_path: Path
) -> None:
    token_a = await enroll(sessions, "edge-a")
    revoked = await enroll(sessions, "edge-revoked")
    async with unit_of_work(sessions) as session:
        assert await enrollments.revoke(session, "edge-revoked")

    # Nobody enrolled it: unsigned, and signed with a token of its own making.
    await publish_event(bus, heartbeat("ghost-edge"))
    await publish_event(
        bus, heartbeat("ghost-edge"), signed_with=SecretStr(enrollment.new_token("ghost-edge"))
    )
    # An enrolled edge speaking for another, and its own heartbeat altered after signing.
    await publish_event(bus, heartbeat("edge-b"), signed_with=token_a)
    beat = heartbeat("edge-a")
    signature = edge_signature(beat.model_dump_json().encode(), token_a)
    altered = beat.model_copy(update={"free_bytes": 1}).model_dump_json().encode()
    await bus.publish(beat.routing_key(), altered, headers={EDGE_SIGNATURE_HEADER: signature})
    # A revoked edge, with the token it had.
    await publish_event(bus, heartbeat("edge-revoked"), signed_with=revoked)

    reasons = await dead_letters(sessions, 5)
    assert reasons == [
        "Forbidden: edge edge-b is not enrolled",
        "Forbidden: edge edge-revoked is not enrolled",
        "Forbidden: edge ghost-edge is not enrolled",
        "Forbidden: edge signature invalid for edge edge-a",
        "Forbidden: edge signature missing",
    ]
    assert await edges(sessions) == {}

    # What a real enrolled edge sends: its heartbeat, signed with its token.
    settings = EdgeSettings.model_validate(
        {"edge_name": "edge-a", "edge_cache_dir": tmp_path / "cache", "edge_token": token_a}
    )
    settings.edge_cache_dir.mkdir()
    await send_heartbeat(settings, bus)
    assert await eventually(lambda: edges(sessions)) == {"edge-a": EdgeStatus.ALIVE}


async def test_results_of_an_edge_not_enrolled_are_refused_and_change_nothing(
    broker: Broker, sessions: SessionMaker, bus: Bus
) -> None:
    work = FileWork(
        request_id="00000000-0000-0000-0000-000000000000",
        file_id=7,
        attempt=1,
        edge="ghost-edge",
        file=DatasetFile(
            scope="data18_13TeV",
            lfn="NTUP.1.root",
            n_events=10,
            size=1,
            adler32="00000001",
            sources=["https://storage.example.org/NTUP.1.root"],
        ),
        events_per_range=10,
    )
    await publish_event(
        bus, split_done(work), signed_with=SecretStr(enrollment.new_token("ghost-edge"))
    )
    await bus.publish("split.done.ghost-edge", b"{}", headers={EDGE_SIGNATURE_HEADER: "00"})
    assert await dead_letters(sessions, 2) == [
        "BadMessage: the message names no edge",
        "Forbidden: edge ghost-edge is not enrolled",
    ]


async def test_a_revoked_edge_is_disabled_and_its_files_move(
    broker: Broker, sessions: SessionMaker, bus: Bus, tmp_path: Path
) -> None:
    token = await enroll(sessions, "edge-a")
    await publish_event(bus, heartbeat("edge-a"), signed_with=token)
    assert await eventually(lambda: edges(sessions)) == {"edge-a": EdgeStatus.ALIVE}
    async with unit_of_work(sessions) as session:
        assert await enrollments.revoke(session, "edge-a")
    assert await edges(sessions) == {"edge-a": EdgeStatus.DISABLED}
    await publish_event(bus, heartbeat("edge-a"), signed_with=token)
    assert await dead_letters(sessions, 1) == ["Forbidden: edge edge-a is not enrolled"]
    # Enrolled again, it takes work again.
    await enroll(sessions, "edge-a")
    assert await edges(sessions) == {"edge-a": EdgeStatus.ALIVE}


async def test_keys_asked_at_one_moment_are_read_by_one_statement(sessions: SessionMaker) -> None:
    await enroll(sessions, "edge-a")
    await enroll(sessions, "edge-b")
    await enroll(sessions, "edge-revoked")
    async with unit_of_work(sessions) as session:
        assert await enrollments.revoke(session, "edge-revoked")
        expected = {name: await enrollments.key_of(session, name) for name in ("edge-a", "edge-b")}
    reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "edge_enrollments" in statement:
            reads.append(statement)

    engine = engine_of(sessions).sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        keys = EnrollmentKeys(sessions)
        asked = ["edge-a", "edge-b", "edge-revoked", "ghost-edge"] * 16
        answers = await asyncio.gather(*(keys.key_of(name) for name in asked))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert answers == [expected.get(name) for name in asked]
    # The first asker's edge at once, then everyone who asked meanwhile, together.
    assert len(reads) == 2
    # Asked again later, read again: a revocation since is seen.
    async with unit_of_work(sessions) as session:
        assert await enrollments.revoke(session, "edge-a")
    assert await keys.key_of("edge-a") is None
