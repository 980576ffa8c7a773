"""Running the edge's workers (precacher, splitter) as child processes, restarted on exit.

The workers die with the edge, however it ends (even `kill -9`): on Linux each asks the kernel
for SIGKILL when its parent goes, so that no orphaned worker keeps consuming the edge's queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

import structlog

log = structlog.get_logger("ess.edge.supervisor")

#: prctl(2)'s option: the signal this process gets when its parent thread ends.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """What a child runs between fork and exec to die with this process (Linux only)."""
    if not sys.platform.startswith("linux"):
        log.warning("child.outlives_parent", reason=f"no parent-death signal on {sys.platform}")
        return None
    # Looked up here, in the parent: the child runs nothing but these two calls.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent ended before the signal was armed
            os._exit(1)

    return arm


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
            # From the event loop's thread, the one whose end the kernel watches.
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, preexec_fn=die_with_parent()
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
