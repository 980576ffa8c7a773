"""Broker replicas for the scale benchmark: the `split.done` results recorded by several broker
processes at once, as a deployment with several broker replicas consumes one results queue.

Each replica is a process of its own (`python -m benchmarks.scale_replicas`) with the broker's
real result handler over its own engine (`scale_broker.BrokerUnderTest`). The parent deals the
deliveries out in turn, as RabbitMQ deals a queue's messages to its consumers, hands each
replica its share in a file, waits until every replica has its database connections open, then
starts them together and times them from that moment until the last one is done. Each replica
takes `prefetch` at once, as the daemon's consumer.

Consumes: the database of `scale_fill` with the request assigned; produces: a `Timed` of
every delivery.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text

from benchmarks.scale_broker import BrokerUnderTest, Timed, consume, settings_for
from ess_common.db.session import make_engine, make_session_maker
from ess_common.logs import configure_logging
from ess_common.messaging.bus import Delivery

#: What a replica prints when its connections are open and it waits for the start.
READY = "ready"


async def consume_in_replicas(
    url: str, workdir: Path, max_queued: int, deliveries: Sequence[Delivery], replicas: int
) -> Timed:
    """Every delivery through `replicas` broker processes at once; wall time from their start."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for i in range(replicas):
            share = workdir / f"replica-{i}.pickle"
            share.write_bytes(pickle.dumps(list(deliveries[i::replicas])))
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "benchmarks.scale_replicas",
                    url,
                    str(workdir / "objects"),
                    str(max_queued),
                    str(share),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if line.decode().strip() != READY:
                raise RuntimeError(f"a broker replica did not start: {line!r}")
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = [await proc.communicate() for proc in procs]
        seconds = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    latencies: list[float] = []
    count = 0
    for proc, (out, _) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"a broker replica failed (exit {proc.returncode})")
        done = json.loads(out.decode().strip().splitlines()[-1])
        count += int(done["count"])
        latencies += [float(x) for x in done["latencies"]]
    return Timed(count, seconds, latencies)


async def _replica(url: str, store_dir: Path, max_queued: int, share: Path) -> None:
    deliveries: list[Delivery] = pickle.loads(share.read_bytes())
    engine = make_engine(url)
    under = BrokerUnderTest(settings_for(url, store_dir, max_queued), make_session_maker(engine))
    try:
        # Connections open before the start, as a running daemon's are.
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        print(READY, flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        timed = await consume(under.on_result, deliveries, under.settings.results_prefetch)
    finally:
        await under.close()
        await engine.dispose()
    print(json.dumps({"count": timed.count, "latencies": timed.latencies}), flush=True)


def main(argv: Sequence[str]) -> int:
    url, store_dir, max_queued, share = argv
    configure_logging("console", "WARNING")
    asyncio.run(_replica(url, Path(store_dir), int(max_queued), Path(share)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
