"""Latency and bytes fetched of splitting one range straight from S3 (the on-demand path).

Uses the splitter benchmark's generated ntuple (``benchmarks.ntuple``, cached in the work
directory) in two layouts of the same events: as the splitter benchmark writes it, baskets of
20,000 events, and written again with smaller baskets (1,000 events by default), as files meant
for reading a few events at a time are. Each file is uploaded once to the S3 server (skipped
when an object of the same size is there); then single 1,000-event ranges are split from it
with ``ess_split.remote.split_range`` through a presigned URL, as the on-demand mode does:
the range at the start of the source basket holding the file's middle event, and one starting
half a basket later. Each is repeated; the tables give the median wall time (presigning,
opening the file, fetching, writing the range file), the bytes fetched and how they compare
with the range's share of the file and with the written range file. Opening the file and
planning the split, what every split pays before its baskets, is measured alone once per
layout. One unmeasured split of each file first warms up the process (imports, first
connection).

Usage: ``python -m benchmarks.remote_bench [--size-mb 200] [--workdir var/bench]
[--baskets 20000,1000] [--repeat 5] [--events 1000] [--bucket ess-bench]
[--xrootd-url root://127.0.0.1:1094] [--xrootd-dir /var/tmp/ess/xrootd/data] [--no-xrootd]
[--out docs/benchmarks/remote-split.md]``. The middle range is also split from an XRootD
server (``root://``, as grid sites serve files), given a directory it serves: the inputs are
copied there once. The S3 server comes from ``ESS_S3_ENDPOINT_URL``,
``ESS_S3_ACCESS_KEY``, ``ESS_S3_SECRET_KEY`` and ``ESS_S3_REGION`` (defaults: the test server,
http://127.0.0.1:8080 as test:tester).

The layouts and ranges measured are in ``remote_cases``, the tables and the page in
``remote_report``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.ntuple import CHUNK_EVENTS, InputFile, ensure_input
from benchmarks.remote_cases import Case, Layout, Opening, Row, Sample, cases, shape
from benchmarks.remote_report import page, table

SMALL_BASKET_EVENTS = 1_000


def _store(bucket: str) -> object:
    from ess_common.store.s3 import S3Store

    return S3Store(
        bucket,
        endpoint_url=os.environ.get("ESS_S3_ENDPOINT_URL", "http://127.0.0.1:8080"),
        access_key=os.environ.get("ESS_S3_ACCESS_KEY", "test:tester"),
        secret_key=os.environ.get("ESS_S3_SECRET_KEY", "testing"),
        region=os.environ.get("ESS_S3_REGION", "us-east-1"),
    )


def _open_and_plan(url: str) -> int:
    """Bytes of response bodies received while uproot opens ``url`` and the split is planned,
    counted as ``ess_split.remote`` counts them."""
    import aiohttp
    import uproot

    from ess_split.split import open_source, planned

    received = [0]

    async def on_chunk(
        session: aiohttp.ClientSession,
        context: Any,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        received[0] += len(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(on_chunk)
    source = open_source(
        url,
        "benchmark",
        handler=uproot.source.fsspec.FSSpecSource,
        client_kwargs={"trace_configs": [trace]},
        encoded=True,
        skip_instance_cache=True,
    )
    with source.uproot:
        planned(source, None)
    return received[0]


def _on_xrootd(source: InputFile, xrootd: tuple[str, Path], bucket: str) -> str:
    """The input's root:// URL, copied under the XRootD server's directory first if needed."""
    url, directory = xrootd
    place = directory / bucket
    place.mkdir(mode=0o755, exist_ok=True)
    copy = place / source.path.name
    if not copy.is_file() or copy.stat().st_size != source.size:
        _progress(f"copying {source.path.name} to {copy}")
        shutil.copyfile(source.path, copy)
        copy.chmod(0o644)
    return f"{url.rstrip('/')}//{bucket}/{source.path.name}"


async def measure(
    source: InputFile,
    bucket: str,
    todo: list[Case],
    repeat: int,
    xrootd: tuple[str, Path] | None = None,
) -> tuple[Opening, list[Row]]:
    from ess_common.store.s3 import S3Store
    from ess_split.remote import forget_kept, split_range

    store = _store(bucket)
    assert isinstance(store, S3Store)
    await store.start()
    key = source.path.name
    scratch = Path(tempfile.mkdtemp(prefix="remote-bench-"))
    try:
        if await store.size(key) != source.size:
            _progress(f"uploading {source.path.name} to s3://{bucket}/{key}")
            await store.put_file(key, source.path)

        # The file's content, as the edge names it for its on-demand pool.
        identity = f"{key}:{source.size}"
        root_url = None if xrootd is None else _on_xrootd(source, xrootd, bucket)

        async def one(case: Case) -> Sample:
            out = scratch / f"{case.first}.root"
            if case.earlier is not None:
                # Only what the earlier range fetched is kept when the case starts.
                forget_kept()
                url = await store.signed_url(key, 600)
                before = scratch / "earlier.root"
                await split_range(url, *case.earlier, before, identity=identity)
                before.unlink()
            start = time.perf_counter()
            url = root_url if case.via == "root" and root_url else await store.signed_url(key, 600)
            written, fetched = await split_range(
                url, case.first, case.last, out, identity=identity if case.kept else None
            )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    started = dt.datetime.now(dt.UTC)
    workdir = Path(args.workdir).resolve()
    sources = [ensure_input(workdir, float(args.size_mb), events) for events in args.baskets]
    # Other processes on the machine slow every split; the load shows how busy it was.
    load = [os.getloadavg()[0]]
    layouts: list[Layout] = []
    xrootd = None if args.no_xrootd else (args.xrootd_url, Path(args.xrootd_dir))
    if xrootd is not None and not xrootd[1].is_dir():
        _progress(
            f"{xrootd[1]} is not there: start the XRootD server with "
            "`bash scripts/ensure-services.sh`, or pass --no-xrootd"
        )
        return 2
    for source in sources:
        found = shape(source.path)
        todo = cases(source.events, int(args.events), found.basket, xrootd=xrootd is not None)
        opening, rows = asyncio.run(measure(source, args.bucket, todo, int(args.repeat), xrootd))
        layouts.append(Layout(source, found, opening, rows))
    load.append(os.getloadavg()[0])
    for layout in layouts:
        print(f"{layout.source.path.name}, baskets of {layout.shape.basket:,} events")
        print(table(layout))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = list(sys.argv[1:] if argv is None else argv)
    server = None if xrootd is None else xrootd[0]
    out.write_text(page(command, started, load, int(args.repeat), layouts, server))
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
    parser.add_argument(
        "--xrootd-url",
        default=os.environ.get("ESS_XROOTD_URL", "root://127.0.0.1:1094"),
        help="XRootD server that serves --xrootd-dir (the middle range is also split from it)",
    )
    parser.add_argument(
        "--xrootd-dir",
        default=os.environ.get("ESS_XROOTD_DIR", "/var/tmp/ess/xrootd/data"),
        help="directory the XRootD server serves (inputs are copied to <dir>/<bucket>/)",
    )
    parser.add_argument("--no-xrootd", action="store_true", help="S3 only")
    parser.add_argument("--out", default="docs/benchmarks/remote-split.md", help="markdown page")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.events < 1:
        parser.error("--repeat and --events must be at least 1")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
