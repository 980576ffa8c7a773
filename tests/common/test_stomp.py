"""PanDA over STOMP 1.2, on RabbitMQ's STOMP plugin, with PanDA's own client (panda-common's
`MBSenderProxy` and `MBListenerProxy`, in child processes): requests in through the ingress,
with the same idempotency, URL policy and dead-lettering as over AMQP; notices out to PanDA's
destination.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ess_broker.service import Broker
from ess_common.db.models import DeadLetter, File, Request, RequestStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import RequestReady, RequestSpec
from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.amqp_queues import QueueMigrationRequired
from ess_common.messaging.bus import Bus, dead_exchange
from ess_common.messaging.memory import MemoryBus
from ess_common.messaging.stomp import StompAddress, StompIngress, StompLink, StompPublisher
from ess_common.messaging.stomp_queue import ingress_queue
from ess_common.settings import HeadSettings
from ess_notifier.service import Notifier
from tests.broker.factories import request_spec
from tests.common.test_amqp_queues import current_argument
from tests.conftest import AmqpServer
from tests.helpers import eventually
from tests.panda_stomp import start

STOMP_URL = os.environ.get("ESS_TEST_STOMP_URL", "stomp://guest:guest@127.0.0.1:61613/")


def test_the_stomp_url_names_the_virtual_host() -> None:
    assert StompAddress.parse("stomp://u:p%40ss@mq.cern.ch:61614/atlas") == StompAddress(
        "mq.cern.ch", 61614, "atlas", "u", "p@ss", tls=False
    )
    assert StompAddress.parse("stomp+ssl://mq:61612").vhost == "/"
    with pytest.raises(ValueError, match="stomp://"):
        StompAddress.parse("amqp://guest@127.0.0.1/")


def test_requests_come_from_a_queue_not_a_topic() -> None:
    assert ingress_queue("/queue/ess.requests") == "ess.requests"
    assert ingress_queue("/amq/queue/ess.requests") == "ess.requests"
    for wrong in ("/topic/ess.requests", "/exchange/ess/request.created", "/queue/", "ess"):
        with pytest.raises(ValueError, match="must be a queue"):
            ingress_queue(wrong)
    with pytest.raises(ValueError, match="must be a queue"):
        HeadSettings(stomp_url=STOMP_URL, stomp_request_destination="/topic/ess.requests")


@pytest.fixture
async def stomp_queue(amqp_server: AmqpServer) -> AsyncIterator[str]:
    """A STOMP queue destination of this test's own (RabbitMQ declares it on first use)."""
    await amqp_server.check()
    name = f"ess-t-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await amqp_server.delete([name, f"{name}.retry", f"{name}.dead"], [])


async def _sent(tmp_path: Path, destination: str, *bodies: str) -> None:
    files = []
    for i, body in enumerate(bodies):
        path = tmp_path / f"message-{i}.json"
        path.write_text(body)
        files.append(str(path))
    process = start(tmp_path / "panda-sender", "send", destination, *files)
    out, err = await asyncio.to_thread(process.communicate, timeout=60)
    assert process.returncode == 0 and "sent" in out, err[-2000:]


@pytest.mark.parametrize("bus", ["amqp"], indirect=True)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_requests_sent_by_pandas_client_over_stomp_are_recorded_once(
    tmp_path: Path, bus: Bus, sessions: SessionMaker, stomp_queue: str
) -> None:
    broker = Broker(HeadSettings(), bus, sessions)
    await broker.start()
    ingress = StompIngress(StompLink(STOMP_URL), f"/queue/{stomp_queue}", bus)
    await ingress.start()
    try:
        good = request_spec("jedi-stomp-1").model_dump_json()
        # The head's URL policy applies to what comes over STOMP too.
        refused = request_spec(
            "jedi-stomp-2", notify={"callback_url": "http://169.254.169.254/latest/"}
        ).model_dump_json()
        # PanDA's configuration names /queue/X; its client sends to /amq/queue/X on RabbitMQ.
        await _sent(tmp_path, f"/queue/{stomp_queue}", good, good, "this is not JSON {", refused)

        async def settled() -> bool:
            async with sessions() as session:
                requests = (await session.scalars(select(Request))).all()
                dead = (await session.scalars(select(DeadLetter))).all()
            return len(requests) == 2 and len(dead) == 2

        await eventually(settled, timeout=30)
        async with sessions() as session:
            recorded = {r.idempotency_key: r for r in (await session.scalars(select(Request)))}
            dead_letters = (await session.scalars(select(DeadLetter))).all()
            request = recorded["jedi-stomp-1"]
            files = (await session.scalars(select(File).where(File.request_id == request.id))).all()
        assert len(files) == len(request_spec("jedi-stomp-1").files)
        assert recorded["jedi-stomp-2"].status == RequestStatus.FAILED
        assert "169.254.169.254" in (recorded["jedi-stomp-2"].error or "")
        assert {d.queue for d in dead_letters} == {f"{bus.exchange}.broker.requests"}
        (dead,) = [d for d in dead_letters if d.body == "this is not JSON {"]
        assert "invalid message" in dead.reason
        (refusal,) = [d for d in dead_letters if d is not dead]
        assert "ESS_CALLBACK_NETWORKS" in refusal.reason
    finally:
        await ingress.stop()
        await broker.stop()


