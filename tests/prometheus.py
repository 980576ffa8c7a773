"""A Prometheus server of the tests: Debian's `prometheus` binary (scripts/ensure-services.sh
installs it), started per test with its own configuration, data directory and free port,
scraping the targets given every second; queried through its HTTP API."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import eventually, free_port

SCRAPE_INTERVAL = "1s"


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    async def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of `expression`: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        answer = await self.http.get("/api/v1/query", params={"query": expression})
        body: dict[str, Any] = answer.json()
        assert body.get("status") == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, expression: str) -> float | None:
        """The value of a query that gives one series (a `sum`), or None when it gives none."""
        result = await self.query(expression)
        return float(result[0]["value"][1]) if result else None

    async def targets_up(self) -> dict[str, str]:
        """Each scraped target's job and instance, and its health."""
        body = (await self.http.get("/api/v1/targets")).json()
        return {
            f"{t['labels']['job']}/{t['labels']['instance']}": t["health"]
            for t in body["data"]["activeTargets"]
        }


def scrape_config(targets: Mapping[str, list[str]]) -> dict[str, Any]:
    """A job per name, each scraping its `host:port` targets' /metrics."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in targets.items()
        ],
    }


def _start(binary: str, config: Path, data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the server keeps its own descriptor
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.asynccontextmanager
async def running_prometheus(
    workdir: Path, targets: Mapping[str, list[str]]
) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not installed: run `bash scripts/ensure-services.sh` (Debian's "
            "`prometheus` package)",
            pytrace=False,
        )
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets)))
    port = free_port()
    log = workdir / "prometheus.log"
    process = _start(binary, config, workdir / "data", port, log)
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:

        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                return (await prometheus.http.get("/-/ready")).status_code == 200
            return False

        await eventually(ready, timeout=30, interval=0.1, message="prometheus is ready")
        yield prometheus
    finally:
        await prometheus.http.aclose()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
