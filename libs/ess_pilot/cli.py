"""`ess-pilot fetch`: PanDA event ranges (a JSON list, from a file or stdin) in, the ranges
rewritten for the payload (JSON on stdout) out.

Exit codes: 0 every range served, 2 some range failed (it is in the output, marked failed with
its reason), 1 the command or its input is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from ess_pilot.client import PilotClient

EXIT_SERVED = 0
EXIT_USAGE = 1
EXIT_FAILED_RANGES = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's own 2 would read as "some ranges failed".
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="ess-pilot", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fetch = commands.add_parser(
        "fetch",
        help="download the files of PanDA event ranges and rewrite the ranges for the payload",
        description=__doc__,
    )
    fetch.add_argument("ranges", help="a JSON file holding a list of PanDA event ranges, or -")
    fetch.add_argument("--head", required=True, help="the ESS head API, e.g. https://ess:8000")
    fetch.add_argument("--edge", help="a close edge answering the same lookups, asked first")
    fetch.add_argument("--dest", required=True, type=Path, help="where the files go")
    fetch.add_argument(
        "--token",
        default=os.environ.get("ESS_PILOT_TOKEN"),
        help="bearer token for the head and the edge (default: $ESS_PILOT_TOKEN)",
    )
    fetch.add_argument("--site", help="the pilot's grid site: files come from the closest edge")
    fetch.add_argument("--region", help="the pilot's region, when no edge is at its site")
    fetch.add_argument(
        "--on-demand",
        action="store_true",
        help="have an edge split ranges that no request prepared (within its capacity)",
    )
    fetch.add_argument(
        "--on-demand-wait",
        type=float,
        default=120.0,
        help="seconds to wait for on-demand splits, polls and capacity included",
    )
    fetch.add_argument("--max-parallel", type=int, default=4, help="parallel downloads")
    fetch.add_argument("--retries", type=int, default=4, help="more attempts after a failure")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP operation")
    fetch.add_argument("--backoff", type=float, default=1.0, help="first wait between attempts")
    fetch.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr (default: when stderr is a terminal)",
    )
    fetch.add_argument("--output", type=Path, help="write the JSON here instead of stdout")
    fetch.add_argument("--log-level", default="WARNING")
    return top


def read_ranges(source: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    data = json.loads(text)
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError("expected a JSON list of PanDA event-range objects")
    return data


async def _fetch(args: argparse.Namespace, ranges: list[dict[str, Any]]) -> tuple[Any, bool]:
    async with PilotClient(
        args.head,
        args.dest,
        edge_url=args.edge,
        token=args.token,
        max_parallel=args.max_parallel,
        retries=args.retries,
        timeout_s=args.timeout,
        backoff_s=args.backoff,
        progress=args.progress,
        site=args.site,
        region=args.region,
        on_demand=args.on_demand,
        on_demand_wait_s=args.on_demand_wait,
    ) as client:
        result = await client.fetch(ranges)
    return result.payload, result.all_served


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        ranges = read_ranges(args.ranges)
    except (OSError, ValueError) as exc:
        print(f"ess-pilot: cannot read the event ranges: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.max_parallel < 1 or args.retries < 0:
        print("ess-pilot: --max-parallel must be >= 1 and --retries >= 0", file=sys.stderr)
        return EXIT_USAGE
    payload, all_served = asyncio.run(_fetch(args, ranges))
    text = json.dumps(payload, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return EXIT_SERVED if all_served else EXIT_FAILED_RANGES


if __name__ == "__main__":
    sys.exit(main())
