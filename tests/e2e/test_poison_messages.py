"""Poison on every queue a running deployment consumes (`tests/e2e/poison.py`): each message
ends dead-lettered with its reason in `dead_letters`, or is ignored without a trace where that
is the right answer (ids nobody knows, duplicates); none is retried as if it might pass later,
no process stops, and a fresh request completes afterwards with no restart.

The duplicates are the deployment's own: every message of a request's flow (the request, its
assignments, the edges' results, `request.ready`) is captured on the way and published again
once the request is ready; nothing may change.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sqlalchemy import func, select

from ess_common.db.models import DeadLetter, Notification, Range
from ess_common.db.session import SessionMaker, make_engine, make_session_maker
from ess_common.messaging.bus import audit_queue, dead_exchange
from ess_common.messaging.memory import topic_pattern
from tests.e2e.deployment import EDGES, Deployment
from tests.e2e.poison import MUST_DIE, TARGETS, Poison, consumed, poison_messages, row_of
from tests.helpers import eventually

EDGE = EDGES[0]


def test_every_consumed_key_has_poison() -> None:
    """A queue or binding a service starts to consume without a row here fails this test."""
    exchange, edges = "ess", ("edge-one", "edge-two")
    rows = {
        row_of(exchange, edges, queue, binding)
        for queue, bindings in consumed(exchange, edges).items()
        for binding in bindings
    }
    assert rows == set(TARGETS), (
        f"consumed without poison: {sorted(rows - set(TARGETS))}; "
        f"poison for nothing consumed: {sorted(set(TARGETS) - rows)}"
    )
    for (_, binding), target in TARGETS.items():
        assert topic_pattern(binding.replace("{edge}", "edge-one")).match(target.key("edge-one")), (
            binding,
            target.routing_key,
        )


@dataclass(frozen=True)
class Captured:
    routing_key: str
    body: bytes
    headers: dict[str, Any]


@dataclass(frozen=True)
class Letter:
    queue: str
    reason: str
    head: str


@contextlib.asynccontextmanager
async def database(deployment: Deployment) -> AsyncIterator[SessionMaker]:
    engine = make_engine(deployment.cluster.env["ESS_DATABASE_URL"])
    try:
        yield make_session_maker(engine)
    finally:
        await engine.dispose()


async def letters_after(sessions: SessionMaker, after: int) -> list[Letter]:
    async with sessions() as session:
        rows = await session.execute(
            select(DeadLetter.queue, DeadLetter.reason, func.substr(DeadLetter.body, 1, 200))
            .where(DeadLetter.id > after)
            .order_by(DeadLetter.id)
        )
        return [Letter(q, r, h) for q, r, h in rows.all()]


async def last_letter(sessions: SessionMaker) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.coalesce(func.max(DeadLetter.id), 0))) or 0)


def queues_taking(queues: dict[str, list[str]], poison: Poison, exchange: str) -> list[str]:
    """The consumed queues a poison message reaches."""
    audit = audit_queue(exchange)
    if poison.dead_exchange:
        return [audit]
    return [
        q
        for q, bindings in queues.items()
        if q != audit and any(topic_pattern(b).match(poison.routing_key) for b in bindings)
    ]


async def depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def _tap(channel: AbstractChannel, exchange: str) -> aio_pika.abc.AbstractQueue:
    """A queue of this test's own taking a copy of every message on the exchange."""
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(exchange, "#")
    return queue


async def _drain(queue: aio_pika.abc.AbstractQueue) -> list[Captured]:
    taken: list[Captured] = []
    while True:
        message: AbstractIncomingMessage | None = await queue.get(no_ack=True, fail=False)
        if message is None:
            return taken
        taken.append(Captured(message.routing_key or "", message.body, dict(message.headers)))


