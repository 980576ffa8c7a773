"""The broker's side of the scale benchmark: simulated edges talking to the broker's real code.

The edges are enrolled in the real enrollment table (`ess_common.db.enrollments`) and speak
only through messages: each heartbeat and each `split.done` is the JSON an edge would publish,
signed with its enrollment's upward key, and handed to the handler the broker's daemon
registers on its queues (`Broker.from_edges(...)`: signature check against the enrollment,
parsing, the heartbeat in a transaction of its own, `split.done` results several to a
transaction as they wait (`ess_broker.result_batches`), the outbox flushed after each commit
that wrote to it), as many at once as the daemon's consumer takes (`prefetch`). Only
RabbitMQ's transport is left out.
The assignment is the broker's `assign_pending`, 500 files a transaction as its sweep runs it,
its outbox flushed after each to the in-process bus as the daemon does.

Consumes: the database of `scale_fill`; produces: the named results of each measured step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import func, select

from benchmarks.scale_fill import EVENTS_PER_RANGE, SCOPE
from ess_broker.assignment import assign_pending
from ess_broker.service import Broker
from ess_common.db import enrollments
from ess_common.db.models import File, FileStatus, Range, Request, RequestStatus
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import EdgeHeartbeat, FileWork, RangeInfo, RequestSpec, SplitDone
from ess_common.messaging.bus import EDGE_SIGNATURE_HEADER, Delivery, Handler, edge_signature
from ess_common.messaging.handlers import flush_quietly
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import HeadSettings

GB = 10**9
#: Files an assignment transaction takes at most, as the broker's sweep (`assign_pending`).
ASSIGN_ROUND = 500
#: Each edge's quota: room for every file of the request, so that space never stops placement.
EDGE_QUOTA = 10**15


def edge_name(i: int) -> str:
    return f"edge-{i:03d}"


def request_lfn(i: int) -> str:
    return f"EVNT.scale._{i:07d}.pool.root.1"


@dataclass
class Timed:
    """How long one step took and what it did."""

    count: int
    seconds: float
    #: Per message: seconds from its hand-over to its handler's return.
    latencies: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Edges:
    """The simulated edges: their tokens, and the messages they send."""

    def __init__(self, n: int) -> None:
        self.names = [edge_name(i) for i in range(n)]
        self.tokens: dict[str, SecretStr] = {}

    async def enroll(self, sessions: SessionMaker) -> None:
        async with unit_of_work(sessions) as session:
            for name in self.names:
                self.tokens[name] = SecretStr(await enrollments.enroll(session, name))

    def signed(self, edge: str, routing_key: str, body: bytes, queue: str) -> Delivery:
        headers = {EDGE_SIGNATURE_HEADER: edge_signature(body, self.tokens[edge])}
        return Delivery(queue, routing_key, body, headers)

    def heartbeat(self, edge: str, queue: str) -> Delivery:
        beat = EdgeHeartbeat(
            edge=edge,
            site=f"SITE-{edge}",
            region="europe",
            url=f"http://{edge}.example.org:8001",
            quota_bytes=EDGE_QUOTA,
            free_bytes=EDGE_QUOTA,
            queued=0,
            load=0.5,
            version="scale-bench",
        )
        return self.signed(edge, "edge.heartbeat", beat.model_dump_json().encode(), queue)

    def split_done(self, work: FileWork, queue: str) -> Delivery:
        epr = work.events_per_range
        prefix = f"ranges/{work.file.scope}/{work.file.lfn}/e{epr}/f{work.file_id}.a{work.attempt}"
        ranges = [
            RangeInfo(
                first_event=first,
                last_event=min(first + epr - 1, work.file.n_events),
                key=f"{prefix}/{first:09d}-{min(first + epr - 1, work.file.n_events):09d}.root",
                size=50_000,
                adler32="0a1b2c3d",
            )
            for first in range(1, work.file.n_events + 1, epr)
        ]
        event = SplitDone(work=work, ranges=ranges, correlation_id=work.request_id)
        return self.signed(work.edge, event.routing_key(), event.model_dump_json().encode(), queue)


class BrokerUnderTest:
    """The broker daemon's handlers over an in-process bus and the benchmark's database."""

    def __init__(self, settings: HeadSettings, sessions: SessionMaker) -> None:
        self.settings = settings
        self.sessions = sessions
        self.bus = MemoryBus(settings.exchange)
        self.broker = Broker(settings, self.bus, sessions)
        _, self.heartbeat_queue, self.results_queue, _ = self.broker.queues
        self.on_heartbeat: Handler = self.broker.from_edges(self.broker.heartbeat_handler())
        self.on_result: Handler = self.broker.from_edges(self.broker.results_handler())

    async def close(self) -> None:
        await self.broker.retention.close()


def settings_for(database_url: str, store_dir: Path, max_queued: int) -> HeadSettings:
    return HeadSettings(
        database_url=database_url,
        bus_url="memory://",
        store_url=f"file://{store_dir}",
        edge_max_queued=max_queued,
    )


async def consume(handler: Handler, deliveries: Sequence[Delivery], prefetch: int) -> Timed:
    """Every delivery through the handler, `prefetch` at once as the daemon's consumer."""
    queue: asyncio.Queue[Delivery] = asyncio.Queue()
    for delivery in deliveries:
        queue.put_nowait(delivery)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            delivery = queue.get_nowait()
            started = time.perf_counter()
            await handler(delivery)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(prefetch)))
    return Timed(len(deliveries), time.perf_counter() - started, latencies)


