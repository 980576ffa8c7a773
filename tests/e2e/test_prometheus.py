"""Prometheus scrapes a running deployment (the head with two worker processes, the broker,
the notifier and two edges, each on its metrics port) and a request's life shows through
Prometheus's own query API: the requests that became ready went up by one, the ranges prepared
are the request's ranges, the head's two workers count as one head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.deployment import Deployment
from tests.helpers import eventually
from tests.prometheus import Prometheus, running_prometheus

pytestmark = pytest.mark.e2e


async def settled(prometheus: Prometheus, expression: str, expected: float) -> None:
    """Polls until the query gives `expected` (scrapes come every second)."""

    async def reached() -> bool:
        return await prometheus.value(expression) == expected

    try:
        await eventually(reached, timeout=30, interval=0.5, message=f"{expression} == {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {await prometheus.query(expression)}") from None


async def test_a_requests_life_shows_in_prometheus(deployment: Deployment, tmp_path: Path) -> None:
    async with running_prometheus(tmp_path / "prometheus", deployment.scrape_targets) as prom:

        async def all_up() -> bool:
            health = await prom.targets_up()
            return len(health) == 5 and set(health.values()) == {"up"}

        await eventually(all_up, timeout=30, interval=0.5, message="every target scraped")
        ready = 'sum(ess_requests_finished_total{state="ready"})'
        await settled(prom, f"{ready} or vector(0)", 0)

        created = await deployment.submit(deployment.dataset[:2])
        view = await deployment.wait_ready(created["id"])
        assert view["ranges"] > 0
        # One trace across the processes: the head, the broker (told by each edge's precacher
        # and splitter through their messages' trace context) and the notifier wrote the
        # request's history in it.
        history: list[dict[str, Any]] = []

        async def notified() -> bool:
            history[:] = (
                await deployment.http.get(
                    f"/v1/requests/{created['id']}/events", headers={"Accept": "application/json"}
                )
            ).json()
            return any(e["kind"] == "notified" for e in history)

        await eventually(notified, timeout=30, message="PanDA told")
        assert {"received", "assigned", "cached", "split", "ready"} <= {e["kind"] for e in history}
        traces = {e["trace_id"] for e in history}
        assert len(traces) == 1 and None not in traces, history

        await settled(prom, ready, 1)
        await settled(prom, "sum(ess_ranges_prepared_total)", view["ranges"])
        await settled(prom, 'ess_requests{state="ready"}', 1)
        await settled(prom, "sum(ess_request_ready_seconds_count)", 1)
        await settled(prom, 'sum(ess_requests_received_total{via="api"})', 1)
        # Each edge downloaded and split what it was given, and uploaded the ranges.
        await settled(prom, "sum(ess_split_ranges_total)", view["ranges"])
        await settled(prom, "sum(ess_uploads_total)", view["ranges"])
        sizes = sum(f.size for f in deployment.dataset[:2])
        await settled(prom, 'sum(ess_precache_bytes_total{scheme="file"})', sizes)
        await settled(prom, 'sum(ess_notifications_total{outcome="sent"})', 1)

        # Lookups answered by either of the head's two workers (a connection each, so that
        # both take some) add up on the head's one target.
        lookups = 20
        first = deployment.dataset[0]
        for i in range(lookups):
            asked: dict[str, str | int] = {
                "scope": "user.ess",
                "LFN": first.lfn,
                "startEvent": i + 1,
                "lastEvent": i + 1,
            }
            async with httpx.AsyncClient(
                base_url=deployment.head_url, headers=deployment.http.headers
            ) as fresh:
                answer = await fresh.get("/v1/ranges", params=asked)
            assert answer.status_code == 200, answer.text
        await settled(
            prom, 'sum(ess_lookups_total{job="head",path="fast",outcome="served"})', lookups
        )
        await settled(prom, "count(ess_edge_heartbeat_age_seconds < 10)", 2)
        await settled(prom, "ess_outbox_backlog_messages", 0)