def _flow_again(captured: list[Captured]) -> list[Captured]:
    """The captured flow's messages to publish again: all but the heartbeats, and the last
    heartbeat of each edge."""
    beats: dict[str, Captured] = {}
    again = []
    for c in captured:
        if c.routing_key == "edge.heartbeat":
            beats[json.loads(c.body)["edge"]] = c
        else:
            again.append(c)
    return again + list(beats.values())


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_poison_on_every_consumed_key_leaves_the_deployment_working(
    deployment: Deployment,
) -> None:
    cluster = deployment.cluster
    exchange = cluster.env["ESS_EXCHANGE"]
    pids = {name: s.process.pid for name, s in cluster.services.items()}
    queues = consumed(exchange, EDGES)
    connection = await aio_pika.connect(deployment.amqp_url)
    async with connection, database(deployment) as sessions:
        channel = await connection.channel()
        tap = await _tap(channel, exchange)

        # A request's flow, captured on the way.
        first = await deployment.submit(deployment.dataset[:2])
        await deployment.wait_ready(first["id"])
        flow = await _drain(tap)
        await tap.delete(if_unused=False, if_empty=False)
        kinds = {c.routing_key.removesuffix(f".{e}") for c in flow for e in EDGES}
        assert kinds >= {"request.created", "file.assigned", "file.cached", "split.done"}, kinds
        ranges_before, notices_before = await _counts(sessions, first["id"])
        before = await last_letter(sessions)

        # Every kind of poison on every key, and the flow's messages again.
        token = cluster.edge_tokens[EDGE]
        poisons = [p for t in TARGETS.values() for p in poison_messages(t, EDGE, token)]
        main = await channel.get_exchange(exchange)
        dead = await channel.get_exchange(dead_exchange(exchange))
        for p in poisons:
            out = aio_pika.Message(p.body, headers=p.headers)
            await (dead if p.dead_exchange else main).publish(out, routing_key=p.routing_key)
        again = _flow_again(flow)
        for c in again:
            await main.publish(aio_pika.Message(c.body, headers=c.headers), c.routing_key)

        # Each poison that must die is recorded, once per queue it reached.
        expected = {
            (q, p.marker): p
            for p in poisons
            if p.kind in MUST_DIE
            for q in queues_taking(queues, p, exchange)
        }

        missing: list[str] = []

        async def all_recorded() -> list[Letter] | None:
            cluster.check_running()
            letters = await letters_after(sessions, before)
            seen = {(letter.queue, m) for letter in letters for m in _markers(letter.head)}
            audit = audit_queue(exchange)
            missing[:] = [
                f"{expected[k].kind} {expected[k].detail} in {k[0]}"
                for k in expected
                if k not in seen and not (k[0] == audit and _any(seen, k[1]))
            ]
            return letters if not missing else None

        try:
            await eventually(all_recorded, timeout=120, interval=1.0, message="recorded")
        except AssertionError:
            raise AssertionError("not dead-lettered:\n" + "\n".join(missing)) from None

        # Nothing is left waiting or retrying in any consumed queue (twice in a row: a
        # message being handled is counted nowhere for a moment).
        empty_polls = 0

        async def settled() -> bool:
            nonlocal empty_polls
            cluster.check_running()
            counts = [await depth(channel, q) for q in queues]
            counts += [await depth(channel, f"{q}.retry") for q in queues]
            empty_polls = empty_polls + 1 if sum(counts) == 0 else 0
            return empty_polls >= 2

        await eventually(settled, timeout=120, interval=0.5, message="queues drained")
        letters = await letters_after(sessions, before)

        by_marker: dict[str, list[Letter]] = defaultdict(list)
        for letter in letters:
            for m in _markers(letter.head):
                by_marker[m].append(letter)
        problems = []
        for p in poisons:
            for letter in by_marker.get(p.marker, []):
                # A message put on the dead-letter exchange is recorded as it came: a forged
                # one carries no reason of ours.
                if not p.dead_exchange and letter.reason in ("", "no reason given"):
                    problems.append(f"{p.kind} {p.detail}: dead-lettered without a reason")
                # Nothing about a hostile message changes by waiting: it is refused at once.
                if letter.reason.startswith("after "):
                    problems.append(
                        f"{p.kind} {p.detail} retried in {letter.queue}: {letter.reason}"
                    )
        for p in poisons:
            outcome = [
                f"{x.queue.removeprefix(exchange + '.')}: {x.reason[:150]}"
                for x in by_marker.get(p.marker, [])
            ]
            print(f"POISON {p.kind} | {p.detail} | {outcome or 'ignored'}")
        assert problems == [], "\n".join(problems)

        # The flow's messages again changed nothing and were refused nowhere.
        ranges_after, notices_after = await _counts(sessions, first["id"])
        assert (ranges_after, notices_after) == (ranges_before, notices_before)
        replayed = {c.body[:200].decode(errors="replace") for c in again}
        refused_again = [x for x in letters if x.head in replayed]
        assert refused_again == [], refused_again
        view = (await deployment.http.get(f"/v1/requests/{first['id']}")).json()
        assert view["status"] == "ready"

        # A fresh request completes, every process the one started at first.
        fresh = await deployment.submit(deployment.dataset[2:4] or deployment.dataset[:1])
        await deployment.wait_ready(fresh["id"])
        cluster.check_running()
        assert {name: s.process.pid for name, s in cluster.services.items()} == pids


def _markers(text: str) -> list[str]:
    found = []
    start = text.find("poison-")
    while start >= 0:
        found.append(text[start : start + len("poison-") + 12])
        start = text.find("poison-", start + 1)
    return found


def _any(seen: set[tuple[str, str]], marker: str) -> bool:
    return any(m == marker for _, m in seen)


async def _counts(sessions: SessionMaker, request_id: str) -> tuple[int, int]:
    async with sessions() as session:
        ranges = await session.scalar(
            select(func.count()).select_from(Range).where(Range.request_id == request_id)
        )
        notices = await session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.request_id == request_id)
        )
    return int(ranges or 0), int(notices or 0)
