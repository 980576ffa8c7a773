"""The pilot benchmark runs end to end on a few small objects and writes its page (no timings
are judged): a bucket of the test S3 server, a database of its own on the test PostgreSQL
server, the head API under uvicorn, both clients."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchmarks.local_servers import drop_database
from benchmarks.pilot_bench import run

if TYPE_CHECKING:
    from tests.conftest import PostgresServer, S3Server


async def test_tiny_run_prints_and_writes_the_page(
    postgres_server: PostgresServer,
    s3_server: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await postgres_server.url()  # fails the test with the reason when the server is not there
    await s3_server.check()
    url = postgres_server.server_url.set(database=f"ess_bench_t_{uuid.uuid4().hex[:10]}")
    database_url = url.render_as_string(hide_password=False)
    page = tmp_path / "pilot.md"
    argv = [
        "--database-url",
        database_url,
        "--ranges",
        "12",
        "--ranges-per-file",
        "5",
        "--object-kb",
        "16",
        "--rounds",
        "1",
        "--out",
        str(page),
    ]
    try:
        written = await run(argv)
    finally:
        await drop_database(database_url)
    assert page.read_text() == written
    assert written in capsys.readouterr().out
    assert "12 range files of 16 KiB" in written
    assert "pilot / plain GETs, the median of the rounds' ratios: **" in written
    for row in ("plain GETs of the signed URLs", "pilot: `PilotClient.fetch`", "lookup alone"):
        assert row in written
