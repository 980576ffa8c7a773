"""Latency and bytes fetched of splitting one range straight from S3 (the on-demand path).

Uses the splitter benchmark's generated ntuple (``benchmarks.split_bench``, cached in the work
directory) in two layouts of the same events: as the splitter benchmark writes it, baskets of
20,000 events, and written again with smaller baskets (1,000 events by default), as files meant
for reading a few events at a time are. Each file is uploaded once to the S3 server (skipped
when an object of the same size is there); then single 1,000-event ranges are split from it
with ``ess_splitter.remote.split_range`` through a presigned URL, as the on-demand mode does:
the range at the start of the source basket holding the file's middle event, and one starting
half a basket later. Each is repeated; the tables give the median wall time (presigning,
opening the file, fetching, writing the range file), the bytes fetched and how they compare
with the range's share of the file and with the written range file. Opening the file and
planning the split, what every split pays before its baskets, is measured alone once per
layout. One unmeasured split of each file first warms up the process (imports, first
connection).

Usage: ``python -m benchmarks.remote_bench [--size-mb 200] [--workdir var/bench]
[--baskets 20000,1000] [--repeat 5] [--events 1000] [--bucket ess-bench]
[--out docs/benchmarks/remote-split.md]``. The S3 server comes from ``ESS_S3_ENDPOINT_URL``,
``ESS_S3_ACCESS_KEY``, ``ESS_S3_SECRET_KEY`` and ``ESS_S3_REGION`` (defaults: the test server,
http://127.0.0.1:8080 as test:tester).
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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.split_bench import CHUNK_EVENTS, MB, TREE, InputFile, ensure_input

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 1.0
TARGET_FETCHED_RATIO = 3.0
SMALL_BASKET_EVENTS = 1_000


@dataclass(frozen=True)
class Case:
    name: str
    first: int
    last: int

    @property
    def events(self) -> int:
        return self.last - self.first + 1


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


@dataclass(frozen=True)
class Shape:
    """What a file's layout costs a remote reader before any basket."""

    basket: int
    baskets: int
    basket_slots: int
    record_bytes: int
    record_compressed: bool
    # The record's size compressed with zlib level 1, as ROOT writes its objects.
    record_zlib_bytes: int


@dataclass(frozen=True)
class Opening:
    """Opening the file and planning the split, measured alone."""

    seconds: float
    fetched: int


@dataclass(frozen=True)
class Layout:
    source: InputFile
    shape: Shape
    opening: Opening
    rows: list[Row]

    def share(self, case: Case) -> float:
        return self.source.size * case.events / self.source.events

    def ratio(self, row: Row) -> float:
        return row.fetched / self.share(row.case)


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


def shape(source: Path) -> Shape:
    import uproot

    with uproot.open(source) as root_file:
        key = root_file.key(TREE)
        branch = root_file[TREE]["event"]
        offsets = [int(entry) for entry in branch.entry_offsets]
        seek, stored, header = int(key.fSeekKey), int(key.fNbytes), int(key.fKeylen)
        compressed = bool(key.is_compressed)
        found = Shape(
            basket=offsets[1] - offsets[0],
            baskets=int(branch.num_baskets),
            basket_slots=int(branch.member("fMaxBaskets")),
            record_bytes=stored,
            record_compressed=compressed,
            record_zlib_bytes=stored,
        )
    if compressed:
        return found
    with source.open("rb") as stream:
        stream.seek(seek + header)
        payload = stream.read(stored - header)
    # One compressed block, with ROOT's 9-byte block header.
    return replace(found, record_zlib_bytes=header + 9 + len(zlib.compress(payload, 1)))


