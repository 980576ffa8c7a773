"""The AMQP connection of a bus: aio-pika's robust connection, reconnecting forever, with a
backoff, to the next of several addresses (the nodes of a RabbitMQ cluster).

aio-pika's `RobustConnection` re-opens its channels once connected again, re-declares the
exchanges and queues declared through them (with their arguments and bindings) and resumes
their consumers; it retries a failed attempt after `reconnect_interval`, always at the same
address. This module is the one place that knows how it does so (aio-pika 10.2, checked at
import): each attempt goes to the next address, and the interval doubles after each failed
attempt up to a cap, back to its start once connected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import version
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from ess_common import metrics

log = structlog.get_logger("ess.amqp")

_WRITTEN_FOR = "10.2."
#: One attempt of RobustConnection's reconnecting loop (private to aio-pika).
_connect_transport: Callable[[RobustConnection], Awaitable[None]] | None = vars(
    RobustConnection
).get("_RobustConnection__connect_transport")
if not version("aio-pika").startswith(_WRITTEN_FOR) or _connect_transport is None:
    raise ImportError(
        f"ess_common.messaging.amqp_connection is written for aio-pika {_WRITTEN_FOR}x, "
        f"found {version('aio-pika')}: check how RobustConnection reconnects"
    )

#: First wait after a failed attempt, and the most it grows to.
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 30.0
#: How long one attempt may take: a node that does not answer at all is given up for the next.
CONNECT_TIMEOUT_S = 10.0


def bus_addresses(url: str) -> list[str]:
    """The addresses in `ESS_BUS_URL`: one AMQP URL, or several separated by commas (each
    node of a cluster, tried in turn)."""
    addresses = [part.strip() for part in url.split(",") if part.strip()]
    if not addresses:
        raise ValueError("no AMQP address in the bus URL")
    return addresses


class FailoverConnection(RobustConnection):
    """A robust connection that moves to the next address after each failed attempt."""

    addresses: Sequence[URL] = ()

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        super().__init__(url, loop=loop, **kwargs)
        self._next = 0
        self.reconnect_interval = BACKOFF_START_S

    async def _RobustConnection__connect_transport(self) -> None:
        # Called by RobustConnection's reconnecting loop for each attempt, the first included.
        if self.addresses:
            self.url = self.addresses[self._next % len(self.addresses)]
        try:
            assert _connect_transport is not None
            await _connect_transport(self)
        except BaseException as exc:
            self._next += 1
            metrics.AMQP_CONNECT_FAILURES.inc()
            log.warning(
                "amqp.connect_failed",
                address=str(self.url.with_password("***") if self.url.password else self.url),
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=self.reconnect_interval,
            )
            self.reconnect_interval = min(BACKOFF_CAP_S, self.reconnect_interval * 2)
            raise
        self.reconnect_interval = BACKOFF_START_S
        log.info("amqp.connected", host=self.url.host, port=self.url.port)


async def connect(url: str) -> AbstractRobustConnection:
    """Connect to the first address that answers; wait (forever) while none does. Once
    connected, a lost connection is re-made the same way."""
    addresses = [URL(a) for a in bus_addresses(url)]
    connection_class = type("BusConnection", (FailoverConnection,), {"addresses": addresses})
    return await aio_pika.connect_robust(
        str(addresses[0]),
        connection_class=connection_class,
        fail_fast=False,
        timeout=CONNECT_TIMEOUT_S,
    )
