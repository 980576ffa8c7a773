"""A pilot's fetch through `ess_pilot` against plain GETs of the same objects, in one run.

1. Puts ``--ranges`` range-file-sized objects (``--object-kb``, random bytes) into a fresh bucket
   of the test S3 server, and records them as the ranges of a ready request (``--ranges-per-file``
   ranges of 100 events in each file) in a PostgreSQL database of the benchmark's own
   (``ess_bench_pilot`` on the server of ``--database-url``, migrated like production, dropped
   at the end), with their real sizes and adler32 checksums.
2. Starts the head API as ``python -m ess_head_api`` serves it (``--workers``), on that
   database, with bearer tokens on and the S3 store's signed URLs, in a subprocess.
3. Alternates, ``--rounds`` times:
   - plain GET: the same objects' signed URLs (made before the clock starts, as the head makes
     them) fetched with one ``httpx.AsyncClient``, ``--parallel`` at a time, each body written
     to a file: the floor of any client of the same HTTP library;
   - pilot: ``PilotClient.fetch`` of the PanDA event ranges (one per object) into an empty
     directory, ``max_parallel=--parallel``: the batched lookup at the head, the downloads, the
     size and adler32 checks, the held-file records, the payload ranges.
   and reports the median of each, the median of each round's ratio pilot / plain GETs (the
   target: the pilot within 1.1x of the plain GETs; a round's two runs share the machine's load
   of the moment), the CPU this process spent in each (the client's own handling), and the
   lookup alone (one ``POST /v1/ranges/lookup`` of every range).
4. Prints the page and writes it, with the command and the machine, to ``--out``.

Everything runs on 127.0.0.1; the server is stopped, the bucket and the database removed.

Usage: ``python -m benchmarks.pilot_bench [--ranges 200] [--object-kb 512] [--parallel 4]
[--rounds 7] [--out docs/benchmarks/pilot.md]``. The servers are those of the test suite
(``ESS_TEST_DATABASE_URL``, ``ESS_TEST_S3_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.local_servers import drop_database, ensure_database
from benchmarks.lookup_bench import Server, start_server, wait_ready
from benchmarks.machine import describe_machine
from benchmarks.pipeline_flow import Servers
from ess_common.checksums import adler32_of_bytes
from ess_pilot import PilotClient

SCOPE = "mc23_13p6TeV"
EVENTS_PER_RANGE = 100
#: The issue's target: the pilot's fetch within this ratio of plain GETs of the same objects.
RATIO_TARGET = 1.1
#: How long the signed URLs of the plain GETs live (the head's are its own).
URL_TTL_S = 3600


@dataclass(frozen=True)
class Stored:
    """One range file: where it is and what the head knows of it."""

    file_id: int
    lfn: str
    first_event: int
    last_event: int
    key: str
    size: int
    adler32: str

    def panda_range(self, process: int) -> dict[str, Any]:
        return {
            "eventRangeID": f"4242-4343-{self.file_id}-{process}-1",
            "LFN": self.lfn,
            "GUID": str(uuid.uuid5(uuid.NAMESPACE_URL, self.lfn)).upper(),
            "scope": SCOPE,
            "startEvent": self.first_event,
            "lastEvent": self.last_event,
        }


def layout(n_ranges: int, per_file: int, size: int) -> list[tuple[Stored, bytes]]:
    out = []
    for i in range(n_ranges):
        file_id = i // per_file + 1
        first = (i % per_file) * EVENTS_PER_RANGE + 1
        last = first + EVENTS_PER_RANGE - 1
        lfn = f"EVNT.pilotbench._{file_id:06d}.pool.root.1"
        key = f"ranges/{SCOPE}/{lfn}/e{EVENTS_PER_RANGE}/f{file_id}.a1/{first:09d}-{last:09d}.root"
        data = os.urandom(size)
        out.append((Stored(file_id, lfn, first, last, key, size, adler32_of_bytes(data)), data))
    return out


# --- the database -------------------------------------------------------------------------------

REQUEST = """
INSERT INTO requests (id, idempotency_key, dataset, events_per_range, priority, notify_message,
    callback_url, notify_files, spec_digest, status, error, created_at, updated_at, ready_at)
VALUES ('pilot-bench', 'pilot-bench', :dataset, :epr, 0, false, NULL, false, repeat('0', 64),
    'ready', NULL, now(), now(), now())
"""
FILE = """
INSERT INTO files (id, request_id, scope, lfn, guid, n_events, size, adler32, sources, replicas,
    status, edge, attempt, error, updated_at)
VALUES (:id, 'pilot-bench', :scope, :lfn, '', :n_events, 1000000000, '00000001',
    '["https://dm.example.org/bench"]', '[]', 'split', 'edge-bench', 1, NULL, now())
"""
RANGE = """
INSERT INTO ranges (file_id, request_id, scope, lfn, first_event, last_event, object_key, size,
    adler32, created_at)
