"""Edges as a CDN, every service its own process on the real servers: two brokers at once and
three edges with a small cache quota.

In order, on one cluster: a 30-file dataset spreads over the three edges, each file assigned
once, no edge promised more than its quota nor holding more on disk, inputs evicted to make
room; a pilot reads ranges through an edge (pulled through once, then hits) and the head points
it at the edge of its site; a drained edge gets no new files; an edge killed mid-request loses
its files to the others and the request completes with every range exactly once; wiped and
restarted, that edge comes back for new work only, its stale results counting for nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uproot
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ess_broker.placement import Candidate, choose_edge
from ess_common.checksums import adler32_of_file
from ess_common.db.models import File, FileStatus, OutboxMessage, Range
from ess_common.db.session import make_engine, make_session_maker
from ess_common.store.s3 import S3Store
from ess_pilot.client import PilotClient
from tests.conftest import AmqpServer, PostgresServer
from tests.e2e.cluster import Cluster, SlowFiles, cluster_env, forget, service_queues
from tests.helpers import S3Settings, eventually, free_port

pytestmark = pytest.mark.e2e

SCOPE = "user.ess"
N_EVENTS = 2000
EPR = 500
EDGES = ("edge-a", "edge-b", "edge-c")
#: Room for one file in work (its input and its split) and a few cached inputs.
QUOTA = 320 * 1024
LOST_AFTER_S = 4.0
#: Seconds the slow source takes to start answering: downloads are still running when an
#: edge is killed.
SLOW_S = 1.0


def _write_root_file(path: Path) -> None:
    rng = np.random.default_rng(7)
    with uproot.recreate(path) as f:
        tree = f.mktree(
            "Events", {"event": np.int64, "pt": np.float32, "eta": np.float32, "nJet": np.int32}
        )
        tree.extend(
            {
                "event": np.arange(N_EVENTS, dtype=np.int64),
                "pt": rng.exponential(20, N_EVENTS).astype(np.float32),
                "eta": rng.normal(0, 2, N_EVENTS).astype(np.float32),
                "nJet": rng.integers(0, 5, N_EVENTS).astype(np.int32),
            }
        )


@dataclass
class Cdn:
    cluster: Cluster
    engine: AsyncEngine
    http: httpx.AsyncClient
    source: Path
    slow: SlowFiles
    workdir: Path
    store: S3Store

    @property
    def head(self) -> str:
        return self.cluster.head_url

    def files(self, tag: str, lfns: Iterable[str], *, slow: bool = False) -> list[dict[str, Any]]:
        size, adler32 = self.source.stat().st_size, adler32_of_file(self.source)
        entries = []
        for lfn in lfns:
            copy = self.workdir / "storage" / lfn
            copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(self.source, copy)
            entries.append(
                {
                    "scope": SCOPE,
                    "lfn": lfn,
                    "n_events": N_EVENTS,
                    "size": size,
                    "adler32": adler32,
                    "sources": [self.slow.url(lfn) if slow else copy.resolve().as_uri()],
                }
            )
        return entries

    async def submit(self, key: str, files: list[dict[str, Any]]) -> str:
        body = {
            "dataset": f"{SCOPE}:cdn.{key}",
            "idempotency_key": key,
            "events_per_range": EPR,
            "files": files,
        }
        response = await self.http.post(f"{self.head}/v1/requests", json=body)
        assert response.status_code == 201, response.text
        request_id: str = response.json()["id"]
        return request_id

    async def request(self, request_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = (
            await self.http.get(f"{self.head}/v1/requests/{request_id}")
        ).json()
        return answer

    async def rows(self, request_id: str) -> tuple[list[File], list[Range]]:
        async with make_session_maker(self.engine)() as session:
            files = (await session.scalars(select(File).where(File.request_id == request_id))).all()
            ranges = (
                await session.scalars(select(Range).where(Range.request_id == request_id))
            ).all()
        return list(files), list(ranges)

    async def objects_of_other_attempts(self, request_id: str) -> list[str]:
        """The range objects of the request's files that are not of their last attempt."""
        files, _ = await self.rows(request_id)
        others = []
        for f in files:
            prefix = f"ranges/{f.scope}/{f.lfn}/"
            pages = self.store.client.get_paginator("list_objects_v2")
            async for page in pages.paginate(Bucket=self.store.bucket, Prefix=prefix):
                keys = [str(found["Key"]) for found in page.get("Contents", [])]
                others += [k for k in keys if f"/f{f.id}.a{f.attempt}/" not in k]
        return others

    async def assignments(self, request_id: str) -> list[dict[str, Any]]:
        """Every `file.assigned` the brokers wrote for the request, oldest first."""
        async with self.engine.connect() as conn:
            bodies = (
                await conn.scalars(
                    select(OutboxMessage.body)
                    .where(OutboxMessage.routing_key.startswith("file.assigned."))
                    .order_by(OutboxMessage.id)
                )
            ).all()
        works = [json.loads(b)["work"] for b in bodies]
        return [w for w in works if w["request_id"] == request_id]

    def check_quota(self) -> None:
        """What every edge holds on disk stays within its quota."""
        for name in EDGES:
            cache = self.cluster.edge_cache(name)
            held = 0
            for path in cache.rglob("*"):
                if path.relative_to(cache).parts[0] in (".ess", "pins"):
                    continue
                with contextlib.suppress(FileNotFoundError):  # removed while we looked
                    held += path.stat().st_size if path.is_file() else 0
            assert held <= QUOTA, f"{name} holds {held} bytes, quota {QUOTA}"

    async def check_promised(self) -> None:
        """The brokers never promised an edge more than its quota."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(File.edge, File.size).where(
                        File.status.in_((FileStatus.ASSIGNED, FileStatus.CACHED))
                    )
                )
            ).all()
        promised: dict[str | None, int] = {}
        for edge, size in rows:
            promised[edge] = promised.get(edge, 0) + size
        assert all(v <= QUOTA for v in promised.values()), promised

    async def wait_ready(self, request_id: str, within_s: float = 90) -> dict[str, Any]:
        async def ready() -> dict[str, Any] | None:
            self.cluster.check_running()
            self.check_quota()
            await self.check_promised()
            answer = await self.request(request_id)
            assert answer["status"] != "failed", answer
            return answer if answer["status"] == "ready" else None

        try:
            found: dict[str, Any] | None = await eventually(
                ready, timeout=within_s, interval=0.2, message="ready"
            )
        except AssertionError:
            print(self.cluster.logs())
            raise
        assert found is not None
        return found

    async def check_exactly_once(self, request_id: str) -> list[tuple[int, str | None, int]]:
        """Every file split once, into exactly its ranges, none twice, from its last attempt."""
        files, ranges = await self.rows(request_id)
        by_file: dict[int, list[Range]] = {}
        for r in ranges:
            assert r.file_id is not None
            by_file.setdefault(r.file_id, []).append(r)
        expected = [(first, min(first + EPR - 1, N_EVENTS)) for first in range(1, N_EVENTS, EPR)]
        for f in files:
            assert f.status == FileStatus.SPLIT, (f.lfn, f.status)
            got = sorted((r.first_event, r.last_event) for r in by_file.get(f.id, []))
            assert got == expected, (f.lfn, got)
            assert {f"/f{f.id}.a{f.attempt}/" in r.object_key for r in by_file[f.id]} == {True}
        assert len(ranges) == len(files) * len(expected)
        return sorted((f.id, f.edge, f.attempt) for f in files)

    def lfns_for(self, prefix: str, per_edge: dict[str, int], live: Iterable[str]) -> list[str]:
        """LFNs that the spread gives `per_edge[name]` each to the live edges (equal quotas)."""
        pool = [Candidate(n, f"site-{n}", "region-1", QUOTA, QUOTA, 0) for n in live]
        wanted, chosen = dict(per_edge), []
        for i in range(10_000):
            lfn = f"{prefix}._{i:06d}.root"
            edge = choose_edge(f"{SCOPE}:{lfn}", 1, pool)
            assert edge is not None
            if wanted.get(edge.name, 0) > 0:
                wanted[edge.name] -= 1
                chosen.append(lfn)
            if not any(wanted.values()):
                return chosen
        raise AssertionError(f"no LFNs for {per_edge}")


@pytest.fixture(scope="module")
async def cdn(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
) -> AsyncIterator[Cdn]:
    workdir = tmp_path_factory.mktemp("cdn")
    db_url = await postgres_server.url()
    await postgres_server.truncate()
    amqp_url = await amqp_server.check()
    tag = uuid.uuid4().hex[:10]
    exchange = bucket = f"ess-cdn-{tag}"
    port = free_port()
    env = cluster_env(
        db_url,
        amqp_url,
        exchange,
        port,
        ESS_EDGE_LOST_AFTER_S=str(LOST_AFTER_S),
        ESS_RETRY_BACKOFF_S="0.1",
        ESS_MAX_ATTEMPTS="3",
        ESS_EDGE_QUOTA_BYTES=str(QUOTA),
        ESS_EDGE_EVICT_INTERVAL_S="0.3",
        ESS_EDGE_LOOKUP_TTL_S="5",
        **s3_settings.env(bucket),
    )
    source = workdir / "source.root"
    _write_root_file(source)
    slow = SlowFiles(workdir / "storage", delay_s=SLOW_S)
    (workdir / "storage").mkdir()
    await slow.start()
    cluster = Cluster(workdir, env)
    engine = make_engine(db_url)
    http = httpx.AsyncClient(timeout=30)
    store = s3_settings.store(bucket)
    try:
        await store.start()
        cluster.start("head-api", "ess_head_api")
        # Two brokers at once: they share the sweep and the requests.
        cluster.start("broker-1", "ess_broker")
        cluster.start("broker-2", "ess_broker")
        for name in EDGES:
            cluster.start_edge(name)
        await cluster.wait_healthy()
        await cluster.wait_edges(set(EDGES))
        yield Cdn(cluster, engine, http, source, slow, workdir, store)
    finally:
        cluster.stop_all()
        await store.close()
        await http.aclose()
        await engine.dispose()
        await slow.stop()
        queues = service_queues(EDGES)
        await forget(amqp_server, s3_settings, exchange, queues, bucket=bucket)


async def test_a_30_file_dataset_spreads_over_the_edges_within_their_quota(cdn: Cdn) -> None:
    lfns = [f"NTUP.spread.{uuid.uuid4().hex[:6]}._{i:06d}.root" for i in range(30)]
    request_id = await cdn.submit(f"spread-{uuid.uuid4().hex[:8]}", cdn.files("a", lfns))

    await cdn.wait_ready(request_id)

    files = await cdn.check_exactly_once(request_id)
    per_edge = {name: sum(1 for _, edge, _ in files if edge == name) for name in EDGES}
    assert all(n > 0 for n in per_edge.values()), per_edge
    # Two brokers, yet each file was assigned exactly once.
    works = await cdn.assignments(request_id)
    assert sorted(w["file_id"] for w in works) == [file_id for file_id, _, _ in files]
    assert {attempt for _, _, attempt in files} == {1}
    # The quota (room for one file in work) made the edges evict inputs they had split.
    logs = "".join((cdn.workdir / f"{name}.log").read_text(errors="replace") for name in EDGES)
    assert '"cache.evicted"' in logs


async def test_a_pilot_reads_ranges_through_the_edge_of_its_site(cdn: Cdn, tmp_path: Path) -> None:
    lfns = [f"NTUP.pilot.{uuid.uuid4().hex[:6]}._{i:06d}.root" for i in range(2)]
    request_id = await cdn.submit(f"pilot-{uuid.uuid4().hex[:8]}", cdn.files("p", lfns))
    await cdn.wait_ready(request_id)
    edge_url = cdn.cluster.edge_urls["edge-a"]

    # The head points a pilot at the site's edge, the object store staying the fallback.
    hinted = await cdn.http.get(
        f"{cdn.head}/v1/ranges",
        params={
            "scope": SCOPE,
            "LFN": lfns[0],
            "startEvent": 1,
            "lastEvent": 10,
            "site": "site-edge-a",
        },
    )
    (piece,) = hinted.json()["pieces"]
    assert piece["edge_url"] == f"{edge_url}/v1/objects/{piece['key']}"
    assert piece["url"].startswith(cdn.cluster.env["ESS_S3_ENDPOINT_URL"])

    ranges = [
        {
            "eventRangeID": f"1-2-3-{first}-1",
            "LFN": lfn,
            "GUID": "",
            "scope": SCOPE,
            "startEvent": first,
            "lastEvent": first + 9,
        }
        for lfn in lfns
        for first in range(1, N_EVENTS, EPR)
    ]
    for pilot in ("one", "two"):
        async with PilotClient(
            cdn.head, tmp_path / pilot, edge_url=edge_url, retries=0, progress=False
        ) as client:
            result = await client.fetch(ranges)
        assert result.all_served, [o.reason for o in result.failed]
        assert [(p["startEvent"], p["lastEvent"]) for p in result.payload] == [(1, 10)] * 8
    stats = (await cdn.http.get(f"{edge_url}/v1/cache")).json()
    # Eight range files, each pulled from the object store once; the second pilot hit them.
    assert stats["objects"]["pulled"] == 8
    assert stats["objects"]["hits"] == 8
    assert stats["lookups"]["head_fetches"] == 2


async def test_a_drained_edge_gets_no_new_files(cdn: Cdn) -> None:
    drained = (await cdn.http.post(f"{cdn.head}/v1/edges/edge-c/drain")).json()
    assert drained["status"] == "draining"
    try:
        # LFNs the spread would give edge-c three of, were it taking work.
        lfns = cdn.lfns_for(f"NTUP.drain.{uuid.uuid4().hex[:6]}", {e: 3 for e in EDGES}, EDGES)
        request_id = await cdn.submit(f"drain-{uuid.uuid4().hex[:8]}", cdn.files("d", lfns))
        await cdn.wait_ready(request_id)
        files = await cdn.check_exactly_once(request_id)
        assert {edge for _, edge, _ in files} == {"edge-a", "edge-b"}
    finally:
        enabled = (await cdn.http.post(f"{cdn.head}/v1/edges/edge-c/enable")).json()
    assert enabled["status"] == "alive"


async def test_an_edge_killed_mid_request_then_wiped_loses_and_duplicates_nothing(
    cdn: Cdn,
) -> None:
    victim = "edge-b"
    lfns = cdn.lfns_for(f"NTUP.kill.{uuid.uuid4().hex[:6]}", {e: 4 for e in EDGES}, EDGES)
    request_id = await cdn.submit(f"kill-{uuid.uuid4().hex[:8]}", cdn.files("k", lfns, slow=True))

    async def victim_busy() -> bool:
        files, _ = await cdn.rows(request_id)
        mine = [f for f in files if f.edge == victim]
        return sum(f.status == FileStatus.ASSIGNED for f in mine) >= 2

    await eventually(victim_busy, timeout=30, message=f"{victim} has downloads running")
    cdn.cluster.stop(victim, signal.SIGKILL)

    await cdn.wait_ready(request_id)
    files = await cdn.check_exactly_once(request_id)
    assert victim not in {edge for _, edge, _ in files}
    assert any(attempt > 1 for _, _, attempt in files), "no file of the killed edge was moved"
    edges = {e["name"]: e for e in (await cdn.http.get(f"{cdn.head}/v1/edges")).json()}
    assert edges[victim]["status"] == "lost"

    # Wiped while stopped and started again: it is alive for new work only. What its queues
    # still held of its old assignments it drops unworked (the head says other edges have
    # them now): nothing of the moved files is fetched or uploaded by it.
    shutil.rmtree(cdn.cluster.edge_cache(victim))
    cdn.cluster.start_edge(victim)
    await cdn.cluster.wait_edges({victim})

    def moved_on_seen() -> bool:
        return '"work.moved_on"' in cdn.cluster.services[victim].log.read_text()

    await eventually(moved_on_seen, timeout=60, interval=0.3, message="old work dropped")
    again = cdn.lfns_for(f"NTUP.back.{uuid.uuid4().hex[:6]}", {e: 2 for e in EDGES}, EDGES)
    later = await cdn.submit(f"back-{uuid.uuid4().hex[:8]}", cdn.files("b", again))
    await cdn.wait_ready(later)
    back = await cdn.check_exactly_once(later)
    assert victim in {edge for _, edge, _ in back}
    assert await cdn.check_exactly_once(request_id) == files
    # Only the last attempt of each file has objects: none from the victim's old ones.
    assert await cdn.objects_of_other_attempts(request_id) == []
    logs = "".join(cdn.cluster.services[b].log.read_text() for b in ("broker-1", "broker-2"))
    assert '"result.stale"' not in logs