@pytest.mark.parametrize("bus", ["amqp"], indirect=True)
async def test_the_ingress_queue_is_a_quorum_queue_that_dead_letters(
    tmp_path: Path, bus: Bus, stomp_queue: str
) -> None:
    """Declared by the ingress with ESS's policy; a request it cannot hand over (here no queue
    takes `request.created`: no broker runs) is given back, and past the delivery limit
    dead-lettered instead of going round forever."""
    assert isinstance(bus, AmqpBus)
    ingress = StompIngress(StompLink(STOMP_URL), f"/queue/{stomp_queue}", bus)
    await ingress.start()
    try:
        expected: dict[str, object] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": bus.delivery_limit,
            "x-dead-letter-exchange": dead_exchange(bus.exchange),
            "x-dead-letter-routing-key": stomp_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        for argument, value in expected.items():
            held = await current_argument(bus.url, stomp_queue, expected, argument)
            assert held == str(value), argument
        await _sent(
            tmp_path, f"/amq/queue/{stomp_queue}", request_spec("jedi-stomp-3").model_dump_json()
        )

        async def dead_lettered() -> bool:
            return await bus.depth(f"{stomp_queue}.dead") == 1

        await eventually(dead_lettered, timeout=30)
        assert await bus.depth(stomp_queue) == 0
    finally:
        await ingress.stop()


@pytest.mark.parametrize("bus", ["amqp"], indirect=True)
async def test_a_classic_ingress_queue_stops_the_ingress(
    tmp_path: Path, bus: Bus, stomp_queue: str
) -> None:
    """What RabbitMQ's STOMP plugin makes of a /queue/ destination (the SUBSCRIBE of an older
    ingress, a SEND of a client other than PanDA's): a classic queue. Its messages stay where
    they are until the operator moves them (docs/queues.md)."""
    link = StompLink(STOMP_URL)
    try:
        await link.send(f"/queue/{stomp_queue}", b"{}", {})
    finally:
        await link.close()
    ingress = StompIngress(StompLink(STOMP_URL), f"/queue/{stomp_queue}", bus)
    with pytest.raises(QueueMigrationRequired) as refused:
        await ingress.start()
    assert refused.value.queue == stomp_queue
    await ingress.stop()
    assert await bus.depth(stomp_queue) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_notices_reach_pandas_listener_over_stomp(
    tmp_path: Path, sessions: SessionMaker, stomp_queue: str
) -> None:
    destination = f"/queue/{stomp_queue}"
    listener = start(tmp_path / "panda-listener", "listen", destination, "1", "60")
    assert listener.stdout is not None
    line = await asyncio.to_thread(listener.stdout.readline)
    assert line.strip() == "listening", line
    settings = HeadSettings(stomp_url=STOMP_URL, stomp_notice_destination=destination)
    stomp = StompPublisher(StompLink(STOMP_URL))
    async with httpx.AsyncClient() as http:
        notifier = Notifier(settings, MemoryBus("unused"), sessions, http, stomp)
        spec = RequestSpec.model_validate(request_spec("jedi-stomp-2").model_dump())
        async with unit_of_work(sessions) as session:
            request, _ = await record_request(session, spec)
            request.status = RequestStatus.READY
        ready = RequestReady(
            request_id=request.id,
            dataset=request.dataset,
            idempotency_key=request.idempotency_key,
            n_files=1,
            n_ranges=3,
        )
        try:
            async with unit_of_work(sessions) as session:
                await notifier.handle_request_event(session, ready)
            assert await notifier.deliver_due() == 2  # the AMQP message and the STOMP one
        finally:
            await stomp.close()
    out, err = await asyncio.to_thread(listener.communicate, timeout=60)
    assert listener.returncode == 0, err[-2000:]
    (received,) = [json.loads(json.loads(line)["body"]) for line in out.splitlines()]
    assert received["event"] == "request.ready"
    assert (received["request_id"], received["n_ranges"]) == (request.id, 3)
