"""The placement benchmark runs end to end on a small input (SQLite, a real edge process on the
test servers) and writes its page (no timings checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.placement_bench import main
from tests.conftest import AmqpServer, S3Server


async def test_the_servers_the_benchmark_uses_answer(
    amqp_server: AmqpServer, s3_server: S3Server
) -> None:
    # Fail with the servers' own message when they are down, before the benchmark tries them.
    await amqp_server.check()
    await s3_server.check()


@pytest.mark.servers  # an edge process on the test servers, which the benchmark names itself
def test_small_run_writes_every_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "edges.md"
    argv = ["--files", "300", "--edges", "10", "--databases", "sqlite", "--out", str(page)]

    main([*argv, "--cdn-objects", "3", "--cdn-object-mb", "0.05", "--cdn-downloads", "12"])

    printed = capsys.readouterr().out
    text = page.read_text()
    for heading in (
        "## Placement: 300 files over 10 edges",
        "## Assignment: `assign_pending` for 300 pending files, 10 edges",
        "| SQLite |",
        "## Pilot downloads: through an edge process vs straight from the S3 server",
        "| S3 server, signed URL | 12 |",
        "| edge, every download | 12 |",
        "- edge hit ratio:",
    ):
        assert heading in printed
        assert heading in text
    assert "--files 300" in text
