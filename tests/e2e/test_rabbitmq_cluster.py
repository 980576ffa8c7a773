"""Losing a RabbitMQ node loses no work: every ESS service its own process, connected to a
three-node cluster of this machine's RabbitMQ (each service given every node's address), and
the node holding the leaders of ESS's quorum queues killed (`kill -9`) while a request is being
worked on. The services reconnect to the nodes left, the queues' followers take over, and the
request completes with every range recorded exactly once."""

from __future__ import annotations

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
    workdir: Path
    exchange: str

    def files(self, lfns: list[str]) -> list[dict[str, Any]]:
        source = self.workdir / "source.root"
        size, adler32 = source.stat().st_size, adler32_of_file(source)
        for lfn in lfns:
            shutil.copyfile(source, self.workdir / "storage" / lfn)
        return [
            {
                "scope": SCOPE,
                "lfn": lfn,
                "n_events": N_EVENTS,
                "size": size,
                "adler32": adler32,
                "sources": [self.slow.url(lfn)],
            }
            for lfn in lfns
        ]

    async def rows(self, request_id: str) -> tuple[list[File], list[Range]]:
        async with make_session_maker(self.engine)() as session:
            files = (await session.scalars(select(File).where(File.request_id == request_id))).all()
            ranges = (
                await session.scalars(select(Range).where(Range.request_id == request_id))
            ).all()
        return list(files), list(ranges)


@pytest.fixture
async def flow(
    tmp_path: Path, postgres_server: PostgresServer, s3_settings: S3Settings
) -> AsyncIterator[Flow]:
    async with rabbitmq_cluster(tmp_path / "rabbitmq") as rabbit:
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
            **s3_settings.env(bucket),
        )
        _write_root_file(tmp_path / "source.root")
        (tmp_path / "storage").mkdir()
        slow = SlowFiles(tmp_path / "storage", delay_s=SLOW_S)
        await slow.start()
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
            yield Flow(rabbit, cluster, engine, http, slow, tmp_path, exchange)
        finally:
            cluster.stop_all()
            await http.aclose()
            await engine.dispose()
            await slow.stop()
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


async def test_the_node_of_the_queue_leaders_killed_mid_request_loses_nothing(
    flow: Flow,
) -> None:
    lfns = [f"NTUP.rmq.{uuid.uuid4().hex[:6]}._{i:06d}.root" for i in range(N_FILES)]
    body = {
        "dataset": f"{SCOPE}:rmq.{uuid.uuid4().hex[:8]}",
        "idempotency_key": f"rmq-{uuid.uuid4().hex[:8]}",
        "events_per_range": EPR,
        "files": flow.files(lfns),
    }
    head = flow.cluster.head_url
    created = await flow.http.post(f"{head}/v1/requests", json=body)
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]

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

    async def ready() -> bool:
        flow.cluster.check_running()
        answer = (await flow.http.get(f"{head}/v1/requests/{request_id}")).json()
        assert answer["status"] not in ("failed", "cancelled"), answer
        return bool(answer["status"] == "ready")

    try:
        await eventually(ready, timeout=120, interval=0.3, message="ready after the node died")
    except AssertionError:
        print(flow.cluster.logs())
        raise

    # Every range exactly once: each file split, into exactly its ranges, none twice.
    files, ranges = await flow.rows(request_id)
    assert len(files) == N_FILES
    expected = [(first, min(first + EPR - 1, N_EVENTS)) for first in range(1, N_EVENTS, EPR)]
    for f in files:
        assert f.status == FileStatus.SPLIT, (f.lfn, f.status)
        got = sorted((r.first_event, r.last_event) for r in ranges if r.file_id == f.id)
        assert got == expected, (f.lfn, got)
    assert len(ranges) == N_FILES * len(expected)
    # The queues' leaders moved to the nodes left.
    leaders_after = await flow.rabbit.leaders(f"{flow.exchange}.", via=flow.rabbit.nodes[-1])
    assert leader.name in set(leaders_before.values())
    assert set(leaders_after) == set(leaders_before)
    assert leader.name not in set(leaders_after.values()), leaders_after
