"""Periodic work (`every`): a failing round does not end the loop, a stop always does."""

from __future__ import annotations

import asyncio

from ess_common.runtime import every


async def test_a_failing_round_is_followed_by_the_next() -> None:
    rounds = 0
    third = asyncio.Event()

    async def work() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            third.set()
        if rounds == 1:
            raise RuntimeError("a server away for a moment")

    task = asyncio.create_task(every(0.01, work, "test"))
    async with asyncio.timeout(5):
        await third.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_the_loop_stops_even_when_its_work_swallows_the_cancellation() -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            # A client cleaning up under cancellation may end it quietly, or as another error.
            raise RuntimeError("channel closed") from None

    task = asyncio.create_task(every(0.01, work, "test"))
    await started.wait()
    task.cancel()
    async with asyncio.timeout(5):
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
