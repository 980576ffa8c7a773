"""Several heads at once on one database and one bus, as a deployment with replicas runs them:
two head APIs, two brokers and two notifiers, each its own process on the real PostgreSQL,
RabbitMQ and S3 servers, with three edges (each talking to one of the heads).

PanDA sends the same request to both heads at the same moment, and another one to the second:
each request is recorded once, every file placed on an edge once (one assignment, attempt 1),
every range recorded once with its object in the store, and PanDA told once per request on
each channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from ess_cli.demo import request_body
from ess_cli.sample import SampleFile, make_sample_dataset
from ess_common.db.session import make_engine
from ess_common.store.base import range_key
from tests.conftest import AmqpServer, PostgresServer
from tests.e2e.cluster import Cluster, PandaEndpoint, cluster_env, forget, service_queues
from tests.helpers import S3Settings, eventually, free_port

pytestmark = pytest.mark.e2e

EDGES = ("edge-a", "edge-b", "edge-c")
EVENTS_PER_RANGE = 250
SIZES = (1200, 1000, 800, 1100, 900, 700)


@dataclass
class Heads:
    cluster: Cluster
    urls: list[str]
    panda: PandaEndpoint
    panda_queue: aio_pika.abc.AbstractQueue
    dataset: list[SampleFile]
    s3: S3Settings
    bucket: str


@pytest.fixture
async def heads(
    tmp_path: Path,
    postgres_server: PostgresServer,
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
) -> AsyncIterator[Heads]:
    db_url = await postgres_server.url()
    await postgres_server.truncate()
    amqp_url = await amqp_server.check()
    tag = uuid.uuid4().hex[:10]
    exchange = bucket = f"ess-heads-{tag}"
    panda_exchange = f"panda-heads-{tag}"
    ports = [free_port(), free_port()]
    env = cluster_env(
        db_url,
        amqp_url,
        exchange,
        ports[0],
        ESS_PANDA_EXCHANGE=panda_exchange,
        ESS_RETRY_BACKOFF_S="0.2",
        **s3_settings.env(bucket),
    )
    cluster = Cluster(tmp_path, env)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    panda = PandaEndpoint(tmp_path / "panda-files")
    panda.files_dir.mkdir()
    await panda.start()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        pex = await channel.declare_exchange(
            panda_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        panda_queue = await channel.declare_queue(f"{panda_exchange}.inbox", durable=True)
        await panda_queue.bind(pex, "request.*")
        for n, (url, port) in enumerate(zip(urls, ports, strict=True), start=1):
            cluster.start(f"head-api-{n}", "ess_head_api", ESS_HEAD_URL=url, ESS_API_PORT=str(port))
            cluster.start(f"broker-{n}", "ess_broker")
            cluster.start(f"notifier-{n}", "ess_notifier")
        for n, edge in enumerate(EDGES):
            cluster.start_edge(edge, ESS_HEAD_URL=urls[n % 2])
        async with httpx.AsyncClient(timeout=2) as client:
            for url in urls:

                async def ready(url: str = url) -> bool:
                    cluster.check_running()
                    with contextlib.suppress(httpx.HTTPError):
                        return (await client.get(f"{url}/readyz")).status_code == 200
                    return False

                await eventually(ready, timeout=60, message=f"head API {url} ready")
        await cluster.wait_edges(set(EDGES))
        dataset = make_sample_dataset(tmp_path / "dataset", SIZES)
        yield Heads(cluster, urls, panda, panda_queue, dataset, s3_settings, bucket)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
        await panda.stop()
        await connection.close()
        queues = service_queues(EDGES)
        await amqp_server.delete([f"{panda_exchange}.inbox"], [])
        await forget(
            amqp_server, s3_settings, exchange, queues, bucket=bucket, exchanges=(panda_exchange,)
        )


def _request(heads: Heads, key: str) -> dict[str, Any]:
    body = request_body(heads.dataset, EVENTS_PER_RANGE)
    body["idempotency_key"] = key
    body["dataset"] = f"mc16_13TeV:heads.{key}"
    body["notify"] = {"message": True, "callback_url": f"{heads.panda.url}/callback"}
    return body


async def _rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.exec_driver_sql(sql, args)).all()]
    finally:
        await engine.dispose()


async def test_two_heads_and_two_brokers_place_record_and_notify_once(heads: Heads) -> None:
    first, second = f"jedi-{uuid.uuid4().hex[:8]}", f"jedi-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=30) as client:
        # The same request to both heads at the same moment, and another to the second.
        answers = await asyncio.gather(
            client.post(f"{heads.urls[0]}/v1/requests", json=_request(heads, first)),
            client.post(f"{heads.urls[1]}/v1/requests", json=_request(heads, first)),
            client.post(f"{heads.urls[1]}/v1/requests", json=_request(heads, second)),
        )
        assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
        ids = [a.json()["id"] for a in answers]
        assert ids[0] == ids[1] != ids[2]
        request_ids = {ids[0], ids[2]}

        async def all_ready() -> bool:
            heads.cluster.check_running()
            for n, request_id in enumerate(sorted(request_ids)):
                # Either head answers for any request: they share the database.
                view = (await client.get(f"{heads.urls[n % 2]}/v1/requests/{request_id}")).json()
                assert view["status"] not in ("failed", "cancelled"), view
                if view["status"] != "ready":
                    return False
            return True

        await eventually(all_ready, timeout=240, interval=0.3, message="both requests ready")

    db = heads.cluster.env["ESS_DATABASE_URL"]

    async def notified() -> bool:
        heads.cluster.check_running()
        sent = await _rows(db, "SELECT 1 FROM notifications WHERE status = 'sent'")
        return len(sent) >= 2 * len(request_ids)

    await eventually(notified, timeout=60, message="PanDA told by message and callback")
    requests = await _rows(db, "SELECT id FROM requests")
    assert {r[0] for r in requests} == request_ids

    # Every file placed once: one assignment, on one of the edges, at its first attempt.
    files = await _rows(
        db, "SELECT id, request_id, lfn, n_events, status, edge, attempt, scope FROM files"
    )
    assert len(files) == 2 * len(SIZES)
    assert {(f[4], f[6]) for f in files} == {("split", 1)}
    assert {f[5] for f in files} <= set(EDGES)
    assigned = Counter(
        r[0] for r in await _rows(db, "SELECT file_id FROM request_events WHERE kind = 'assigned'")
    )
    assert assigned == {f[0]: 1 for f in files}

    # Every range recorded once, where the file's only attempt put it, and stored there.
    ranges = await _rows(
        db, "SELECT file_id, first_event, last_event, object_key, size FROM ranges"
    )
    expected = {
        (f[0], first, min(first + EVENTS_PER_RANGE - 1, f[3]))
        for f in files
        for first in range(1, f[3] + 1, EVENTS_PER_RANGE)
    }
    assert Counter((r[0], r[1], r[2]) for r in ranges) == dict.fromkeys(expected, 1)
    by_id = {f[0]: f for f in files}
    store = heads.s3.store(heads.bucket)
    await store.start()
    try:
        for file_id, first, last, key, size in ranges:
            f = by_id[file_id]
            assert key == range_key(f[7], f[2], EVENTS_PER_RANGE, file_id, 1, first, last)
            assert await store.size(key) == size
    finally:
        await store.close()

    # PanDA told once per request on each channel (a message is published before its
    # notification is marked sent), and ESS recorded each once.
    messages = []
    while (message := await heads.panda_queue.get(fail=False, no_ack=True)) is not None:
        messages.append(json.loads(message.body))
    assert sorted((m["event"], m["request_id"]) for m in messages) == sorted(
        ("request.ready", r) for r in request_ids
    )
    assert sorted(c["request_id"] for c in heads.panda.callbacks) == sorted(request_ids)
    rows = await _rows(db, "SELECT request_id, kind, status FROM notifications")
    assert sorted(rows) == sorted(
        (r, kind, "sent") for r in request_ids for kind in ("http", "message")
    )