def cases(n_events: int, per_range: int, basket: int) -> list[Case]:
    """The range at the start of the basket holding the file's middle event, and one half a
    basket later."""
    middle = (n_events // 2) // basket * basket + 1
    # Half a basket on, as far as the file allows.
    shifted = max(1, min(middle + basket // 2, n_events - per_range + 1))
    return [
        Case("middle", middle, middle + per_range - 1),
        Case("middle + ½ basket", shifted, shifted + per_range - 1),
    ]


def _open_and_plan(url: str) -> int:
    """Bytes of response bodies received while uproot opens ``url`` and the split is planned,
    counted as ``ess_splitter.remote`` counts them."""
    import aiohttp
    import uproot

    from ess_splitter.rootsplit import plan_split

    received = [0]

    async def on_chunk(
        session: aiohttp.ClientSession,
        context: Any,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        received[0] += len(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(on_chunk)
    with uproot.open(
        url,
        array_cache=None,
        handler=uproot.source.fsspec.FSSpecSource,
        client_kwargs={"trace_configs": [trace]},
        encoded=True,
        skip_instance_cache=True,
    ) as root_file:
        plan_split(root_file, "benchmark", None)
    return received[0]


async def measure(
    source: InputFile, bucket: str, todo: list[Case], repeat: int
) -> tuple[Opening, list[Row]]:
    from ess_common.store.s3 import S3Store
    from ess_splitter.remote import split_range

    store = _store(bucket)
    assert isinstance(store, S3Store)
    await store.start()
    key = source.path.name
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
        start = time.perf_counter()
        url = await store.signed_url(key, 600)
        opened = await asyncio.to_thread(_open_and_plan, url)
        opening = Opening(time.perf_counter() - start, opened)
        rows = []
        for case in todo:
            samples = [await one(case) for _ in range(repeat)]
            _progress(f"{key} {case.name}: " + ", ".join(f"{s.seconds:.3f} s" for s in samples))
            rows.append(Row(case, samples))
        return opening, rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        await store.close()


def table(layout: Layout) -> str:
    lines = [
        "| range | events | seconds (median) | bytes fetched | range's share of the input "
        "| fetched / share | range file bytes | runs (s) |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in layout.rows:
        share = layout.share(row.case)
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
    workdir = Path(args.workdir).resolve()
    sources = [ensure_input(workdir, float(args.size_mb), events) for events in args.baskets]
    # Other processes on the machine slow every split; the load shows how busy it was.
    load = [os.getloadavg()[0]]
    layouts: list[Layout] = []
    for source in sources:
        found = shape(source.path)
        todo = cases(source.events, int(args.events), found.basket)
        opening, rows = asyncio.run(measure(source, args.bucket, todo, int(args.repeat)))
        layouts.append(Layout(source, found, opening, rows))
    load.append(os.getloadavg()[0])
    for layout in layouts:
        print(f"{layout.source.path.name}, baskets of {layout.shape.basket:,} events")
        print(table(layout))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = list(sys.argv[1:] if argv is None else argv)
    out.write_text(_page(command, started, load, int(args.repeat), layouts))
    _progress(f"wrote {out}")
    return 0


def _baskets(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 1 or CHUNK_EVENTS % value for value in values):
        raise argparse.ArgumentTypeError(f"each must divide {CHUNK_EVENTS:,}")
    return values


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.remote_bench",
        description="Measure splitting one range straight from S3.",
    )
    parser.add_argument("--size-mb", type=float, default=200.0, help="input size (default 200)")
    parser.add_argument("--workdir", default="var/bench", help="where the inputs are cached")
    parser.add_argument(
        "--baskets",
        type=_baskets,
        default=[CHUNK_EVENTS, SMALL_BASKET_EVENTS],
        help="events per source basket of each layout measured, comma-separated "
        f"(default {CHUNK_EVENTS},{SMALL_BASKET_EVENTS}; {CHUNK_EVENTS} is split_bench's file)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per range (median reported)")
    parser.add_argument("--events", type=int, default=1000, help="events per range")
    parser.add_argument("--bucket", default="ess-bench", help="bucket of the uploaded inputs")
    parser.add_argument("--out", default="docs/benchmarks/remote-split.md", help="markdown page")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.events < 1:
        parser.error("--repeat and --events must be at least 1")
    return args


def _page(
    command: list[str],
    started: dt.datetime,
    load: list[float],
    repeat: int,
    layouts: list[Layout],
) -> str:
    from benchmarks.machine import describe_machine
    from benchmarks.split_bench import _software

    python = Path(sys.executable)
    if python.is_relative_to(PROJECT_ROOT):
        python = python.relative_to(PROJECT_ROOT)
    endpoint = os.environ.get("ESS_S3_ENDPOINT_URL", "http://127.0.0.1:8080")
    lines = [
        "# Splitting one range from S3",
        "",
        "Written by `python -m benchmarks.remote_bench` (see its docstring); rerun it to refresh "
        "this page.",
        "",
        f"- command: `{shlex.join([str(python), '-m', 'benchmarks.remote_bench', *command])}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine()}; 1-minute load average {load[0]:.2f} before the "
        f"timed runs, {load[-1]:.2f} after",
        f"- software: {_software()}",
        f"- S3 server: {endpoint} (OpenStack Swift's S3 API on the same machine: no network "
        "latency, so the seconds are mostly this process's own work)",
        *(f"- input: {_input(layout)}" for layout in layouts),
        "",
        "The inputs hold the same generated events (`benchmarks.split_bench`'s generator, "
        f"drawn {CHUNK_EVENTS:,} at a time), zlib level 1, written with uproot in baskets of "
        "different sizes: the splitter benchmark's file, and the same events in the smaller "
        "baskets that files meant for reading a few events at a time are written with (their "
        "TTree record's basket arrays grown by half when full, as ROOT grows them, not tenfold "
        "as uproot does by default). Each "
        "run presigns a GET URL with the S3 store and calls `ess_splitter.remote.split_range` "
        "on it: uproot opens the file through fsspec's HTTP filesystem and the splitter fetches "
        "what the range needs. Bytes fetched are the HTTP response bodies received, counted by "
        "an aiohttp trace as they arrive. The range's share is the input size times the range's "
        "fraction of the events: what the range's events occupy, compressed, in the source, "
        "the file's own overhead spread over all events. MB = 10⁶ bytes.",
        "",
        f"## Results (median of {repeat} run{'s' if repeat != 1 else ''})",
        "",
    ]
    for layout in layouts:
        lines += [
            f"### Source baskets of {layout.shape.basket:,} events (`{layout.source.path.name}`)",
            "",
            table(layout),
            "",
            *(_verdict(layout, row) for row in layout.rows),
            "",
        ]
    lines += [
        "## What limits it",
        "",
        "Every split first opens the file and plans the split: the file's header, its "
        "directory, the streamers and the TTree record, which lists every basket of every "
        "branch (20 bytes a slot: size, first entry, position), so the record grows as the "
        "baskets shrink. Then, a compressed basket can only be inflated from its beginning, so "
        "a range costs, for every branch, the stored bytes from the start of the basket that "
        "holds it to the range's end (fetched by estimate from the branch's compression ratio, "
        "then extended if short); a basket wholly inside the range is copied as it is. LZ4 or "
        "ZSTD baskets, which cannot be inflated from a prefix, are fetched whole.",
        "",
        *(_limit(layout) for layout in layouts),
        _targets(layouts),
        "",
    ]
    return "\n".join(lines)


def _input(layout: Layout) -> str:
    source, found = layout.source, layout.shape
    return (
        f"`{source.path.name}`, {source.size / MB:.1f} MB, {source.events:,} events, "
        f"{found.baskets:,} basket{'s' if found.baskets != 1 else ''} of {found.basket:,} "
        f"events per branch, TTree record {found.record_bytes / MB:.3f} MB"
    )


def _verdict(layout: Layout, row: Row) -> str:
    ratio = layout.ratio(row)
    share = layout.share(row.case)
    opening = layout.opening.fetched / share
    return (
        f"- {row.case.name}: {row.seconds:.3f} s (target < {TARGET_SECONDS:.0f} s: "
        f"{_reached(row.seconds < TARGET_SECONDS)}), {ratio:.1f}x the range's share fetched: "
        f"{opening:.1f}x opening the file, {ratio - opening:.1f}x the rest (target "
        f"< {TARGET_FETCHED_RATIO:.0f}x: {_reached(ratio < TARGET_FETCHED_RATIO)})"
    )


def _limit(layout: Layout) -> str:
    opening = layout.opening
    found = layout.shape
    share = layout.share(layout.rows[0].case)
    facts = []
    for row in layout.rows:
        rest = row.fetched - opening.fetched
        prefixes = basket_prefixes(layout.source.path, row.case)
        facts.append(
            f"{row.case.name}, {rest / MB:.3f} MB more ({rest / share:.1f}x the share), of "
            "which the beginnings of the baskets holding the range, up to its end, are about "
            f"{prefixes / MB:.3f} MB; the rest is the estimate's margin"
        )
    record = (
        ""
        if found.record_compressed
        else (
            f"; uproot writes it uncompressed: zlib level 1, as ROOT stores its objects, would "
            f"make it {found.record_zlib_bytes / MB:.3f} MB "
            f"({found.record_zlib_bytes / share:.1f}x the share)"
        )
    )
    seconds = [row.seconds for row in layout.rows]
    return (
        f"- Baskets of {found.basket:,} events: opening the file and planning the split "
        f"fetches {opening.fetched / MB:.3f} MB ({opening.fetched / share:.1f}x a range's "
        f"share), in {opening.seconds:.3f} s (one run; the splits take {min(seconds):.3f} to "
        f"{max(seconds):.3f} s). The TTree record is {found.record_bytes / MB:.3f} MB of it, "
        f"{found.basket_slots:,} basket slots for each of its branches{record}. Then the "
        "split fetches, for " + "; ".join(facts) + "."
    )


def _targets(layouts: list[Layout]) -> str:
    parts = []
    for layout in layouts:
        reached = []
        for row in layout.rows:
            fast = row.seconds < TARGET_SECONDS
            small = layout.ratio(row) < TARGET_FETCHED_RATIO
            status = {
                (True, True): "both",
                (True, False): "the time only",
                (False, True): "the bytes only",
                (False, False): "neither",
            }[fast, small]
            reached.append(f"{row.case.name} {status}")
        parts.append(f"{layout.shape.basket:,}-event baskets: " + ", ".join(reached))
    return (
        f"- Targets (< {TARGET_SECONDS:.0f} s, < {TARGET_FETCHED_RATIO:.0f}x the share "
        "fetched) reached: "
        + "; ".join(parts)
        + ". Here the seconds are this process's work and the local server's; on a WAN each "
        "round trip adds its latency, and opening the file takes several, one after the other."
    )


def _reached(reached: bool) -> str:
    return "reached" if reached else "not reached"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
