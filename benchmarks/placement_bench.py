"""Placement and the edges as a CDN, measured.

* ``choose``: placement decisions per second of the broker's real ``choose_edge`` for 10,000
  files over 50 simulated edges of equal capacity, and how evenly they spread;
* ``moved``: the fraction of those files that change edge when one of the 50 leaves (target at
  most 1.5/50) and when a 51st joins;
* ``assign``: the real ``assign_pending`` (edge locks, claims, outbox) assigning the same
  10,000 files over 50 registered edges, on SQLite and on the PostgreSQL server;
* ``cdn``: a pilot's downloads of range files through a real edge process (pulled through from
  the S3 server once, then served from its disk) against the same downloads straight from the
  S3 server by signed URL: the edge's hit ratio and the time to first byte, on 127.0.0.1.

Prints the tables and writes them, with the command and the machine, to a markdown page.

Usage: ``python -m benchmarks.placement_bench [--files 10000] [--edges 50]
[--databases sqlite,postgresql] [--no-cdn] [--out docs/benchmarks/edges.md]``. The servers are
those of the test suite (``ESS_TEST_DATABASE_URL``, ``ESS_TEST_AMQP_URL``, ``ESS_TEST_S3_*``,
started by ``scripts/ensure-services.sh``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.cdn_bench import CdnResult, run_cdn
from benchmarks.machine import describe_machine
from ess_broker.assignment import assign_pending
from ess_broker.edges import handle_heartbeat
from ess_broker.placement import Candidate, choose_edge
from ess_common.db import enrollments
from ess_common.db.migrate import upgrade
from ess_common.db.requests import record_request
from ess_common.db.session import make_engine, make_session_maker, unit_of_work
from ess_common.events import EdgeHeartbeat, RequestSpec
from ess_common.logs import configure_logging

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GB = 10**9
SCOPE = "mc16_13TeV"
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/ess_test"
COMMAND = [".venv/bin/python", "-m", "benchmarks.placement_bench"]


def file_keys(n: int) -> list[str]:
    return [f"{SCOPE}:EVNT.12345678._{i:06d}.pool.root.1" for i in range(n)]


def edges(n: int) -> list[Candidate]:
    return [
        Candidate(f"edge-{i:02d}", f"SITE-{i:02d}", "europe", 100 * GB, 100 * GB, 0)
        for i in range(n)
    ]


def place(keys: Sequence[str], pool: Sequence[Candidate]) -> dict[str, str]:
    placed = {}
    for key in keys:
        chosen = choose_edge(key, GB, pool)
        assert chosen is not None
        placed[key] = chosen.name
    return placed


@dataclass(frozen=True)
class ChooseResult:
    decisions_per_s: float
    runs_s: list[float]
    fewest: int
    most: int
    moved_on_leave: float
    moved_to_others: bool
    moved_on_join: float


def bench_choose(n_files: int, n_edges: int, repeat: int = 3) -> ChooseResult:
    keys, pool = file_keys(n_files), edges(n_edges)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        before = place(keys, pool)
        runs.append(time.perf_counter() - start)
    shares = Counter(before.values())
    gone = pool[len(pool) // 3].name
    after = place(keys, [e for e in pool if e.name != gone])
    moved = [k for k in keys if before[k] != after[k]]
    joined = place(
        keys, [*pool, Candidate("edge-new", "SITE-NEW", "europe", 100 * GB, 100 * GB, 0)]
    )
    return ChooseResult(
        decisions_per_s=n_files / statistics.median(runs),
        runs_s=runs,
        fewest=min(shares.values()),
        most=max(shares.values()),
        moved_on_leave=len(moved) / n_files,
        moved_to_others=all(before[k] == gone for k in moved),
        moved_on_join=sum(before[k] != joined[k] for k in keys) / n_files,
    )


@dataclass(frozen=True)
class AssignResult:
    database: str
    files: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.files / self.seconds


def _heartbeat(name: str) -> EdgeHeartbeat:
    return EdgeHeartbeat(
        edge=name,
        site=f"SITE-{name}",
        region="europe",
        quota_bytes=100 * GB,
        free_bytes=100 * GB,
        queued=0,
        load=0.0,
        version="bench",
    )


async def _assign_all(url: str, database: str, n_files: int, n_edges: int) -> AssignResult:
    engine = make_engine(url)
    sessions = make_session_maker(engine)
    try:
        spec = RequestSpec.model_validate(
            {
                "dataset": f"{SCOPE}:bench.{uuid.uuid4().hex[:8]}",
                "idempotency_key": uuid.uuid4().hex,
                "events_per_range": 100,
                "files": [
                    {
                        "scope": SCOPE,
                        "lfn": key.split(":", 1)[1],
                        "n_events": 1000,
                        "size": 10**6,
                        "adler32": "00000001",
                        "sources": [f"https://storage.example.org/{i}"],
                    }
                    for i, key in enumerate(file_keys(n_files))
                ],
            }
        )
        async with unit_of_work(sessions) as session:
            await record_request(session, spec)
            for i in range(n_edges):
                # Only enrolled edges are given work.
                await enrollments.enroll(session, f"edge-{i:02d}")
                await handle_heartbeat(session, _heartbeat(f"edge-{i:02d}"))
        assigned, start = 0, time.perf_counter()
        while True:
            async with unit_of_work(sessions) as session:
                done = await assign_pending(session, timedelta(hours=1), max_queued=10**6)
            if not done:
                break
            assigned += done
        seconds = time.perf_counter() - start
        assert assigned == n_files, (assigned, n_files)
        return AssignResult(database, n_files, seconds)
    finally:
        await engine.dispose()


async def bench_assign(
    databases: Sequence[str], pg_server: str, n_files: int, n_edges: int, workdir: Path
) -> list[AssignResult]:
    results = []
    if "sqlite" in databases:
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        await upgrade(url)
        results.append(await _assign_all(url, "SQLite", n_files, n_edges))
    if "postgresql" in databases:
        server = make_url(pg_server)
        name = f"ess_bench_{uuid.uuid4().hex[:10]}"
        admin = create_async_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with admin.connect() as connection:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
            url = server.set(database=name).render_as_string(hide_password=False)
            await upgrade(url)
            results.append(await _assign_all(url, "PostgreSQL", n_files, n_edges))
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()
    return results


# --- the page ---------------------------------------------------------------------------------


def report(
    argv: Sequence[str],
    n_files: int,
    n_edges: int,
    choose: ChooseResult,
    assign: list[AssignResult],
    cdn: CdnResult | None,
    load: tuple[float, float],
) -> str:
    target = 1.5 / n_edges
    lines = [
        "# Placement and the edges as a CDN",
        "",
        "Written by `python -m benchmarks.placement_bench` (see its docstring); rerun it to "
        "refresh this page.",
        "",
        f"- command: `{shlex.join([*COMMAND, *argv])}`",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine(with_python=True)}; "
        f"1-minute load average {load[0]:.2f} before the runs, "
        f"{load[1]:.2f} after",
        "",
        f"## Placement: {n_files:,} files over {n_edges} edges of equal capacity",
        "",
        "`choose_edge` alone (rendezvous hashing weighted by capacity, closeness to replicas "
        "first), median of 3 runs; the spread and what moves when the set of edges changes.",
        "",
        "| measure | value | target |",
        "|---|--:|---|",
        f"| decisions per second | {choose.decisions_per_s:,.0f} | — |",
        f"| runs (s) | {', '.join(f'{s:.3f}' for s in choose.runs_s)} | — |",
        f"| files per edge, fewest / most (mean {n_files / n_edges:.0f}) "
        f"| {choose.fewest} / {choose.most} | — |",
        f"| files moved when 1 of {n_edges} leaves | {choose.moved_on_leave:.4f} "
        f"({choose.moved_on_leave * n_edges:.2f}/{n_edges}) | <= {target:.4f} (1.5/{n_edges}): "
        f"{'met' if choose.moved_on_leave <= target else 'NOT met'} |",
        f"| of those, files the leaving edge held | "
        f"{'all' if choose.moved_to_others else 'NOT all'} | all |",
        f"| files moved when a {n_edges + 1}st edge joins | {choose.moved_on_join:.4f} | "
        f"about 1/{n_edges + 1} = {1 / (n_edges + 1):.4f} |",
        "",
    ]
    if assign:
        lines += [
            f"## Assignment: `assign_pending` for {n_files:,} pending files, {n_edges} edges",
            "",
            "The broker's real path: candidate edges locked (`FOR UPDATE` in name order), the "
            "promised bytes summed, files claimed (`SKIP LOCKED` + compare-and-set) 500 per "
            "transaction, one `file.assigned` per file written to the outbox.",
            "",
            "| database | seconds | files assigned per second |",
            "|---|--:|--:|",
            *(f"| {a.database} | {a.seconds:.2f} | {a.per_s:,.0f} |" for a in assign),
            "",
        ]
    if cdn is not None:
        lines += cdn.markdown()
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--edges", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("ESS_TEST_DATABASE_URL", DEFAULT_PG)
    )
    parser.add_argument("--no-cdn", action="store_true", help="skip the edge process part")
    parser.add_argument("--cdn-objects", type=int, default=20)
    parser.add_argument("--cdn-object-mb", type=float, default=2.0)
    parser.add_argument("--cdn-downloads", type=int, default=200)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs/benchmarks/edges.md")
    args = parser.parse_args(args_list)
    configure_logging("console", "WARNING")

    load_before = os.getloadavg()[0]
    choose = bench_choose(args.files, args.edges)
    databases = [d for d in args.databases.split(",") if d]
    with tempfile.TemporaryDirectory(prefix="ess-placement-bench-") as workdir:
        assign = asyncio.run(
            bench_assign(databases, args.postgres_url, args.files, args.edges, Path(workdir))
        )
        cdn = (
            None
            if args.no_cdn
            else asyncio.run(
                run_cdn(
                    Path(workdir),
                    n_objects=args.cdn_objects,
                    object_bytes=int(args.cdn_object_mb * 10**6),
                    n_downloads=args.cdn_downloads,
                )
            )
        )
    load = (load_before, os.getloadavg()[0])
    page = report(args_list, args.files, args.edges, choose, assign, cdn, load)
    print(page)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)


if __name__ == "__main__":
    main()
