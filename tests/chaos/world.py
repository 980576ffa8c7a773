"""One ESS deployment for the chaos tests, and what is checked after each blow.

Every service is its own process (tests/e2e/cluster.py) on a PostgreSQL and a RabbitMQ of the
test's own (tests/private_servers.py), which the tests kill and restart; objects go to a
bucket of the shared S3 server. A request is a few small real ROOT files cut into many small
ranges; each submission uses new file names, so nothing of an earlier round is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg  # type: ignore[import-untyped]
import httpx
import skhep_testdata
from aio_pika.exceptions import AMQPError
from botocore.exceptions import ClientError

from ess_common.checksums import adler32_of_file
from ess_common.db.migrate import upgrade
from ess_common.edge_work import assigned_queue, cached_queue, cancelled_queue
from tests.chaos.panda import Notice, PandaQueue, PandaSide
from tests.e2e.cluster import Cluster, cluster_env
from tests.helpers import S3Settings, eventually, free_port
from tests.private_servers import PrivatePostgres, PrivateRabbit, descendants, wait_gone

SCOPE = "mc23_13p6TeV"
EVENTS_PER_RANGE = 150
#: Real files nobody here wrote, of about 2,400 events each: 50 ranges in all.
SAMPLES = [
    ("uproot-HZZ.root", 2421),
    ("uproot-Zmumu.root", 2304),
    ("uproot-HZZ-zlib.root", 2421),
]
#: Each file's download waits this long times its position: the request is still being
#: worked on, its first ranges recorded, when a component is killed.
SOURCE_DELAY_S = 1.0
HEAD_SERVICES = {"head-api": "ess_head_api", "broker": "ess_broker", "notifier": "ess_notifier"}
EDGES = ("edge-a", "edge-b")
#: A request's end states.
FINAL = ("ready", "failed", "cancelled")


@dataclass
class Submitted:
    """A request as the test sent it, and the spans it must end with."""

    request_id: str
    key: str
    spans: Counter[tuple[str, int, int]]


@dataclass
class World:
    cluster: Cluster
    postgres: PrivatePostgres
    rabbit: PrivateRabbit
    panda: PandaSide
    panda_queue: PandaQueue
    dsn: str
    bucket: str
    s3: S3Settings
    rounds: int = 0

    # --- the services ------------------------------------------------------------------------

    def start(self, name: str) -> None:
        if name in HEAD_SERVICES:
            self.cluster.start(name, HEAD_SERVICES[name])
        else:
            self.cluster.start_edge(name)

    def kill(self, name: str) -> list[int]:
        """`kill -9` of a service's main process (alone, not its group): the pids of its
        process tree, all of which must end."""
        service = self.cluster.services.pop(name)
        pid = service.process.pid
        pids = [pid, *descendants(pid)]
        os.kill(pid, signal.SIGKILL)
        service.process.wait()
        return pids

    async def kill_and_restart(self, name: str) -> list[int]:
        """Kill one component (a service, "rabbitmq" or "postgresql"), wait until every process
        it had is gone, and start it again."""
        if name == "rabbitmq":
            pids = self.rabbit.kill()
        elif name == "postgresql":
            pids = self.postgres.kill()
        else:
            pids = self.kill(name)
        await wait_gone(pids, timeout=30, what=f"processes left by the killed {name}")
        if name == "rabbitmq":
            await self.rabbit.start()
        elif name == "postgresql":
            await self.postgres.start()
        else:
            self.start(name)
        await self.wait_serving(name)
        return pids

    def consumed(self, name: str) -> list[str]:
        """The queues a component's processes consume: the sign that it is back at work."""
        exchange = self.cluster.env["ESS_EXCHANGE"]
        if name == "broker":
            return [f"{exchange}.broker.{q}" for q in ("requests", "heartbeats", "results")]
        if name == "notifier":
            return [f"{exchange}.notifier"]
        if name in EDGES:
            return [
                cancelled_queue(exchange, name),
                assigned_queue(exchange, name),
                cached_queue(exchange, name),
            ]
        return []

    async def wait_serving(self, name: str) -> None:
        """Until a (re)started component does its work again: the head API answers, every queue
        of the others has its consumer. After the bus or the database: all of them."""
        everyone = ("broker", "notifier", *EDGES)
        queues = [
            q
            for n in (everyone if name in ("rabbitmq", "postgresql") else (name,))
            for q in self.consumed(n)
        ]

        async def serving() -> list[str]:
            self.check_running()
            states = await self.queue_states(queues)
            if states is None:
                return ["(the bus does not answer)"]
            return [q for q, (_, consumers) in states.items() if not consumers]

        async def nothing_idle() -> bool:
            return not await serving()

        await eventually(
            nothing_idle, timeout=90, interval=0.3, message=f"{name}'s queues have consumers"
        )
        if name in ("head-api", "rabbitmq", "postgresql"):
            await self.cluster.wait_healthy()

    async def queue_states(self, queues: list[str]) -> dict[str, tuple[int, int]] | None:
        """Messages ready and consumers of each queue; None while the bus does not answer."""
        try:
            connection = await aio_pika.connect(self.rabbit.url, timeout=5)
        except (OSError, TimeoutError, AMQPError):
            return None
        states: dict[str, tuple[int, int]] = {}
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                declared = await channel.declare_queue(queue, passive=True)
                result = declared.declaration_result
                states[queue] = (result.message_count or 0, result.consumer_count or 0)
        return states

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    def check_running(self) -> None:
        self.cluster.check_running()
        self.postgres.pid  # noqa: B018 - fails with its log when the server exited
        self.rabbit.pid  # noqa: B018

    def logs(self) -> str:
        return (
            f"{self.cluster.logs()}\n--- postgresql ---\n{self.postgres.tail()}"
            f"\n--- rabbitmq ---\n{self.rabbit.tail()}"
        )

    # --- requests ----------------------------------------------------------------------------

    async def submit(
        self, *, delay_s: float = SOURCE_DELAY_S, first_delay_s: float = 0.0
    ) -> Submitted:
        """A new request over the head API for new copies of the sample files; the n-th file
        (from 0) comes `first_delay_s + n * delay_s` after it is asked for."""
        self.rounds += 1
        key = f"jedi-chaos-{self.rounds}-{uuid.uuid4().hex[:6]}"
        files: list[dict[str, Any]] = []
        spans: Counter[tuple[str, int, int]] = Counter()
        for position, (name, n_events) in enumerate(SAMPLES):
            path = Path(skhep_testdata.data_path(name))
            lfn = f"NTUP.{key}._{position + 1:06d}.root"
            shutil.copyfile(path, self.panda.files_dir / lfn)
            self.panda.delays[lfn] = first_delay_s + delay_s * position
            files.append(
                {
                    "scope": SCOPE,
                    "lfn": lfn,
                    "guid": str(uuid.uuid4()).upper(),
                    "n_events": n_events,
                    "size": path.stat().st_size,
                    "adler32": adler32_of_file(path),
                    "sources": [self.panda.file_url(lfn)],
                }
            )
            for first in range(1, n_events + 1, EVENTS_PER_RANGE):
                spans[(lfn, first, min(first + EVENTS_PER_RANGE - 1, n_events))] += 1
        body = {
            "dataset": f"{SCOPE}:chaos.{key}",
            "idempotency_key": key,
            "events_per_range": EVENTS_PER_RANGE,
            "priority": 10,
            "notify": {"message": True, "callback_url": f"{self.panda.url}/callback"},
            "files": files,
        }
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(f"{self.cluster.head_url}/v1/requests", json=body)
        assert answer.status_code == 201, answer.text
        return Submitted(answer.json()["id"], key, spans)

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.dsn, timeout=5)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    async def _maybe(self, sql: str, *args: object) -> list[asyncpg.Record] | None:
        """The rows, or None while the database does not answer (it is being restarted)."""
        try:
            return await self.query(sql, *args)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return None

    async def wait_under_way(self, sub: Submitted) -> None:
        """Until some ranges of the request are recorded and not all of them."""

        async def under_way() -> bool:
            self.check_running()
            rows = await self._maybe(
                "SELECT count(*) AS n FROM ranges WHERE request_id = $1", sub.request_id
            )
            n = rows[0]["n"] if rows else 0
            assert n < sum(sub.spans.values()), "the request ended before the blow"
            return n > 0

        await eventually(under_way, timeout=60, interval=0.1, message="first ranges recorded")

    async def wait_holding(self, sub: Submitted, edge: str) -> bool:
        """Until `edge` has a file of the request assigned and not yet split (True), or the
        request ended without (False: the broker placed its files elsewhere)."""

        async def holding() -> str | None:
            self.check_running()
            rows = await self._maybe(
                "SELECT count(*) AS n FROM files WHERE request_id = $1 AND edge = $2 "
                "AND status IN ('assigned', 'cached')",
                sub.request_id,
                edge,
            )
            if rows and rows[0]["n"]:
                return "holding"
            rows = await self._maybe("SELECT status FROM requests WHERE id = $1", sub.request_id)
            return "ended" if rows and rows[0]["status"] in FINAL else None

        found = await eventually(holding, timeout=60, interval=0.1, message=f"{edge} holds work")
        return found == "holding"

    async def wait_final(self, sub: Submitted, *, timeout: float = 90) -> str:  # noqa: ASYNC109
        async def final() -> str | None:
            self.check_running()
            rows = await self._maybe("SELECT status FROM requests WHERE id = $1", sub.request_id)
            status: str | None = rows[0]["status"] if rows else None
            return status if status in FINAL else None

        status = await eventually(
            final, timeout=timeout, interval=0.2, message=f"request {sub.request_id} ends"
        )
        return str(status)

    # --- what must hold after each round ------------------------------------------------------

    async def check_request(self, sub: Submitted, *, timeout: float = 90) -> None:  # noqa: ASYNC109
        """Ready; every span recorded exactly once; one notification to each target (PanDA's
        queue and its callback), recorded as sent once each."""
        status = await self.wait_final(sub, timeout=timeout)
        rows = await self.query("SELECT status, error FROM requests WHERE id = $1", sub.request_id)
        assert status == "ready", f"request {status}: {rows[0]['error']}"
        recorded = Counter(
            (r["lfn"], r["first_event"], r["last_event"])
            for r in await self.query(
                "SELECT lfn, first_event, last_event FROM ranges WHERE request_id = $1",
                sub.request_id,
            )
        )
        assert recorded == sub.spans, {
            "missing": sub.spans - recorded,
            "extra": recorded - sub.spans,
        }

        def mine(notices: list[Notice]) -> set[Notice]:
            return {n for n in notices if n.request_id == sub.request_id}

        async def notified() -> bool:
            self.check_running()
            return bool(mine(await self.panda_queue.drain())) and bool(mine(self.panda.callbacks))

        await eventually(notified, timeout=60, interval=0.2, message="PanDA is notified")
        for target, notices in (
            ("queue", mine(self.panda_queue.received)),
            ("callback", mine(self.panda.callbacks)),
        ):
            assert [n.event for n in notices] == ["request.ready"], (target, notices)

        async def recorded_sent() -> list[tuple[str, str]]:
            rows = await self.query(
                "SELECT kind, status FROM notifications WHERE request_id = $1 ORDER BY kind",
                sub.request_id,
            )
            pairs = [(r["kind"], r["status"]) for r in rows]
            return pairs if all(s == "sent" for _, s in pairs) else []

        pairs = await eventually(recorded_sent, timeout=30, message="notifications recorded")
        assert pairs == [("http", "sent"), ("message", "sent")], pairs

    async def check_nothing_stuck(self) -> None:
        """Every request of the deployment has ended."""
        rows = await self.query("SELECT id, status FROM requests")
        stuck = [(r["id"], r["status"]) for r in rows if r["status"] not in FINAL]
        assert not stuck, stuck

    async def objects(self) -> set[str]:
        store = self.s3.store(self.bucket)
        await store.start()
        try:
            keys: set[str] = set()
            paginator = store.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket):
                keys.update(item["Key"] for item in page.get("Contents", []))
            return keys
        finally:
            await store.close()

    async def orphans(self) -> set[str]:
        """Objects in the bucket that no range names."""
        named = {r["object_key"] for r in await self.query("SELECT object_key FROM ranges")}
        return {key for key in await self.objects() if key not in named}


