"""ESS on a three-node cluster of this machine's RabbitMQ, every ESS service its own process
given every node's address, the nodes' `consumer_timeout` cut to 5 s. In order:

- a precache that takes three times the consumer timeout completes once: its delivery is
  handed back to its queue while the download goes on, so RabbitMQ never takes it back;
- the node holding the leaders of ESS's quorum queues is killed (`kill -9`) while a request
  is being worked on: the services reconnect to the nodes left, the queues' followers take
  over, and the request completes with every range recorded exactly once."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uproot
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ess_common.checksums import adler32_of_file
from ess_common.db.models import File, FileStatus, Range
from ess_common.db.session import make_engine, make_session_maker
from tests.conftest import PostgresServer
from tests.e2e.cluster import Cluster, SlowFiles, cluster_env, panda_inbox
from tests.e2e.rabbitmq_cluster import RabbitCluster, rabbitmq_cluster
from tests.helpers import S3Settings, eventually, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

SCOPE = "user.ess"
N_EVENTS = 2000
EPR = 500
N_FILES = 6
EDGES = ("edge-a", "edge-b")
#: Seconds each source download waits before its bytes come: the request is still being
#: worked on when the node is killed.
SLOW_S = 1.5
#: RabbitMQ's consumer_timeout on the cluster's nodes, and how long the edges hold a delivery.
CONSUMER_TIMEOUT_S = 5
HOLD_S = 2
#: The download that outlasts the consumer timeout.
LONG_S = 3 * CONSUMER_TIMEOUT_S


def _write_root_file(path: Path) -> None:
    rng = np.random.default_rng(11)
    with uproot.recreate(path) as f:
        tree = f.mktree("Events", {"event": np.int64, "pt": np.float32})
        tree.extend(
            {
                "event": np.arange(N_EVENTS, dtype=np.int64),
                "pt": rng.exponential(20, N_EVENTS).astype(np.float32),
            }
        )


@dataclass
class Flow:
    rabbit: RabbitCluster
    cluster: Cluster
    engine: AsyncEngine
    http: httpx.AsyncClient
    slow: SlowFiles
    very_slow: SlowFiles
    workdir: Path
    exchange: str

    def files(self, lfns: list[str], source: SlowFiles | None = None) -> list[dict[str, Any]]:
        served = source or self.slow
        root_file = self.workdir / "source.root"
        size, adler32 = root_file.stat().st_size, adler32_of_file(root_file)
        for lfn in lfns:
            shutil.copyfile(root_file, self.workdir / "storage" / lfn)
        return [
            {
                "scope": SCOPE,
                "lfn": lfn,
                "n_events": N_EVENTS,
                "size": size,
                "adler32": adler32,
                "sources": [served.url(lfn)],
            }
            for lfn in lfns
        ]

    async def submit(self, lfns: list[str], source: SlowFiles | None = None) -> str:
        body = {
            "dataset": f"{SCOPE}:rmq.{uuid.uuid4().hex[:8]}",
            "idempotency_key": f"rmq-{uuid.uuid4().hex[:8]}",
            "events_per_range": EPR,
            "files": self.files(lfns, source),
        }
        created = await self.http.post(f"{self.cluster.head_url}/v1/requests", json=body)
        assert created.status_code == 201, created.text
        request_id: str = created.json()["id"]
        return request_id

    async def wait_ready(self, request_id: str, within_s: float) -> None:
        async def ready() -> bool:
            self.cluster.check_running()
            answer = (
                await self.http.get(f"{self.cluster.head_url}/v1/requests/{request_id}")
            ).json()
            assert answer["status"] not in ("failed", "cancelled"), answer
            return bool(answer["status"] == "ready")

        try:
            await eventually(ready, timeout=within_s, interval=0.3, message="request ready")
        except AssertionError:
            print(self.cluster.logs())
            raise

    async def check_exactly_once(self, request_id: str, n_files: int) -> None:
        """Each file split, into exactly its ranges, none twice."""
        files, ranges = await self.rows(request_id)
        assert len(files) == n_files
        expected = [(first, min(first + EPR - 1, N_EVENTS)) for first in range(1, N_EVENTS, EPR)]
        for f in files:
            assert f.status == FileStatus.SPLIT, (f.lfn, f.status)
            got = sorted((r.first_event, r.last_event) for r in ranges if r.file_id == f.id)
            assert got == expected, (f.lfn, got)
        assert len(ranges) == n_files * len(expected)

    def connections_made(self) -> dict[str, int]:
        """How many times each service (an edge with its workers) has connected to RabbitMQ."""
        return {
            name: (self.workdir / f"{name}.log")
            .read_text(errors="replace")
            .count('"amqp.connected"')
            for name in self.cluster.services
        }

    async def rows(self, request_id: str) -> tuple[list[File], list[Range]]:
        async with make_session_maker(self.engine)() as session:
            files = (await session.scalars(select(File).where(File.request_id == request_id))).all()
            ranges = (
                await session.scalars(select(Range).where(Range.request_id == request_id))
            ).all()
        return list(files), list(ranges)


@pytest.fixture(scope="module")
async def flow(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    s3_settings: S3Settings,
) -> AsyncIterator[Flow]:
    tmp_path = tmp_path_factory.mktemp("rabbitmq-cluster")
    # The timeout is checked at each channel tick, once a second (scripts/rabbitmq-cluster.sh).
    timeout = f"consumer_timeout = {CONSUMER_TIMEOUT_S * 1000}"
    async with rabbitmq_cluster(tmp_path / "rabbitmq", [timeout]) as rabbit:
        db_url = await postgres_server.url()
        await postgres_server.truncate()
        tag = uuid.uuid4().hex[:10]
        exchange = bucket = f"ess-rmq-{tag}"
        env = cluster_env(
            db_url,
            rabbit.bus_url,
            exchange,
            free_port(),
            ESS_PANDA_EXCHANGE=f"panda-{exchange}",
            ESS_RETRY_BACKOFF_S="0.2",
            ESS_DELIVERY_HOLD_S=str(HOLD_S),
            **s3_settings.env(bucket),
        )
        _write_root_file(tmp_path / "source.root")
        (tmp_path / "storage").mkdir()
        slow = SlowFiles(tmp_path / "storage", delay_s=SLOW_S)
        await slow.start()
        very_slow = SlowFiles(tmp_path / "storage", delay_s=LONG_S)
        await very_slow.start()
        await panda_inbox(rabbit.nodes[0].url, env["ESS_PANDA_EXCHANGE"])
        cluster = Cluster(tmp_path, env)
        engine = make_engine(db_url)
        http = httpx.AsyncClient(timeout=30)
        try:
            cluster.start("head-api", "ess_head_api")
            cluster.start("broker", "ess_broker")
            cluster.start("notifier", "ess_notifier")
            for name in EDGES:
                cluster.start_edge(name)
            await cluster.wait_healthy()
            await cluster.wait_edges(set(EDGES))
            yield Flow(rabbit, cluster, engine, http, slow, very_slow, tmp_path, exchange)
        finally:
            cluster.stop_all()
            await http.aclose()
            await engine.dispose()
            await slow.stop()
            await very_slow.stop()
            # The cluster goes with its queues; the bucket is the test S3 server's.
            await forget_bucket(s3_settings, bucket)


async def forget_bucket(s3_settings: S3Settings, bucket: str) -> None:
    store = s3_settings.store(bucket, create_bucket=False)
    await store.start()
    try:
        paginator = store.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                await store.client.delete_object(Bucket=bucket, Key=obj["Key"])
        await store.client.delete_bucket(Bucket=bucket)
    finally:
        await store.close()


async def test_a_precache_longer_than_the_consumer_timeout_completes_once(flow: Flow) -> None:
    node = flow.rabbit.nodes[0]
    held = flow.rabbit.ctl(node, "eval", "application:get_env(rabbit, consumer_timeout).")
    assert held.strip() == f"{{ok,{CONSUMER_TIMEOUT_S * 1000}}}", held
    lfn = f"NTUP.long.{uuid.uuid4().hex[:6]}._000001.root"
    request_id = await flow.submit([lfn], flow.very_slow)

    await flow.wait_ready(request_id, within_s=LONG_S + 60)

    await flow.check_exactly_once(request_id, 1)
    assert flow.very_slow.gets == {lfn: 1}, "downloaded once"
    logs = "".join((flow.workdir / f"{e}.log").read_text(errors="replace") for e in EDGES)
    assert logs.count('"work.handed_over"') >= 3, "the delivery was handed over while it ran"
    # RabbitMQ never had to take a delivery back.
    for log in (flow.workdir / "rabbitmq").glob("node-*/log/*.log"):
        assert "timed out" not in log.read_text(errors="replace"), log


async def test_connections_closed_mid_request_are_made_again(flow: Flow) -> None:
    """Every client connection of every node closed by the server while a request is worked
    on: the services connect again, re-declare and resume, and the request completes."""
    lfns = [f"NTUP.closed.{uuid.uuid4().hex[:6]}._{i:06d}.root" for i in range(4)]
    request_id = await flow.submit(lfns)

    async def working() -> bool:
        files, _ = await flow.rows(request_id)
        return any(f.status != FileStatus.PENDING for f in files)

    await eventually(working, timeout=30, message="files assigned")
    before = await asyncio.to_thread(flow.connections_made)
    for node in flow.rabbit.nodes:
        await asyncio.to_thread(
            flow.rabbit.ctl, node, "close_all_connections", "closed by the cluster test"
        )

    await flow.wait_ready(request_id, within_s=90)

    await flow.check_exactly_once(request_id, len(lfns))
    after = await asyncio.to_thread(flow.connections_made)
    assert all(after[name] > before[name] for name in before), (before, after)


async def test_the_node_of_the_queue_leaders_killed_mid_request_loses_nothing(
    flow: Flow,
) -> None:
    lfns = [f"NTUP.rmq.{uuid.uuid4().hex[:6]}._{i:06d}.root" for i in range(N_FILES)]
    request_id = await flow.submit(lfns)
    head = flow.cluster.head_url

    # Mid-flow: files are with the edges, and the request is far from ready.
    async def working() -> bool:
        files, _ = await flow.rows(request_id)
        return any(f.status != FileStatus.PENDING for f in files)

    await eventually(working, timeout=30, message="files assigned")
    leader = await flow.rabbit.leading_node(f"{flow.exchange}.")
    leaders_before = await flow.rabbit.leaders(f"{flow.exchange}.", via=flow.rabbit.nodes[-1])
    status = (await flow.http.get(f"{head}/v1/requests/{request_id}")).json()["status"]
    assert status != "ready", "the request finished before the node could be killed"
    flow.rabbit.kill(leader)

    await flow.wait_ready(request_id, within_s=120)

    # Every range exactly once: each file split, into exactly its ranges, none twice.
    await flow.check_exactly_once(request_id, N_FILES)
    # The queues' leaders moved to the nodes left.
    leaders_after = await flow.rabbit.leaders(f"{flow.exchange}.", via=flow.rabbit.nodes[-1])
    assert leader.name in set(leaders_before.values())
    assert set(leaders_after) == set(leaders_before)
    assert leader.name not in set(leaders_after.values()), leaders_after
