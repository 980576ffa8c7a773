"""Pool workers die with the process that made them, killed with SIGKILL: the splitter's
parallel split leaves none waiting for work forever."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.helpers import eventually

POOL = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from ess_common.parent_death import die_with_parent

with ProcessPoolExecutor(
    1, mp_context=multiprocessing.get_context("fork"), initializer=die_with_parent
) as pool:
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 600)
    time.sleep(600)
"""


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_pool_worker_dies_with_its_parent_killed() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", POOL, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    worker = 0
    try:
        worker = int(await asyncio.wait_for(parent.stdout.readline(), 30))
        assert running(worker)
        os.kill(parent.pid, signal.SIGKILL)
        # Not `parent.wait()`: a worker left over would hold the parent's stdout open.
        await eventually(lambda: not running(parent.pid), message="the parent killed")
        await eventually(lambda: not running(worker), message=f"pool worker {worker} gone")
    finally:
        if worker and running(worker):
            os.kill(worker, signal.SIGKILL)
        if parent.returncode is None and running(parent.pid):
            parent.kill()
        await asyncio.wait_for(parent.wait(), 30)
