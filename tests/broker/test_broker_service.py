"""The broker daemon end to end, on each bus (in-process, RabbitMQ) and each database: requests
and heartbeats in, work out on the edge's routing key, the edge's results in, `request.ready`
out; a resubmission is the same request; a malformed message is dead-lettered, recorded with
its reason, and holds up nothing after it.

The test plays the edge: it consumes `file.assigned.*` and answers with `file.cached` and
`split.done` as the precacher and splitter would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from ess_broker.service import Broker, consumed_queues
from ess_common.db import enrollments
from ess_common.db.models import DeadLetter, Edge, File, FileStatus, Range, Request, RequestStatus
from ess_common.db.session import SessionMaker, make_engine, make_session_maker, unit_of_work
from ess_common.events import FileAssigned, FileWork, RequestCreated, RequestReady, parse_event
from ess_common.messaging.bus import Bus, Delivery, publish_event
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import HeadSettings
from tests.broker.factories import count, file_cached, heartbeat, outbox, request_spec, split_done
from tests.helpers import UniqueNames, eventually

StartBroker = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def start_broker(sessions: SessionMaker, bus: Bus) -> AsyncIterator[StartBroker]:
    """Starts a Broker on the test's bus and database (settings may be changed); every broker
    started is stopped afterwards, before the bus closes and the database goes."""
    started: list[Broker] = []

    async def start(**changes: Any) -> Broker:
        config = HeadSettings.model_validate(
            {"sweep_interval_s": 0.1, "edge_lost_after_s": 60.0, **changes}
        )
        broker = Broker(config, bus, sessions)
        started.append(broker)
        await broker.start()
        return broker

    try:
        yield start
    finally:
        for broker in started:
            await broker.stop()


@dataclass
class FakeEdge:
    """Answers each `file.assigned` as an edge's precacher and splitter would; heartbeats for
    the edges it plays, each enrolled first, and signs their messages."""

    bus: Bus
    sessions: SessionMaker
    work: list[FileWork] = field(default_factory=list)
    routing_keys: list[str] = field(default_factory=list)
    tokens: dict[str, SecretStr] = field(default_factory=dict)

    async def beat(self, name: str) -> None:
        if name not in self.tokens:
            async with unit_of_work(self.sessions) as session:
                self.tokens[name] = SecretStr(await enrollments.enroll(session, name))
        await publish_event(self.bus, heartbeat(name), signed_with=self.tokens[name])

    async def __call__(self, delivery: Delivery) -> None:
        event = parse_event(delivery.body)
        assert isinstance(event, FileAssigned), event
        self.work.append(event.work)
        self.routing_keys.append(delivery.routing_key)
        token = self.tokens[event.work.edge]
        await publish_event(self.bus, file_cached(event.work), signed_with=token)
        await publish_event(self.bus, split_done(event.work), signed_with=token)


@dataclass
class ReadySeen:
    """Records the `request.ready` messages, as PanDA's side of the exchange would see them."""

    events: list[RequestReady] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        event = parse_event(delivery.body)
        assert isinstance(event, RequestReady), event
        self.events.append(event)

    def of(self, request_id: str) -> list[RequestReady]:
        return [e for e in self.events if e.request_id == request_id]


async def watch(
    bus: Bus, unique: UniqueNames, sessions: SessionMaker
) -> tuple[FakeEdge, ReadySeen]:
    """The edge and the `request.ready` watcher, consuming before anything is published."""
    edge, ready = FakeEdge(bus, sessions), ReadySeen()
    await bus.consume(unique("edge"), ["file.assigned.*"], edge)
    await bus.consume(unique("ready"), ["request.ready"], ready)
    return edge, ready


def created(key: str, **changes: Any) -> RequestCreated:
    return RequestCreated.model_validate(request_spec(key, **changes).model_dump())


async def request_in(sessions: SessionMaker, key: str, status: RequestStatus) -> Request | None:
    """The request of this key once it has the status; a failed request fails the wait."""
    async with sessions() as session:
        request = await session.scalar(select(Request).where(Request.idempotency_key == key))
    if request is None:
        return None
    assert request.status != RequestStatus.FAILED, request.error
    return request if request.status == status else None


async def edges_known(sessions: SessionMaker, names: set[str]) -> bool:
    async with sessions() as session:
        known = set((await session.scalars(select(Edge.name))).all())
    return names <= known


async def wait_ready(sessions: SessionMaker, ready: ReadySeen, key: str) -> Request:
    request = await eventually(
        lambda: request_in(sessions, key, RequestStatus.READY), message=f"request {key} ready"
    )
    assert request is not None
    await eventually(lambda: ready.of(request.id), message=f"request.ready of {key} seen")
    return request


