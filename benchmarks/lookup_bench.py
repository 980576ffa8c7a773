"""Pilot lookups per second and their latency, against a bookkeeping of 1,000,000 ranges, beside
the head API's trivial endpoint (`/healthz`) on the same server in the same run.

1. Fills a PostgreSQL database of its own (`ess_bench` on the server of `--database-url`,
   migrated like production) with `--ranges` ranges in one statement per table
   (`generate_series`): ready requests of 100 files, files of `--ranges-per-file` ranges of 100
   events. A database already holding exactly that is reused (`--refill` forces a new fill).
2. Starts the head API with uvicorn in a subprocess on 127.0.0.1 as `python -m ess_head_api`
   serves it (`--workers` processes, 2 by default; `ESS_HEAD_WORKERS` in production), with
   bearer tokens on (the lookups carry a pilot token, as pilots do) and the presigned URLs of
   the S3 store, as deployed (the S3 server of `scripts/ensure-services.sh`), or with
   `--store local` the HMAC-signed URLs of the local directory store.
3. Drives it from this process with an async load generator (aiohttp, one keep-alive
   connection pool) on two endpoints, one after the other: `GET /v1/ranges` for a random
   range of a random file, and `GET /healthz`:
   - max throughput: `--connections` requests in flight for `--seconds`, and the CPU the
     server's workers, PostgreSQL and the load generator spent per answer meanwhile (/proc);
   - fixed offered rate: `--rate` requests per second for `--seconds`, each sent at its
     scheduled time whatever the previous ones did (open loop), its latency counted from that
     time, so a server or generator that falls behind shows in the latency.
   A third lookup phase offers 70% of the lookups' closed-loop maximum. Each phase also
   records the share of the machine's CPU in use.
4. Measures in this process, with no network and no load, what one lookup costs piece by
   piece: the query alone (asyncpg), the query as the route makes it (`find_pieces` on the
   hot reads' pool), the whole lookup through the app (in-process ASGI), and `/healthz` the
   same way.
5. Prints the tables and writes them, with the command and the machine, to `--out`.

Everything runs on 127.0.0.1, each phase is bounded in time, the server is stopped at the end.

Usage: ``python -m benchmarks.lookup_bench [--ranges 1000000] [--rate 2000] [--seconds 10]
[--workers N] [--store s3|local] [--out docs/benchmarks/lookup.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.local_servers import add_store_options, ensure_database, require_local
from benchmarks.machine import describe_machine
from ess_cli.embedded import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = os.environ.get(
    "ESS_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/ess_bench"
)
SCOPE = "mc16_13TeV"
EVENTS_PER_RANGE = 100
FILES_PER_REQUEST = 100
#: Target of the issue: lookups at least this share of the trivial endpoint's throughput, and
#: p99 under P99_TARGET_MS at the offered rate.
RATIO_TARGET = 0.5
P99_TARGET_MS = 50.0


# --- the database -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    ranges: int
    ranges_per_file: int

    @property
    def files(self) -> int:
        return -(-self.ranges // self.ranges_per_file)

    @property
    def requests(self) -> int:
        return -(-self.files // FILES_PER_REQUEST)

    @property
    def n_events(self) -> int:
        return self.ranges_per_file * EVENTS_PER_RANGE


def lfn_of(file_index: int) -> str:
    return f"EVNT.bench._{file_index:07d}.pool.root.1"


FILL = [
    "TRUNCATE requests, files, ranges, notifications, outbox RESTART IDENTITY CASCADE",
    """
    INSERT INTO requests (id, idempotency_key, dataset, events_per_range, priority,
        notify_message, callback_url, notify_files, spec_digest, status, error, created_at,
        updated_at, ready_at)
    SELECT 'bench-' || lpad(r::text, 8, '0'), 'bench-' || r, :dataset || r,
        :epr, 0, false, NULL, false, repeat('0', 64), 'ready', NULL, now(), now(), now()
    FROM generate_series(0, :n_requests - 1) AS r
    """,
    """
    INSERT INTO files (id, request_id, scope, lfn, guid, n_events, size, adler32, sources,
        replicas, status, edge, attempt, error, updated_at)
    SELECT f + 1, 'bench-' || lpad((f / :files_per_request)::text, 8, '0'), :scope,
        'EVNT.bench._' || lpad(f::text, 7, '0') || '.pool.root.1', '', :n_events, 1000000000,
        '00000001', '["https://dm.example.org/bench"]', '[]', 'split', 'edge-bench', 1, NULL,
        now()
    FROM generate_series(0, :n_files - 1) AS f
    """,
    "SELECT setval(pg_get_serial_sequence('files', 'id'), :n_files)",
    """
    INSERT INTO ranges (file_id, request_id, scope, lfn, first_event, last_event, object_key,
        size, adler32, created_at)
    SELECT f.id, f.request_id, f.scope, f.lfn, g * :epr + 1, (g + 1) * :epr,
        'ranges/' || f.scope || '/' || f.lfn || '/e' || :epr || '/f' || f.id || '.a1/'
            || lpad((g * :epr + 1)::text, 9, '0') || '-' || lpad(((g + 1) * :epr)::text, 9, '0')
            || '.root',
        50000, '0a1b2c3d', now()
    FROM files AS f CROSS JOIN generate_series(0, :rpf - 1) AS g
    WHERE (f.id - 1) * :rpf + g < :n_ranges
    """,
    "ANALYZE",
]


async def prepare_database(url: str, shape: Shape, refill: bool) -> tuple[str, float]:
    """Make, migrate and fill the database; returns PostgreSQL's version and the fill seconds
    (0 when an existing fill was reused)."""
    from ess_common.db.migrate import upgrade

    await ensure_database(url)
    await upgrade(url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            version = str(await connection.scalar(text("SHOW server_version")))
            have = await connection.scalar(text("SELECT count(*) FROM ranges"))
            files = await connection.scalar(text("SELECT count(*) FROM files"))
            if not refill and have == shape.ranges and files == shape.files:
                return version, 0.0
            started = time.perf_counter()
            params = {
                "scope": SCOPE,
                "dataset": f"{SCOPE}:bench.",
                "epr": EVENTS_PER_RANGE,
                "n_requests": shape.requests,
                "files_per_request": FILES_PER_REQUEST,
                "n_files": shape.files,
                "n_events": shape.n_events,
                "rpf": shape.ranges_per_file,
                "n_ranges": shape.ranges,
            }
            for statement in FILL:
                used = {k: v for k, v in params.items() if f":{k}" in statement}
                await connection.execute(text(statement), used)
        return version, time.perf_counter() - started
    finally:
        await engine.dispose()


# --- the server ---------------------------------------------------------------------------------


def app_factory() -> FastAPI:
    """The head API as `python -m ess_head_api` serves it in each worker (its outbox relay
    included); the bus is in-process (`ESS_BUS_URL=memory://`) since lookups publish nothing."""
    from ess_head_api.__main__ import worker_app

    return worker_app()


def serve_head() -> None:
    """Serve the head API as `python -m ess_head_api` does (`ESS_HEAD_WORKERS` workers, each
    building its app with `app_factory`'s `worker_app`), with the in-process bus that command
    refuses."""
    from ess_common.logs import configure_logging
    from ess_common.settings import HeadSettings
    from ess_head_api.__main__ import serve

    settings = HeadSettings()
    configure_logging(settings.log_format, settings.log_level)
    serve(settings)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def server_env(args: argparse.Namespace, token: str, workdir: Path, url: str) -> dict[str, str]:
    env = {
        "ESS_DATABASE_URL": args.database_url,
        "ESS_BUS_URL": "memory://",
        "ESS_TOKENS": f'{{"pilot": ["{token}"]}}',
        "ESS_HEAD_URL": url,
        "ESS_LOG_LEVEL": "WARNING",
    }
    if args.store == "s3":
        env |= {
            "ESS_STORE_URL": f"s3://{args.s3_bucket}",
            "ESS_S3_ENDPOINT_URL": args.s3_endpoint_url,
            "ESS_S3_ACCESS_KEY": args.s3_access_key,
            "ESS_S3_SECRET_KEY": args.s3_secret_key,
        }
    else:
        env["ESS_STORE_URL"] = f"file://{workdir / 'objects'}"
    return env


def start_server(args: argparse.Namespace, token: str, workdir: Path) -> Server:
    port = free_port()
    env = {
        **os.environ,
        **server_env(args, token, workdir, f"http://127.0.0.1:{port}"),
        "ESS_HEAD_WORKERS": str(args.workers),
        "ESS_API_HOST": "127.0.0.1",
        "ESS_API_PORT": str(port),
        "PYTHONPATH": os.pathsep.join(
            [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    log = workdir / "server.log"
    command = [sys.executable, "-c", "from benchmarks.lookup_bench import serve_head; serve_head()"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, f"http://127.0.0.1:{port}", log)


async def wait_ready(server: Server, session: aiohttp.ClientSession, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{server.log.read_text()[-3000:]}")
        try:
            async with session.get(f"{server.url}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout_s}s")


# --- the load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    server_s: float
    postgres_s: float
    client_s: float
    busy_s: float
    total_s: float


def _stat_fields(pid: str) -> tuple[str, list[str]] | None:
    """A process's name and the fields of /proc/<pid>/stat after it (state, ppid, pgrp...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name, _, rest = text.partition("(")[2].rpartition(")")
    return name, rest.split()


def cpu_sample(server_pid: int) -> CpuSample | None:
    """CPU seconds so far of the server's process group, of PostgreSQL's processes (the
    postmaster's include the backends that exited), of this process and of the machine;
    None where /proc is not there to say."""
    if not Path("/proc/stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    server = postgres = 0.0
    for entry in Path("/proc").iterdir():
        found = _stat_fields(entry.name) if entry.name.isdigit() else None
        if found is None:
            continue
        name, fields = found
        # utime, stime, and the same of the children waited for.
        seconds = sum(int(v) for v in fields[11:15]) / tick
        if int(fields[2]) == server_pid:
            server += seconds
        elif name == "postgres":
            postgres += seconds
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    me = os.times()
    return CpuSample(
        server, postgres, me.user + me.system, (sum(ticks) - idle) / tick, sum(ticks) / tick
    )


@dataclass(frozen=True)
class CpuUse:
    """CPU per answered request, in ms; the share of the machine's CPU in use, and of it
    what other processes used (the machine may be shared)."""

    server_ms: float
    postgres_ms: float
    client_ms: float
    busy: float
    others: float


def cpu_use(before: CpuSample | None, after: CpuSample | None, done: int) -> CpuUse | None:
    if before is None or after is None or done == 0 or after.total_s <= before.total_s:
        return None

    def per_request(a: float, b: float) -> float:
        return (b - a) / done * 1000

    total = after.total_s - before.total_s
    busy = after.busy_s - before.busy_s
    ours = sum(
        b - a
        for a, b in (
            (before.server_s, after.server_s),
            (before.postgres_s, after.postgres_s),
            (before.client_s, after.client_s),
        )
    )
    return CpuUse(
        per_request(before.server_s, after.server_s),
        per_request(before.postgres_s, after.postgres_s),
        per_request(before.client_s, after.client_s),
        busy / total,
        max(0.0, busy - ours) / total,
    )


@dataclass
class Result:
    endpoint: str
    phase: str
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    offered: float | None = None
    #: Requests not yet answered when the phase's time was up (open loop).
    unfinished: int = 0
    #: What the phase cost the machine (closed loop).
    cpu: CpuUse | None = None

    @property
    def done(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lookup_urls(base: str, shape: Shape, n: int, seed: int) -> list[str]:
    """Random single ranges of random files, each inside one prepared range file."""
    rng = random.Random(seed)
    urls = []
    for _ in range(n):
        file_index = rng.randrange(shape.files)
        per_file = min(shape.ranges_per_file, shape.ranges - file_index * shape.ranges_per_file)
        first = rng.randrange(per_file) * EVENTS_PER_RANGE + 1
        start = first + rng.randrange(EVENTS_PER_RANGE // 2)
        last = start + rng.randrange(EVENTS_PER_RANGE // 2)
        urls.append(
            f"{base}/v1/ranges?scope={SCOPE}&LFN={lfn_of(file_index)}"
            f"&startEvent={start}&lastEvent={last}"
        )
    return urls


async def _one(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], result: Result, t0: float
) -> None:
    try:
        async with session.get(url, headers=headers) as response:
            await response.read()
            ok = response.status == 200
    except aiohttp.ClientError:
        ok = False
    if ok:
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
    else:
        result.errors += 1


async def closed_loop(
    session: aiohttp.ClientSession,
    endpoint: str,
    urls: Sequence[str],
    headers: dict[str, str],
    connections: int,
    seconds: float,
) -> Result:
    result = Result(endpoint, f"max, {connections} in flight", seconds)
    end = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        while time.perf_counter() < end:
            url = urls[next(counter) % len(urls)]
            await _one(session, url, headers, result, time.perf_counter())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


async def open_loop(
    session: aiohttp.ClientSession,
    endpoint: str,
    urls: Sequence[str],
    headers: dict[str, str],
    rate: float,
    seconds: float,
) -> Result:
    result = Result(endpoint, f"{rate:,.0f}/s offered", seconds, offered=rate)
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # Latency from the scheduled time: a late send (the generator or the server behind)
        # counts against the request, as a pilot waiting would see it.
        task = asyncio.create_task(_one(session, urls[i % len(urls)], headers, result, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    # Stragglers get at most 5 more seconds; what is still out then counts as unfinished.
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        result.unfinished = len(pending)
    result.seconds = seconds
    return result


# --- one lookup, piece by piece ---


@dataclass(frozen=True)
class Step:
    name: str
    ms: float


def _asked(shape: Shape, n: int) -> list[tuple[str, str, int, int]]:
    rng = random.Random(7)
    out = []
    for _ in range(n):
        file_index = rng.randrange(shape.files)
        per_file = min(shape.ranges_per_file, shape.ranges - file_index * shape.ranges_per_file)
        start = rng.randrange(per_file) * EVENTS_PER_RANGE + 1
        out.append((SCOPE, lfn_of(file_index), start, start + 10))
    return out


async def _per_call(calls: Sequence[Any], one: Any) -> float:
    for call in calls[:100]:
        await one(call)
    started = time.perf_counter()
    for call in calls[100:]:
        await one(call)
    return (time.perf_counter() - started) / (len(calls) - 100) * 1000


async def breakdown(args: argparse.Namespace, shape: Shape, workdir: Path) -> list[Step]:
    """Milliseconds per call of each layer of a lookup, one call at a time, in this process."""
    import asyncpg  # type: ignore[import-untyped]
    import httpx

    from ess_common.db.hot_reads import hot_reads
    from ess_common.db.session import make_engine
    from ess_head_api.lookup import find_pieces

    asked = _asked(shape, 100 + args.breakdown_calls)
    plain = make_url(args.database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(plain)
    try:

        async def raw(q: tuple[str, str, int, int]) -> None:
            await connection.fetch(
                "SELECT id, file_id, first_event, last_event, object_key, size, adler32 "
                "FROM ranges WHERE scope = $1 AND lfn = $2 AND first_event <= $4 "
                "AND last_event >= $3 ORDER BY file_id, first_event",
                *q,
            )

        raw_ms = await _per_call(asked, raw)
    finally:
        await connection.close()
    engine = make_engine(args.database_url)
    try:

        async def core(q: tuple[str, str, int, int]) -> None:
            await find_pieces(engine, *q)

        async with hot_reads(engine):
            core_ms = await _per_call(asked, core)
    finally:
        await engine.dispose()
    token = secrets.token_hex(16)
    saved = dict(os.environ)
    os.environ.update(server_env(args, token, workdir, "http://testserver"))
    try:
        app = app_factory()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    auth = {"Authorization": f"Bearer {token}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):

        async def lookup(q: tuple[str, str, int, int]) -> None:
            params: dict[str, str | int] = {
                "scope": q[0],
                "LFN": q[1],
                "startEvent": q[2],
                "lastEvent": q[3],
            }
            response = await client.get("/v1/ranges", params=params, headers=auth)
            assert response.status_code == 200, response.text

        async def healthz(_: object) -> None:
            assert (await client.get("/healthz")).status_code == 200

        app_ms = await _per_call(asked, lookup)
        healthz_ms = await _per_call(asked, healthz)
    return [
        Step("the range query alone (asyncpg, one connection)", raw_ms),
        Step(
            "the range query as the route makes it (`find_pieces` on the hot reads' pool)",
            core_ms,
        ),
        Step("a whole lookup through the app (in-process ASGI, token, signed URL)", app_ms),
        Step("`/healthz` through the app (in-process ASGI)", healthz_ms),
    ]


def breakdown_lines(steps: Sequence[Step]) -> list[str]:
    raw, core, whole, trivial = (s.ms for s in steps)
    lines = ["| step | ms per call |", "|---|--:|"]
    lines += [f"| {s.name} | {s.ms:.3f} |" for s in steps]
    lines += [
        "",
        f"- Of a lookup's {whole:.2f} ms, {core:.2f} ms ({core / whole:.0%}) is the range query "
        f"as the route makes it (a connection from the hot reads' pool and the query), which "
        f"asyncpg alone does in {raw:.2f} ms; the remaining {whole - core:.2f} ms is the "
        "request through the app (answered before routing, `lookup_shortcut`), the token, the "
        "parameters, building and serialising the answer and the signed URL, against "
        f"{trivial:.2f} ms for the whole of `/healthz`.",
        f"- A lookup costs {whole / trivial:.1f}x `/healthz` in the app, one at a time. Under "
        "load both are bound by the machine's CPU, shared by the workers, PostgreSQL and the "
        "load generator; per request, uvicorn's HTTP handling comes on top of both.",
    ]
    return lines


# --- the report ---------------------------------------------------------------------------------


def _software(pg_version: str) -> str:
    from importlib.metadata import version
    from importlib.util import find_spec

    names = ["fastapi", "uvicorn", "sqlalchemy", "asyncpg", "aiohttp"]
    packages = ", ".join(f"{name} {version(name)}" for name in names)
    # What uvicorn picks when installed: the HTTP parser and event loop every answer goes through.
    http = "httptools" if find_spec("httptools") else "h11"
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    return (
        f"Python {platform.python_version()}, PostgreSQL {pg_version}, {packages} "
        f"(uvicorn on {http} and the {loop} event loop)"
    )


def _ms(value: float) -> str:
    return "—" if value != value else f"{value:.1f}"


def table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| endpoint | load | requests | errors | unfinished | throughput req/s "
        "| p50 ms | p99 ms | max ms | machine CPU in use |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        busy = "—" if r.cpu is None else f"{r.cpu.busy:.0%}"
        lines.append(
            f"| {r.endpoint} | {r.phase} | {r.done:,} | {r.errors:,} | {r.unfinished:,} "
            f"| {r.throughput:,.0f} | {_ms(r.percentile(0.5))} | {_ms(r.percentile(0.99))} "
            f"| {_ms(max(r.latencies_ms, default=float('nan')))} | {busy} |"
        )
    return lines


def cpu_lines(results: Sequence[Result]) -> list[str]:
    measured = [r for r in results if r.cpu is not None and r.offered is None]
    if not measured:
        return []
    lines = [
        "CPU per answered request at max throughput, ms (from /proc; PostgreSQL's processes "
        "serve every database of the server, other work on the machine included):",
        "",
        "| endpoint | server workers | PostgreSQL | load generator | machine CPU in use "
        "| of it, other processes and the kernel |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    total: dict[str, float] = {}
    for r in measured:
        assert r.cpu is not None
        lines.append(
            f"| `{r.endpoint}` | {r.cpu.server_ms:.3f} | {r.cpu.postgres_ms:.3f} "
            f"| {r.cpu.client_ms:.3f} | {r.cpu.busy:.0%} | {r.cpu.others:.0%} |"
        )
        total[r.endpoint] = r.cpu.server_ms + r.cpu.postgres_ms + r.cpu.client_ms
    lines.append("")
    if total.get("lookup") and "healthz" in total:
        lookup, trivial = total["lookup"], total["healthz"]
        lines += [
            f"- All parts together, a lookup costs the machine {lookup:.2f} ms of CPU and "
            f"`/healthz` {trivial:.2f} ms. With the machine's CPU in use, the throughputs "
            f"stand in about the inverse ratio ({trivial / lookup:.2f}).",
            "",
        ]
    return lines


def verdict(results: Sequence[Result], rate: float) -> list[str]:
    by = {(r.endpoint, r.offered is None): r for r in results}
    lookup_max, trivial_max = by[("lookup", True)], by[("healthz", True)]
    (lookup_rate,) = [r for r in results if r.endpoint == "lookup" and r.offered == rate]
    ratio = lookup_max.throughput / trivial_max.throughput if trivial_max.throughput else 0.0
    p99 = lookup_rate.percentile(0.99)
    achieved = lookup_rate.throughput
    ok_ratio = ratio >= RATIO_TARGET
    ok_p99 = p99 < P99_TARGET_MS and achieved >= 0.98 * rate
    return [
        f"- lookup throughput / trivial endpoint throughput: **{ratio:.2f}** "
        f"(target ≥ {RATIO_TARGET}: {'met' if ok_ratio else 'not met'})",
        f"- lookup p99 at {rate:,.0f}/s offered: **{_ms(p99)} ms**, {achieved:,.0f}/s answered "
        f"(target p99 < {P99_TARGET_MS:.0f} ms at that rate: {'met' if ok_p99 else 'not met'})",
    ]


def write_page(
    path: Path,
    argv: Sequence[str],
    args: argparse.Namespace,
    shape: Shape,
    pg_version: str,
    fill_s: float,
    results: Sequence[Result],
    load_before: float,
    load_after: float,
    steps: Sequence[Step],
) -> None:
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.lookup_bench", *argv])
    fill = f"filled in {fill_s:.0f} s" if fill_s else "reused from an earlier fill"
    lines = [
        "# Pilot lookups",
        "",
        "Written by `python -m benchmarks.lookup_bench` (see its docstring); rerun it to refresh "
        "this page.",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine()}; "
        f"1-minute load average {load_before:.2f} before the runs, "
        f"{load_after:.2f} after",
        f"- software: {_software(pg_version)}",
        f"- bookkeeping: {shape.ranges:,} ranges in {shape.files:,} files of "
        f"{shape.ranges_per_file} ranges ({EVENTS_PER_RANGE} events each) in "
        f"{shape.requests:,} requests, PostgreSQL on the same machine ({fill})",
        f"- server: the head API under uvicorn, {args.workers} worker process(es), bearer "
        f"tokens on (lookups carry a pilot token, `/healthz` is open), signed URLs of the "
        f"{'S3 store (SigV4)' if args.store == 's3' else 'local store (HMAC)'}",
        f"- load: one aiohttp client process on the same machine, keep-alive connections; "
        f"max throughput with {args.connections} requests in flight for {args.seconds:g} s, "
        f"then a fixed offered rate of {args.rate:,}/s for {args.seconds:g} s (open loop: "
        "each request sent at its scheduled time, latency counted from that time)",
        "- lookup: `GET /v1/ranges?scope=…&LFN=…&startEvent=…&lastEvent=…` for a random range "
        "of a random file (one piece, one signed URL); trivial: `GET /healthz`",
        "",
        "## Results",
        "",
        *table(results),
        "",
        *verdict(results, args.rate),
        "",
        "The load generator shares the machine's cores with the server and PostgreSQL, so "
        "every number here is a lower bound of what the server alone would do. Sending at a "
        "fixed rate costs the generator more per request than keeping requests in flight (a "
        "task and a timer each), so the machine's CPU runs out below the closed-loop maximum: "
        "where the CPU column nears 100%, the tail latency is the wait for a core shared by "
        "the server's workers, PostgreSQL and the generator.",
        "",
        "## What limits it",
        "",
        *cpu_lines(results),
        "One call at a time in the benchmark's own process after the load (no network, no "
        "load of its own; other processes on the machine still count, see the load "
        "average above), each layer of a lookup:",
        "",
        *breakdown_lines(steps),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# --- main ---------------------------------------------------------------------------------------


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lookup_bench", description=__doc__)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--ranges", type=int, default=1_000_000)
    parser.add_argument("--ranges-per-file", type=int, default=100)
    parser.add_argument("--refill", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--breakdown-calls", type=int, default=1000)
    add_store_options(parser)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs/benchmarks/lookup.md")
    args = parser.parse_args(argv)
    if not 1 <= args.ranges_per_file <= args.ranges or args.seconds <= 0 or args.rate <= 0:
        parser.error("need 1 <= --ranges-per-file <= --ranges, --seconds > 0 and --rate > 0")
    if args.breakdown_calls < 1 or args.warmup_seconds < 0:
        parser.error("need --breakdown-calls >= 1 and --warmup-seconds >= 0")
    require_local(parser, (args.database_url, args.s3_endpoint_url))
    return args


async def run(argv: Sequence[str]) -> int:
    args = parse(argv)
    shape = Shape(args.ranges, args.ranges_per_file)
    print(f"preparing {shape.ranges:,} ranges in {args.database_url} ...", flush=True)
    pg_version, fill_s = await prepare_database(args.database_url, shape, args.refill)
    print(f"database ready ({f'filled in {fill_s:.0f} s' if fill_s else 'reused'})", flush=True)
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="ess-lookup-bench-") as tmp:
        server = start_server(args, token, Path(tmp))
        try:
            connector = aiohttp.TCPConnector(limit=max(256, args.connections * 2))
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                await wait_ready(server, session, 60)
                results, load_before = await drive(session, server, shape, token, args)
        finally:
            server.stop()
        load_after = os.getloadavg()[0]
        print("one lookup, piece by piece ...", flush=True)
        steps = await breakdown(args, shape, Path(tmp))
    summary = [*table(results), "", *verdict(results, args.rate), "", *cpu_lines(results)]
    for line in [*summary, *breakdown_lines(steps)]:
        print(line)
    write_page(
        args.out, argv, args, shape, pg_version, fill_s, results, load_before, load_after, steps
    )
    print(f"written to {args.out}")
    return 0


async def drive(
    session: aiohttp.ClientSession,
    server: Server,
    shape: Shape,
    token: str,
    args: argparse.Namespace,
) -> tuple[list[Result], float]:
    """The four measured phases, and the load average before them."""
    base = server.url
    lookups = lookup_urls(base, shape, 50_000, seed=20_261_125)
    trivial = [f"{base}/healthz"]
    auth = {"Authorization": f"Bearer {token}"}
    async with session.get(lookups[0], headers=auth) as response:
        body: Any = await response.json()
        if response.status != 200 or len(body["pieces"]) != 1:
            raise RuntimeError(f"a lookup did not answer one piece: {response.status} {body}")
    # Warm both paths (connections, the database's cache, the interpreter) before measuring.
    for urls in (lookups, trivial):
        await closed_loop(session, "warm-up", urls, auth, args.connections, args.warmup_seconds)
    load_before = os.getloadavg()[0]
    results = []
    for name, urls in (("healthz", trivial), ("lookup", lookups)):
        print(f"{name}: max throughput ...", flush=True)
        before = cpu_sample(server.process.pid)
        result = await closed_loop(session, name, urls, auth, args.connections, args.seconds)
        result.cpu = cpu_use(before, cpu_sample(server.process.pid), result.done)
        results.append(result)
    # The latency when the server keeps up: 70% of what the lookups reached at most. Before
    # the offered rate, which may overload the server and leave it a backlog.
    sustainable = max(1, round(0.7 * results[1].throughput))

    async def offered(name: str, urls: list[str], rate: int) -> Result:
        print(f"{name}: {rate}/s offered ...", flush=True)
        before = cpu_sample(server.process.pid)
        result = await open_loop(session, name, urls, auth, rate, args.seconds)
        result.cpu = cpu_use(before, cpu_sample(server.process.pid), result.done)
        return result

    kept_up = await offered("lookup", lookups, sustainable)
    kept_up.phase += " (70% of its max)"
    for name, urls in (("healthz", trivial), ("lookup", lookups)):
        results.append(await offered(name, urls, args.rate))
    results.append(kept_up)
    return results, load_before


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
