"""The edges' `split.done` results, recorded several to a transaction.

Every result of a request takes the request's row lock (exactly one of them must see the last
file split), so the results of one request are recorded one after the other, each with its
own commit, however many the consumer holds at once. Here the `split.done` results that arrive
while a transaction is running wait for it and then go in together, in one transaction
(`handle_splits_done`: one statement for all their ranges): a busy queue costs a commit per
batch, not per result, and an idle one records each result at once, alone.

A batch that fails is recorded again one result per transaction, so that an error belongs
to the delivery that caused it (a bad message is refused alone, the rest are recorded) and
each delivery is acknowledged, retried or dead-lettered on its own. Each delivery's handler
returns only when its result is committed, and only then is it acknowledged. Other results
(`file.cached`, `file.failed`, on-demand splits) go through `transactional`, one each.

Consumes: the results queue's deliveries (after the enrollment check); produces: the
bookkeeping's rows and outbox events.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from ess_broker.bookkeeping import handle_splits_done
from ess_broker.turns import Turns
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import Event, SplitDone
from ess_common.messaging.bus import Delivery, EventHandler
from ess_common.messaging.handlers import Routes, flush_quietly, parse_for, transactional
from ess_common.messaging.outbox import OutboxRelay, wrote_events

log = structlog.get_logger("ess.broker")


class ResultBatches:
    def __init__(
        self,
        sessions: SessionMaker,
        relay: OutboxRelay,
        others: Routes[AsyncSession],
        *,
        max_batch: int = 64,
    ) -> None:
        self.sessions = sessions
        self.relay = relay
        self.max_batch = max_batch
        self._others = transactional(sessions, relay, others)
        self._accepted: tuple[type[Event], ...] = (SplitDone, *others.events)
        self._waiting: list[tuple[SplitDone, asyncio.Future[None]]] = []
        self._recording = False
        #: Results are parsed one per turn of the event loop (`ess_broker.turns`).
        self._turns = Turns()

    @property
    def handler(self) -> EventHandler:
        """What a results queue consumes: bound to `split.done` and the others' events."""
        return EventHandler(self._accepted, self.handle)

    async def handle(self, delivery: Delivery) -> None:
        async with self._turns.take():
            event = parse_for(delivery, *self._accepted)
        if not isinstance(event, SplitDone):
            await self._others(delivery)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, done))
        if not self._recording:
            # This delivery's task records what is waiting, its own result first, until
            # nothing is; the others' tasks wait for their futures.
            self._recording = True
            try:
                while self._waiting:
                    batch = self._waiting[: self.max_batch]
                    del self._waiting[: len(batch)]
                    await self._record(batch)
            finally:
                self._recording = False
        await done

    async def _record(self, batch: list[tuple[SplitDone, asyncio.Future[None]]]) -> None:
        try:
            wrote = await self._record_together(batch)
        finally:
            # Stopped midway (the consumer is cancelled): no delivery waits for ever.
            for _, done in batch:
                if not done.done():
                    done.cancel()
        if wrote:
            await flush_quietly(self.relay)

    async def _record_together(self, batch: list[tuple[SplitDone, asyncio.Future[None]]]) -> bool:
        """Record the batch; whether it wrote to the outbox."""
        try:
            async with unit_of_work(self.sessions) as session:
                await handle_splits_done(session, [event for event, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return False
            log.info("results.batch_failed", results=len(batch), reason=type(exc).__name__)
            wrote = False
            for event, done in batch:
                try:
                    async with unit_of_work(self.sessions) as session:
                        await handle_splits_done(session, [event])
                except Exception as one:
                    _settle(done, one)
                else:
                    wrote |= wrote_events(session)
                    _settle(done, None)
            return wrote
        for _, done in batch:
            _settle(done, None)
        return wrote_events(session)


def _settle(done: asyncio.Future[None], error: Exception | None) -> None:
    """The delivery's outcome, unless its handler was cancelled meanwhile."""
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