async def test_a_request_is_assigned_split_and_announced_ready(
    sessions: SessionMaker, bus: Bus, unique: UniqueNames, start_broker: StartBroker
) -> None:
    edge, ready = await watch(bus, unique, sessions)
    await start_broker()
    await edge.beat("edge-a")
    await edge.beat("edge-b")
    # Heartbeats and requests are separate queues: the request waits for both edges to be known.
    await eventually(
        lambda: edges_known(sessions, {"edge-a", "edge-b"}), message="both edges registered"
    )
    await publish_event(bus, created("task-e2e", n_files=4))

    request = await wait_ready(sessions, ready, "task-e2e")

    (announced,) = ready.of(request.id)
    assert (announced.dataset, announced.idempotency_key) == (request.dataset, "task-e2e")
    assert (announced.n_files, announced.n_ranges) == (4, 12)
    async with sessions() as session:
        stored = (await session.scalars(select(File).where(File.request_id == request.id))).all()
        edges = (await session.scalars(select(Edge.name).order_by(Edge.name))).all()
        ready_rows = await outbox(session, "request.ready")
    assert {f.status for f in stored} == {FileStatus.SPLIT}
    assert {f.attempt for f in stored} == {1}
    assert await count(sessions, Range) == 12
    assert len(ready_rows) == 1
    assert list(edges) == ["edge-a", "edge-b"]
    # Each file went out once, on the routing key of the edge it was given to.
    assert sorted(w.file_id for w in edge.work) == sorted(f.id for f in stored)
    assert edge.routing_keys == [f"file.assigned.{w.edge}" for w in edge.work]
    assert {f.edge for f in stored} <= {"edge-a", "edge-b"}


async def test_a_resubmitted_request_is_the_same_request(
    sessions: SessionMaker, bus: Bus, unique: UniqueNames, start_broker: StartBroker
) -> None:
    edge, ready = await watch(bus, unique, sessions)
    # One sweep at the start, then none for the test: only the broker's handling of a
    # `request.created` assigns files, so the work seen proves the resubmission was handled.
    await start_broker(sweep_interval_s=3600)
    await publish_event(bus, created("task-again"))
    pending = await eventually(
        lambda: request_in(sessions, "task-again", RequestStatus.RECEIVED), message="recorded"
    )
    assert pending is not None
    await edge.beat("edge-a")

    async def edge_known() -> Edge | None:
        async with sessions() as session:
            return await session.get(Edge, "edge-a")

    await eventually(edge_known, message="edge registered")
    assert edge.work == []

    await publish_event(bus, created("task-again"))  # the same request, a new envelope
    request = await wait_ready(sessions, ready, "task-again")

    assert request.id == pending.id
    assert await count(sessions, Request) == 1
    assert await count(sessions, File) == 3
    # Each file was assigned once: by the resubmission's handling, not again.
    assert len({w.file_id for w in edge.work}) == len(edge.work) == 3
    async with sessions() as session:
        assert len(await outbox(session, "request.ready")) == 1

    # The same key with other content is not a resubmission: it is refused, with the reason.
    await publish_event(bus, created("task-again", events_per_range=50))

    async def conflict() -> DeadLetter | None:
        async with sessions() as session:
            return await session.scalar(select(DeadLetter))

    dead = await eventually(conflict, message="conflicting request dead-lettered")
    assert dead is not None
    assert "Conflict" in dead.reason and request.id in dead.reason
    assert await count(sessions, Request) == 1
    assert (await request_in(sessions, "task-again", RequestStatus.READY)) is not None


async def test_a_malformed_request_is_dead_lettered_and_the_next_one_completes(
    sessions: SessionMaker, bus: Bus, unique: UniqueNames, start_broker: StartBroker
) -> None:
    edge, ready = await watch(bus, unique, sessions)
    await start_broker()
    await edge.beat("edge-a")
    await bus.publish("request.created", b"{this is not json")
    invalid = created("task-bad").model_dump(mode="json")
    invalid["events_per_range"] = 0
    await bus.publish("request.created", json.dumps(invalid).encode())
    await publish_event(bus, created("task-good"))

    await wait_ready(sessions, ready, "task-good")

    async def dead_letters() -> list[DeadLetter]:
        async with sessions() as session:
            rows = (await session.scalars(select(DeadLetter).order_by(DeadLetter.id))).all()
        return list(rows) if len(rows) >= 2 else []

    letters = await eventually(dead_letters, message="both malformed requests recorded")
    assert len(letters) == 2
    queue = f"{bus.exchange}.broker.requests"
    assert {(d.queue, d.routing_key) for d in letters} == {(queue, "request.created")}
    by_body = {d.body: d for d in letters}
    assert by_body["{this is not json"].reason.startswith("invalid message")
    (field_error,) = [d for d in letters if d.body != "{this is not json"]
    assert "events_per_range" in field_error.reason
    assert await count(sessions, Request) == 1


