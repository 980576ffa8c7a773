"""A three-node RabbitMQ cluster of a test's own on this machine (`scripts/rabbitmq-cluster.sh`),
with what the tests ask of it: where the queues' leaders are, and a node killed (`kill -9`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-cluster.sh"
SERVER_BIN = Path(os.environ.get("RABBITMQ_SERVER_BIN", "/usr/lib/rabbitmq/bin"))


@dataclass(frozen=True)
class Node:
    name: str
    url: str
    pid_file: Path

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text().strip())


@dataclass
class RabbitCluster:
    directory: Path
    nodes: list[Node]

    @property
    def bus_url(self) -> str:
        """Every node's address, as `ESS_BUS_URL` takes them."""
        return ",".join(n.url for n in self.nodes)

    def ctl(self, node: Node, *args: str) -> str:
        env = {**os.environ, "HOME": str(self.directory), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        done = subprocess.run(
            [str(SERVER_BIN / "rabbitmqctl"), "-q", "-n", node.name, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    async def leaders(self, prefix: str, *, via: Node) -> dict[str, str]:
        """The leader node of each quorum queue whose name starts with `prefix`."""
        out = await asyncio.to_thread(
            self.ctl, via, "list_queues", "name", "leader", "--formatter", "json"
        )
        return {q["name"]: q["leader"] for q in json.loads(out) if q["name"].startswith(prefix)}

    async def leading_node(self, prefix: str) -> Node:
        """The node holding the leaders of most of the queues named `prefix...`."""
        leaders = await self.leaders(prefix, via=self.nodes[-1])
        assert leaders, f"no queue {prefix}* on the cluster"
        name, _ = Counter(leaders.values()).most_common(1)[0]
        return next(n for n in self.nodes if n.name == name)

    def kill(self, node: Node) -> None:
        """`kill -9` of the node's Erlang VM: no goodbye to its peers or its clients."""
        os.kill(node.pid, signal.SIGKILL)
        self.nodes = [n for n in self.nodes if n != node]


def _free_block(size: int) -> int:
    """A base port whose next `size` ports are free (nodes use base+1..3 and base+11..13)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1]) // 100 * 100
        if base + size > 65000:
            continue
        try:
            for port in range(base + 1, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports")


@contextlib.asynccontextmanager
async def rabbitmq_cluster(
    directory: Path, config: Sequence[str] = ()
) -> AsyncIterator[RabbitCluster]:
    """Start the cluster (each `config` line goes to every node's rabbitmq.conf); stop it after."""
    base = _free_block(20)
    started = await asyncio.create_subprocess_exec(
        "bash",
        str(SCRIPT),
        "start",
        str(directory),
        str(base),
        *config,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(started.communicate(), 150)
        assert started.returncode == 0, err.decode(errors="replace")[-3000:]
        nodes = []
        for line in out.decode().splitlines():
            name, url, pid_file = line.split()
            nodes.append(Node(name, url, Path(pid_file)))
        assert len(nodes) == 3, out
        yield RabbitCluster(directory, nodes)
    finally:
        stop = await asyncio.create_subprocess_exec("bash", str(SCRIPT), "stop", str(directory))
        await asyncio.wait_for(stop.wait(), 120)
