"""An edge's workers die with it: `kill -9` of a real edge process leaves no precacher or
splitter running on its own."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ess_common.db.migrate import upgrade
from ess_common.edge_work import edge_queues
from ess_common.messaging.bus import dead_exchange
from tests.conftest import AmqpServer, _queue_family
from tests.e2e.cluster import Cluster, cluster_env
from tests.helpers import eventually, free_port

EDGE = "edge-orphans"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: the command may hold spaces, so read after its ')'.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_kill_9_of_an_edge_takes_its_workers_along(
    tmp_path: Path, amqp_server: AmqpServer
) -> None:
    amqp_url = await amqp_server.check()
    exchange = f"ess-t-{os.urandom(6).hex()}"
    # The edge's enrollment is kept in the head's database: a migrated one of the test's own.
    database = f"sqlite+aiosqlite:///{tmp_path}/head.db"
    await upgrade(database)
    env = cluster_env(
        database,
        amqp_url,
        exchange,
        free_port(),
        ESS_STORE_URL=f"file://{tmp_path}/objects",
    )
    cluster = Cluster(tmp_path, env)
    edge = cluster.start_edge(EDGE)
    workers: set[int] = set()
    try:
        workers = await eventually(
            lambda: (
                children_of(edge.process.pid) if len(children_of(edge.process.pid)) == 2 else set()
            ),
            timeout=30,
            message="the precacher and the splitter started",
        )
        # The main process alone, not its group: what a crash or the OOM killer does.
        os.kill(edge.process.pid, signal.SIGKILL)
        edge.process.wait(10)
        await eventually(
            lambda: not any(running(pid) for pid in workers),
            timeout=30,
            message=f"workers {sorted(workers)} gone with their edge",
        )
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        cluster.stop_all()
        await amqp_server.delete(
            _queue_family(edge_queues(exchange, EDGE)), [exchange, dead_exchange(exchange)]
        )
