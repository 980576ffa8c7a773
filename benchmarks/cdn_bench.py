"""The CDN part of ``benchmarks.placement_bench``: pilots downloading range files through a real
edge process against straight from the S3 server.

Uploads ``n_objects`` range-file-sized objects to a fresh bucket of the test S3 server, starts
``python -m ess_edge`` (RabbitMQ for its queues and heartbeats, that bucket as its object
store), and plays ``n_downloads`` pilot downloads, 8 at a time, of objects drawn with a Zipf
popularity (a few files asked by many pilots, most by few): first each straight from S3 by a
signed URL, then each through the edge. Reports the edge's hit ratio, the pulls it made, and
the time to first byte and to the last of each path. Everything runs on 127.0.0.1; the bucket,
the edge's queues and its cache are removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import httpx

from ess_cli.embedded import free_port
from ess_common.store.s3 import S3Store

PILOT_TOKEN = "cdn-bench-pilot-token"
CONCURRENCY = 8
ZIPF_S = 1.1
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _local(url: str, what: str) -> str:
    if urlsplit(url).hostname not in LOCAL_HOSTS:
        raise SystemExit(f"{what} {url} is not on 127.0.0.1: the benchmark runs locally only")
    return url


@dataclass
class Timing:
    ttfb_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    bytes: int = 0
    wall_s: float = 0.0

    def add(self, ttfb: float, total: float, size: int) -> None:
        self.ttfb_s.append(ttfb)
        self.total_s.append(total)
        self.bytes += size


def _ms(values: Sequence[float], q: float) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


@dataclass
class CdnResult:
    n_objects: int
    object_bytes: int
    n_downloads: int
    direct: Timing
    edge: Timing
    hits: Timing
    misses: Timing
    stats: dict[str, int | float]
    #: Which object each download asked for.
    asked: list[int]

    def markdown(self) -> list[str]:
        rows = [
            ("S3 server, signed URL", self.direct),
            ("edge, every download", self.edge),
            ("edge, hits (from its disk)", self.hits),
            ("edge, misses (pulled through)", self.misses),
        ]
        mb = self.object_bytes / 10**6
        return [
            "## Pilot downloads: through an edge process vs straight from the S3 server",
            "",
            f"{self.n_downloads} downloads, {CONCURRENCY} at a time, of {self.n_objects} objects "
            f"of {mb:.1f} MB drawn with a Zipf popularity (s = {ZIPF_S}); the same sequence "
            "for both paths, S3 first (after one unmeasured read of every object), then the "
            "edge starting with an empty cache. Time to first byte and to the last byte per "
            "download (percentiles, ms); MB/s is all bytes over the wall time of the path.",
            "",
            "| path | downloads | TTFB p50 | TTFB p95 | last byte p50 | last byte p95 | MB/s |",
            "|---|--:|--:|--:|--:|--:|--:|",
            *(
                f"| {name} | {len(t.ttfb_s)} | {_ms(t.ttfb_s, 0.5)} | {_ms(t.ttfb_s, 0.95)} | "
                f"{_ms(t.total_s, 0.5)} | {_ms(t.total_s, 0.95)} | "
                f"{f'{t.bytes / 10**6 / t.wall_s:.1f}' if t.wall_s else '—'} |"
                for name, t in rows
                if t.ttfb_s
            ),
            "",
            f"- edge hit ratio: {self.stats['hit_ratio']:.3f} ({self.stats['hits']} hits, "
            f"{self.stats['misses']} misses); pulls from the object store: "
            f"{self.stats['pulled']} for {len(set(self.asked))} distinct objects asked "
            "(concurrent misses of one object share one pull)",
            "",
        ]


async def _download(client: httpx.AsyncClient, url: str) -> tuple[float, float, int, str]:
    start = time.perf_counter()
    first = None
    size = 0
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        cache = response.headers.get("x-cache", "")
        async for chunk in response.aiter_raw():
            if first is None:
                first = time.perf_counter() - start
            size += len(chunk)
    return first or 0.0, time.perf_counter() - start, size, cache


async def _play(
    client: httpx.AsyncClient, urls: Sequence[str]
) -> tuple[Timing, list[tuple[float, float, int, str]]]:
    gate = asyncio.Semaphore(CONCURRENCY)
    timing = Timing()

    async def one(url: str) -> tuple[float, float, int, str]:
        async with gate:
            return await _download(client, url)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(u) for u in urls))
    timing.wall_s = time.perf_counter() - start
    for ttfb, total, size, _ in results:
        timing.add(ttfb, total, size)
    return timing, list(results)


def _env(
    workdir: Path, bucket: str, exchange: str, amqp: str, s3: dict[str, str], port: int
) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESS_")},
        "ESS_BUS_URL": amqp,
        "ESS_EXCHANGE": exchange,
        "ESS_STORE_URL": f"s3://{bucket}",
        "ESS_S3_ENDPOINT_URL": s3["endpoint"],
        "ESS_S3_ACCESS_KEY": s3["access"],
        "ESS_S3_SECRET_KEY": s3["secret"],
        "ESS_S3_REGION": s3["region"],
        "ESS_EDGE_NAME": "edge-bench",
        "ESS_EDGE_CACHE_DIR": str(workdir / "edge-cache"),
        "ESS_EDGE_QUOTA_BYTES": str(10 * 10**9),
        "ESS_EDGE_PORT": str(port),
        "ESS_EDGE_URL": f"http://127.0.0.1:{port}",
        "ESS_HEAD_URL": "http://127.0.0.1:9",
        # No head here: the edge checks the pilot's token itself.
        "ESS_TOKENS": json.dumps({"pilot": [PILOT_TOKEN]}),
        "ESS_LOG_LEVEL": "WARNING",
    }


def _start_edge(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (workdir / "edge.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ess_edge"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers go with it when the group is stopped
        )


async def _wait_healthy(client: httpx.AsyncClient, url: str, edge: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if edge.poll() is not None:
            raise RuntimeError(f"the edge process exited with {edge.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{url}/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("the edge process did not answer within 60 s")


async def _delete_queues(amqp: str, exchange: str) -> None:
    connection = await aio_pika.connect(amqp, timeout=5)
    async with connection:
        channel = await connection.channel()
        for kind in ("assigned", "cached"):
            for suffix in ("", ".retry", ".dead"):
                await channel.queue_delete(f"{exchange}.edge.edge-bench.{kind}{suffix}")
        for name in (exchange, f"{exchange}.dead"):
            await channel.exchange_delete(name)


async def run_cdn(
    workdir: Path, *, n_objects: int, object_bytes: int, n_downloads: int
) -> CdnResult:
    amqp = _local(
        os.environ.get("ESS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ"
    )
    s3 = {
        "endpoint": _local(
            os.environ.get("ESS_TEST_S3_ENDPOINT_URL", "http://127.0.0.1:8080"), "S3"
        ),
        "access": os.environ.get("ESS_TEST_S3_ACCESS_KEY", "test:tester"),
        "secret": os.environ.get("ESS_TEST_S3_SECRET_KEY", "testing"),
        "region": os.environ.get("ESS_TEST_S3_REGION", "us-east-1"),
    }
    tag = uuid.uuid4().hex[:10]
    bucket = exchange = f"ess-bench-{tag}"
    store = S3Store(
        bucket,
        endpoint_url=s3["endpoint"],
        access_key=s3["access"],
        secret_key=s3["secret"],
        region=s3["region"],
    )
    await store.start()
    rng = random.Random(20_240_601)
    keys = [f"ranges/bench/{tag}/{i:04d}.root" for i in range(n_objects)]
    weights = [1 / (i + 1) ** ZIPF_S for i in range(n_objects)]
    asked = rng.choices(range(n_objects), weights, k=n_downloads)
    port = free_port()
    edge_url = f"http://127.0.0.1:{port}"
    edge: subprocess.Popen[bytes] | None = None
    try:
        for i, key in enumerate(keys):
            path = workdir / f"object-{i}"
            path.write_bytes(rng.randbytes(object_bytes))
            await store.put_file(key, path)
            path.unlink()
        async with httpx.AsyncClient(timeout=120) as client:
            signed = [await store.signed_url(key, 3600) for key in keys]
            await _play(client, signed)  # every object read once: S3's caches are warm
            direct, _ = await _play(client, [signed[i] for i in asked])
            edge = _start_edge(workdir, _env(workdir, bucket, exchange, amqp, s3, port))
            await _wait_healthy(client, edge_url, edge)
            # The token goes to the edge only: S3 refuses a second authentication.
            client.headers["Authorization"] = f"Bearer {PILOT_TOKEN}"
            through, results = await _play(
                client, [f"{edge_url}/v1/objects/{keys[i]}" for i in asked]
            )
            stats = (await client.get(f"{edge_url}/v1/cache")).json()["objects"]
        hits, misses = Timing(), Timing()
        for ttfb, total, size, cache in results:
            (hits if cache == "HIT" else misses).add(ttfb, total, size)
        return CdnResult(
            n_objects, object_bytes, n_downloads, direct, through, hits, misses, stats, asked
        )
    finally:
        if edge is not None and edge.poll() is None:
            os.killpg(edge.pid, signal.SIGTERM)
            try:
                edge.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(edge.pid, signal.SIGKILL)
                edge.wait()
        for key in keys:
            await store.delete(key)
        await store.client.delete_bucket(Bucket=bucket)
        await store.close()
        await _delete_queues(amqp, exchange)