VALUES (:file_id, 'pilot-bench', :scope, :lfn, :first, :last, :key, :size, :adler32, now())
"""


async def make_database(url: str, stored: Sequence[Stored], per_file: int) -> None:
    from ess_common.db.migrate import upgrade

    await ensure_database(url, fresh=True)
    await upgrade(url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(REQUEST), {"dataset": f"{SCOPE}:pilot.bench", "epr": EVENTS_PER_RANGE}
            )
            files = sorted({(s.file_id, s.lfn) for s in stored})
            await connection.execute(
                text(FILE),
                [
                    {"id": i, "scope": SCOPE, "lfn": lfn, "n_events": per_file * EVENTS_PER_RANGE}
                    for i, lfn in files
                ],
            )
            await connection.execute(
                text("SELECT setval(pg_get_serial_sequence('files', 'id'), :n)"), {"n": len(files)}
            )
            await connection.execute(
                text(RANGE),
                [
                    {
                        "file_id": s.file_id,
                        "scope": SCOPE,
                        "lfn": s.lfn,
                        "first": s.first_event,
                        "last": s.last_event,
                        "key": s.key,
                        "size": s.size,
                        "adler32": s.adler32,
                    }
                    for s in stored
                ],
            )
    finally:
        await engine.dispose()


# --- the two clients ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float


def timed(started: tuple[float, float]) -> Timed:
    return Timed(time.perf_counter() - started[0], time.process_time() - started[1])


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


async def plain_gets(urls: Sequence[str], dest: Path, parallel: int) -> Timed:
    """Time to GET every URL, `parallel` at a time, each body written to a file."""
    slots = asyncio.Semaphore(parallel)
    dest.mkdir(parents=True)

    async def get(http: httpx.AsyncClient, i: int, url: str) -> None:
        async with slots, http.stream("GET", url) as response:
            response.raise_for_status()
            with (dest / f"{i}.root").open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)

    started = clock()
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(get(http, i, url) for i, url in enumerate(urls)))
    return timed(started)


async def pilot_fetch(
    head_url: str, token: str, ranges: Sequence[dict[str, Any]], dest: Path, parallel: int
) -> Timed:
    """Time for `PilotClient.fetch` of every range into an empty `dest`, all served."""
    started = clock()
    async with PilotClient(
        head_url, dest, token=token, max_parallel=parallel, progress=False
    ) as client:
        result = await client.fetch(ranges)
    spent = timed(started)
    if not result.all_served:
        raise RuntimeError(f"the pilot failed ranges: {result.failed[0].reason}")
    return spent


async def lookup_alone(head_url: str, token: str, ranges: Sequence[dict[str, Any]]) -> float:
    body = {
        "eventRanges": [
            {k: r[k] for k in ("eventRangeID", "LFN", "scope", "startEvent", "lastEvent")}
            for r in ranges
        ]
    }
    async with httpx.AsyncClient(timeout=60) as http:
        started = time.perf_counter()
        answer = await http.post(
            f"{head_url}/v1/ranges/lookup",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        seconds = time.perf_counter() - started
    answer.raise_for_status()
    return seconds


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    plain: list[Timed]
    pilot: list[Timed]
    lookup_s: list[float]

    @property
    def ratios(self) -> list[float]:
        return [p.wall_s / g.wall_s for p, g in zip(self.pilot, self.plain, strict=True)]

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios."""
        return statistics.median(self.ratios)


def median_of(values: Sequence[Timed]) -> Timed:
    return Timed(
        statistics.median(v.wall_s for v in values), statistics.median(v.cpu_s for v in values)
    )


