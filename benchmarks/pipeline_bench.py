"""The pipeline's own cost: a request through every service, next to the split and the upload it
is made of, measured in one run on the same files.

On a sample dataset (``ess_cli.sample``: ``--files`` files of ``--events`` events each,
generated once into the work directory) at ``--events-per-range`` events per range:

* ``split``: the splitter's engine alone, ``split_root_file_parallel`` with the edge's
  workers (one per core), one file after another: the baseline;
* ``upload``: the range files that split wrote, put into a fresh bucket of the test S3 server
  by the splitter's ``Uploader`` at ``--concurrency`` at once (``ESS_UPLOAD_CONCURRENCY``), and
  a sample of them one ``put_object`` after another, for the store's round trip;
* ``flow``: ``POST /v1/requests`` to ``ready`` through the head API, the broker, the notifier
  and one edge, each its own process, on PostgreSQL, RabbitMQ and the S3 server; the request's
  history and the edge's log say where the time went (head and broker, precache copy and
  checksum, split, upload, bookkeeping);
* ``flow, local store``: the same with a directory as the object store, for the pipeline's own
  cost apart from the store's (``--stores s3`` leaves it out).

It reports each as a ratio to the split, the target (the flow within 1.3x of the split), and a
computed note of what a 50 ms round trip to the store would make of the uploads and the flow.
The page is printed and written with the command and the machine.

Usage: ``python -m benchmarks.pipeline_bench [--files 8] [--events 420000]
[--events-per-range 1000] [--concurrency 16] [--workdir var/bench/pipeline]
[--out docs/benchmarks/pipeline.md] [--rtt-ms 50] [--stores s3,local]``. The servers are those
of the test suite (``ESS_TEST_DATABASE_URL``, ``ESS_TEST_AMQP_URL``, ``ESS_TEST_S3_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.pipeline_flow import Servers, empty_bucket, run_flow
from benchmarks.pipeline_report import Measured, page
from ess_cli.sample import SampleFile, make_sample_dataset
from ess_common.logs import configure_logging
from ess_split.parallel import split_root_file_parallel
from ess_split.split import RangeFile
from ess_splitter.uploads import Upload, Uploader

#: Objects put one after another to measure the store's own round trip.
SERIAL_SAMPLE = 100


@dataclass(frozen=True)
class Split:
    seconds: float
    ranges: list[list[RangeFile]]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    configure_logging("console", "WARNING")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    events = int(args.events)
    dataset = make_sample_dataset(workdir / f"dataset-{events}", (events,) * int(args.files))
    measured = asyncio.run(_measure(workdir, dataset, args))
    text = page(
        ["python", "-m", "benchmarks.pipeline_bench", *(argv or sys.argv[1:])],
        started,
        measured,
    )
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--events", type=int, default=420_000)
    parser.add_argument("--events-per-range", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workdir", default="var/bench/pipeline")
    parser.add_argument("--out", default="docs/benchmarks/pipeline.md")
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--stores", default="s3,local")
    args = parser.parse_args(argv)
    args.stores = args.stores.split(",")
    if args.stores[0] != "s3" or not set(args.stores) <= {"s3", "local"}:
        parser.error("--stores is s3, optionally followed by local")
    if args.files < 1 or args.events < 1 or args.events_per_range < 1 or args.concurrency < 1:
        parser.error("--files, --events, --events-per-range and --concurrency must be positive")
    return args


async def _measure(workdir: Path, dataset: list[SampleFile], args: argparse.Namespace) -> Measured:
    servers = Servers.from_env()
    scratch = workdir / "split"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        split = await asyncio.to_thread(_split_all, dataset, scratch, args.events_per_range)
        print(f"split   {split.seconds:.2f} s", file=sys.stderr, flush=True)
        upload_s, serial_s, serial_n = await _upload_all(servers, split, args.concurrency)
        print(f"upload  {upload_s:.2f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    flows = {}
    for kind in args.stores:
        flow_dir = workdir / f"flow-{kind}"
        shutil.rmtree(flow_dir, ignore_errors=True)
        flow_dir.mkdir()
        try:
            flows[kind] = await run_flow(
                flow_dir, servers, dataset, args.events_per_range, args.concurrency, kind
            )
        finally:
            shutil.rmtree(flow_dir / "edge-cache", ignore_errors=True)
        print(f"flow    {flows[kind].seconds:.2f} s ({kind})", file=sys.stderr, flush=True)
    return Measured(
        files=len(dataset),
        events=args.events,
        input_bytes=sum(f.size for f in dataset),
        events_per_range=args.events_per_range,
        concurrency=args.concurrency,
        ranges=sum(len(r) for r in split.ranges),
        output_bytes=sum(r.size for rs in split.ranges for r in rs),
        split_s=split.seconds,
        upload_s=upload_s,
        serial_put_s=serial_s / serial_n,
        flow=flows["s3"],
        local_flow=flows.get("local"),
        rtt_s=args.rtt_ms / 1000,
    )


def _split_all(dataset: list[SampleFile], scratch: Path, events_per_range: int) -> Split:
    started = time.perf_counter()
    ranges = [
        split_root_file_parallel(
            f.path, scratch / f"f{n}", events_per_range, workers=0, n_events=f.n_events
        ).ranges
        for n, f in enumerate(dataset)
    ]
    return Split(time.perf_counter() - started, ranges)


async def _upload_all(servers: Servers, split: Split, concurrency: int) -> tuple[float, float, int]:
    """Seconds to upload every range file at ``concurrency`` at once, and to put a sample of
    them one after another (and how many)."""
    store = servers.store(f"ess-pipe-{uuid.uuid4().hex[:10]}", max_connections=concurrency)
    await store.start()
    try:
        uploads = [
            Upload(f"ranges/f{n}/{r.path.name}", r.path)
            for n, ranges in enumerate(split.ranges)
            for r in ranges
        ]
        started = time.perf_counter()
        await Uploader(store, concurrency).put_all(uploads)
        upload_s = time.perf_counter() - started
        sample = [Upload(f"serial/{u.key}", u.path) for u in uploads[:SERIAL_SAMPLE]]
        started = time.perf_counter()
        for upload in sample:
            await store.put_file(upload.key, upload.path)
        return upload_s, time.perf_counter() - started, len(sample)
    finally:
        await empty_bucket(store)
        await store.close()


if __name__ == "__main__":
    raise SystemExit(main())
