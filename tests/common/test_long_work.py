"""Long work never holds a delivery past `hold_s`: the delivery is handed back to its queue
while the work goes on, and the work runs once; its failure still takes the retry path; no
more than `limit` works run at once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from ess_common.messaging.bus import ATTEMPT_HEADER, Bus, Delivery
from ess_common.messaging.long_work import LEASE_HEADER, held_briefly
from tests.helpers import UniqueNames, eventually

HOLD_S = 0.1


class HandOvers:
    """Counts the bus's `send_to_queue` (the hand-overs), calling the real one."""

    def __init__(self, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = bus.send_to_queue

        async def counted(queue: str, body: bytes, headers: Mapping[str, Any]) -> None:
            self.count += 1
            await real(queue, body, headers)

        monkeypatch.setattr(bus, "send_to_queue", counted)


class LongWork:
    """A handler whose work lasts until the test releases it."""

    def __init__(self, fail_first: bool = False) -> None:
        self.release = asyncio.Event()
        self.started: list[tuple[bytes, int]] = []
        self.finished: list[bytes] = []
        self.running = 0
        self.most_at_once = 0
        self.fail_first = fail_first

    async def __call__(self, delivery: Delivery) -> None:
        assert delivery.headers.get(LEASE_HEADER), "the work knows its lease"
        self.started.append((delivery.body, delivery.attempt))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        if self.fail_first and delivery.attempt == 1:
            raise RuntimeError("a passing fault")
        self.finished.append(delivery.body)


async def depth_is(bus: Bus, queue: str, expected: int) -> bool:
    return await bus.depth(queue) == expected


async def test_long_work_runs_once_while_its_delivery_is_handed_over(
    bus: Bus, unique: UniqueNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = unique("long")
    handovers = HandOvers(bus, monkeypatch)
    work = LongWork()
    await bus.consume(queue, ["long.*"], held_briefly(bus, work, hold_s=HOLD_S, limit=2))
    await bus.publish("long.1", b"a multi-GB precache")

    await eventually(lambda: handovers.count >= 3, message="handed over, again and again")
    assert work.started == [(b"a multi-GB precache", 1)]
    work.release.set()
    await eventually(lambda: work.finished == [b"a multi-GB precache"])
    await eventually(lambda: depth_is(bus, queue, 0), message="the lease acknowledged")
    assert work.started == [(b"a multi-GB precache", 1)], "worked once"
    assert await bus.depth(f"{queue}.dead") == 0


async def test_a_long_work_that_fails_takes_the_retry_path(
    bus: Bus, unique: UniqueNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = unique("fails")
    handovers = HandOvers(bus, monkeypatch)
    work = LongWork(fail_first=True)
    await bus.consume(queue, ["fails.*"], held_briefly(bus, work, hold_s=HOLD_S, limit=1))
    await bus.publish("fails.1", b"slow split")
    await eventually(lambda: handovers.count >= 2)
    work.release.set()
    await eventually(lambda: work.finished == [b"slow split"], message="the retry worked")
    assert work.started == [(b"slow split", 1), (b"slow split", 2)]
    await eventually(lambda: depth_is(bus, queue, 0))
    assert await bus.depth(f"{queue}.dead") == 0


async def test_no_more_than_limit_works_run_at_once(
    bus: Bus, unique: UniqueNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = unique("limit")
    handovers = HandOvers(bus, monkeypatch)
    work = LongWork()
    await bus.consume(queue, ["limit.*"], held_briefly(bus, work, hold_s=HOLD_S, limit=1))
    for n in range(3):
        await bus.publish("limit.x", f"file-{n}".encode(), headers={ATTEMPT_HEADER: 1})
    await eventually(lambda: handovers.count >= 6, message="the waiting ones handed over")
    assert len(work.started) == 1 and work.most_at_once == 1
    work.release.set()
    await eventually(lambda: len(work.finished) == 3, timeout=20)
    assert sorted(work.finished) == [b"file-0", b"file-1", b"file-2"]
    assert sorted(body for body, _ in work.started) == [b"file-0", b"file-1", b"file-2"]
    assert work.most_at_once == 1
    await eventually(lambda: depth_is(bus, queue, 0))
