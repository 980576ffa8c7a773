"""The notifier, on SQLite and PostgreSQL: one notification per target (a message on the PanDA
exchange, an HTTP callback) recorded once and sent once, however often the event is handled;
failed callbacks retried with backoff up to a limit, refused ones failed at once, each outcome
recorded.

PanDA's HTTP side is the one fake: a small aiohttp server on a free 127.0.0.1 port that records
each POST and answers with the statuses a test scripts.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import select, update

from ess_common.db.models import (
    Notification,
    NotificationStatus,
    Request,
    RequestStatus,
    utcnow,
)
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, make_engine, make_session_maker, unit_of_work
from ess_common.events import NOTICE_EVENTS, RequestFailed, RequestReady, RequestSpec
from ess_common.messaging.bus import Bus, Delivery, publish_event
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import PANDA_NOTICES, HeadSettings
from ess_notifier.service import Notice, Notifier, consumed_queues
from tests.helpers import UniqueNames, eventually, free_port

if TYPE_CHECKING:
    pass

MAX_ATTEMPTS = 3
SENTINEL = b"sentinel"


@dataclass(frozen=True)
class Post:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class CallbackReceiver:
    """PanDA's callback endpoint: records every POST and answers with the next status of
    `script` (200 once the script is used up)."""

    script: list[int] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        self.posts.append(Post(dict(request.headers), await request.json()))
        status = self.script.pop(0) if self.script else 200
        return web.json_response({"status": status}, status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ess/callback", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/ess/callback"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Recorder:
    """Records the messages of a queue."""

    seen: list[Delivery] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        self.seen.append(delivery)

    def notifications(self) -> list[Delivery]:
        return [d for d in self.seen if d.body != SENTINEL]


def settings(**changes: Any) -> HeadSettings:
    return HeadSettings.model_validate(
        {
            "callback_max_attempts": MAX_ATTEMPTS,
            "retry_backoff_s": 0.0,
            "sweep_interval_s": 0.1,
            **changes,
        }
    )


async def ready_request(
    sessions: SessionMaker, *, message: bool, callback_url: str | None
) -> RequestReady:
    """A request recorded and made ready as the broker would, and its `request.ready`."""
    spec = RequestSpec.model_validate(
        {
            "dataset": "mc16_13TeV:mc16_13TeV.EVNT.notify",
            "idempotency_key": f"jedi-{uuid.uuid4().hex[:8]}",
            "events_per_range": 100,
            "notify": {"message": message, "callback_url": callback_url},
            "files": [
                {
                    "scope": "mc16_13TeV",
                    "lfn": "EVNT.000001.pool.root.1",
                    "n_events": 300,
                    "size": 1000,
                    "adler32": "1",
                    "sources": ["https://dm.example.org/1"],
                }
            ],
        }
    )
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(session, spec)
        request.status = RequestStatus.READY
        request.ready_at = utcnow()
    return RequestReady(
        request_id=request.id,
        dataset=request.dataset,
        idempotency_key=request.idempotency_key,
        n_files=1,
        n_ranges=3,
        correlation_id=request.id,
    )


async def handle(notifier: Notifier, event: Notice) -> None:
    """What the notifier's consumer does with a delivery: one transaction per message."""
    async with unit_of_work(notifier.sessions) as session:
        await notifier.handle_request_event(session, event)


async def notifications(sessions: SessionMaker) -> list[Notification]:
    async with sessions() as session:
        return list((await session.scalars(select(Notification).order_by(Notification.id))).all())


async def the_notification(sessions: SessionMaker) -> Notification:
    (only,) = await notifications(sessions)
    return only


def unreachable_url() -> str:
    """A URL on a 127.0.0.1 port nobody listens on: the connection is refused."""
    return f"http://127.0.0.1:{free_port()}/ess/callback"


