"""The metrics' plumbing: a transition is counted when its transaction commits and never when
it rolls back; processes sharing a metrics directory add up to one service's totals; the
metrics port serves the text Prometheus scrapes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from ess_common import metrics
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.metrics_export import (
    SHARED_DIRECTORY,
    MetricsServer,
    owned_directory,
    render,
    shared_directory,
)
from tests.helpers import free_port


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_transition_counts_when_its_transaction_commits(sessions: SessionMaker) -> None:
    before = counted("ess_files_assigned_total", edge="edge-commit")
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessions) as session:
            metrics.on_commit(session, metrics.FILES_ASSIGNED.labels("edge-commit").inc)
            raise RuntimeError("the handler failed: nothing happened")
    assert counted("ess_files_assigned_total", edge="edge-commit") == before
    async with unit_of_work(sessions) as session:
        metrics.on_commit(session, metrics.FILES_ASSIGNED.labels("edge-commit").inc)
        # A savepoint given up inside the transaction does not undo what it counted before.
        async with session.begin_nested() as nested:
            await session.execute(text("SELECT 1"))
            await nested.rollback()
        assert counted("ess_files_assigned_total", edge="edge-commit") == before
    assert counted("ess_files_assigned_total", edge="edge-commit") == before + 1


_CHILD = """
import sys
from ess_common import metrics
metrics.UPLOADS.labels("s3").inc(int(sys.argv[1]))
metrics.REQUEST_READY_SECONDS.observe(float(sys.argv[1]))
"""


def test_processes_sharing_a_directory_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    for amount in ("3", "4"):
        subprocess.run(
            [sys.executable, "-c", _CHILD, amount],
            env={**_env(), SHARED_DIRECTORY: str(shared)},
            check=True,
            timeout=60,
        )
    monkeypatch.setenv(SHARED_DIRECTORY, str(shared))
    exposed = render().decode()
    assert 'ess_uploads_total{store="s3"} 7.0' in exposed
    assert "ess_request_ready_seconds_count 2.0" in exposed


def test_a_service_owns_its_directory_and_deletes_it() -> None:
    assert shared_directory() is None
    with owned_directory("test") as directory:
        assert shared_directory() == directory
        metrics.UPLOADS.labels("local").inc(5)
        assert any(directory.glob("counter_*.db")), "this process counts in the directory"
        assert 'ess_uploads_total{store="local"} 5.0' in render().decode()
    assert shared_directory() is None and not directory.exists()
    # Back in this process's memory.
    metrics.UPLOADS.labels("local").inc(2)
    assert counted("ess_uploads_total", store="local") == 2


async def test_the_metrics_port_serves_prometheus_text() -> None:
    server = MetricsServer("127.0.0.1", free_port())
    server.start()
    try:
        metrics.SIGNED_URLS.labels("s3").inc()
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{server.port}/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        assert 'ess_signed_urls_total{store="s3"}' in answer.text
    finally:
        server.stop()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != SHARED_DIRECTORY}
