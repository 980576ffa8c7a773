"""Longer outages: the database down for 30 s, and an edge gone for twice the lost-edge timeout
then back, each in the middle of a request.

After the database outage: the request is ready, every span recorded once, PanDA notified once
per target; nothing was dead-lettered (an outage is retried, not a reason to give work up);
no file was moved to another edge (heartbeats the head could not record do not make a live
edge lost); no object is left that no range names; no request is stuck.

After the edge's return: the same, and its old assignments (moved to the other edge while it
was lost) are dropped, not redone: no orphan object once the sweep has run, and a fresh request
still completes.

Objects of attempts cut off by the faults are swept after a grace period, shortened here
(`ORPHANS`) so that the sweep runs within the settling time.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

import httpx
import pytest

from tests.chaos.world import EDGES, Submitted, World, open_world, run_outage
from tests.helpers import S3Settings, eventually
from tests.private_servers import PrivatePostgres, PrivateRabbit, wait_gone

pytestmark = pytest.mark.chaos

#: The head's lost-edge timeout in these tests.
EDGE_LOST_AFTER_S = 4.0
DATABASE_OUTAGE_S = 30.0
#: How long after an outage the system has to settle: ready, notified, swept.
SETTLE_S = 45.0

#: The orphan sweep soon enough to be seen within `SETTLE_S`, and retries after an outage
#: resumed within seconds of its end.
ORPHANS = {
    "ESS_ORPHAN_GRACE_S": "5",
    "ESS_ORPHAN_SWEEP_INTERVAL_S": "3",
    "ESS_RETRY_BACKOFF_MAX_S": "2",
}


class Findings:
    """Every check of a round is made, and all that failed are reported together."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    async def check(self, what: str, step: Awaitable[object]) -> None:
        try:
            await step
        except AssertionError as exc:
            self.failed.append(f"{what}: {str(exc)[:1500]}")

    def verdict(self, world: World) -> None:
        if self.failed:
            print(world.logs())
        assert not self.failed, "\n".join(self.failed)


async def _no_dead_letters(world: World, sub: Submitted) -> None:
    rows = await world.query(
        "SELECT queue, reason FROM dead_letters WHERE request_id = $1", sub.request_id
    )
    assert not rows, [(r["queue"], r["reason"]) for r in rows]


async def _no_work_moved(world: World, sub: Submitted) -> None:
    rows = await world.query(
        "SELECT lfn, edge, attempt FROM files WHERE request_id = $1 AND attempt > 1",
        sub.request_id,
    )
    assert not rows, [(r["lfn"], r["edge"], r["attempt"]) for r in rows]


async def _no_orphans(world: World) -> None:
    async def none_left() -> bool:
        return not await world.orphans()

    try:
        await eventually(none_left, timeout=SETTLE_S, interval=1.0, message="orphans swept")
    except AssertionError:
        orphans = sorted(await world.orphans())
        raise AssertionError(f"{len(orphans)} objects no range names, e.g. {orphans[:3]}") from None


async def _edge_idle(world: World, edge: str) -> None:
    """Until the edge's queues hold nothing, delivered or not: whatever it took up after its
    return is done (uploads come before the acknowledgement)."""

    async def empty() -> bool:
        pending = await world.rabbit.pending()
        return not any(pending.get(queue) for queue in world.consumed(edge))

    await eventually(empty, timeout=SETTLE_S, interval=0.5, message=f"{edge}'s queues drain")


@pytest.mark.timeout(300)
async def test_a_30s_database_outage_mid_request(
    tmp_path: Path,
    private_postgres: PrivatePostgres,
    private_rabbit: PrivateRabbit,
    s3_settings: S3Settings,
) -> None:
    async with open_world(
        tmp_path,
        private_postgres,
        private_rabbit,
        s3_settings,
        ESS_EDGE_LOST_AFTER_S=str(EDGE_LOST_AFTER_S),
        **ORPHANS,
    ) as world:
        sub = await world.submit()
        await world.wait_under_way(sub)
        await wait_gone(private_postgres.kill(), timeout=30, what="the killed PostgreSQL")
        await run_outage(world, DATABASE_OUTAGE_S)
        await private_postgres.start()
        await world.wait_serving("postgresql")

        findings = Findings()
        await findings.check(
            "ready, spans once, notified once", world.check_request(sub, timeout=SETTLE_S)
        )
        await findings.check("nothing dead-lettered", _no_dead_letters(world, sub))
        await findings.check("no file moved off a live edge", _no_work_moved(world, sub))
        for edge in EDGES:
            await findings.check(f"{edge} idle", _edge_idle(world, edge))
        await findings.check("no orphan object", _no_orphans(world))
        await findings.check("no request stuck", world.check_nothing_stuck())
        findings.verdict(world)


@pytest.mark.timeout(300)
async def test_an_edge_gone_twice_the_lost_timeout_then_back(
    tmp_path: Path,
    private_postgres: PrivatePostgres,
    private_rabbit: PrivateRabbit,
    s3_settings: S3Settings,
) -> None:
    async with open_world(
        tmp_path,
        private_postgres,
        private_rabbit,
        s3_settings,
        ESS_EDGE_LOST_AFTER_S=str(EDGE_LOST_AFTER_S),
        **ORPHANS,
    ) as world:
        gone = EDGES[0]
        # Slow sources: the edge still holds assignments when it goes.
        # A request placed wholly on the other edge is followed to its end, and another asked.
        sub = await world.submit(first_delay_s=3.0)
        for _ in range(5):
            if await world.wait_holding(sub, gone):
                break
            await world.check_request(sub)
            sub = await world.submit(first_delay_s=3.0)
        else:
            raise AssertionError(f"no request of five placed a file on {gone}")
        await wait_gone(world.kill(gone), timeout=30, what=f"the killed {gone}")
        back_at = world.clock() + 2 * EDGE_LOST_AFTER_S

        async def lost_and_long_gone() -> bool:
            world.check_running()
            async with httpx.AsyncClient(timeout=5) as client:
                edges = (await client.get(f"{world.cluster.head_url}/v1/edges")).json()
            lost = any(e["name"] == gone and not e["alive"] for e in edges)
            return lost and world.clock() >= back_at

        await eventually(
            lost_and_long_gone, timeout=60, interval=0.2, message=f"{gone} declared lost"
        )
        world.start(gone)
        await world.wait_serving(gone)

        findings = Findings()
        await findings.check(
            "ready, spans once, notified once", world.check_request(sub, timeout=SETTLE_S)
        )
        fresh = await world.submit(delay_s=0.0)
        await findings.check(
            "a fresh request completes", world.check_request(fresh, timeout=SETTLE_S)
        )
        await findings.check(f"{gone} idle", _edge_idle(world, gone))
        await findings.check("no orphan object", _no_orphans(world))
        await findings.check("no request stuck", world.check_nothing_stuck())
        findings.verdict(world)
