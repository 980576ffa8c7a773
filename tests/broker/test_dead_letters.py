"""Recording dead letters: any body is recorded (escaped when the database cannot hold its
bytes) where operators read them, and a refused message changes no request it names."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from ess_broker.service import Broker
from ess_common.db.models import DeadLetter, File, Request, RequestEvent, RequestEventKind
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import DatasetFile, FileWork
from ess_common.messaging.bus import (
    ATTEMPT_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Bus,
    publish_event,
)
from ess_common.settings import HeadSettings
from tests.broker.factories import enroll_edge, request_spec, split_done
from tests.helpers import eventually

EDGE_TOKEN = "e" * 32


async def dead_letters(sessions: SessionMaker, count: int) -> list[DeadLetter]:
    async with sessions() as session:
        rows = list((await session.scalars(select(DeadLetter).order_by(DeadLetter.id))).all())
    return rows if len(rows) >= count else []


@pytest.fixture
async def broker(sessions: SessionMaker, bus: Bus) -> AsyncIterator[Broker]:
    settings = HeadSettings.model_validate(
        {"sweep_interval_s": 0.1, "edge_lost_after_s": 60.0, "tokens": {"edge": [EDGE_TOKEN]}}
    )
    started = Broker(settings, bus, sessions)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def test_bodies_with_nul_bytes_or_invalid_utf8_are_recorded_escaped(
    broker: Broker, sessions: SessionMaker, bus: Bus
) -> None:
    await bus.publish("request.created", b'{"dataset": "a\x00b"}')
    await bus.publish("request.created", b"\xff\xfe not text \x00")

    rows = await eventually(lambda: dead_letters(sessions, 2), message="both recorded")
    bodies = sorted(row.body for row in rows)
    assert bodies == sorted(['{"dataset": "a\\x00b"}', "\\xff\\xfe not text \\x00"])
    assert all(row.reason.startswith("invalid message") for row in rows)
    assert {row.queue for row in rows} == {f"{bus.exchange}.broker.requests"}


async def test_a_refused_result_naming_a_real_request_changes_no_request(
    broker: Broker, sessions: SessionMaker, bus: Bus
) -> None:
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(session, request_spec("refused", n_files=1))
        file = await session.scalar(select(File).where(File.request_id == request.id))
        assert file is not None
        work = FileWork(
            request_id=request.id,
            file_id=file.id,
            attempt=1,
            edge="edge-a",
            file=DatasetFile.model_validate(request_spec("refused", n_files=1).files[0]),
            events_per_range=100,
        )
    async with sessions() as session:
        before = await session.get(Request, request.id)
        assert before is not None
        status, error = before.status, before.error

    # The edge is enrolled: unsigned, then signed with a token the head does not know.
    await enroll_edge(sessions, "edge-a")
    await publish_event(bus, split_done(work))
    await publish_event(bus, split_done(work), signed_with=SecretStr("x" * 32))

    rows = await eventually(lambda: dead_letters(sessions, 2), message="both refusals recorded")
    assert sorted(row.reason for row in rows) == [
        "Forbidden: edge signature invalid for edge edge-a",
        "Forbidden: edge signature missing",
    ]
    assert [row.request_id for row in rows] == [None, None]
    async with sessions() as session:
        after = await session.get(Request, request.id)
        assert after is not None
        assert (after.status, after.error) == (status, error)
        kinds = (
            await session.scalars(
                select(RequestEvent.kind).where(RequestEvent.request_id == request.id)
            )
        ).all()
    assert RequestEventKind.DEAD_LETTER not in kinds


async def test_more_bad_envelopes_than_the_prefetch_hold_up_no_request(
    broker: Broker, sessions: SessionMaker, bus: Bus
) -> None:
    prefetch = getattr(bus, "prefetch", 8)
    bad = prefetch + 1
    body = request_spec("bad-envelope").model_dump_json().encode()
    for _ in range(bad):
        await bus.publish("request.created", body, headers={ATTEMPT_HEADER: "one"})
    await bus.publish("request.created", request_spec("after-bad").model_dump_json().encode())

    async def recorded() -> list[str]:
        async with sessions() as session:
            return list((await session.scalars(select(Request.idempotency_key))).all())

    assert await eventually(recorded, message="the good request recorded") == ["after-bad"]
    rows = await eventually(lambda: dead_letters(sessions, bad), message="every bad one recorded")
    assert len(rows) == bad
    assert {row.reason for row in rows} == {
        "bad envelope: header x-ess-attempt is not an integer: 'one'"
    }


async def test_a_dead_letter_naming_no_storable_request_or_with_byte_array_headers_is_recorded(
    broker: Broker, sessions: SessionMaker, bus: Bus
) -> None:
    """The request a body names may be any text, one no database holds too (a NUL and a lone
    surrogate written as JSON escapes): it names no request, and the dead letter is recorded
    at once, not retried until it is lost. Header bytes given as an AMQP byte array are
    recorded as text."""
    body = b'{"correlation_id": "poison\\u0000\\ud800", "edge": "x"}'
    await bus.publish(
        "on.nothing",
        body,
        exchange=f"{bus.exchange}.dead",
        headers={REASON_HEADER: "refused", QUEUE_HEADER: bytearray(b"edge.q\xff")},
    )

    (row,) = await eventually(lambda: dead_letters(sessions, 1), message="recorded")
    assert (row.queue, row.reason, row.request_id) == ("edge.q\\xff", "refused", None)
    assert row.body == body.decode()
