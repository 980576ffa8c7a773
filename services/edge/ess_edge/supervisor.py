"""Running the edge's workers (precacher, splitter) as child processes, restarted on exit.

The children die with the edge's main process, however it ends (`kill -9` included): each asks
the kernel for SIGKILL when its parent dies (`ess_common.parent_death`), so no worker is left
consuming the edge's queues on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence

import structlog

from ess_common.parent_death import before_exec

log = structlog.get_logger("ess.edge.supervisor")


class Child:
    """One worker process, restarted with a growing delay while the edge runs."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, niceness: int = 0
    ) -> None:
        self.name = name
        self.niceness = niceness
        self.argv = list(argv)
        self.env = dict(env)
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_running(), name=f"child:{self.name}")

    async def _keep_running(self) -> None:
        delay = 1.0
        while not self._stopping:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, preexec_fn=before_exec()
            )
            if self.niceness:
                # Before the child starts its own threads, which inherit it.
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, self.process.pid, self.niceness)
            log.info("child.started", child=self.name, pid=self.process.pid)
            code = await self.process.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning("child.exited", child=self.name, code=code, restart_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def stop(self, timeout_s: float = 20.0) -> None:
        self._stopping = True
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                log.warning("child.killed", child=self.name)
                self.process.kill()
                await self.process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def worker_children(env: Mapping[str, str] | None = None, *, niceness: int = 0) -> list[Child]:
    environment = dict(os.environ if env is None else env)
    return [
        Child(name, [sys.executable, "-m", module], environment, niceness=niceness)
        for name, module in (("precacher", "ess_precacher"), ("splitter", "ess_splitter"))
    ]
