"""An edge's `/readyz` asks its bus and its object store (it has no database) and answers 503
naming each one that did not answer, while `/healthz` says the process is alive."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ess_common.cache_space import CacheSpace
from ess_common.messaging.amqp import AmqpBus
from ess_common.messaging.bus import audit_queue, dead_exchange
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore
from ess_common.store.s3 import S3Store
from ess_edge.server import EdgeState, create_edge_app
from tests.conftest import AmqpServer
from tests.helpers import S3Settings, free_port
from tests.tcp_proxy import relay_to


async def edge_probes(
    tmp_path: Path, store: ObjectStore, bus: AmqpBus
) -> tuple[httpx.Response, httpx.Response]:
    settings = EdgeSettings(edge_name="edge-ready", edge_cache_dir=tmp_path / "cache")
    space = CacheSpace(settings.edge_cache_dir, settings.edge_quota_bytes)
    async with httpx.AsyncClient() as http:
        app = create_edge_app(EdgeState.build(settings, store, space, http, bus))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            return await client.get("/healthz"), await client.get("/readyz")


@pytest.mark.parametrize("store", ["s3"], indirect=True)
async def test_an_edge_is_ready_until_its_bus_and_store_stop_answering(
    tmp_path: Path, store: ObjectStore, s3_settings: S3Settings, amqp_server: AmqpServer
) -> None:
    url = urlsplit(await amqp_server.check())
    exchange = f"ess-edge-ready-{uuid.uuid4().hex[:12]}"
    async with relay_to(url.hostname or "127.0.0.1", url.port or 5672) as relay:
        login = f"{url.username}:{url.password}@" if url.username else ""
        bus = AmqpBus(f"amqp://{login}127.0.0.1:{relay.port}{url.path or '/'}", exchange)
        await bus.start()
        unreachable = S3Store(
            "ess-ready",
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            access_key=s3_settings.access_key,
            secret_key=s3_settings.secret_key,
            region=s3_settings.region,
            create_bucket=False,
        )
        await unreachable.start()
        try:
            health, ready = await edge_probes(tmp_path, store, bus)
            assert health.status_code == 200
            assert (ready.status_code, ready.json()) == (
                200,
                {"status": "ready", "edge": "edge-ready"},
            )

            await relay.cut()
            health, ready = await edge_probes(tmp_path, unreachable, bus)
            assert health.status_code == 200, "the process is alive"
            assert ready.status_code == 503
            assert set(ready.json()["failed"]) == {"bus", "store"}, ready.json()
        finally:
            await unreachable.close()
            await bus.close()
    family = [f"{audit_queue(exchange)}{s}" for s in ("", ".retry", ".dead")]
    await amqp_server.delete(family, [exchange, dead_exchange(exchange)])
