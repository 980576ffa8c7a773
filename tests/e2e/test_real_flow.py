"""The whole flow on the real servers, every service its own process.

PanDA publishes `request.created` over AMQP for a dataset of real ROOT files (sources by
file://, http:// and s3://); the test waits for `request.ready` on the PanDA exchange and
the HTTP callback, then plays the pilot: every event range through the head API, downloaded
by its signed URL, verified, and compared branch by branch with the source.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import skhep_testdata

from ess_cli.compare import compare_events
from ess_cli.pilot import download
from ess_common.checksums import adler32_of_file
from ess_common.db.session import make_engine
from tests.conftest import AmqpServer, PostgresServer
from tests.e2e.cluster import Cluster, PandaEndpoint, forget, service_queues
from tests.helpers import S3Settings, eventually, free_port

pytestmark = pytest.mark.e2e

EVENTS_PER_RANGE = 500
SCOPE = "mc16_13TeV"
#: Real files nobody here wrote, and the scheme each is fetched by.
SOURCES = [
    ("uproot-HZZ.root", 2421, "file"),
    ("uproot-Zmumu.root", 2304, "http"),
    ("uproot-HZZ-lz4.root", 2421, "s3"),
]


@dataclass
class Dataset:
    files: list[dict[str, Any]]
    local: dict[str, Path]


@dataclass
class Flow:
    cluster: Cluster
    panda: PandaEndpoint
    panda_queue: aio_pika.abc.AbstractQueue
    channel: aio_pika.abc.AbstractChannel
    exchange: str
    dataset: Dataset

    async def publish(self, body: bytes) -> None:
        target = await self.channel.get_exchange(self.exchange)
        await target.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="request.created",
        )


async def _dataset(workdir: Path, panda: PandaEndpoint, s3: S3Settings, bucket: str) -> Dataset:
    files: list[dict[str, Any]] = []
    local: dict[str, Path] = {}
    data_store = s3.store(bucket)
    await data_store.start()
    try:
        for name, n_events, scheme in SOURCES:
            path = Path(skhep_testdata.data_path(name))
            lfn = f"NTUP.{uuid.uuid4().hex[:6]}._{len(files) + 1:06d}.{name}"
            copy = panda.files_dir / lfn
            shutil.copyfile(path, copy)
            local[lfn] = path
            if scheme == "file":
                source = copy.resolve().as_uri()
            elif scheme == "http":
                source = f"{panda.url}/files/{lfn}"
            else:
                await data_store.put_file(f"data/{lfn}", copy)
                source = f"s3://{bucket}/data/{lfn}"
            files.append(
                {
                    "scope": SCOPE,
                    "lfn": lfn,
                    "guid": str(uuid.uuid4()).upper(),
                    "n_events": n_events,
                    "size": path.stat().st_size,
                    "adler32": adler32_of_file(path),
                    "sources": [source],
                }
            )
    finally:
        await data_store.close()
    return Dataset(files, local)


@pytest.fixture
async def flow(
    tmp_path: Path,
    postgres_server: PostgresServer,
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
) -> AsyncIterator[Flow]:
    db_url = await postgres_server.url()
    await postgres_server.truncate()
    amqp_url = await amqp_server.check()
    tag = uuid.uuid4().hex[:10]
    exchange, panda_exchange, bucket = f"ess-e2e-{tag}", f"panda-e2e-{tag}", f"ess-e2e-{tag}"
    files_dir = tmp_path / "panda-files"
    files_dir.mkdir()
    panda = PandaEndpoint(files_dir)
    await panda.start()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESS_")},
        "ESS_DATABASE_URL": db_url,
        "ESS_BUS_URL": amqp_url,
        "ESS_EXCHANGE": exchange,
        "ESS_PANDA_EXCHANGE": panda_exchange,
        "ESS_HEAD_URL": f"http://127.0.0.1:{port}",
        "ESS_API_PORT": str(port),
        "ESS_LOG_FORMAT": "json",
        "ESS_SWEEP_INTERVAL_S": "0.5",
        "ESS_HEARTBEAT_INTERVAL_S": "1",
        "ESS_RETRY_BACKOFF_S": "0.2",
        **s3_settings.env(bucket),
    }
    cluster = Cluster(tmp_path, env)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    pex = await channel.declare_exchange(panda_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    panda_queue = await channel.declare_queue(f"{panda_exchange}.inbox", durable=True)
    await panda_queue.bind(pex, "request.*")
    try:
        dataset = await _dataset(tmp_path, panda, s3_settings, bucket)
        for name, module in (
            ("head-api", "ess_head_api"),
            ("broker", "ess_broker"),
            ("notifier", "ess_notifier"),
        ):
            cluster.start(name, module)
        cluster.start_edge("edge-a")
        cluster.start_edge("edge-b")
        await cluster.wait_healthy()
        await cluster.wait_edges({"edge-a", "edge-b"})
        yield Flow(cluster, panda, panda_queue, channel, exchange, dataset)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
        await panda.stop()
        await connection.close()
        queues = service_queues(["edge-a", "edge-b"])
        await amqp_server.delete([f"{panda_exchange}.inbox"], [])
        await forget(
            amqp_server, s3_settings, exchange, queues, bucket=bucket, exchanges=(panda_exchange,)
        )


def _request(dataset: Dataset, key: str, callback: str) -> dict[str, Any]:
    return {
        "dataset": f"{SCOPE}:e2e.{key}",
        "idempotency_key": key,
        "events_per_range": EVENTS_PER_RANGE,
        "priority": 10,
        "notify": {"message": True, "callback_url": callback},
        "files": dataset.files,
    }


async def _panda_messages(flow: Flow) -> list[dict[str, Any]]:
    messages = []
    while (message := await flow.panda_queue.get(fail=False, no_ack=True)) is not None:
        messages.append(json.loads(message.body))
    return messages


async def test_request_over_amqp_to_verified_ranges(flow: Flow, tmp_path: Path) -> None:
    key = f"jedi-{uuid.uuid4().hex[:8]}"
    body = json.dumps(_request(flow.dataset, key, f"{flow.panda.url}/callback")).encode()
    # A bad message first: it must be dead-lettered with its reason and block nothing.
    await flow.publish(b'{"event_type": "request.created", "dataset": "no-colon"}')
    await flow.publish(body)
    await flow.publish(body)  # PanDA resubmits: still one request

    received: list[dict[str, Any]] = []

    async def ready() -> bool:
        flow.cluster.check_running()
        received.extend(await _panda_messages(flow))
        failed = [m for m in received if m["event"] == "request.failed"]
        assert not failed, f"{failed}\n{flow.cluster.logs()}"
        return any(m["event"] == "request.ready" for m in received)

    await eventually(ready, timeout=240, interval=0.3, message="request.ready reaches PanDA")
    await eventually(lambda: flow.panda.callbacks, timeout=60, message="HTTP callback arrives")

    head = flow.cluster.head_url
    async with httpx.AsyncClient(timeout=30) as client:
        requests = (await client.get(f"{head}/v1/requests")).json()
        mine = [r for r in requests if r["idempotency_key"] == key]
        assert len(mine) == 1, requests
        request_id = mine[0]["id"]
        status = (await client.get(f"{head}/v1/requests/{request_id}")).json()
        assert status["status"] == "ready"
        assert {f["status"] for f in status["files"]} == {"split"}
        assert {f["edge"] for f in status["files"]} <= {"edge-a", "edge-b"}

        dead = (await client.get(f"{head}/v1/dead-letters")).json()
        assert any("dataset" in d["reason"] for d in dead), dead

        edges = (await client.get(f"{head}/v1/edges")).json()
        assert {e["name"] for e in edges} == {"edge-a", "edge-b"}
        assert all(e["free_bytes"] > 0 and e["version"] for e in edges)

        # Every range, through the head API, verified, equal to the source branch by branch.
        n_ranges = 0
        for f in flow.dataset.files:
            source = flow.dataset.local[f["lfn"]]
            for first in range(1, f["n_events"] + 1, EVENTS_PER_RANGE):
                last = min(first + EVENTS_PER_RANGE - 1, f["n_events"])
                answer = await client.get(
                    f"{head}/v1/ranges",
                    params={
                        "scope": SCOPE,
                        "LFN": f["lfn"],
                        "startEvent": first,
                        "lastEvent": last,
                    },
                )
                assert answer.status_code == 200, answer.text
                (piece,) = answer.json()["pieces"]
                assert (piece["file_first_event"], piece["file_last_event"]) == (first, last)
                path = await download(client, piece, tmp_path / "pilot")
                checks = compare_events(source, path, first, last, 1, last - first + 1)
                assert checks and all(c.equal for c in checks), checks
                assert {c.events for c in checks} == {last - first + 1}
                n_ranges += 1
        assert status["ranges"] == n_ranges

        # A range across two range files comes back as both pieces, renumbered locally.
        f = flow.dataset.files[0]
        start, last = EVENTS_PER_RANGE - 5, EVENTS_PER_RANGE + 5
        answer = (
            await client.get(
                f"{head}/v1/ranges",
                params={"scope": SCOPE, "LFN": f["lfn"], "startEvent": start, "lastEvent": last},
            )
        ).json()
        pieces = answer["pieces"]
        assert [(p["start_event"], p["last_event"]) for p in pieces] == [
            (start, EVENTS_PER_RANGE),
            (EVENTS_PER_RANGE + 1, last),
        ]
        assert [(p["local_start_event"], p["local_last_event"]) for p in pieces] == [
            (EVENTS_PER_RANGE - 5, EVENTS_PER_RANGE),
            (1, 5),
        ]
        for p in pieces:
            path = await download(client, p, tmp_path / "straddle")
            source = flow.dataset.local[f["lfn"]]
            checks = compare_events(
                source,
                path,
                p["start_event"],
                p["last_event"],
                p["local_start_event"],
                p["local_last_event"],
            )
            assert all(c.equal for c in checks)

    # PanDA heard once on each channel, and ESS recorded that it did.
    received.extend(await _panda_messages(flow))
    assert [m["event"] for m in received] == ["request.ready"]
    assert received[0]["request_id"] == request_id
    assert [c["request_id"] for c in flow.panda.callbacks] == [request_id]
    engine = make_engine(flow.cluster.env["ESS_DATABASE_URL"])
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.exec_driver_sql(
                    "SELECT kind, status FROM notifications WHERE request_id = $1",
                    (request_id,),
                )
            ).all()
    finally:
        await engine.dispose()
    assert sorted(rows) == [("http", "sent"), ("message", "sent")]
