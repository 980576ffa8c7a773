"""A running deployment for the operations tests: the head (two worker processes), a broker, a
notifier and two edges, each its own OS process on the real servers, each service with its
metrics where Prometheus would scrape it; bearer tokens on, as a shared deployment has them.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aio_pika
import httpx

from ess_cli.demo import request_body
from ess_cli.sample import SampleFile, make_sample_dataset
from tests.conftest import AmqpServer, PostgresServer
from tests.e2e.cluster import Cluster, cluster_env, forget, panda_inbox, service_queues
from tests.helpers import S3Settings, eventually, free_port

ADMIN_TOKEN = "admin-token-of-the-operations-tests"
EDGE_TOKEN = "edge-token-of-the-operations-tests"
EDGES = ("edge-a", "edge-b")
EVENTS_PER_RANGE = 250


@dataclass
class Deployment:
    cluster: Cluster
    http: httpx.AsyncClient
    dataset: list[SampleFile]
    amqp_url: str
    #: Prometheus jobs and their `host:port` targets (each serving `/metrics`).
    scrape_targets: dict[str, list[str]] = field(default_factory=dict)

    @property
    def head_url(self) -> str:
        return self.cluster.head_url

    async def submit(
        self,
        files: list[SampleFile],
        key: str | None = None,
        source: Callable[[SampleFile], str] | None = None,
    ) -> dict[str, Any]:
        """Asks for `files` (read from `source(file)`, else their local path)."""
        body = request_body(files, EVENTS_PER_RANGE)
        if source is not None:
            entries = cast(list[dict[str, Any]], body["files"])
            for entry, f in zip(entries, files, strict=True):
                entry["sources"] = [source(f)]
        body["idempotency_key"] = key or f"ops-{uuid.uuid4().hex[:10]}"
        body["dataset"] = f"user.ess:ops.{body['idempotency_key']}"
        answer = await self.http.post("/v1/requests", json=body)
        assert answer.status_code == 201, answer.text
        created: dict[str, Any] = answer.json()
        return created

    async def publish(self, routing_key: str, body: bytes) -> None:
        """A message on the deployment's exchange, as PanDA would publish one."""
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(self.cluster.env["ESS_EXCHANGE"])
            await exchange.publish(aio_pika.Message(body), routing_key=routing_key)

    async def wait_ready(self, request_id: str) -> dict[str, Any]:
        async def ready() -> dict[str, Any] | None:
            self.cluster.check_running()
            view: dict[str, Any] = (await self.http.get(f"/v1/requests/{request_id}")).json()
            assert view["status"] not in ("failed", "cancelled"), view
            return view if view["status"] == "ready" else None

        try:
            found: dict[str, Any] | None = await eventually(
                ready, timeout=90, interval=0.2, message=f"request {request_id} ready"
            )
        except AssertionError:
            print(self.cluster.logs())
            raise
        assert found is not None
        return found


@contextlib.asynccontextmanager
async def running_deployment(
    workdir: Path,
    postgres_server: PostgresServer,
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
) -> AsyncIterator[Deployment]:
    db_url = await postgres_server.url()
    await postgres_server.truncate()
    amqp_url = await amqp_server.check()
    tag = uuid.uuid4().hex[:10]
    exchange = bucket = f"ess-ops-{tag}"
    port = free_port()
    env = cluster_env(
        db_url,
        amqp_url,
        exchange,
        port,
        ESS_PANDA_EXCHANGE=exchange.replace("ess-ops-", "panda-ops-"),
        ESS_RETRY_BACKOFF_S="0.2",
        ESS_TOKENS=json.dumps({"admin": [ADMIN_TOKEN], "edge": [EDGE_TOKEN]}),
        **s3_settings.env(bucket),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    inbox = await panda_inbox(amqp_url, env["ESS_PANDA_EXCHANGE"])
    cluster = Cluster(workdir, env)
    targets: dict[str, list[str]] = {"head": [f"127.0.0.1:{port}"]}
    http = httpx.AsyncClient(
        base_url=cluster.head_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    try:
        cluster.start("head-api", "ess_head_api", ESS_HEAD_WORKERS="2")
        for name, module in (("broker", "ess_broker"), ("notifier", "ess_notifier")):
            metrics_port = free_port()
            targets[name] = [f"127.0.0.1:{metrics_port}"]
            cluster.start(name, module, ESS_METRICS_PORT=str(metrics_port))
        targets["edge"] = []
        for name in EDGES:
            metrics_port = free_port()
            targets["edge"].append(f"127.0.0.1:{metrics_port}")
            cluster.start_edge(name, ESS_METRICS_PORT=str(metrics_port))
        await cluster.wait_healthy()
        await cluster.wait_edges(set(EDGES), token=ADMIN_TOKEN)
        dataset = make_sample_dataset(workdir / "dataset")
        yield Deployment(cluster, http, dataset, amqp_url, targets)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
        await http.aclose()
        queues = service_queues(EDGES)
        panda = exchange.replace("ess-ops-", "panda-ops-")
        await amqp_server.delete([inbox], [])
        await forget(amqp_server, s3_settings, exchange, queues, bucket=bucket, exchanges=(panda,))