async def measure(args: argparse.Namespace, servers: Servers, workdir: Path) -> Result:
    size = args.object_kb * 1024
    made = layout(args.ranges, args.ranges_per_file, size)
    stored = [s for s, _ in made]
    bucket = f"ess-pilot-bench-{uuid.uuid4().hex[:10]}"
    store = servers.store(bucket, max_connections=16)
    await store.start()
    server: Server | None = None
    try:
        slots = asyncio.Semaphore(16)

        async def put(s: Stored, data: bytes) -> None:
            async with slots:
                await store.client.put_object(Bucket=bucket, Key=s.key, Body=data)

        await asyncio.gather(*(put(s, data) for s, data in made))
        del made
        await make_database(args.database_url, stored, args.ranges_per_file)
        token = secrets.token_urlsafe(24)
        server_args = argparse.Namespace(
            database_url=args.database_url,
            store="s3",
            s3_bucket=bucket,
            s3_endpoint_url=servers.s3_endpoint,
            s3_access_key=servers.s3_access,
            s3_secret_key=servers.s3_secret,
            workers=args.workers,
        )
        server = start_server(server_args, token, workdir)
        async with aiohttp.ClientSession() as session:
            await wait_ready(server, session, 60)
        ranges = [s.panda_range(i) for i, s in enumerate(stored)]
        urls = [await store.signed_url(s.key, URL_TTL_S) for s in stored]
        # Once each, unmeasured: the objects in the server's page cache, the head warm.
        await plain_gets(urls, workdir / "warm-plain", args.parallel)
        await pilot_fetch(server.url, token, ranges, workdir / "warm-pilot", args.parallel)
        plain: list[Timed] = []
        pilot: list[Timed] = []
        lookup: list[float] = []
        for n in range(args.rounds):
            plain.append(await plain_gets(urls, workdir / f"plain-{n}", args.parallel))
            pilot.append(
                await pilot_fetch(server.url, token, ranges, workdir / f"pilot-{n}", args.parallel)
            )
            lookup.append(await lookup_alone(server.url, token, ranges))
            shutil.rmtree(workdir / f"plain-{n}")
            shutil.rmtree(workdir / f"pilot-{n}")
            print(
                f"round {n + 1}: plain {plain[-1].wall_s:.3f} s, pilot {pilot[-1].wall_s:.3f} s, "
                f"lookup {lookup[-1] * 1000:.1f} ms",
                file=sys.stderr,
            )
        return Result(plain, pilot, lookup)
    finally:
        if server is not None:
            server.stop()
        await store.delete_prefix("ranges")
        await store.client.delete_bucket(Bucket=bucket)
        await store.close()
        await drop_database(args.database_url)


def page(args: argparse.Namespace, result: Result, argv: Sequence[str], load: str) -> str:
    total_mb = args.ranges * args.object_kb / 1024
    plain, pilot = median_of(result.plain), median_of(result.pilot)
    lookup = statistics.median(result.lookup_s)
    verdict = "met" if result.ratio <= RATIO_TARGET else "**not met**"
    command = " ".join(["python -m benchmarks.pilot_bench", *map(shlex.quote, argv)])
    pairs = zip(result.pilot, result.plain, strict=True)
    runs = ", ".join(f"{p.wall_s:.3f}/{g.wall_s:.3f}" for p, g in pairs)
    return f"""# A pilot's fetch against plain GETs

Written by `python -m benchmarks.pilot_bench` (see its docstring); rerun it to refresh this page.

- command: `{command.strip()}`
- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC
- machine: {describe_machine(with_python=True)}; {load}
- objects: {args.ranges} range files of {args.object_kb} KiB ({total_mb:.1f} MiB), random bytes,
  in a bucket of the test S3 server (OpenStack Swift's S3 API on 127.0.0.1), one PanDA event
  range each, {args.ranges_per_file} ranges per file
- head: the head API under uvicorn, {args.workers} worker process(es), PostgreSQL on this machine,
  bearer tokens on, SigV4 signed URLs
- both clients: {args.parallel} downloads at a time (the pilot's default `--max-parallel`),
  httpx, bodies written to files; {args.rounds} rounds, each a plain run then a pilot run, after
  one unmeasured run of each

| what | seconds (median) | CPU seconds of this process (median) | ratio to plain GETs |
|---|--:|--:|--:|
| plain GETs of the signed URLs (made beforehand) \
| {plain.wall_s:.3f} | {plain.cpu_s:.3f} | 1.00 |
| pilot: `PilotClient.fetch` (lookups, downloads, checks, held-file records) \
| {pilot.wall_s:.3f} | {pilot.cpu_s:.3f} | {pilot.wall_s / plain.wall_s:.2f} |
| the lookup alone (one `POST /v1/ranges/lookup` of every range) \
| {lookup:.3f} | | {lookup / plain.wall_s:.2f} |

- pilot / plain GETs, the median of the rounds' ratios: **{result.ratio:.2f}x** \
(target <= {RATIO_TARGET}x: {verdict})
- rounds, pilot/plain seconds: {runs}
"""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pilot_bench", description=__doc__)
    servers = Servers.from_env()
    default_db = make_url(servers.database_url).set(database="ess_bench_pilot")
    parser.add_argument("--ranges", type=int, default=200)
    parser.add_argument("--ranges-per-file", type=int, default=10)
    parser.add_argument("--object-kb", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default=default_db.render_as_string(hide_password=False))
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


async def run(argv: Sequence[str]) -> str:
    """The whole benchmark: the page, printed and written to `--out`."""
    args = parse(argv)
    if args.ranges < 1 or args.rounds < 1 or args.parallel < 1:
        raise SystemExit("--ranges, --rounds and --parallel must be at least 1")
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ess-pilot-bench-") as tmp:
        result = await measure(args, Servers.from_env(), Path(tmp))
    load = f"1-minute load average {before:.2f} before the runs, {os.getloadavg()[0]:.2f} after"
    text_ = page(args, result, argv, load)
    print(text_)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text_)
    return text_


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(run(list(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
