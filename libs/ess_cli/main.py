"""`ess`: the embedded demo and server, the database schema, and the operator's commands
(requests, edges, dead letters; see `ess_cli.operator`). Exit codes: `ess_cli.head_client`."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from ess_cli import split_command
from ess_cli.operator import add_commands
from ess_common import tracing
from ess_common.db.migrate import upgrade
from ess_common.logs import configure_logging
from ess_common.settings import EssSettings


def _db_upgrade(_: argparse.Namespace) -> None:
    settings = EssSettings()
    asyncio.run(upgrade(settings.database_url))
    print("database schema is up to date")


def _schema_request_created(_: argparse.Namespace) -> None:
    from ess_common.events import request_created_schema

    print(json.dumps(request_created_schema(), indent=2))


def _demo(args: argparse.Namespace) -> None:
    from ess_cli.demo import demo_main

    tracing.configure("ess")
    demo_main(args.workdir, args.events_per_range, args.edges, not args.keep)


def _serve(args: argparse.Namespace) -> None:
    from ess_cli.embedded import Embedded, embedded_settings

    provider = tracing.configure("ess", EssSettings().otlp_endpoint)

    async def serve() -> None:
        head, edges = embedded_settings(args.workdir, args.port, args.edges)
        async with Embedded(head, edges) as ess:
            print(f"ESS embedded on {ess.url} (Ctrl-C stops)", flush=True)
            await ess.wait()

    try:
        asyncio.run(serve())
    finally:
        provider.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ess", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    commands = parser.add_subparsers(required=True)

    demo = commands.add_parser("demo", help="run the whole flow on the embedded default")
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    demo.add_argument("--events-per-range", type=int, default=100)
    demo.add_argument("--edges", type=int, default=2)
    demo.add_argument("--keep", action="store_true", help="keep the previous run's state")
    demo.set_defaults(run=_demo)

    serve = commands.add_parser("serve", help="run every service in one process")
    serve.add_argument("--workdir", type=Path, default=Path("var/embedded"))
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--edges", type=int, default=2)
    serve.set_defaults(run=_serve)

    split_command.add_parser(commands)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(required=True)
    db_commands.add_parser("upgrade", help="apply the migrations").set_defaults(run=_db_upgrade)

    schema = commands.add_parser("schema", help="print the JSON Schema of a published message")
    schema_commands = schema.add_subparsers(required=True)
    schema_commands.add_parser(
        "request-created", help="the request.created message PanDA publishes"
    ).set_defaults(run=_schema_request_created)

    add_commands(commands)
    args = parser.parse_args(argv)
    configure_logging("console", args.log_level)
    args.run(args)


if __name__ == "__main__":
    main()
