"""The whole flow of ``benchmarks.pipeline_bench``: a request from ``POST`` to ``ready`` through
the head API, the broker, the notifier and one edge, each its own process, on the PostgreSQL,
RabbitMQ and S3 servers of the test suite (or, with ``store="local"``, a directory as the
object store: the pipeline's own cost without the store's).

Consumes the dataset's files (local paths, read by the edge through ``file://``), a fresh
database, exchange and bucket (or directory), all removed afterwards. Produces the wall time
from ``POST`` to ``ready`` and what the request's history and the edge's log say about each
file: when it was assigned, cached, split and uploaded (``FlowTimes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aio_pika
import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ess_cli.demo import request_body
from ess_cli.embedded import free_port
from ess_cli.sample import SampleFile
from ess_common.db import enrollments
from ess_common.db.migrate import upgrade
from ess_common.db.session import make_engine, make_session_maker, unit_of_work
from ess_common.store.s3 import S3Store

EDGE = "edge-pipe"
#: The edge's own process and its two workers, each logging `service.started` once up.
_EDGE_PROCESSES = 3
_QUEUES = (
    "broker.requests",
    "broker.heartbeats",
    "broker.results",
    "notifier",
    "dead.audit",
    *(f"edge.{EDGE}.{kind}" for kind in ("assigned", "cached", "cancelled")),
)


@dataclass(frozen=True)
class Servers:
    """The servers the flow runs on (``ESS_TEST_*``, as ``scripts/ensure-services.sh`` starts)."""

    database_url: str
    amqp_url: str
    s3_endpoint: str
    s3_access: str
    s3_secret: str
    s3_region: str

    @classmethod
    def from_env(cls) -> Servers:
        get = os.environ.get
        return cls(
            get("ESS_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/ess_test"),
            get("ESS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            get("ESS_TEST_S3_ENDPOINT_URL", "http://127.0.0.1:8080"),
            get("ESS_TEST_S3_ACCESS_KEY", "test:tester"),
            get("ESS_TEST_S3_SECRET_KEY", "testing"),
            get("ESS_TEST_S3_REGION", "us-east-1"),
        )

    def store(self, bucket: str, max_connections: int = 10) -> S3Store:
        return S3Store(
            bucket,
            endpoint_url=self.s3_endpoint,
            access_key=self.s3_access,
            secret_key=self.s3_secret,
            region=self.s3_region,
            max_connections=max_connections,
        )


@dataclass
class FileTimes:
    """One file's way through the flow, in seconds since the ``POST``."""

    assigned: float = 0.0
    cached: float = 0.0
    #: The edge's log: when its split began and ended and its uploads ended.
    split_started: float = 0.0
    split_s: float = 0.0
    upload_s: float = 0.0
    uploaded: float = 0.0
    #: When the head recorded its ranges.
    recorded: float = 0.0


@dataclass
class FlowTimes:
    seconds: float
    ranges: int
    files: dict[int, FileTimes] = field(default_factory=dict)
    notified: float | None = None


async def empty_bucket(store: S3Store) -> None:
    """Delete what the benchmark put (range files; the upload's sample) and the bucket."""
    for prefix in ("ranges", "serial"):
        await store.delete_prefix(prefix)
    await store.client.delete_bucket(Bucket=store.bucket)


