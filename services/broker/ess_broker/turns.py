"""One piece of a message's CPU work per turn of the event loop.

A consumer that acknowledges a batch of results gets as many new deliveries at once, and the
event loop runs every handler that became ready in one turn: reading and checking a result of
hundreds of ranges takes a millisecond or more, so a burst of sixty holds the loop for a tenth
of a second, while the transaction that records the previous batch has its answer from the
database and waits behind them. The database then idles, and the broker's rate is the sum of
the two instead of the larger.

`Turns.take()` lets one holder at a time do its work and keeps the turn until the loop has gone
round once: whatever else is ready (a transaction's next statement) runs between two pieces of
work. Nothing is reordered but the CPU work itself, which stays in arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Turns:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def take(self) -> AsyncIterator[None]:
        async with self._lock:
            yield
            # Held across one pass of the loop: the next holder starts in a later turn.
            await asyncio.sleep(0)
