"""Child processes that die with their parent, however it ends (`kill -9` included).

On Linux a process may ask the kernel for a signal when its parent dies
(`prctl(PR_SET_PDEATHSIG)`); it is kept across exec. The edge's workers ask for it between fork
and exec (`before_exec`), the splitter's pool workers when they start (`die_with_parent`), so
that no worker is left running, or consuming an edge's queues, on its own. Elsewhere there is
no such thing: that is logged once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

import structlog

log = structlog.get_logger("ess.parent_death")

#: <linux/prctl.h>
PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")


def _arm() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)


def before_exec() -> Callable[[], None] | None:
    """What a child runs before exec to be killed when this process dies (a `preexec_fn`);
    None where the kernel offers no such thing."""
    if not _LINUX:
        log.warning("parent_death.unavailable", platform=sys.platform)
        return None
    parent = os.getpid()

    def arm() -> None:
        if not _arm():
            os._exit(127)
        # The parent may have died before the signal was asked for: then nobody sends it.
        if os.getppid() != parent:
            os._exit(1)

    return arm


def die_with_parent() -> None:
    """Ask, in this process, to be killed when its parent dies (a pool's `initializer`)."""
    if not _LINUX:
        return
    if not _arm():
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # Already orphaned (adopted by init) before asking: nobody would send the signal.
    if os.getppid() == 1:
        os._exit(1)
