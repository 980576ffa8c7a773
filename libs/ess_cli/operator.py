"""The operator's commands: `ess requests`, `ess request ID`, `ess edges`,
`ess edge enroll|revoke|drain|enable|disable NAME`, `ess cancel ID`, `ess retry ID`,
`ess dead-letters`.

Each talks to the head API (`--head`, else `ESS_HEAD_URL`) with a token (`--token`, else
`ESS_TOKEN`); shows tables and progress bars on a terminal, or the head's JSON with `--json`;
and exits with a code scripts can rely on (`ess_cli.head_client.Exit`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ess_cli.head_client import CliSettings, Exit, HeadClient, HeadError

FINAL = ("ready", "failed", "cancelled")
_STYLE = {
    "ready": "green",
    "split": "green",
    "alive": "green",
    "notified": "green",
    "failed": "red",
    "file_failed": "red",
    "lost": "red",
    "disabled": "red",
    "dead_letter": "red",
    "notification_failed": "red",
    "cancelled": "magenta",
    "driven": "yellow",
}

Command = Callable[[HeadClient, argparse.Namespace, Console], Any]


def state(value: str) -> Text:
    return Text(value, style=_STYLE.get(value, "yellow"))


def when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def bar(done: int, total: int, label: str | None = None) -> Table:
    """A progress bar with its figures beside it."""
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        ProgressBar(total=max(total, 1), completed=done, width=16),
        label if label is not None else f"{done}/{total}",
    )
    return grid


def requests_table(views: list[dict[str, Any]]) -> Table:
    table = Table(title="Requests", title_justify="left")
    for column in ("request", "dataset", "state", "files split", "ranges", "received", "error"):
        table.add_column(column, justify="right" if column == "ranges" else "left")
    for v in views:
        split = v["files_by_status"].get("split", 0)
        table.add_row(
            v["id"],
            v["dataset"],
            state(v["status"]),
            bar(split, v["files_total"]),
            str(v["ranges"]),
            when(v["created_at"]),
            Text(v["error"] or "", style="red"),
        )
    return table


def request_tables(view: dict[str, Any], history: list[dict[str, Any]]) -> Group:
    summary = Table.grid(padding=(0, 2))
    summary.add_row("request", view["id"])
    summary.add_row("dataset", view["dataset"])
    summary.add_row("state", state(view["status"]))
    summary.add_row("idempotency key", view["idempotency_key"])
    summary.add_row("events per range", str(view["events_per_range"]))
    summary.add_row("ranges", str(view["ranges"]))
    summary.add_row("received", when(view["created_at"]))
    summary.add_row("ready", when(view["ready_at"]))
    if view["error"]:
        summary.add_row("error", Text(view["error"], style="red"))
    files = Table(title="Files", title_justify="left")
    for column in ("file", "state", "edge", "attempt", "ranges", "error"):
        files.add_column(column)
    for f in view.get("files") or []:
        expected = math.ceil(f["n_events"] / view["events_per_range"])
        files.add_row(
            f"{f['scope']}:{f['lfn']}",
            state(f["status"]),
            f["edge"] or "-",
            str(f["attempt"]),
            bar(f["ranges"], expected),
            Text(f["error"] or "", style="red"),
        )
    return Group(summary, files, history_table(history))


def history_table(history: list[dict[str, Any]]) -> Table:
    table = Table(title="History", title_justify="left")
    for column in ("when", "what", "file", "edge", "attempt", "detail"):
        table.add_column(column)
    for e in history:
        table.add_row(
            when(e["at"]),
            state(e["kind"]),
            "" if e["file_id"] is None else str(e["file_id"]),
            e["edge"] or "",
            "" if e["attempt"] is None else str(e["attempt"]),
            e["detail"] or "",
        )
    return table


def edges_table(edges: list[dict[str, Any]]) -> Table:
    table = Table(title="Edges", title_justify="left")
    for column in (
        "edge",
        "site",
        "state",
        "heartbeat age",
        "cache used / quota",
        "queued",
        "on demand",
        "load",
    ):
        table.add_column(column)
    for e in edges:
        used = (
            e["used_bytes"]
            if e.get("used_bytes") is not None
            else e["quota_bytes"] - e["free_bytes"]
        )
        slots = e.get("on_demand_slots")
        table.add_row(
            e["name"],
            f"{e['site']} ({e['region']})",
            state(e["status"] if e["alive"] or e["status"] != "alive" else "silent"),
            f"{e['seconds_since_heartbeat']:.1f} s",
            bar(used, e["quota_bytes"], f"{size(used)} / {size(e['quota_bytes'])}"),
            str(e["queued"]),
            "-" if slots is None else f"{e.get('on_demand_busy') or 0}/{slots}",
            f"{e['load']:.2f}",
        )
    return table


def dead_letters_table(letters: list[dict[str, Any]]) -> Table:
    table = Table(title="Dead letters", title_justify="left")
    for column in ("#", "when", "queue", "request", "reason"):
        table.add_column(column)
    for d in letters:
        table.add_row(
            str(d["id"]),
            when(d["created_at"]),
            d["queue"],
            d["request_id"] or "-",
            Text(d["reason"], style="red"),
        )
    return table


# --- the commands ---------------------------------------------------------------------------


def _requests(head: HeadClient, args: argparse.Namespace, out: Console) -> Any:
    views = head.requests(args.state, args.limit)
    if not args.json:
        out.print(requests_table(views))
    return views


def _request(head: HeadClient, args: argparse.Namespace, out: Console) -> Any:
    view, history = head.request(args.id), head.history(args.id)
    if args.watch and view["status"] not in FINAL:
        view = _watch(head, args.id, view, out, quiet=args.json)
        history = head.history(args.id)
    if args.json:
        return {**view, "history": history}
    out.print(request_tables(view, history))
    return None


def _watch(
    head: HeadClient, request_id: str, view: dict[str, Any], out: Console, *, quiet: bool
) -> dict[str, Any]:
    """Follows the request's progress (its Server-Sent Events) until it is ready, failed or
    cancelled; a progress bar on a terminal."""

    def line(v: dict[str, Any]) -> Group:
        split = v["files_by_status"].get("split", 0)
        return Group(
            Text.assemble(("request ", "bold"), request_id, " ", state(v["status"])),
            ProgressBar(total=max(v["files_total"], 1), completed=split, width=40),
            f"{split}/{v['files_total']} files split, {v['ranges']} ranges",
        )

    with Live(line(view), console=out, transient=True, auto_refresh=False) as live:
        while view["status"] not in FINAL:
            for event, data in head.follow(request_id):
                if event == "gone":
                    raise HeadError(Exit.NOT_FOUND, f"request {request_id} no longer exists")
                view = {**view, **data}
                if not quiet:
                    live.update(line(view), refresh=True)
    return head.request(request_id)


def _edges(head: HeadClient, args: argparse.Namespace, out: Console) -> Any:
    edges = head.edges()
    if not args.json:
        out.print(edges_table(edges))
    return edges


def _edge(head: HeadClient, args: argparse.Namespace, out: Console) -> Any:
    if args.action == "enroll":
        enrolled = head.enroll_edge(args.name)
        if not args.json:
            out.print(
                f"edge {enrolled['edge']} is enrolled; its token (ESS_EDGE_TOKEN), shown once:"
            )
            out.print(enrolled["token"], soft_wrap=True, highlight=False)
        return enrolled
    if args.action == "revoke":
        revoked = head.revoke_edge(args.name)
        if not args.json:
            out.print(f"edge {revoked['edge']}: enrollment revoked")
        return revoked
    edge = head.edge_action(args.name, args.action)
    if not args.json:
        out.print(f"edge {edge['name']} is {edge['status']}")
    return edge


def _cancel(head: HeadClient, args: argparse.Namespace, out: Console) -> Any:
    view = head.cancel(args.id, args.reason)
    if not args.json:
        out.print(f"request {view['id']} is {view['status']}")
    return view


def _retry(head: HeadClient, args: argparse.Namespace, out: Console) -> Any:
    answer = head.retry(args.id)
    if not args.json:
        view = answer["request"]
        out.print(
            f"request {view['id']} is {view['status']}: {answer['files_retried']} files to do again"
        )
    return answer


def _dead_letters(head: HeadClient, args: argparse.Namespace, out: Console) -> Any:
    letters = head.dead_letters(args.request, args.limit)
    if not args.json:
        out.print(dead_letters_table(letters))
    return letters


def add_commands(commands: Any) -> None:
    """The operator's subcommands, on `ess`'s subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--head", help="the head API's URL (default: $ESS_HEAD_URL)")
    common.add_argument("--token", help="a bearer token (default: $ESS_TOKEN)")
    common.add_argument("--json", action="store_true", help="print the head's JSON")

    def command(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help, parents=[common])
        parser.set_defaults(run=lambda args: sys.exit(operate(run, args)))
        return parser

    listing = command("requests", _requests, "list requests, newest first")
    listing.add_argument("--state", choices=["received", "assigned", *FINAL])
    listing.add_argument("--limit", type=int, default=100)
    one = command("request", _request, "one request: files, progress, errors, history")
    one.add_argument("id")
    one.add_argument("--watch", action="store_true", help="follow it until it is finished")
    command("edges", _edges, "the edges, their state, heartbeats and caches")
    edge = command("edge", _edge, "enroll, revoke, drain, enable or disable an edge (admin)")
    edge.add_argument("action", choices=["enroll", "revoke", "drain", "enable", "disable"])
    edge.add_argument("name")
    cancel = command("cancel", _cancel, "cancel a request")
    cancel.add_argument("id")
    cancel.add_argument("--reason")
    retry = command("retry", _retry, "retry a failed request's failed files")
    retry.add_argument("id")
    dead = command("dead-letters", _dead_letters, "messages ESS gave up on (admin)")
    dead.add_argument("--request", help="only those of this request")
    dead.add_argument("--limit", type=int, default=100)


def operate(run: Command, args: argparse.Namespace) -> int:
    settings = CliSettings()
    token = args.token or (settings.token.get_secret_value() if settings.token else None)
    # A pipe or a file gets the whole tables, not an 80-column squeeze.
    out = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        with HeadClient(args.head or settings.head_url, token) as head:
            found = run(head, args, out)
    except HeadError as exc:
        print(f"ess: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(found, indent=2))
    return Exit.OK
