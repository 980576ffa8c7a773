"""`ess split FILE`: cut a ROOT file into event-range files as an edge would, for an operator
checking a file.

Prints each range file (first and last event, events, size, adler32, file name) as a table, or
everything as JSON with ``--json``. Exit status: 0 when the file was split (or delivered whole
under ``--unsplittable whole``), 3 when it is not split (unsplittable under ``--unsplittable
fail``, or no tree holds the event count), 4 when it is corrupt, 2 for wrong arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ess_split.errors import CorruptFile, NoEventTree, SplitError, UnsplittableFile
from ess_split.format.codecs import parse_compression
from ess_split.parallel import split_root_file_parallel
from ess_split.split import SplitResult
from ess_split.whole import deliver_whole

__all__ = ["add_parser"]

NOT_SPLIT = 3
CORRUPT = 4


def add_parser(commands: Any) -> None:
    split = commands.add_parser(
        "split",
        help="cut a ROOT file into event-range files, as an edge would",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    split.add_argument("file", type=Path, help="the ROOT file")
    split.add_argument("--events-per-range", type=_positive, required=True)
    split.add_argument("--out", type=Path, required=True, help="folder for the range files")
    split.add_argument(
        "--n-events",
        type=_positive,
        help="the file's event count (default: the entries of its largest tree)",
    )
    split.add_argument(
        "--unsplittable",
        choices=("fail", "whole"),
        default="fail",
        help="what to do with a file that is not cut (default: fail)",
    )
    split.add_argument(
        "--compression",
        default="source",
        help="range files' compression: source, none, zlib:N, lzma:N, lz4:N, zstd:N",
    )
    split.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    split.add_argument("--name-prefix", default="range")
    split.add_argument("--json", action="store_true", help="print JSON instead of a table")
    split.set_defaults(run=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> None:
    try:
        compression = parse_compression(args.compression)
    except ValueError as exc:
        _fail(args, 2, "usage", str(exc))
    try:
        result = split_root_file_parallel(
            args.file,
            args.out,
            args.events_per_range,
            workers=args.workers,
            n_events=args.n_events,
            compression=compression,
            name_prefix=args.name_prefix,
        )
    except CorruptFile as exc:
        _fail(args, CORRUPT, "corrupt", str(exc))
    except UnsplittableFile as exc:
        if args.unsplittable == "fail" or args.n_events is None:
            _fail(args, NOT_SPLIT, "unsplittable", str(exc))
        whole = deliver_whole(args.file, args.out, args.n_events, args.name_prefix)
        result = SplitResult([whole], whole_reason=str(exc))
    except (NoEventTree, SplitError) as exc:
        _fail(args, NOT_SPLIT, "not split", str(exc))
    except FileNotFoundError as exc:
        _fail(args, 2, "missing", f"{args.file}: {exc.strerror or exc}")
    _print(args, result)


def _print(args: argparse.Namespace, result: SplitResult) -> None:
    ranges = [
        {
            "first_event": r.first_event,
            "last_event": r.last_event,
            "events": r.last_event - r.first_event + 1,
            "size": r.size,
            "adler32": r.adler32,
            "path": str(r.path),
        }
        for r in result.ranges
    ]
    if args.json:
        document = {
            "file": str(args.file),
            "ranges": ranges,
            "skipped": [asdict(s) for s in result.skipped],
            "whole_reason": result.whole_reason,
        }
        print(json.dumps(document, indent=2))
        return
    header = ("first", "last", "events", "bytes", "adler32", "file")
    rows = [
        (
            str(r["first_event"]),
            str(r["last_event"]),
            str(r["events"]),
            f"{r['size']:,}",
            str(r["adler32"]),
            Path(str(r["path"])).name,
        )
        for r in ranges
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.rjust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    total = sum(r.size for r in result.ranges)
    print(f"{len(ranges)} range files, {total:,} bytes, in {args.out}")
    if result.whole_reason is not None:
        print(f"delivered whole: {result.whole_reason}")
    for skipped in result.skipped:
        print(f"left out: {skipped}")


def _fail(args: argparse.Namespace, status: int, kind: str, reason: str) -> None:
    if args.json:
        print(json.dumps({"file": str(args.file), "error": kind, "reason": reason}, indent=2))
    else:
        print(f"ess split: {kind}: {reason}", file=sys.stderr)
    raise SystemExit(status)
