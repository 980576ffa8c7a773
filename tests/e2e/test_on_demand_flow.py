"""On demand, every service its own process on the real servers, with tokens: PanDA registers a
dataset to be split on demand only; a pilot asks for ranges nobody prepared and gets them,
split by the edge of its site straight from the source in S3; the broker records them, so the
next ask is a plain lookup; past the edge's capacity the answer is 503 at once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import httpx
import pytest
import uproot

from ess_cli.sample import write_sample_file
from ess_common.checksums import adler32_of_file
from ess_common.store.base import on_demand_key
from ess_pilot.client import PilotClient
from tests.conftest import AmqpServer, PostgresServer
from tests.e2e.cluster import Cluster, SlowFiles, cluster_env
from tests.helpers import S3Settings, eventually, free_port

pytestmark = pytest.mark.e2e

SCOPE = "user.ess"
LFN = "DAOD.ondemand._000001.root"
#: A second file, at a storage endpoint that takes a second per read: its splits last.
SLOW_LFN = "DAOD.ondemand._000002.root"
N_EVENTS = 3000
EDGE = "edge-od"
TOKENS = {
    "panda": "panda-token-0123456789",
    "pilot": "pilot-token-0123456789",
    "edge": "edge-token-01234567890",
}


@dataclass
class OnDemandCluster:
    cluster: Cluster
    source: Path
    slow: SlowFiles
    workdir: Path

    def client(self, role: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.cluster.head_url,
            headers={"Authorization": f"Bearer {TOKENS[role]}"},
            timeout=30,
        )

    @property
    def edge_url(self) -> str:
        return self.cluster.edge_urls[EDGE]


@pytest.fixture(scope="module")
async def od(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
) -> AsyncIterator[OnDemandCluster]:
    workdir = tmp_path_factory.mktemp("on-demand")
    db_url = await postgres_server.url()
    await postgres_server.truncate()
    amqp_url = await amqp_server.check()
    exchange = bucket = f"ess-od-{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = cluster_env(
        db_url,
        amqp_url,
        exchange,
        port,
        ESS_TOKENS=json.dumps({role: [token] for role, token in TOKENS.items()}),
        ESS_EDGE_LOOKUP_TTL_S="5",
        **s3_settings.env(bucket),
    )
    source = workdir / "source.root"
    write_sample_file(source, N_EVENTS, seed=5)
    slow = SlowFiles(workdir / "storage", delay_s=1.0)
    (workdir / "storage").mkdir()
    (workdir / "storage" / SLOW_LFN).write_bytes(source.read_bytes())
    await slow.start()
    cluster = Cluster(workdir, env)
    try:
        cluster.start("head-api", "ess_head_api")
        await cluster.wait_healthy()
        cluster.start("broker", "ess_broker")
        cluster.start_edge(EDGE, ESS_EDGE_ON_DEMAND_SLOTS="1")
        async with httpx.AsyncClient(
            base_url=cluster.head_url,
            headers={"Authorization": f"Bearer {TOKENS['panda']}"},
            timeout=30,
        ) as panda:

            async def alive() -> bool:
                cluster.check_running()
                edges = (await panda.get("/v1/edges")).json()
                return any(e["name"] == EDGE and e["alive"] for e in edges)

            await eventually(alive, timeout=60, message="the edge heartbeats")
        # The file sits in S3, where data management says its replica is.
        store_env = s3_settings.store(bucket)
        await store_env.start()
        try:
            await store_env.put_file(f"sources/{LFN}", source)
        finally:
            await store_env.close()
        yield OnDemandCluster(cluster, source, slow, workdir)
    finally:
        cluster.stop_all()
        await slow.stop()


def _file(od: OnDemandCluster, lfn: str, source: str) -> dict[str, Any]:
    return {
        "scope": SCOPE,
        "lfn": lfn,
        "n_events": N_EVENTS,
        "size": od.source.stat().st_size,
        "adler32": adler32_of_file(od.source),
        "sources": [source],
        "replicas": [{"site": f"site-{EDGE}", "region": "region-1"}],
    }


def _request(od: OnDemandCluster, key: str) -> dict[str, Any]:
    bucket = od.cluster.env["ESS_STORE_URL"].removeprefix("s3://")
    return {
        "dataset": f"{SCOPE}:ondemand.{key}",
        "idempotency_key": key,
        "events_per_range": 1000,
        "prepare": False,
        "files": [
            _file(od, LFN, f"s3://{bucket}/sources/{LFN}"),
            _file(od, SLOW_LFN, od.slow.url(SLOW_LFN)),
        ],
    }


def _panda_range(i: int, start: int, last: int) -> dict[str, Any]:
    return {
        "eventRangeID": f"task-1-job-{i}",
        "LFN": LFN,
        "GUID": "2FC641BA-9A8C-4D3B-9A0D-1B2C3D4E5F60",
        "scope": SCOPE,
        "startEvent": start,
        "lastEvent": last,
    }


def _events(path: Path, start: int, last: int) -> dict[str, Any]:
    with uproot.open(path) as f:
        arrays = f["events"].arrays(library="ak", entry_start=start - 1, entry_stop=last)
    return {name: ak.to_list(arrays[name]) for name in arrays.fields}


async def test_a_dataset_registered_for_on_demand_is_served_to_pilots(
    od: OnDemandCluster, tmp_path: Path
) -> None:
    body = _request(od, "od-1")
    async with od.client("panda") as panda, od.client("pilot") as pilot:
        created = await panda.post("/v1/requests", json=body)
        assert created.status_code in (200, 201, 202), created.text
        request_id = created.json()["id"]

        async def ready() -> bool:
            view = (await panda.get(f"/v1/requests/{request_id}")).json()
            return bool(view["status"] == "ready")

        await eventually(ready, timeout=30, message="an on-demand request is ready at once")

        # Without on-demand, the pilot is told why it cannot have the range.
        async with PilotClient(od.cluster.head_url, tmp_path / "plain", token=TOKENS["pilot"]) as c:
            plain = await c.fetch([_panda_range(0, 101, 350)])
        (failed,) = plain.failed
        assert "not prepared" in (failed.reason or "")

        wanted = [_panda_range(1, 101, 350), _panda_range(2, 2801, 3000)]
        async with PilotClient(
            od.cluster.head_url,
            tmp_path / "pilot",
            token=TOKENS["pilot"],
            site=f"site-{EDGE}",
            on_demand=True,
        ) as client:
            result = await client.fetch(wanted)
        assert result.all_served, [o.reason for o in result.failed]
        for given, out in zip(wanted, result.payload, strict=True):
            assert out["eventRangeID"] == given["eventRangeID"]
            assert (out["startEvent"], out["lastEvent"]) == (
                1,
                given["lastEvent"] - given["startEvent"] + 1,
            )
            got = _events(Path(out["PFN"]), out["startEvent"], out["lastEvent"])
            assert got == _events(od.source, given["startEvent"], given["lastEvent"])

        # Recorded by the broker: the head's own lookup now answers with the split file.
        async def recorded() -> bool:
            answer = await pilot.get(
                "/v1/ranges",
                params={"scope": SCOPE, "LFN": LFN, "startEvent": 120, "lastEvent": 300},
            )
            return answer.status_code == 200 and [p["key"] for p in answer.json()["pieces"]] == [
                on_demand_key(SCOPE, LFN, 101, 350)
            ]

        await eventually(recorded, timeout=30, message="the broker records the on-demand range")

        # The edge's routes take the head's tokens.
        async with httpx.AsyncClient(base_url=od.edge_url, timeout=30) as anonymous:
            assert (await anonymous.get("/v1/cache")).status_code == 401
        async with httpx.AsyncClient(
            base_url=od.edge_url,
            headers={"Authorization": f"Bearer {TOKENS['pilot']}"},
            timeout=60,
        ) as edge:
            before = (await edge.get("/v1/cache")).json()["on_demand"]
            # The pilot's two asks were split one after the other (one slot): one was refused
            # and asked again after its Retry-After.
            assert before["started"] == 2

            # One slot: while a split runs, another span is refused at once, and an identical
            # ask shares the running split.
            def ask(start: int, last: int) -> Any:
                body = {"scope": SCOPE, "LFN": SLOW_LFN, "startEvent": start, "lastEvent": last}
                return edge.post("/v1/ranges/on-demand", json=body)

            asks = [asyncio.create_task(ask(1001, 1400)) for _ in range(2)]

            async def running() -> bool:
                stats = (await edge.get("/v1/cache")).json()["on_demand"]
                return bool(stats["in_flight"] == 1)

            await eventually(running, timeout=30, message="the split runs")
            refused = await ask(1401, 1800)
            answers = await asyncio.gather(*asks)
            stats = (await edge.get("/v1/cache")).json()["on_demand"]
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        assert answers[0].json() == answers[1].json()
        assert stats["started"] == before["started"] + 1
        assert stats["refused"] == before["refused"] + 1
