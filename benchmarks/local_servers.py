"""The servers a benchmark talks to, all on this machine: its own PostgreSQL database (made
when missing, dropped when asked) and the S3 store's options on the command line."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


async def ensure_database(url: str, *, fresh: bool = False) -> None:
    """Make the database of `url` when it does not exist (dropped first when `fresh`)."""
    target = make_url(url)
    admin = create_async_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with admin.connect() as connection:
            name = target.database
            if fresh:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not exists:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()


async def drop_database(url: str) -> None:
    target = make_url(url)
    admin = create_async_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with admin.connect() as connection:
            await connection.execute(
                text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
            )
    finally:
        await admin.dispose()


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """Where the range files are: the test S3 server (as `scripts/ensure-services.sh` runs it)
    or a local directory."""
    parser.add_argument("--store", choices=["s3", "local"], default="s3")
    parser.add_argument("--s3-endpoint-url", default="http://127.0.0.1:8080")
    parser.add_argument("--s3-access-key", default="test:tester")
    parser.add_argument("--s3-secret-key", default="testing")
    parser.add_argument("--s3-bucket", default="ess-bench")


def require_local(parser: argparse.ArgumentParser, urls: Iterable[str]) -> None:
    """Refuse (as a usage error) any server that is not on this machine."""
    for url in urls:
        host = make_url(url).host if url.startswith("postgresql") else url.split("/")[2]
        if str(host).split(":")[0] not in ("127.0.0.1", "localhost", "::1"):
            parser.error(f"{url}: the benchmark only talks to servers on this machine")
