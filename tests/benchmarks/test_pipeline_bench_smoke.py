"""The pipeline benchmark runs end to end at a tiny size (the split, the upload to the S3 server,
and a request through a head API, broker, notifier and edge on PostgreSQL and RabbitMQ) and
writes its page (no timings checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.pipeline_bench import main
from tests.conftest import AmqpServer, PostgresServer, S3Server


async def test_the_servers_the_benchmark_uses_answer(
    postgres_server: PostgresServer, amqp_server: AmqpServer, s3_server: S3Server
) -> None:
    # Fail with the servers' own message when they are down, before the benchmark tries them.
    await postgres_server.url()
    await amqp_server.check()
    await s3_server.check()


@pytest.mark.servers  # its own processes on the test servers, which the benchmark names itself
def test_tiny_run_writes_every_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "pipeline.md"
    argv = ["--files", "2", "--events", "3000", "--events-per-range", "500"]

    assert main([*argv, "--workdir", str(tmp_path / "work"), "--out", str(page)]) == 0

    printed = capsys.readouterr().out
    text = page.read_text()
    for line in (
        "| split | ",
        "| upload | ",
        "| flow: POST to ready | ",
        "| flow: POST to ready, local directory store | ",
        "| stage | S3 store | local directory store |",
        "## Where the flow's time goes",
        "| splitter: first file cached to last file uploaded | ",
        "| bookkeeping (`split.done` to recorded) | ",
        "## With a 50 ms round trip to the store",
        "- the 12 uploads take",
    ):
        assert line in printed
        assert line in text
    assert "--files 2 --events 3000" in text