async def test_requests_from_panda_with_any_correlation_id_are_recorded(
    sessions: SessionMaker, bus: Bus, unique: UniqueNames, start_broker: StartBroker
) -> None:
    # The envelope's correlation id is PanDA's to choose: a UUID names the request when no
    # other request has it; a shared or long one must not keep a request from being recorded.
    edge, ready = await watch(bus, unique, sessions)
    await start_broker()
    await edge.beat("edge-a")
    chosen = str(uuid.uuid4())
    shared = "jedi-12164365-panda-server-correlation-0001"
    for key, correlation_id in [
        ("task-uuid", chosen),
        ("task-uuid-again", chosen),
        ("task-long-1", shared),
        ("task-long-2", shared),
    ]:
        event = created(key).model_copy(update={"correlation_id": correlation_id})
        await publish_event(bus, event)

    ids = {
        key: (await wait_ready(sessions, ready, key)).id
        for key in ("task-uuid", "task-uuid-again", "task-long-1", "task-long-2")
    }
    # Handled concurrently, either of the two may be first to take the chosen id.
    assert chosen in (ids["task-uuid"], ids["task-uuid-again"])
    assert len(set(ids.values())) == 4
    async with sessions() as session:
        assert (await session.scalars(select(DeadLetter))).all() == []


async def test_a_request_from_the_bus_with_refused_urls_fails_with_the_reason(
    sessions: SessionMaker, bus: Bus, unique: UniqueNames, start_broker: StartBroker
) -> None:
    """PanDA's `request.created` is checked by the URL policy the head API applies: a source
    on loopback, a callback to the cloud metadata address are refused. The request is
    recorded failed with the reason (PanDA told by `request.failed`), its message is
    dead-lettered with it, none of its work goes out; the next request completes."""
    edge, ready = await watch(bus, unique, sessions)
    # The defaults, whatever the tests' own servers need.
    await start_broker(source_networks=[])
    await edge.beat("edge-a")
    loopback = request_spec("task-loopback").model_dump(mode="json")
    loopback["files"][1]["sources"] = ["http://127.0.0.1:8080/secret"]
    metadata = request_spec("task-metadata").model_dump(mode="json")
    metadata["notify"] = {"callback_url": "http://169.254.169.254/latest/meta-data/"}
    for body in (loopback, metadata):
        await bus.publish("request.created", json.dumps(body).encode())
    await publish_event(bus, created("task-fine"))

    await wait_ready(sessions, ready, "task-fine")

    async def refused() -> list[DeadLetter]:
        async with sessions() as session:
            rows = (await session.scalars(select(DeadLetter))).all()
        return list(rows) if len(rows) >= 2 else []

    letters = await eventually(refused, message="both refused requests dead-lettered")
    source, callback = sorted(d.reason for d in letters)
    assert "ESS_SOURCE_NETWORKS" in source and "127.0.0.1" in source
    assert "ESS_CALLBACK_NETWORKS" in callback and "169.254.169.254" in callback
    async with sessions() as session:
        failed = {
            r.idempotency_key: r
            for r in (
                await session.scalars(select(Request).where(Request.status == RequestStatus.FAILED))
            ).all()
        }
        announced = await outbox(session, "request.failed")
    assert set(failed) == {"task-loopback", "task-metadata"}
    assert "loopback" in (failed["task-loopback"].error or "")
    assert "link-local" in (failed["task-metadata"].error or "")
    assert {json.loads(row.body)["request_id"] for row in announced} == {
        r.id for r in failed.values()
    }
    # None of the refused requests' files went to an edge.
    assert {w.request_id for w in edge.work} == {
        (await request_in(sessions, "task-fine", RequestStatus.READY)).id  # type: ignore[union-attr]
    }


async def test_the_results_queue_is_bound_to_the_results_the_broker_handles(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    bus = MemoryBus("ess-t-bindings", max_attempts=3, backoff_s=0.05)
    broker = Broker(HeadSettings(), bus, make_session_maker(engine))
    try:
        bindings = broker.results_handler().bindings()
    finally:
        await broker.stop()
        await engine.dispose()
    assert sorted(bindings) == ["file.cached.*", "file.failed.*", "range.split.*", "split.done.*"]
    assert sorted(bindings) == sorted(
        consumed_queues("ess-t-bindings")["ess-t-bindings.broker.results"]
    )