@contextlib.asynccontextmanager
async def open_world(
    workdir: Path,
    postgres: PrivatePostgres,
    rabbit: PrivateRabbit,
    s3: S3Settings,
    **settings: str,
) -> AsyncIterator[World]:
    """A migrated database of its own on `postgres`, exchanges on `rabbit`, a bucket on `s3`,
    the PanDA side, the head services and two edges, all answering; everything removed after."""
    tag = uuid.uuid4().hex[:10]
    database = await postgres.create_database(f"ess_chaos_{tag}")
    await upgrade(database)
    exchange, panda_exchange, bucket = f"ess-chaos-{tag}", f"panda-chaos-{tag}", f"ess-chaos-{tag}"
    files_dir = workdir / "panda-files"
    files_dir.mkdir()
    panda = PandaSide(files_dir)
    await panda.start()
    panda_queue = PandaQueue(rabbit.url, panda_exchange)
    await panda_queue.declare()
    env = cluster_env(
        database,
        rabbit.url,
        exchange,
        free_port(),
        ESS_PANDA_EXCHANGE=panda_exchange,
        **s3.env(bucket),
        **settings,
    )
    world = World(
        Cluster(workdir, env),
        postgres,
        rabbit,
        panda,
        panda_queue,
        database.replace("postgresql+asyncpg://", "postgresql://"),
        bucket,
        s3,
    )
    try:
        for name in (*HEAD_SERVICES, *EDGES):
            world.start(name)
        await world.cluster.wait_healthy()
        await world.cluster.wait_edges(set(EDGES))
        yield world
    except BaseException:
        print(world.logs())
        raise
    finally:
        panda.open.set()
        world.cluster.stop_all()
        await panda.stop()
        await _forget_bucket(s3, bucket)


async def _forget_bucket(s3: S3Settings, bucket: str) -> None:
    store = s3.store(bucket)
    await store.start()
    try:
        with contextlib.suppress(ClientError):  # none made: the test failed before any upload
            paginator = store.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    await store.client.delete_object(Bucket=bucket, Key=item["Key"])
            await store.client.delete_bucket(Bucket=bucket)
    finally:
        await store.close()


async def run_outage(world: World, seconds: float) -> None:
    """`seconds` of the services running without their database: the time is the scenario
    itself, and all along every service must stay up."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        world.cluster.check_running()
        await asyncio.sleep(0.5)
