"""`kill -9` of each component in turn, in the middle of a request, then restarted.

One deployment (head API, broker, notifier, two edges, each its own process) on a PostgreSQL
and a RabbitMQ of the test's own. Each round submits a request of three real ROOT files cut
into 150-event ranges, waits until its first ranges are recorded (for an edge: until it holds
a file not yet split), kills one component with SIGKILL (the notifier: while its callback to
PanDA is open), waits until every process that component had is gone (an edge's precacher and
splitter die with it), starts it again, and checks: the request is ready, every span recorded
exactly once, PanDA notified once on its queue and once by callback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.world import EDGES, World, open_world
from tests.helpers import S3Settings, eventually
from tests.private_servers import PrivatePostgres, PrivateRabbit

pytestmark = pytest.mark.chaos

#: In turn: the head's services, an edge's main process, the bus, the database.
COMPONENTS = ["head-api", "broker", "edge-a", "rabbitmq", "postgresql"]


async def _notifier_round(world: World) -> None:
    """The notifier killed while PanDA holds its callback open."""
    world.panda.open.clear()
    world.panda.arrived.clear()
    sub = await world.submit(delay_s=0.0)
    await eventually(world.panda.arrived.is_set, timeout=90, message="the callback is open")
    await world.kill_and_restart("notifier")
    world.panda.open.set()
    await world.check_request(sub)


@pytest.mark.timeout(420)
async def test_kill_each_component_mid_request(
    tmp_path: Path,
    private_postgres: PrivatePostgres,
    private_rabbit: PrivateRabbit,
    s3_settings: S3Settings,
) -> None:
    # Lost edges are the other test's: nothing here is down long enough to be declared lost.
    async with open_world(
        tmp_path, private_postgres, private_rabbit, s3_settings, ESS_EDGE_LOST_AFTER_S="120"
    ) as world:
        for component in COMPONENTS:
            if component in EDGES:
                # Killed while a file of the request is its to fetch or split; a request
                # placed wholly on the other edge is followed to its end, and another asked.
                sub = await world.submit(first_delay_s=1.0)
                for _ in range(5):
                    if await world.wait_holding(sub, component):
                        break
                    await world.check_request(sub)
                    sub = await world.submit(first_delay_s=1.0)
                else:
                    raise AssertionError(f"no request of five placed a file on {component}")
            else:
                sub = await world.submit()
                await world.wait_under_way(sub)
            pids = await world.kill_and_restart(component)
            print(f"{component} killed ({len(pids)} processes ended) and back")
            await world.check_request(sub)
        await _notifier_round(world)
        await world.check_nothing_stuck()
