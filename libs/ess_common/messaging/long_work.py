"""Work that may outlast the message broker's patience with one delivery.

RabbitMQ takes a delivery back when its consumer has not acknowledged it within
`consumer_timeout` (30 min by default): it closes the consumer's channel and delivers the
message again, and the work starts a second time while the first still runs. A multi-GB
precache or a slow split can take longer than that.

`held_briefly` keeps each delivery for at most `hold_s` (well below the timeout). Work still
running then is handed over: the same message, with a lease id (`x-ess-lease`), is put back on
its queue (confirmed), and only then is the held delivery acknowledged. When the lease comes
back to the process running the work, it is held again (and handed over again if need be);
when the work is done, the delivery held at the time is settled with the work's outcome (ack,
or the retry and dead-letter path of any other failure), and a copy of a finished lease is
acknowledged unworked. So the work stays in its replicated queue the whole time: if the
process dies, the lease is delivered again (after a restart, or to the next process of the
same consumer) and the work starts afresh, as it would have without the hand-over.

At most `limit` works run at once per handler (the consumer's prefetch): a new delivery that
finds no free slot within `hold_s` is handed over unworked, to wait on its queue rather than in
the consumer's hands.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from dataclasses import replace

import structlog

from ess_common.messaging.bus import ROUTING_KEY_HEADER, Bus, Delivery, Handler

log = structlog.get_logger("ess.long_work")

LEASE_HEADER = "x-ess-lease"
#: Finished leases remembered, so that a stray copy of one is not worked again.
REMEMBERED = 10_000


class _Works:
    def __init__(self, limit: int) -> None:
        self.running: dict[str, asyncio.Task[None]] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.slots = asyncio.Semaphore(limit)

    def finish(self, lease: str) -> None:
        self.finished[lease] = None
        while len(self.finished) > REMEMBERED:
            self.finished.popitem(last=False)


def held_briefly(bus: Bus, handler: Handler, *, hold_s: float, limit: int) -> Handler:
    works = _Works(limit)

    async def hand_over(delivery: Delivery, lease: str) -> None:
        headers = {
            **delivery.headers,
            LEASE_HEADER: lease,
            # The copy goes straight to the queue: it keeps the key it was first sent with.
            ROUTING_KEY_HEADER: delivery.routing_key,
        }
        await bus.send_to_queue(delivery.queue, delivery.body, headers)

    async def run(delivery: Delivery) -> None:
        try:
            await handler(delivery)
        finally:
            works.slots.release()

    async def handle(delivery: Delivery) -> None:
        # The whole of this delivery's hold, waiting for a slot included.
        deadline = asyncio.get_running_loop().time() + hold_s
        given = delivery.headers.get(LEASE_HEADER)
        lease = given.decode() if isinstance(given, bytes) else str(given or "")
        if lease in works.finished:
            log.info("work.lease_already_done", lease=lease)
            return
        task = works.running.get(lease)
        if task is None:
            lease = lease or uuid.uuid4().hex
            try:
                await asyncio.wait_for(works.slots.acquire(), hold_s)
            except TimeoutError:
                await hand_over(delivery, lease)
                log.info("work.waits_on_queue", lease=lease, queue=delivery.queue)
                return
            leased = replace(delivery, headers={**delivery.headers, LEASE_HEADER: lease})
            task = asyncio.create_task(run(leased), name=f"work:{lease}")
            works.running[lease] = task
        try:
            await asyncio.wait(
                {task}, timeout=max(0.0, deadline - asyncio.get_running_loop().time())
            )
        except asyncio.CancelledError:
            # The consumer is stopping: the work stops with it, and its delivery (not
            # acknowledged) will be given again.
            task.cancel()
            works.running.pop(lease, None)
            raise
        if not task.done():
            await hand_over(delivery, lease)
            log.info("work.handed_over", lease=lease, queue=delivery.queue)
            return
        works.running.pop(lease, None)
        if task.cancelled() or task.exception() is not None:
            # This delivery takes the failure down the usual path (retry, dead letter); a
            # retried message starts the work again under the same lease.
            await task
        works.finish(lease)

    return handle
