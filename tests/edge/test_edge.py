"""The edge daemon: what its heartbeat reports, its queues declared before the head hears of
it (so no work sent to it is lost), and the supervisor that keeps its workers running."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ess_common.edge_work import assigned_queue, cached_queue
from ess_common.events import (
    DatasetFile,
    EdgeHeartbeat,
    FileAssigned,
    FileCached,
    FileWork,
    parse_event,
)
from ess_common.messaging.bus import Bus, Delivery, publish_event
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import EdgeSettings
from ess_edge.heartbeat import make_heartbeat
from ess_edge.service import Edge
from ess_edge.supervisor import Child
from tests.helpers import UniqueNames, eventually
from tests.private_servers import running

EDGE = "edge-hb"
QUOTA = 10 * 2**20


def edge_settings(tmp_path: Path, **extra: Any) -> EdgeSettings:
    return EdgeSettings.model_validate(
        {
            "edge_name": EDGE,
            "edge_site": "CERN-PROD",
            "edge_region": "europe",
            "edge_url": "http://edge-hb.example.org:8001",
            "edge_cache_dir": tmp_path / "cache",
            "edge_quota_bytes": QUOTA,
            "heartbeat_interval_s": 0.2,
            **extra,
        }
    )


def work(edge: str, n: int) -> FileWork:
    return FileWork(
        request_id="req-1",
        file_id=n,
        attempt=1,
        edge=edge,
        file=DatasetFile(
            scope="data18_13TeV",
            lfn=f"NTUP.{n:06d}.root",
            n_events=100,
            size=1000,
            adler32="01020304",
            sources=[f"https://storage.example.org/NTUP.{n:06d}.root"],
        ),
        events_per_range=10,
    )


async def watch(bus: Bus, unique: UniqueNames, binding: str) -> list[Delivery]:
    seen: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery)

    await bus.consume(unique("head"), [binding], record)
    return seen


async def test_heartbeat_reports_quota_free_space_queue_and_version(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path)
    bus = MemoryBus("ess-edge-test")
    await bus.start()
    edge = Edge(settings, bus, [])
    await edge.start()
    try:
        idle = await make_heartbeat(settings, bus)
        assert (idle.quota_bytes, idle.free_bytes, idle.queued) == (QUOTA, QUOTA, 0)

        # Cache use: a cached file, a partial download, a split output.
        files = settings.edge_cache_dir / "files" / "data18_13TeV"
        files.mkdir(parents=True)
        (files / "NTUP.000001.root").write_bytes(b"x" * 3000)
        (files / ".NTUP.000002.root.ab12.part").write_bytes(b"x" * 500)
        (settings.edge_cache_dir / "split").mkdir()
        (settings.edge_cache_dir / "split" / "range.root").write_bytes(b"x" * 250)
        # Work waiting in the edge's own queues; another edge's work is not ours.
        for n in range(3):
            await publish_event(bus, FileAssigned(work=work(EDGE, n)))
        for n in range(2):
            await publish_event(bus, FileCached(work=work(EDGE, n), cache_path="/x"))
        await publish_event(bus, FileAssigned(work=work("edge-other", 9)))

        beat = await make_heartbeat(settings, bus)
    finally:
        await edge.stop()
        await bus.close()

    assert isinstance(beat, EdgeHeartbeat)
    assert beat.routing_key() == "edge.heartbeat"
    assert (beat.edge, beat.site, beat.region, beat.url) == (
        EDGE,
        "CERN-PROD",
        "europe",
        "http://edge-hb.example.org:8001",
    )
    assert beat.quota_bytes == QUOTA
    assert beat.free_bytes == QUOTA - 3750
    assert beat.queued == 5
    assert beat.load >= 0
    assert beat.version == version("ess")


async def test_free_space_is_never_negative(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, edge_quota_bytes=1000)
    settings.edge_cache_dir.mkdir()
    (settings.edge_cache_dir / "big").write_bytes(b"x" * 5000)
    bus = MemoryBus("ess-edge-test")

    beat = await make_heartbeat(settings, bus)

    assert (beat.quota_bytes, beat.free_bytes) == (1000, 0)


async def test_work_sent_after_the_first_heartbeat_is_not_lost(
    bus: Bus, unique: UniqueNames, tmp_path: Path
) -> None:
    settings = edge_settings(tmp_path)
    heartbeats = await watch(bus, unique, "edge.heartbeat")
    edge = Edge(settings, bus, [])
    await edge.start()
    try:
        await eventually(lambda: heartbeats, message="first heartbeat")
        first = parse_event(heartbeats[0].body)
        assert isinstance(first, EdgeHeartbeat)
        assert (first.edge, first.quota_bytes) == (EDGE, QUOTA)

        # The head heard of the edge and sends it work before any worker consumes its queue.
        sent = FileAssigned(work=work(EDGE, 1))
        await publish_event(bus, sent)
        queue = assigned_queue(bus.exchange, EDGE)

        async def waiting() -> bool:
            return await bus.depth(queue) == 1

        await eventually(waiting, message=f"one message waiting in {queue}")
        received = await watch_queue(bus, queue, f"file.assigned.{EDGE}")
        await eventually(lambda: received, message="the assigned file delivered")
        (delivery,) = received
        got = parse_event(delivery.body)
        assert isinstance(got, FileAssigned)
        assert got.event_id == sent.event_id
        assert await bus.depth(cached_queue(bus.exchange, EDGE)) == 0
    finally:
        await edge.stop()


async def watch_queue(bus: Bus, queue: str, binding: str) -> list[Delivery]:
    seen: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery)

    await bus.consume(queue, [binding], record)
    return seen


def python(code: str) -> Child:
    return Child("worker", [sys.executable, "-c", code], os.environ)


async def test_supervisor_restarts_a_child_that_exits() -> None:
    child = python("pass")
    child.start()
    try:
        await eventually(lambda: child.restarts >= 1, message="child restarted")
        assert child.process is not None
    finally:
        await child.stop(timeout_s=5)
    assert child.process.returncode is not None


async def test_stop_terminates_a_running_child() -> None:
    child = python("import signal; signal.pause()")
    child.start()
    await eventually(lambda: child.process is not None, message="child started")
    assert child.process is not None
    assert child.process.returncode is None

    await child.stop(timeout_s=5)

    assert child.process.returncode == -signal.SIGTERM
    assert child.restarts == 0


async def test_edge_stop_stops_its_workers(tmp_path: Path) -> None:
    bus = MemoryBus("ess-edge-test")
    await bus.start()
    children = [python("import signal; signal.pause()") for _ in range(2)]
    edge = Edge(edge_settings(tmp_path), bus, children)
    await edge.start()
    try:
        await eventually(
            lambda: all(c.process is not None for c in children), message="workers started"
        )
    finally:
        await edge.stop()
        await bus.close()
    for child in children:
        assert child.process is not None
        assert child.process.returncode == -signal.SIGTERM


#: An edge's supervisor alone, printing its worker's pid.
_SUPERVISOR = """
import asyncio, sys
from ess_edge.supervisor import Child

async def main():
    child = Child("worker", [sys.executable, "-c", "import signal; signal.pause()"], {})
    child.start()
    while child.process is None:
        await asyncio.sleep(0.01)
    print(f"worker={child.process.pid}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_workers_die_with_a_killed_edge() -> None:
    """`kill -9` of the edge leaves no worker consuming its queues as an orphan."""
    edge = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUPERVISOR, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert edge.stdout is not None
        line = b""
        while not line.startswith(b"worker="):  # after the supervisor's own log lines
            line = await asyncio.wait_for(edge.stdout.readline(), 30)
            assert line, "the supervisor ended before starting its worker"
        worker = int(line.removeprefix(b"worker="))
        assert running(worker)
        edge.kill()
        await edge.wait()
        await eventually(lambda: not running(worker), message="the worker ends with its edge")
    finally:
        if edge.returncode is None:
            edge.kill()
            await edge.wait()
