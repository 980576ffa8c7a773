"""Latency and bytes fetched of splitting one range straight from S3 (the on-demand path).

Uses the splitter benchmark's generated ntuple (``benchmarks.split_bench``, cached in the work
directory), uploads it once to the S3 server (skipped when an object of the same size is
there), then splits single 1,000-event ranges from it with ``ess_splitter.remote.split_range``
through a presigned URL, as the on-demand mode will: the range at the middle of the file, and
one starting half a source basket later. Each is repeated; the table gives the median wall
time (presigning, opening the file, fetching, writing the range file), the bytes fetched and
how they compare with the range's share of the file and with the written range file. One
unmeasured split first warms up the process (imports, first connection).

Usage: ``python -m benchmarks.remote_bench [--size-mb 200] [--workdir var/bench]
[--repeat 5] [--events 1000] [--bucket ess-bench] [--out docs/benchmarks/remote-split.md]``.
The S3 server comes from ``ESS_S3_ENDPOINT_URL``, ``ESS_S3_ACCESS_KEY``, ``ESS_S3_SECRET_KEY``
and ``ESS_S3_REGION`` (defaults: the test server, http://127.0.0.1:8080 as test:tester).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.split_bench import MB, TREE, InputFile, ensure_input

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 1.0
TARGET_FETCHED_RATIO = 3.0


@dataclass(frozen=True)
class Case:
    name: str
    first: int
    last: int


@dataclass(frozen=True)
class Sample:
    seconds: float
    fetched: int
    range_bytes: int


@dataclass(frozen=True)
class Row:
    case: Case
    samples: list[Sample]

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def fetched(self) -> float:
        return statistics.median(s.fetched for s in self.samples)

    @property
    def range_bytes(self) -> int:
        return self.samples[0].range_bytes


def _store(bucket: str) -> object:
    from ess_common.store.s3 import S3Store

    return S3Store(
        bucket,
        endpoint_url=os.environ.get("ESS_S3_ENDPOINT_URL", "http://127.0.0.1:8080"),
        access_key=os.environ.get("ESS_S3_ACCESS_KEY", "test:tester"),
        secret_key=os.environ.get("ESS_S3_SECRET_KEY", "testing"),
        region=os.environ.get("ESS_S3_REGION", "us-east-1"),
    )


def basket_prefixes(source: Path, case: Case) -> float:
    """Compressed bytes from the start of each basket holding the range to the range's end,
    if the compression were uniform within a basket: the least any reader must fetch."""
    import uproot

    total = 0.0
    with uproot.open(source) as root_file:
        for branch in root_file[TREE].branches:
            offsets = [int(entry) for entry in branch.entry_offsets]
            for number in range(len(offsets) - 1):
                start, stop = offsets[number], offsets[number + 1]
                if stop < case.first or start >= case.last:
                    continue
                needed = min(stop, case.last) - start
                total += branch.basket_compressed_bytes(number) * needed / (stop - start)
    return total


def basket_events(source: Path) -> int:
    import uproot

    with uproot.open(source) as root_file:
        offsets = [int(entry) for entry in root_file[TREE]["event"].entry_offsets]
    return offsets[1] - offsets[0]


def cases(n_events: int, per_range: int, basket: int) -> list[Case]:
    middle = n_events // 2 + 1
    # Half a basket on, as far as the file allows.
    shifted = max(1, min(middle + basket // 2, n_events - per_range + 1))
    return [
        Case("middle", middle, middle + per_range - 1),
        Case("middle + ½ basket", shifted, shifted + per_range - 1),
    ]


async def measure(
    source: InputFile, bucket: str, key: str, todo: list[Case], repeat: int
) -> list[Row]:
    from ess_common.store.s3 import S3Store
    from ess_splitter.remote import split_range

    store = _store(bucket)
    assert isinstance(store, S3Store)
    await store.start()
    scratch = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    try:
        if await store.size(key) != source.size:
            _progress(f"uploading {source.path.name} to s3://{bucket}/{key}")
            await store.put_file(key, source.path)

        async def one(case: Case) -> Sample:
            out = scratch / f"{case.first}.root"
            start = time.perf_counter()
            url = await store.signed_url(key, 600)
            written, fetched = await split_range(url, case.first, case.last, out)
            seconds = time.perf_counter() - start
            out.unlink()
            return Sample(seconds, fetched, written.size)

        await one(todo[0])
        rows = []
        for case in todo:
            samples = [await one(case) for _ in range(repeat)]
            _progress(f"{case.name}: " + ", ".join(f"{s.seconds:.3f} s" for s in samples))
            rows.append(Row(case, samples))
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        await store.close()


def table(rows: list[Row], source: InputFile) -> str:
    lines = [
        "| range | events | seconds (median) | bytes fetched | range's share of the input "
        "| fetched / share | range file bytes | runs (s) |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        events = row.case.last - row.case.first + 1
        share = source.size * events / source.events
        runs = ", ".join(f"{s.seconds:.3f}" for s in row.samples)
        lines.append(
            f"| {row.case.name} | {row.case.first:,} to {row.case.last:,} | {row.seconds:.3f} "
            f"| {row.fetched / MB:.3f} MB | {share / MB:.3f} MB | {row.fetched / share:.1f} "
            f"| {row.range_bytes / MB:.3f} MB | {runs} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    started = dt.datetime.now(dt.UTC)
    source = ensure_input(Path(args.workdir).resolve(), float(args.size_mb))
    basket = basket_events(source.path)
    todo = cases(source.events, int(args.events), basket)
    rows = asyncio.run(measure(source, args.bucket, source.path.name, todo, int(args.repeat)))
    printed = table(rows, source)
    print(printed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = list(sys.argv[1:] if argv is None else argv)
    out.write_text(_page(command, started, source, basket, int(args.repeat), rows, printed))
    _progress(f"wrote {out}")
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.remote_bench",
        description="Measure splitting one range straight from S3.",
    )
    parser.add_argument("--size-mb", type=float, default=200.0, help="input size (default 200)")
    parser.add_argument("--workdir", default="var/bench", help="where the input is cached")
    parser.add_argument("--repeat", type=int, default=5, help="runs per range (median reported)")
    parser.add_argument("--events", type=int, default=1000, help="events per range")
    parser.add_argument("--bucket", default="ess-bench", help="bucket of the uploaded input")
    parser.add_argument("--out", default="docs/benchmarks/remote-split.md", help="markdown page")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.events < 1:
        parser.error("--repeat and --events must be at least 1")
    return args


def _page(
    command: list[str],
    started: dt.datetime,
    source: InputFile,
    basket: int,
    repeat: int,
    rows: list[Row],
    printed: str,
) -> str:
    from benchmarks.machine import describe_machine
    from benchmarks.split_bench import _software

    python = Path(sys.executable)
    if python.is_relative_to(PROJECT_ROOT):
        python = python.relative_to(PROJECT_ROOT)
    endpoint = os.environ.get("ESS_S3_ENDPOINT_URL", "http://127.0.0.1:8080")
    verdicts = [
        f"- {row.case.name}: {row.seconds:.3f} s (target < {TARGET_SECONDS:.0f} s: "
        f"{'reached' if row.seconds < TARGET_SECONDS else 'not reached'}), "
        f"{row.fetched / (source.size * (row.case.last - row.case.first + 1) / source.events):.1f}"
        f"x the range's share fetched (target < {TARGET_FETCHED_RATIO:.0f}x: "
        f"{'reached' if _ratio(row, source) < TARGET_FETCHED_RATIO else 'not reached'})"
        for row in rows
    ]
    limits = [
        f"- {row.case.name}: the beginnings of the baskets holding the range, up to its end, "
        f"are about {basket_prefixes(source.path, row.case) / MB:.3f} MB of the "
        f"{row.fetched / MB:.3f} MB fetched; the rest is the file's header, directories and "
        "TTree record, and the estimate's margin."
        for row in rows
    ]
    lines = [
        "# Splitting one range from S3",
        "",
        "Written by `python -m benchmarks.remote_bench` (see its docstring); rerun it to refresh "
        "this page.",
        "",
        f"- command: `{shlex.join([str(python), '-m', 'benchmarks.remote_bench', *command])}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine()}",
        f"- software: {_software()}",
        f"- S3 server: {endpoint} (OpenStack Swift's S3 API on the same machine: no network "
        "latency, so the seconds are mostly this process's own work)",
        f"- input: `{source.path.name}` of `benchmarks.split_bench`, {source.size / MB:.1f} MB, "
        f"{source.events:,} events, source baskets of {basket:,} events",
        "",
        "Each run presigns a GET URL with the S3 store and calls "
        "`ess_splitter.remote.split_range` on it: uproot opens the file through fsspec's HTTP "
        "filesystem and the splitter fetches what the range needs. Bytes fetched are the HTTP "
        "response bodies received, counted by an aiohttp trace as they arrive. The range's share "
        "is the input size times the range's fraction of the events: what the range's events "
        "occupy, compressed, in the source. MB = 10⁶ bytes.",
        "",
        f"## Results (median of {repeat} run{'s' if repeat != 1 else ''})",
        "",
        printed,
        "",
        *verdicts,
        "",
        "## What limits it",
        "",
        "A compressed basket can only be inflated from its beginning, so a range costs, for "
        "every branch, the stored bytes from the start of the basket that holds it to the "
        "range's end (fetched by estimate from the branch's compression ratio, then extended if "
        "short). A range at the start of a basket costs about its own share; one in the second "
        f"half of a {basket:,}-event basket costs up to the whole basket, whichever reader is "
        "used: less is wasted where baskets are closer to the range size, and LZ4 or ZSTD "
        "baskets, which cannot be inflated from a prefix, are fetched whole. The seconds are "
        "mostly the requests' round trips (opening the file takes several, one after the "
        "other), which on a WAN multiply by its latency.",
        "",
        *limits,
        "",
    ]
    return "\n".join(lines)


def _ratio(row: Row, source: InputFile) -> float:
    share = source.size * (row.case.last - row.case.first + 1) / source.events
    return row.fetched / share


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
