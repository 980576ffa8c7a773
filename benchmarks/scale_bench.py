"""ATLAS-scale load, measured: a request of 20,000 files over 100 enrolled edges heartbeating,
on a bookkeeping of 10 million ranges, with pilots' lookups running meanwhile.

For each `--scales` factor (1.0 is the full size; 0.1 a tenth of the files and the ranges, the
same 100 edges), in a PostgreSQL database of its own (`--database-url`'s name with the scale
after it, e.g. `ess_scale_bench_s100`):

1. Fill (`benchmarks.scale_fill`): `--ranges` ranges of earlier, ready requests, 500 a file;
   the first tenth of the files past retention. An earlier fill of the same shape is reused
   and reset to it (what the last run added deleted, what its retention deleted put back,
   vacuumed); `--refill` fills anew.
2. The head API under uvicorn (`--workers` processes, as `python -m ess_head_api` serves it,
   bearer tokens on, signed URLs of `--store`), and a pilots' process
   (`benchmarks.scale_load`) sending `GET /v1/ranges` for ranges of the fill.
3. Lookups alone: as many as `--connections` clients get answered, then `--target-rate` and
   `--rate` per second offered, `--seconds` each.
4. `--edges` simulated edges enrolled in the enrollment table; heartbeats alone through the
   broker's handler (signature check, transaction), `--heartbeat-rounds` per edge, as many at
   once as the broker's consumer takes.
5. The request (`--files` files of `--split-ranges` ranges) recorded as the broker records
   `request.created`, then assigned by the broker's `assign_pending` until none is pending,
   with every edge heartbeating every 5 s: half of the files without lookups, the rest with
   lookups at `--rate` per second meanwhile.
6. Each file's `split.done` (made by the simulated edge beforehand) through the broker's
   result handler, `prefetch` at once: a quarter without lookups; a quarter without lookups by
   `--brokers` broker processes at once, as broker replicas share the results queue
   (`benchmarks.scale_replicas`); the rest in three parts: with lookups at `--target-rate`/s,
   at `--rate`/s, and with `--connections` clients as fast as they get answered; heartbeats
   go on.
   As many at once as the broker's consumer holds (`results_prefetch`); those that wait are
   recorded together (`ess_broker.result_batches`).
7. The retention sweep's `purge_old_ranges` deleting the expired tenth of the fill (batches
   of `range_retention_batch`, objects from a local directory store where they are absent)
   with lookups at `--target-rate`/s; then one sweep more, with nothing expired (what every
   sweep of the broker costs in the steady state).

Then prints the tables, how each figure grew from the smallest scale to the largest, and
writes them with the command and the machine to `--out`. Everything talks to 127.0.0.1 only;
each phase is bounded; the server and the pilots' process are stopped at the end.

Usage: ``python -m benchmarks.scale_bench [--scales 0.1,1.0] [--database-url URL]
[--out docs/benchmarks/scale.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
from sqlalchemy.engine import make_url

from benchmarks.local_servers import add_store_options, drop_database, require_local
from benchmarks.lookup_bench import Server, start_server, wait_ready
from benchmarks.scale_broker import (
    BrokerUnderTest,
    Edges,
    Heartbeating,
    Timed,
    assign_all,
    assigned_work,
    check_recorded,
    consume,
    record,
    scale_request,
    settings_for,
)
from benchmarks.scale_fill import FillShape, Prepared, prepare, ranges_size
from benchmarks.scale_load import LoadProcess, PhaseResult
from benchmarks.scale_replicas import consume_in_replicas
from ess_broker.retention import purge_old_ranges
from ess_common.db.session import make_engine, make_session_maker
from ess_common.logs import configure_logging

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = os.environ.get(
    "ESS_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/ess_scale_bench"
)
#: The fill's ranges per file, and the share of its files past retention.
FILL_RANGES_PER_FILE = 500
EXPIRED_SHARE = 0.1
RETENTION = timedelta(days=30)
HEARTBEAT_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Sizes:
    scale: float
    fill: FillShape
    files: int
    split_ranges: int
    edges: int

    @property
    def request_ranges(self) -> int:
        return self.files * self.split_ranges


@dataclass
class Part:
    """One part of the bookkeeping and the lookups that ran while it wrote."""

    load: str
    written: Timed
    ranges: int
    lookups: PhaseResult


@dataclass
class ScaleResult:
    sizes: Sizes
    prepared: Prepared
    alone: list[tuple[str, PhaseResult]]
    heartbeats: Timed
    record_s: float
    #: Half of the request's files assigned with nothing else running, the rest with lookups.
    assignment_alone: Timed
    assignment: Timed
    assignment_lookups: PhaseResult
    #: A quarter of the results recorded with nothing else running (and the ranges in them).
    bookkeeping_alone: tuple[Timed, int]
    #: Another quarter recorded by `brokers` broker processes at once, nothing else running.
    bookkeeping_replicas: tuple[Timed, int]
    brokers: int
    messages_s: float
    parts: list[Part]
    beats_meanwhile: Timed
    purged: Timed
    #: A sweep after it, with nothing expired.
    purge_idle: Timed
    purge_lookups: PhaseResult
    size_after: tuple[int, int]

    @property
    def bookkeeping_s(self) -> float:
        return sum(p.written.seconds for p in self.parts)

    @property
    def ranges_per_s(self) -> float:
        return sum(p.ranges for p in self.parts) / self.bookkeeping_s

    @property
    def ranges_per_s_alone(self) -> float:
        written, ranges = self.bookkeeping_alone
        return ranges / written.seconds if written.seconds else 0.0

    @property
    def ranges_per_s_replicas(self) -> float:
        written, ranges = self.bookkeeping_replicas
        return ranges / written.seconds if written.seconds else 0.0

    def alone_result(self, label: str) -> PhaseResult:
        return dict(self.alone)[label]


def sizes_for(args: argparse.Namespace, scale: float) -> Sizes:
    ranges = max(FILL_RANGES_PER_FILE, round(args.ranges * scale))
    files = -(-ranges // FILL_RANGES_PER_FILE)
    fill = FillShape(ranges, FILL_RANGES_PER_FILE, max(1, round(files * EXPIRED_SHARE)))
    return Sizes(scale, fill, max(1, round(args.files * scale)), args.split_ranges, args.edges)


def database_for(url: str, scale: float) -> str:
    target = make_url(url)
    name = f"{target.database}_s{round(scale * 100):03d}"
    return target.set(database=name).render_as_string(hide_password=False)


async def run_scale(args: argparse.Namespace, sizes: Sizes, url: str, workdir: Path) -> ScaleResult:
    say = _say(sizes.scale)
    say(f"preparing {sizes.fill.ranges:,} ranges in {make_url(url).database} ...")
    prepared = await prepare(url, sizes.fill, refill=args.refill)
    say(
        f"database ready (fill {prepared.fill_s:.0f} s, reset {prepared.reset_s:.0f} s, "
        f"{prepared.ranges_bytes / prepared.ranges_rows * 1e6 / 2**20:.0f} MiB per million "
        "ranges)"
    )
    token = secrets.token_hex(16)
    server_args = argparse.Namespace(**{**vars(args), "database_url": url})
    server = start_server(server_args, token, workdir)
    load: LoadProcess | None = None
    engine = make_engine(url)
    max_queued = args.max_queued or -(-sizes.files // sizes.edges)
    under = BrokerUnderTest(
        settings_for(url, workdir / "objects", max_queued), make_session_maker(engine)
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(server, session, 60)
        fill = sizes.fill
        load = await LoadProcess.start(
            server.url, token, fill.expired_files, fill.files, fill.ranges_per_file
        )
        return await _measure(args, sizes, prepared, server, load, under, url, workdir)
    finally:
        if load is not None:
            await load.close()
        server.stop()
        await under.close()
        await engine.dispose()


def _say(scale: float) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"[scale {scale:g}] {message}", flush=True)

    return say


async def _measure(
    args: argparse.Namespace,
    sizes: Sizes,
    prepared: Prepared,
    server: Server,
    load: LoadProcess,
    under: BrokerUnderTest,
    url: str,
    workdir: Path,
) -> ScaleResult:
    say = _say(sizes.scale)
    seconds = args.seconds
    await load.run(args.warmup_seconds, connections=args.connections)
    say("lookups alone ...")
    alone = [
        (f"max, {args.connections} clients", await load.run(seconds, connections=args.connections)),
        (f"{args.target_rate:,}/s offered", await load.run(seconds, rate=args.target_rate)),
        (f"{args.rate:,}/s offered", await load.run(seconds, rate=args.rate)),
    ]
    edges = Edges(sizes.edges)
    await edges.enroll(under.sessions)
    say(f"heartbeats of {sizes.edges} edges alone ...")
    beats = [
        edges.heartbeat(name, under.heartbeat_queue)
        for _ in range(args.heartbeat_rounds)
        for name in edges.names
    ]
    heartbeats = await consume(under.on_heartbeat, beats, under.settings.prefetch)
    say(f"recording a request of {sizes.files:,} files ...")
    spec = scale_request(f"scale-{secrets.token_hex(4)}", sizes.files, sizes.split_ranges)
    request_id, record_s = await record(under.sessions, spec)
    background = Heartbeating(under, edges, HEARTBEAT_INTERVAL_S)
    background.start()
    try:
        # Half of the files with nothing else running, the rest with the lookups.
        say("assigning half of the files alone ...")
        assignment_alone = await assign_all(under, sizes.files // 2)
        say(f"assigning the rest, lookups at {args.rate:,}/s ...")
        await load.begin(rate=args.rate)
        assignment = await assign_all(under, sizes.files - assignment_alone.count)
        assignment_lookups = await load.end()
        say("the edges' split.done messages ...")
        started = time.perf_counter()
        works = await assigned_work(under.sessions, request_id)
        messages = [edges.split_done(w, under.results_queue) for w in works]
        messages_s = time.perf_counter() - started
        # A quarter of the results with nothing else running, a quarter by several broker
        # processes with nothing else running, the rest in three parts.
        quarter = len(messages) // 4
        say(f"bookkeeping {quarter:,} split.done alone ...")
        alone_written = await consume(
            under.on_result, messages[:quarter], under.settings.results_prefetch
        )
        bookkeeping_alone = (alone_written, quarter * sizes.split_ranges)
        say(f"bookkeeping {quarter:,} split.done alone, {args.brokers} broker processes ...")
        replicas_written = await consume_in_replicas(
            url,
            workdir,
            under.settings.edge_max_queued,
            messages[quarter : 2 * quarter],
            args.brokers,
        )
        bookkeeping_replicas = (replicas_written, quarter * sizes.split_ranges)
        messages = messages[2 * quarter :]
        parts = []
        loads = [
            (f"{args.target_rate:,}/s offered", {"rate": args.target_rate}),
            (f"{args.rate:,}/s offered", {"rate": args.rate}),
            (f"max, {args.connections} clients", {"connections": args.connections}),
        ]
        third = math.ceil(len(messages) / len(loads))
        for i, (label, how) in enumerate(loads):
            batch = messages[i * third : (i + 1) * third]
            if not batch:
                continue
            say(f"bookkeeping {len(batch):,} split.done, lookups {label} ...")
            await load.begin(**how)
            written = await consume(under.on_result, batch, under.settings.results_prefetch)
            parts.append(Part(label, written, len(batch) * sizes.split_ranges, await load.end()))
    finally:
        beats_meanwhile = await background.stop()
    await check_recorded(under.sessions, request_id, sizes.files, sizes.request_ranges)
    say(
        f"retention of {sizes.fill.expired_ranges:,} expired ranges, lookups at "
        f"{args.target_rate:,}/s ..."
    )
    store = await under.broker.retention.store()

    async def sweep() -> Timed:
        started = time.perf_counter()
        count = await purge_old_ranges(
            under.sessions,
            store,
            RETENTION.total_seconds(),
            batch=under.settings.range_retention_batch,
        )
        return Timed(count, time.perf_counter() - started)

    await load.begin(rate=args.target_rate)
    purged = await sweep()
    purge_lookups = await load.end()
    if purged.count != sizes.fill.expired_ranges:
        raise RuntimeError(
            f"retention deleted {purged.count} ranges, {sizes.fill.expired_ranges} expired"
        )
    # What every sweep costs afterwards, with nothing expired.
    purge_idle = await sweep()
    return ScaleResult(
        sizes=sizes,
        prepared=prepared,
        alone=alone,
        heartbeats=heartbeats,
        record_s=record_s,
        assignment_alone=assignment_alone,
        assignment=assignment,
        assignment_lookups=assignment_lookups,
        bookkeeping_alone=bookkeeping_alone,
        bookkeeping_replicas=bookkeeping_replicas,
        brokers=args.brokers,
        messages_s=messages_s,
        parts=parts,
        beats_meanwhile=beats_meanwhile,
        purged=purged,
        purge_idle=purge_idle,
        purge_lookups=purge_lookups,
        size_after=await ranges_size(url),
    )


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_bench", description=__doc__)
    parser.add_argument("--scales", default="0.1,1.0")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--ranges", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--split-ranges", type=int, default=100)
    parser.add_argument("--edges", type=int, default=100)
    parser.add_argument("--refill", action="store_true")
    parser.add_argument("--drop-after", action="store_true", help="drop the databases at the end")
    parser.add_argument("--max-queued", type=int, default=0, help="0: files / edges")
    parser.add_argument("--heartbeat-rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--brokers", type=int, default=2, help="broker processes of the replicas' bookkeeping"
    )
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--target-rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    add_store_options(parser)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs/benchmarks/scale.md")
    args = parser.parse_args(argv)
    try:
        args.scale_list = sorted({float(s) for s in args.scales.split(",") if s})
    except ValueError:
        parser.error("--scales takes factors such as 0.1,1.0")
    if not args.scale_list or min(args.scale_list) <= 0:
        parser.error("--scales takes factors above 0")
    require_local(parser, (args.database_url, args.s3_endpoint_url))
    return args


async def run(argv: Sequence[str]) -> int:
    from benchmarks.scale_report import summary_lines, write_page

    args = parse(argv)
    configure_logging("console", "WARNING")
    load_before = os.getloadavg()[0]
    results = []
    urls = [database_for(args.database_url, scale) for scale in args.scale_list]
    try:
        for scale, url in zip(args.scale_list, urls, strict=True):
            with tempfile.TemporaryDirectory(prefix="ess-scale-bench-") as tmp:
                results.append(await run_scale(args, sizes_for(args, scale), url, Path(tmp)))
    finally:
        if args.drop_after:
            for url in urls:
                await drop_database(url)
    load_after = os.getloadavg()[0]
    for line in summary_lines(results, args):
        print(line)
    write_page(args.out, argv, args, results, (load_before, load_after))
    print(f"written to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
