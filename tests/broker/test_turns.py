"""CPU work taken in turns: one holder per pass of the event loop, so that whatever else is
ready (a transaction's next statement) runs between two holders, not after all of them."""

from __future__ import annotations

import asyncio
import itertools

from ess_broker.turns import Turns


async def test_other_work_runs_between_two_holders() -> None:
    turns = Turns()
    order: list[str] = []

    async def holder(i: int) -> None:
        async with turns.take():
            order.append(f"holder {i}")

    async def other() -> None:
        for _ in range(6):
            order.append("other")
            await asyncio.sleep(0)

    await asyncio.gather(*(holder(i) for i in range(4)), other())
    holders = [i for i, what in enumerate(order) if what != "other"]
    assert [order[i] for i in holders] == [f"holder {i}" for i in range(4)]  # arrival order
    assert all(b - a > 1 for a, b in itertools.pairwise(holders)), order


async def test_a_holder_that_fails_gives_the_turn_on() -> None:
    turns = Turns()

    async def failing() -> None:
        async with turns.take():
            raise ValueError("bad message")

    async def after() -> str:
        async with turns.take():
            return "done"

    failed, done = await asyncio.gather(failing(), after(), return_exceptions=True)
    assert isinstance(failed, ValueError) and done == "done"
