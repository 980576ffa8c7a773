"""The notices besides `request.ready`, on SQLite and PostgreSQL: `request.cancelled` (message
and callback), `file.ready` (message only, once per file and target, only when the request
asked for it, emitted by the bookkeeping as each file is split), routing keys chosen by the
operator, and events that no longer match their request left unannounced."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select, update

from ess_broker.bookkeeping import handle_split_done
from ess_common.db.models import (
    File,
    FileStatus,
    Notification,
    NotificationStatus,
    OutboxMessage,
    Request,
    RequestStatus,
)
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import (
    DatasetFile,
    FileReady,
    FileWork,
    RangeInfo,
    RequestCancelled,
    RequestFailed,
    RequestReady,
    RequestSpec,
    SplitDone,
    parse_event,
)
from ess_common.messaging.bus import Bus, publish_event
from ess_common.messaging.memory import MemoryBus
from ess_notifier.service import Notice, Notifier
from tests.helpers import UniqueNames, eventually
from tests.notifier.test_notifier import CallbackReceiver, Recorder, handle, notifications, settings

if TYPE_CHECKING:
    pass

SCOPE = "mc16_13TeV"
N_FILES = 3


def file_data(i: int) -> dict[str, Any]:
    return {
        "scope": SCOPE,
        "lfn": f"EVNT.{i:06d}.pool.root.1",
        "n_events": 200,
        "size": 1000,
        "adler32": "1",
        "sources": [f"https://dm.example.org/{i}"],
    }


async def recorded(sessions: SessionMaker, **notify: Any) -> Request:
    spec = RequestSpec.model_validate(
        {
            "dataset": f"{SCOPE}:{SCOPE}.EVNT.notices",
            "idempotency_key": f"jedi-{uuid.uuid4().hex[:8]}",
            "events_per_range": 100,
            "notify": notify,
            "files": [file_data(i) for i in range(N_FILES)],
        }
    )
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(session, spec)
        await session.execute(
            update(File)
            .where(File.request_id == request.id)
            .values(status=FileStatus.ASSIGNED, edge="edge-a", attempt=1)
        )
        request.status = RequestStatus.ASSIGNED
    return request


async def split_all(sessions: SessionMaker, request: Request) -> list[FileReady]:
    """Every file split through the bookkeeping; the `file.ready` events it wrote."""
    async with sessions() as session:
        files = (await session.scalars(select(File).where(File.request_id == request.id))).all()
    for f in files:
        work = FileWork(
            request_id=request.id,
            file_id=f.id,
            attempt=1,
            edge="edge-a",
            file=DatasetFile.model_validate(file_data(int(f.lfn.split(".")[1]))),
            events_per_range=100,
        )
        ranges = [
            RangeInfo(first_event=1, last_event=100, key=f"r/{f.id}/1", size=1, adler32="1"),
            RangeInfo(first_event=101, last_event=200, key=f"r/{f.id}/2", size=1, adler32="2"),
        ]
        async with unit_of_work(sessions) as session:
            await handle_split_done(session, SplitDone(work=work, ranges=ranges))
    async with sessions() as session:
        bodies = (
            await session.scalars(
                select(OutboxMessage.body)
                .where(OutboxMessage.routing_key == "file.ready")
                .order_by(OutboxMessage.id)
            )
        ).all()
    events = [parse_event(body) for body in bodies]
    assert all(isinstance(e, FileReady) for e in events)
    return [e for e in events if isinstance(e, FileReady)]


async def test_each_file_is_announced_once_when_the_request_asks(
    sessions: SessionMaker,
    bus: Bus,
    unique: UniqueNames,
    panda_exchange: str,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
) -> None:
    panda = Recorder()
    await bus.consume(unique("panda"), ["file.ready"], panda, exchange=panda_exchange, prefetch=1)
    request = await recorded(sessions, message=True, files=True, callback_url=receiver.url)
    ready = await split_all(sessions, request)
    assert [(e.lfn, e.n_ranges, e.n_events) for e in ready] == [
        (file_data(i)["lfn"], 2, 200) for i in range(N_FILES)
    ]
    notifier = Notifier(settings(panda_exchange=panda_exchange), bus, sessions, http)
    await notifier.start()
    try:
        for event in ready:
            await publish_event(bus, event)
        # Redelivered, as after a lost ack: nothing more is recorded or sent.
        await publish_event(bus, ready[0])

        async def all_sent() -> list[Notification]:
            found = [n for n in await notifications(sessions) if n.event.startswith("file.")]
            return found if all(n.status == NotificationStatus.SENT for n in found) else []

        await eventually(lambda: len(panda.notifications()) >= N_FILES, message="file notices")
        sent = await eventually(all_sent, message="file notices sent")
    finally:
        await notifier.stop()

    assert sorted(n.event for n in sent) == sorted(f"file.ready/{e.file_id}" for e in ready)
    assert {(n.kind, n.target) for n in sent} == {("message", f"{panda_exchange}:file.ready")}
    # Message only: the callback hears of the request (its relay published `request.ready`
    # from the outbox too), not of each file.
    assert {post.body["event"] for post in receiver.posts} <= {"request.ready"}
    bodies = [json.loads(d.body) for d in panda.notifications()]
    assert sorted(b["lfn"] for b in bodies) == [file_data(i)["lfn"] for i in range(N_FILES)]
    assert {d.routing_key for d in panda.notifications()} == {"file.ready"}
    first = next(b for b in bodies if b["file_id"] == ready[0].file_id)
    assert first == {
        "event": "file.ready",
        "event_id": str(ready[0].event_id),
        "occurred_at": ready[0].occurred_at.isoformat(),
        "request_id": request.id,
        "dataset": request.dataset,
        "idempotency_key": request.idempotency_key,
        "status": "ready",
        "file_id": ready[0].file_id,
        "scope": SCOPE,
        "lfn": ready[0].lfn,
        "n_events": 200,
        "n_ranges": 2,
    }
    # Whatever was published went before this marker: no file was announced twice.
    await bus.publish("file.ready", b"sentinel", exchange=panda_exchange)
    await eventually(lambda: b"sentinel" in [d.body for d in panda.seen], message="marker")
    assert len(panda.notifications()) == N_FILES


@pytest.mark.parametrize(
    "notify", [{"files": False}, {"files": True, "message": False}], ids=["not-asked", "no-msg"]
)
async def test_files_are_not_announced_unless_asked_with_messages(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    http: httpx.AsyncClient,
    notify: dict[str, Any],
) -> None:
    request = await recorded(sessions, **notify)
    ready = await split_all(sessions, request)
    if not notify["files"]:
        # The bookkeeping does not even announce them.
        assert ready == []
        return
    notifier = Notifier(settings(), memory_bus, sessions, http)
    for event in ready:
        await handle(notifier, event)
    assert await notifications(sessions) == []


async def test_a_cancel_is_announced_by_message_and_callback(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    receiver: CallbackReceiver,
    http: httpx.AsyncClient,
) -> None:
    panda = Recorder()
    await memory_bus.consume("panda", ["#"], panda, exchange="panda-ex", prefetch=1)
    request = await recorded(sessions, callback_url=receiver.url)
    async with unit_of_work(sessions) as session:
        await session.execute(
            update(Request)
            .where(Request.id == request.id)
            .values(status=RequestStatus.CANCELLED, error="task aborted")
        )
    event = RequestCancelled(
        request_id=request.id,
        dataset=request.dataset,
        idempotency_key=request.idempotency_key,
        reason="task aborted",
    )
    notifier = Notifier(
        settings(
            panda_exchange="panda-ex", panda_routing_keys={"request.cancelled": "ess.cancelled"}
        ),
        memory_bus,
        sessions,
        http,
    )
    await handle(notifier, event)
    await handle(notifier, event)
    assert await notifier.deliver_due() == 2

    found = await notifications(sessions)
    assert sorted((n.kind, n.target, n.event) for n in found) == [
        ("http", receiver.url, "request.cancelled"),
        ("message", "panda-ex:ess.cancelled", "request.cancelled"),
    ]
    (post,) = receiver.posts
    assert post.body["event"] == "request.cancelled"
    assert (post.body["status"], post.body["reason"]) == ("cancelled", "task aborted")
    assert post.headers["Idempotency-Key"].startswith("ess-notification-")
    (message,) = await eventually(lambda: panda.seen)
    assert message.routing_key == "ess.cancelled"
    assert json.loads(message.body) == post.body


async def test_the_operator_chooses_the_routing_keys(
    sessions: SessionMaker, memory_bus: MemoryBus, http: httpx.AsyncClient
) -> None:
    panda = Recorder()
    await memory_bus.consume("panda", ["#"], panda, exchange="panda-ex", prefetch=1)
    request = await recorded(sessions)
    async with unit_of_work(sessions) as session:
        await session.execute(
            update(Request).where(Request.id == request.id).values(status=RequestStatus.READY)
        )
    notifier = Notifier(
        settings(panda_exchange="panda-ex", panda_routing_keys={"request.ready": "jedi.ess.ok"}),
        memory_bus,
        sessions,
        http,
    )
    await handle(
        notifier,
        RequestReady(
            request_id=request.id,
            dataset=request.dataset,
            idempotency_key=request.idempotency_key,
            n_files=N_FILES,
            n_ranges=6,
        ),
    )
    assert await notifier.deliver_due() == 1
    (message,) = await eventually(lambda: panda.seen)
    assert message.routing_key == "jedi.ess.ok"


def test_routing_keys_of_unknown_events_stop_the_start() -> None:
    with pytest.raises(ValueError, match="unknown events"):
        settings(panda_routing_keys={"request.done": "x"})


@pytest.mark.parametrize(
    ("status", "event_type"),
    [
        (RequestStatus.ASSIGNED, "request.failed"),
        (RequestStatus.CANCELLED, "request.failed"),
        (RequestStatus.FAILED, "request.cancelled"),
        (RequestStatus.ASSIGNED, "request.ready"),
    ],
)
async def test_an_event_that_no_longer_matches_its_request_is_not_announced(
    sessions: SessionMaker,
    memory_bus: MemoryBus,
    http: httpx.AsyncClient,
    status: RequestStatus,
    event_type: str,
) -> None:
    request = await recorded(sessions, callback_url="https://panda.example.org/cb")
    async with unit_of_work(sessions) as session:
        await session.execute(update(Request).where(Request.id == request.id).values(status=status))
    common = {
        "request_id": request.id,
        "dataset": request.dataset,
        "idempotency_key": request.idempotency_key,
    }
    event: Notice
    if event_type == "request.failed":
        event = RequestFailed(**common, reason="x")
    elif event_type == "request.cancelled":
        event = RequestCancelled(**common, reason="x")
    else:
        event = RequestReady(**common, n_files=1, n_ranges=1)
    await handle(Notifier(settings(), memory_bus, sessions, http), event)
    assert await notifications(sessions) == []