async def test_ready_is_sent_once_as_a_message_and_a_callback(
    sessions: SessionMaker,
    bus: Bus,
    unique: UniqueNames,
    panda_exchange: str,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
) -> None:
    panda = Recorder()
    await bus.consume(
        unique("panda"),
        ["request.ready", "request.failed"],
        panda,
        exchange=panda_exchange,
        prefetch=1,
    )
    event = await ready_request(sessions, message=True, callback_url=receiver.url)
    notifier = Notifier(settings(panda_exchange=panda_exchange), bus, sessions, http)
    await notifier.start()
    try:
        await publish_event(bus, event)

        async def both_sent() -> list[Notification]:
            found = await notifications(sessions)
            sent = [n for n in found if n.status == NotificationStatus.SENT]
            return found if len(sent) == 2 else []

        message, callback = await eventually(both_sent, message="both notifications sent")
    finally:
        await notifier.stop()
    await eventually(lambda: panda.seen, message="message on the PanDA exchange")

    assert (message.kind, message.target) == ("message", f"{panda_exchange}:request.ready")
    assert (callback.kind, callback.target) == ("http", receiver.url)
    for n in (message, callback):
        assert (n.request_id, n.event, n.attempts, n.last_error) == (
            event.request_id,
            "request.ready",
            1,
            None,
        )
        assert n.sent_at is not None

    (post,) = receiver.posts
    assert post.headers["Idempotency-Key"] == f"ess-notification-{callback.id}"
    assert post.headers["Content-Type"] == "application/json"
    expected = {
        "event": "request.ready",
        "event_id": str(event.event_id),
        "request_id": event.request_id,
        "dataset": event.dataset,
        "idempotency_key": event.idempotency_key,
        "status": "ready",
        "n_files": 1,
        "n_ranges": 3,
    }
    assert {k: post.body[k] for k in expected} == expected
    (delivered,) = panda.seen
    assert delivered.routing_key == "request.ready"
    assert json.loads(delivered.body) == post.body
    assert int(delivered.headers["x-ess-notification-id"]) == message.id

    # The same event handled again, as after a lost ack: nothing new is recorded or sent.
    await handle(notifier, event)
    assert await notifier.deliver_due() == 0
    assert [(n.id, n.status, n.attempts) for n in await notifications(sessions)] == [
        (message.id, NotificationStatus.SENT, 1),
        (callback.id, NotificationStatus.SENT, 1),
    ]
    assert len(receiver.posts) == 1
    # Whatever the notifier published went before this marker on the same channel.
    await bus.publish("request.ready", SENTINEL, exchange=panda_exchange)
    await eventually(lambda: SENTINEL in [d.body for d in panda.seen], message="marker seen")
    assert len(panda.notifications()) == 1


async def test_a_failed_request_is_notified_with_its_reason(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
) -> None:
    ready = await ready_request(sessions, message=False, callback_url=receiver.url)
    async with unit_of_work(sessions) as session:
        await session.execute(
            update(Request)
            .where(Request.id == ready.request_id)
            .values(status=RequestStatus.FAILED, error="EVNT.000001: adler32 mismatch")
        )
    event = RequestFailed(
        request_id=ready.request_id,
        dataset=ready.dataset,
        idempotency_key=ready.idempotency_key,
        reason="EVNT.000001: adler32 mismatch",
    )
    notifier = Notifier(settings(), memory_bus, sessions, http)
    await handle(notifier, event)
    assert await notifier.deliver_due() == 1

    n = await the_notification(sessions)
    assert (n.event, n.kind, n.status) == ("request.failed", "http", NotificationStatus.SENT)
    (post,) = receiver.posts
    assert post.body["event"] == "request.failed"
    assert post.body["status"] == "failed"
    assert post.body["reason"] == "EVNT.000001: adler32 mismatch"


