"""The scale benchmark runs end to end at tiny scales and writes its page (no timings are
judged): databases of its own on the test PostgreSQL server (filled, reset on a second run,
dropped at the end), the head API under uvicorn, the pilots' process, the broker's handlers
in this process and in two broker processes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.local_servers import drop_database
from benchmarks.scale_bench import run

if TYPE_CHECKING:
    from tests.conftest import PostgresServer, S3Server

#: The lookups table's rows at scale 1 (the broker table's rows start alike, without the bar).
LOOKUP_ROWS = tuple(
    f"| 1 | {when} |" for when in ("nothing else", "assignment", "bookkeeping", "retention sweep")
)


async def _databases(server_url: str, prefix: str) -> list[str]:
    admin = create_async_engine(make_url(server_url).set(database="postgres"), poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            rows = await connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"{prefix}%"}
            )
            return sorted(str(name) for (name,) in rows)
    finally:
        await admin.dispose()


async def test_tiny_runs_fill_reuse_and_write_every_table(
    postgres_server: PostgresServer,
    s3_server: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await postgres_server.url()  # fails the test with the reason when the server is not there
    s3 = await s3_server.check()
    name = f"ess_bench_t_{uuid.uuid4().hex[:10]}"
    url = postgres_server.server_url.set(database=name).render_as_string(hide_password=False)
    page = tmp_path / "scale.md"
    argv = [
        "--database-url",
        url,
        "--ranges",
        "5000",
        "--files",
        "20",
        "--split-ranges",
        "10",
        "--edges",
        "5",
        "--heartbeat-rounds",
        "2",
        "--rate",
        "40",
        "--target-rate",
        "20",
        "--seconds",
        "0.3",
        "--warmup-seconds",
        "0.1",
        "--connections",
        "2",
        "--s3-endpoint-url",
        s3.endpoint_url,
        "--s3-access-key",
        s3.access_key,
        "--s3-secret-key",
        s3.secret_key,
        "--out",
        str(page),
    ]
    try:
        assert await run([*argv, "--scales", "1"]) == 0
        first = page.read_text()
        assert await _databases(url, name) == [f"{name}_s100"]
        # Again, with a smaller scale beside: the fill of the first is reused, reset to what
        # it was.
        assert await run([*argv, "--scales", "0.5,1", "--drop-after"]) == 0
        assert await _databases(url, name) == []
    finally:
        for left in await _databases(url, name):
            await drop_database(make_url(url).set(database=left).render_as_string(False))

    printed = capsys.readouterr().out
    again = page.read_text()
    for output in (printed, again):
        for heading in (
            "| scale | step | work | seconds | rate |",
            "| 1 | heartbeats alone (5 edges) | 10 |",
            "| 1 | assignment without lookups (`assign_pending`, 500 a transaction) | 10 files |",
            "| 1 | assignment, lookups 40/s offered | 10 files |",
            "| 1 | `split.done` bookkeeping without lookups | 5 files, 50 ranges |",
            "| 1 | `split.done` bookkeeping without lookups, 2 broker processes | 5 files, "
            "50 ranges |",
            "| 1 | `split.done` bookkeeping, all with lookups | 100 ranges |",
            "| 1 | retention sweep (`purge_old_ranges`) | 500 ranges |",
            "| 0.5 | retention sweep (`purge_old_ranges`) | 500 ranges |",
            "| 1 | retention sweep with nothing expired | 0 ranges |",
            "| figure | unit | scale 0.5 | scale 1 | largest / smallest |",
            "- result bookkeeping into PostgreSQL (target ≥ 50,000 ranges/s): without lookups",
        ):
            assert heading in output
    assert "| 1 | 5,000 (500) | 20 x 10 | 5 |" in first
    assert "| 1 | 5,000 (500) | 20 x 10 | 5 | reused |" in again
    assert "--scales 0.5,1" in again
    # Every lookup found its range: a wrong fill or reset would show as errors.
    for line in again.splitlines():
        if line.startswith(LOOKUP_ROWS):
            assert line.split("|")[5].strip() == "0", line