async def run_flow(
    workdir: Path,
    servers: Servers,
    dataset: list[SampleFile],
    events_per_range: int,
    concurrency: int,
    store_kind: Literal["s3", "local"] = "s3",
) -> FlowTimes:
    tag = uuid.uuid4().hex[:10]
    exchange = bucket = f"ess-pipe-{tag}"
    admin = create_async_engine(
        make_url(servers.database_url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    database = f"ess_pipe_{tag}"
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    url = make_url(servers.database_url).set(database=database)
    db_url = url.render_as_string(hide_password=False)
    processes: list[subprocess.Popen[bytes]] = []
    store = servers.store(bucket)
    await store.start()
    try:
        await upgrade(db_url)
        edge_token = await _enroll(db_url, EDGE)
        port = free_port()
        edge_port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ESS_")},
            "ESS_DATABASE_URL": db_url,
            "ESS_BUS_URL": servers.amqp_url,
            "ESS_EXCHANGE": exchange,
            "ESS_PANDA_EXCHANGE": f"panda-pipe-{tag}",
            "ESS_HEAD_URL": f"http://127.0.0.1:{port}",
            "ESS_API_PORT": str(port),
            "ESS_LOG_FORMAT": "json",
            "ESS_S3_ENDPOINT_URL": servers.s3_endpoint,
            "ESS_S3_ACCESS_KEY": servers.s3_access,
            "ESS_S3_SECRET_KEY": servers.s3_secret,
            "ESS_S3_REGION": servers.s3_region,
            "ESS_STORE_URL": (
                f"s3://{bucket}" if store_kind == "s3" else f"file://{workdir / 'objects'}"
            ),
            "ESS_URL_SIGNING_KEY": uuid.uuid4().hex,
            # The dataset is read through file:// from its own folders.
            "ESS_SOURCE_FILE_ROOTS": ",".join(
                sorted({str(f.path.resolve().parent) for f in dataset})
            ),
            "ESS_UPLOAD_CONCURRENCY": str(concurrency),
            "ESS_HEARTBEAT_INTERVAL_S": "0.5",
        }
        edge_env = {
            "ESS_EDGE_NAME": EDGE,
            "ESS_EDGE_TOKEN": edge_token,
            "ESS_EDGE_CACHE_DIR": str(workdir / "edge-cache"),
            "ESS_EDGE_QUOTA_BYTES": str(50 * 10**9),
            "ESS_EDGE_PORT": str(edge_port),
            "ESS_EDGE_URL": f"http://127.0.0.1:{edge_port}",
        }
        for name, module, extra in (
            ("head-api", "ess_head_api", {}),
            ("broker", "ess_broker", {}),
            ("notifier", "ess_notifier", {}),
            ("edge", "ess_edge", edge_env),
        ):
            processes.append(_start(workdir / f"{name}.log", module, {**env, **extra}))
        async with httpx.AsyncClient(base_url=env["ESS_HEAD_URL"], timeout=30) as http:
            await _wait_edge(http, processes)
            await _wait_workers(workdir / "edge.log", processes)
            body = request_body(dataset, events_per_range)
            body["idempotency_key"] = f"pipeline-{tag}"
            posted_at = dt.datetime.now(dt.UTC)
            started = time.perf_counter()
            answer = await http.post("/v1/requests", json=body)
            answer.raise_for_status()
            request_id = str(answer.json()["id"])
            view = await _wait_ready(http, request_id, processes)
            seconds = time.perf_counter() - started
            history = (
                await http.get(
                    f"/v1/requests/{request_id}/events", headers={"Accept": "application/json"}
                )
            ).json()
        times = FlowTimes(seconds, int(view["ranges"]))
        _read_history(times, history, posted_at)
        _read_edge_log(times, workdir / "edge.log", posted_at)
        return times
    finally:
        for process in processes:
            _stop(process)
        await empty_bucket(store)
        await store.close()
        shutil.rmtree(workdir / "objects", ignore_errors=True)
        await _forget_queues(servers.amqp_url, exchange, f"panda-pipe-{tag}")
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        await admin.dispose()


async def _enroll(db_url: str, edge: str) -> str:
    """The edge enrolled as an operator does (`ess edge enroll`); returns its token."""
    engine = make_engine(db_url)
    try:
        async with unit_of_work(make_session_maker(engine)) as session:
            return await enrollments.enroll(session, edge)
    finally:
        await engine.dispose()


def _start(log: Path, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # an edge's workers go with it when the group is stopped
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _check_running(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")


async def _wait_edge(http: httpx.AsyncClient, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _check_running(processes)
        with contextlib.suppress(httpx.HTTPError):
            edges = (await http.get("/v1/edges")).json()
            if any(e["name"] == EDGE and e["alive"] for e in edges):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("the edge did not heartbeat to the head within 90 s")


async def _wait_workers(log: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    """Until the edge's worker processes (precacher, splitter) have started beside it, as on a
    running edge: their start is not the pipeline's cost."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _check_running(processes)
        if log.read_text(errors="replace").count('"service.started"') >= _EDGE_PROCESSES:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the edge's workers did not start within 120 s")


async def _wait_ready(
    http: httpx.AsyncClient, request_id: str, processes: list[subprocess.Popen[bytes]]
) -> dict[str, Any]:
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        _check_running(processes)
        view: dict[str, Any] = (await http.get(f"/v1/requests/{request_id}")).json()
        if view["status"] == "ready":
            return view
        if view["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"request {request_id} {view['status']}: {view['error']}")
        await asyncio.sleep(0.02)
    raise RuntimeError(f"request {request_id} not ready within an hour")


def _since(at: str, origin: dt.datetime) -> float:
    moment = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - origin).total_seconds()


def _read_history(times: FlowTimes, history: list[dict[str, Any]], origin: dt.datetime) -> None:
    for entry in history:
        file_id, at = entry["file_id"], _since(entry["at"], origin)
        if entry["kind"] == "notified" and times.notified is None:
            times.notified = at
        if file_id is None:
            continue
        file = times.files.setdefault(int(file_id), FileTimes())
        if entry["kind"] == "assigned":
            file.assigned = at
        elif entry["kind"] == "cached":
            file.cached = at
        elif entry["kind"] == "split":
            file.recorded = at


def _read_edge_log(times: FlowTimes, log: Path, origin: dt.datetime) -> None:
    """The splitter's `file.split` lines: when each file's split began, and its two parts."""
    by_lfn_attempt: dict[str, tuple[float, float, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"file.split"' not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "file.split" and "split_s" in entry:
                ended = _since(entry["timestamp"], origin)
                by_lfn_attempt[entry["lfn"]] = (ended, entry["split_s"], entry["upload_s"])
    # The history names files by id, the log by LFN: both list them in the request's order.
    ordered = sorted(by_lfn_attempt.items())
    for (_, (ended, split_s, upload_s)), file in zip(
        ordered, (times.files[k] for k in sorted(times.files)), strict=False
    ):
        file.uploaded = ended
        file.split_s = split_s
        file.upload_s = upload_s
        file.split_started = ended - split_s - upload_s


async def _forget_queues(amqp_url: str, exchange: str, panda_exchange: str) -> None:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        for queue in _QUEUES:
            for suffix in ("", ".retry", ".dead"):
                await channel.queue_delete(f"{exchange}.{queue}{suffix}")
        for name in (exchange, f"{exchange}.dead", panda_exchange):
            await channel.exchange_delete(name)
