"""The chaos tests' own PostgreSQL and RabbitMQ, started once for the module that kills them
and removed after it; the machine's shared servers are never touched."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.private_servers import PrivatePostgres, PrivateRabbit


@pytest.fixture(scope="module")
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        await server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
async def private_rabbit() -> AsyncIterator[PrivateRabbit]:
    server = PrivateRabbit()
    try:
        await server.start()
        yield server
    finally:
        server.remove()