class Heartbeating:
    """Every edge heartbeats every `interval_s` through the broker's handler, in the
    background, until stopped; counts them and their handling time."""

    def __init__(self, under: BrokerUnderTest, edges: Edges, interval_s: float) -> None:
        self.under, self.edges, self.interval_s = under, edges, interval_s
        self.timed = Timed(0, 0.0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        started = time.perf_counter()
        try:
            while True:
                round_started = time.perf_counter()
                for name in self.edges.names:
                    t0 = time.perf_counter()
                    await self.under.on_heartbeat(
                        self.edges.heartbeat(name, self.under.heartbeat_queue)
                    )
                    self.timed.latencies.append(time.perf_counter() - t0)
                    self.timed.count += 1
                    # Spread over the interval, as edges started at different times are.
                    await asyncio.sleep(self.interval_s / len(self.edges.names) * 0.5)
                left = self.interval_s - (time.perf_counter() - round_started)
                if left > 0:
                    await asyncio.sleep(left)
        finally:
            self.timed.seconds = time.perf_counter() - started

    async def stop(self) -> Timed:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.timed


def scale_request(key: str, n_files: int, ranges_per_file: int) -> RequestSpec:
    return RequestSpec.model_validate(
        {
            "dataset": f"{SCOPE}:scale.{key}",
            "idempotency_key": key,
            "events_per_range": EVENTS_PER_RANGE,
            "files": [
                {
                    "scope": SCOPE,
                    "lfn": request_lfn(i),
                    "n_events": ranges_per_file * EVENTS_PER_RANGE,
                    "size": GB,
                    "adler32": f"{i + 1:08x}",
                    "sources": [f"https://dm.example.org/scale/{i}"],
                }
                for i in range(n_files)
            ],
        }
    )


async def record(sessions: SessionMaker, spec: RequestSpec) -> tuple[str, float]:
    """The request recorded as the broker records `request.created`; its id and seconds."""
    started = time.perf_counter()
    async with unit_of_work(sessions) as session:
        request, _ = await record_request(session, spec)
    return request.id, time.perf_counter() - started


async def assign_all(under: BrokerUnderTest, n_files: int) -> Timed:
    """`assign_pending` until `n_files` more files are assigned (500 a transaction as the
    broker's sweep, fewer in the last) or nothing is pending, each transaction's outbox flushed
    after it; fails when fewer were assigned."""
    lost_after = timedelta(seconds=under.settings.edge_lost_after_s)
    assigned, latencies = 0, []
    started = time.perf_counter()
    while assigned < n_files:
        t0 = time.perf_counter()
        async with unit_of_work(under.sessions) as session:
            done = await assign_pending(
                session,
                lost_after,
                limit=min(ASSIGN_ROUND, n_files - assigned),
                max_queued=under.settings.edge_max_queued,
            )
        await flush_quietly(under.broker.relay)
        latencies.append(time.perf_counter() - t0)
        if not done:
            break
        assigned += done
    seconds = time.perf_counter() - started
    if assigned < n_files:
        raise RuntimeError(f"{assigned} of {n_files} files assigned")
    return Timed(assigned, seconds, latencies)


async def assigned_work(sessions: SessionMaker, request_id: str) -> list[FileWork]:
    """Each assigned file of the request as the broker gave it to its edge."""
    from ess_broker.assignment import file_work

    async with sessions() as session:
        request = await session.get(Request, request_id)
        assert request is not None
        files = (
            await session.scalars(
                select(File)
                .where(File.request_id == request_id, File.status == FileStatus.ASSIGNED)
                .order_by(File.id)
            )
        ).all()
        return [file_work(request, f) for f in files]


async def check_recorded(
    sessions: SessionMaker, request_id: str, n_files: int, ranges: int
) -> None:
    """Fails unless every file of the request is split, with `ranges` range rows in all, and
    the request is ready: nothing lost, nothing recorded twice."""
    async with sessions() as session:
        split = await session.scalar(
            select(func.count())
            .select_from(File)
            .where(File.request_id == request_id, File.status == FileStatus.SPLIT)
        )
        rows = await session.scalar(
            select(func.count()).select_from(Range).where(Range.request_id == request_id)
        )
        request = await session.get(Request, request_id)
    status = request.status if request is not None else None
    if (split, rows, status) != (n_files, ranges, RequestStatus.READY):
        raise RuntimeError(
            f"bookkeeping: {split} of {n_files} files split, {rows} of {ranges} ranges, "
            f"request {status}"
        )
