"""A head whose database is out of reach answers 503 with Retry-After, as its OpenAPI document
says, never 500: when the server is down, and when it ended the pooled connections (a
restart), until a fresh connection works again."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ess_common.db.hot_reads import hot_reads
from ess_common.db.session import make_engine, make_session_maker
from ess_common.store.local import LocalStore
from tests.head_api.support import SCOPE, request_body, running_head
from tests.helpers import eventually, free_port

if TYPE_CHECKING:
    from tests.conftest import PostgresServer

LOOKUP: dict[str, str | int] = {
    "scope": SCOPE,
    "LFN": "EVNT.08716373._000090.pool.root.1",
    "startEvent": 1,
    "lastEvent": 9,
}


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "unavailable" in response.json()["detail"]


async def test_a_database_that_is_down_gets_503(tmp_path: Path) -> None:
    port = free_port()
    engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/ess")
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    try:
        async with hot_reads(engine), running_head(make_session_maker(engine), store) as head:
            assert_unavailable(await head.client.get("/v1/ranges", params=LOOKUP))
            assert_unavailable(await head.client.get("/v1/requests/no-such-request"))
            assert_unavailable(
                await head.client.post("/v1/requests", json=request_body("down", "f"))
            )
            # The probes stay up, and say what is wrong.
            assert (await head.client.get("/healthz")).status_code == 200
    finally:
        await engine.dispose()


async def test_connections_the_server_ended_get_503_until_fresh_ones_work(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    await postgres_server.truncate()
    url = await postgres_server.url()
    engine = make_engine(url)
    admin = create_async_engine(url, poolclass=NullPool)
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    try:
        async with running_head(make_session_maker(engine), store) as head:
            body = request_body("restart", "EVNT.08716373._000091.pool.root.1")
            created = await head.client.post("/v1/requests", json=body)
            assert created.status_code == 201, created.text
            path = created.headers["Location"]
            assert (await head.client.get(path)).status_code == 200
            async with admin.connect() as connection:
                await connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )

            first = await head.client.get(path)
            if first.status_code != 200:
                assert_unavailable(first)

            async def answered() -> bool:
                return (await head.client.get(path)).status_code == 200

            await eventually(answered, message="the head never got over the lost connections")
    finally:
        await admin.dispose()
        await engine.dispose()
