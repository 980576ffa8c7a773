"""Build the bus named by `ESS_BUS_URL`."""

from __future__ import annotations

from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.bus import Bus
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import EssSettings


def make_bus(settings: EssSettings) -> Bus:
    attempts, backoff, prefetch = settings.max_attempts, settings.retry_backoff_s, settings.prefetch
    if settings.bus_url.startswith("memory://"):
        return MemoryBus(
            settings.exchange,
            max_attempts=attempts,
            backoff_s=backoff,
            prefetch=prefetch,
            backoff_max_s=settings.retry_backoff_max_s,
        )
    return AmqpBus(
        settings.bus_url,
        settings.exchange,
        max_attempts=attempts,
        backoff_s=backoff,
        prefetch=prefetch,
        delivery_limit=settings.queue_delivery_limit,
        backoff_max_s=settings.retry_backoff_max_s,
    )
