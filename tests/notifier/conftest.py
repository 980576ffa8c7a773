"""What the notifier's tests share: an HTTP client, PanDA's callback endpoint, an in-process
bus for tests whose notices are callbacks only, and an exchange standing in for PanDA's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import pytest

from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.bus import Bus
from ess_common.messaging.memory import MemoryBus
from tests.notifier.test_notifier import CallbackReceiver

if TYPE_CHECKING:
    from tests.conftest import AmqpServer


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    """For tests whose notifications are HTTP callbacks only: the bus carries nothing."""
    bus = MemoryBus(f"ess-t-{uuid.uuid4().hex[:12]}", max_attempts=3, backoff_s=0.05)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def panda_exchange(bus: Bus, amqp_server: AmqpServer) -> AsyncIterator[str]:
    """An exchange of the test's own standing in for PanDA's; deleted afterwards."""
    name = f"{bus.exchange}.panda"
    try:
        yield name
    finally:
        if isinstance(bus, AmqpBus):
            await amqp_server.delete([], [name])