@pytest.mark.parametrize("first_status", [500, 503, 429])
async def test_a_callback_that_fails_for_a_while_is_retried_after_its_backoff(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
    first_status: int,
) -> None:
    receiver.script = [first_status]
    event = await ready_request(sessions, message=False, callback_url=receiver.url)
    notifier = Notifier(settings(retry_backoff_s=60.0), memory_bus, sessions, http)
    await handle(notifier, event)

    assert await notifier.deliver_due() == 0
    n = await the_notification(sessions)
    assert (n.status, n.attempts) == (NotificationStatus.PENDING, 1)
    assert n.last_error is not None and f"HTTP {first_status}" in n.last_error
    assert n.next_attempt_at > utcnow() + timedelta(seconds=30)
    # Not due yet: nothing is sent before the backoff has passed.
    assert await notifier.deliver_due() == 0
    assert len(receiver.posts) == 1

    async with unit_of_work(sessions) as session:
        await session.execute(
            update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert await notifier.deliver_due() == 1

    n = await the_notification(sessions)
    assert (n.status, n.attempts, n.last_error) == (NotificationStatus.SENT, 2, None)
    assert n.sent_at is not None
    # Both tries carry the same key, so PanDA can tell a repeat from a new notice.
    keys = {post.headers["Idempotency-Key"] for post in receiver.posts}
    assert keys == {f"ess-notification-{n.id}"}
    assert len(receiver.posts) == 2


async def test_500_then_200_without_backoff_is_sent_at_the_second_attempt(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
) -> None:
    receiver.script = [500]
    event = await ready_request(sessions, message=False, callback_url=receiver.url)
    notifier = Notifier(settings(retry_backoff_s=0.0), memory_bus, sessions, http)
    await handle(notifier, event)
    assert await notifier.deliver_due() == 1
    n = await the_notification(sessions)
    assert (n.status, n.attempts) == (NotificationStatus.SENT, 2)
    assert len(receiver.posts) == 2


async def test_a_callback_answering_400_fails_at_once(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
) -> None:
    receiver.script = [400]
    event = await ready_request(sessions, message=False, callback_url=receiver.url)
    notifier = Notifier(settings(), memory_bus, sessions, http)
    await handle(notifier, event)

    assert await notifier.deliver_due() == 0
    n = await the_notification(sessions)
    assert (n.status, n.attempts, n.sent_at) == (NotificationStatus.FAILED, 1, None)
    assert n.last_error is not None and "HTTP 400" in n.last_error
    # A failed notification is not tried again, nor re-recorded by a redelivery.
    await handle(notifier, event)
    assert await notifier.deliver_due() == 0
    assert len(receiver.posts) == 1
    assert len(await notifications(sessions)) == 1


async def test_an_unreachable_callback_is_retried_up_to_the_limit_then_fails(
    sessions: SessionMaker, memory_bus: MemoryBus, http: httpx.AsyncClient
) -> None:
    url = unreachable_url()
    event = await ready_request(sessions, message=False, callback_url=url)
    notifier = Notifier(settings(retry_backoff_s=0.0), memory_bus, sessions, http)
    await handle(notifier, event)

    assert await notifier.deliver_due() == 0
    n = await the_notification(sessions)
    assert (n.status, n.attempts, n.target) == (NotificationStatus.FAILED, MAX_ATTEMPTS, url)
    assert n.last_error is not None and "ConnectError" in n.last_error
    assert await notifier.deliver_due() == 0
    assert (await the_notification(sessions)).attempts == MAX_ATTEMPTS


async def test_the_notifier_is_bound_to_the_notices_it_handles(
    memory_bus: MemoryBus, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    async with httpx.AsyncClient() as http:
        handler = Notifier(
            settings(), memory_bus, make_session_maker(engine), http
        ).notices_handler()
    await engine.dispose()
    assert handler.events == NOTICE_EVENTS
    assert handler.bindings() == list(PANDA_NOTICES)
    assert consumed_queues(memory_bus.exchange) == {
        f"{memory_bus.exchange}.notifier": handler.bindings()
    }
