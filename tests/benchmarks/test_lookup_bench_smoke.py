"""The lookup benchmark runs end to end on a tiny bookkeeping and writes its page (no timings
are judged): a database of its own on the test PostgreSQL server, the head API under uvicorn,
every phase, the piece-by-piece costs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.lookup_bench import run

if TYPE_CHECKING:
    from tests.conftest import PostgresServer, S3Server


@pytest.fixture
async def bench_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    await postgres_server.url()  # fails the test with the reason when the server is not there
    url = postgres_server.server_url.set(database=f"ess_bench_t_{uuid.uuid4().hex[:10]}")
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin = create_async_engine(
            make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with admin.connect() as connection:
                await connection.execute(
                    text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
                )
        finally:
            await admin.dispose()


async def test_tiny_run_prints_and_writes_the_tables(
    bench_url: str, s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = await s3_server.check()
    page = tmp_path / "lookup.md"
    argv = [
        "--s3-endpoint-url",
        s3.endpoint_url,
        "--s3-access-key",
        s3.access_key,
        "--s3-secret-key",
        s3.secret_key,
        "--database-url",
        bench_url,
        "--ranges",
        "2000",
        "--ranges-per-file",
        "50",
        "--rate",
        "50",
        "--seconds",
        "0.3",
        "--connections",
        "4",
        "--warmup-seconds",
        "0.2",
        "--breakdown-calls",
        "20",
        "--out",
        str(page),
    ]

    assert await run(argv) == 0

    printed = capsys.readouterr().out
    text_ = page.read_text()
    header = "| endpoint | load | requests | errors | unfinished | throughput req/s"
    for output in (printed, text_):
        assert header in output
        for phase in ("| healthz | max, 4 in flight |", "| lookup | 50/s offered |"):
            assert phase in output
        assert "lookup throughput / trivial endpoint throughput" in output
        assert "| the range query alone (asyncpg, one connection) |" in output
    assert "2,000 ranges in 40 files of 50 ranges" in text_
    assert "--ranges 2000" in text_
    assert "signed URLs of the S3 store (SigV4)" in text_
    # Every lookup found its range: a wrong fill or query would show as errors.
    for line in text_.splitlines():
        if line.startswith("| lookup |"):
            assert line.split("|")[4].strip() == "0", line
