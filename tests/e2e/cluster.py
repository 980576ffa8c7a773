"""Running ESS as it is deployed: every service its own OS process, on the real servers.

Also the PanDA side of the boundary: a queue on the PanDA-facing exchange and an HTTP
endpoint that records callbacks, and a file server for http:// sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import httpx
from aiohttp import web

from tests.helpers import S3Settings, enroll, eventually, free_port, local_servers_allowed
from tests.local_web import LocalWebServer

if TYPE_CHECKING:
    from tests.conftest import AmqpServer


def cluster_env(
    db_url: str, amqp_url: str, exchange: str, port: int, **settings: str
) -> dict[str, str]:
    """The environment every ESS process of a cluster shares: this one's without its `ESS_*`
    variables, the servers, the head on `port`, quick sweeps and heartbeats, then `settings`."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESS_")},
        "ESS_DATABASE_URL": db_url,
        "ESS_BUS_URL": amqp_url,
        "ESS_EXCHANGE": exchange,
        "ESS_HEAD_URL": f"http://127.0.0.1:{port}",
        "ESS_API_PORT": str(port),
        "ESS_LOG_FORMAT": "json",
        "ESS_SWEEP_INTERVAL_S": "0.3",
        "ESS_HEARTBEAT_INTERVAL_S": "0.5",
        **settings,
    }


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    """The ESS processes of one test, with the environment they share."""

    workdir: Path
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)
    edge_ports: dict[str, int] = field(default_factory=dict)
    #: Each edge's token, from its enrollment (once per cluster: a restart keeps it).
    edge_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def head_url(self) -> str:
        return self.env["ESS_HEAD_URL"]

    def start(self, name: str, module: str, **extra: str) -> Service:
        log = self.workdir / f"{name}.log"
        # Appended to: a restarted service's log follows what the killed one wrote.
        with log.open("ab") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                # The tests' servers and files are on this machine: the URL policy must allow
                # them (a test's own settings come after, to refuse them again).
                env={**local_servers_allowed(), **self.env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log)
        self.services[name] = service
        return service

    def edge_cache(self, name: str) -> Path:
        return self.workdir / f"cache-{name}"

    def start_edge(self, name: str, **extra: str) -> Service:
        """An edge process serving pilots on a port of its own (`edge_urls[name]`)."""
        port = self.edge_ports.setdefault(name, free_port())
        settings = {
            "ESS_EDGE_NAME": name,
            "ESS_EDGE_TOKEN": self.edge_token(name),
            "ESS_EDGE_CACHE_DIR": str(self.edge_cache(name)),
            "ESS_EDGE_SITE": f"site-{name}",
            "ESS_EDGE_REGION": "region-1",
            "ESS_EDGE_PORT": str(port),
            "ESS_EDGE_URL": f"http://127.0.0.1:{port}",
            **extra,
        }
        return self.start(name, "ess_edge", **settings)

    def edge_token(self, name: str) -> str:
        """The edge's token: enrolled in the cluster's database, as `ess edge enroll` does
        through the head, so that an edge can start before the head answers."""
        if name not in self.edge_tokens:
            url = self.env["ESS_DATABASE_URL"]
            # The caller's event loop runs in this thread: the enrollment gets one of its own.
            with ThreadPoolExecutor(1) as pool:
                self.edge_tokens[name] = pool.submit(asyncio.run, enroll(url, name)).result()
        return self.edge_tokens[name]

    @property
    def edge_urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}" for name, port in self.edge_ports.items()}

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        service = self.services.pop(name)
        if service.process.poll() is None:
            # The whole process group: an edge's workers go with it.
            os.killpg(service.process.pid, sig)
            try:
                service.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
        return service.process.returncode

    def stop_all(self) -> None:
        for name in list(self.services):
            self.stop(name)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def check_running(self) -> None:
        for service in self.services.values():
            code = service.process.poll()
            if code is not None:
                raise AssertionError(f"{service.name} exited with {code}\n{self.logs()}")

    async def wait_healthy(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:

            async def answers() -> bool:
                self.check_running()
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get(f"{self.head_url}/readyz")).status_code == 200
                return False

            await eventually(answers, timeout=60, message="head API answers /readyz")

    async def wait_edges(self, names: set[str], *, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=5, headers=headers) as client:

            async def alive() -> bool:
                self.check_running()
                edges = (await client.get(f"{self.head_url}/v1/edges")).json()
                return {e["name"] for e in edges if e["alive"]} >= names

            await eventually(alive, timeout=60, message=f"edges {names} heartbeat")


class SlowFiles(LocalWebServer):
    """A storage endpoint that takes its time: each GET (whole file or byte range) waits
    `delay_s` before the bytes come."""

    def __init__(self, directory: Path, *, delay_s: float) -> None:
        super().__init__()
        self.directory = directory
        self.delay_s = delay_s
        #: GETs asked for, by file name.
        self.gets: dict[str, int] = {}

    def url(self, name: str) -> str:
        return f"{self.origin}/{name}"

    async def _get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.gets[name] = self.gets.get(name, 0) + 1
        await asyncio.sleep(self.delay_s)
        return web.FileResponse(self.directory / request.match_info["name"])

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/{name}", self._get)


class PandaEndpoint(LocalWebServer):
    """What PanDA would run: an HTTP endpoint taking callbacks; also serves source files."""

    def __init__(self, files_dir: Path) -> None:
        super().__init__()
        self.files_dir = files_dir
        self.callbacks: list[dict[str, Any]] = []
        self.idempotency_keys: list[str] = []

    @property
    def url(self) -> str:
        return self.origin

    async def _callback(self, request: web.Request) -> web.Response:
        self.callbacks.append(json.loads(await request.read()))
        self.idempotency_keys.append(request.headers.get("Idempotency-Key", ""))
        return web.json_response({"ok": True})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/callback", self._callback)
        app.router.add_static("/files/", self.files_dir)


def service_queues(edges: Iterable[str]) -> list[str]:
    """The queues the services of a deployment with these edges consume, named without the
    exchange's prefix (as `forget` takes them)."""
    return [
        "broker.requests",
        "broker.heartbeats",
        "broker.results",
        "notifier",
        "dead.audit",
        *(f"edge.{e}.{kind}" for e in edges for kind in ("assigned", "cached", "cancelled")),
    ]


async def forget(
    amqp_server: AmqpServer,
    s3_settings: S3Settings,
    exchange: str,
    queues: list[str],
    *,
    bucket: str | None = None,
    exchanges: tuple[str, ...] = (),
) -> None:
    """What a cluster made on the servers: its queues (named without the exchange's prefix;
    each with its retry and dead-letter queues), its exchanges, and its bucket emptied and
    deleted."""
    names = [f"{exchange}.{q}" for q in queues]
    family = [f"{q}{suffix}" for q in names for suffix in ("", ".retry", ".dead")]
    await amqp_server.delete(family, [exchange, f"{exchange}.dead", *exchanges])
    if bucket is None:
        return
    store = s3_settings.store(bucket)
    await store.start()
    try:
        paginator = store.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                await store.client.delete_object(Bucket=bucket, Key=obj["Key"])
        await store.client.delete_bucket(Bucket=bucket)
    finally:
        await store.close()


async def panda_inbox(amqp_url: str, panda_exchange: str) -> str:
    """PanDA's side of its exchange: a queue bound to every notice, as PanDA's consumers have
    one (ESS publishes with `mandatory`: a notice no queue takes is not sent). Its name; the
    caller deletes it."""
    inbox = f"{panda_exchange}.inbox"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            panda_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(inbox, durable=True)
        await queue.bind(exchange, "#")
    return inbox
