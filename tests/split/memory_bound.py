"""A test that holds more resident memory than it may fails, with where it was, instead of the
kernel's OOM killer ending the whole test process (and every test after it).

`bounded(limit)` checks the process's resident set every 0.2 s of CPU time (SIGPROF: the
SIGALRM timer is pytest-timeout's) and raises `MemoryError` in the main thread, naming the
innermost frames it interrupted, once the resident set is above `limit` bytes.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE


@contextmanager
def bounded(limit: int, every_s: float = 0.2) -> Iterator[None]:
    def check(signum: int, frame: FrameType | None) -> None:
        resident = resident_bytes()
        if resident <= limit:
            return
        where = "; ".join(
            f"{summary.filename}:{summary.lineno} {summary.name}"
            for summary in traceback.extract_stack(frame)[-4:]
        )
        raise MemoryError(
            f"resident memory {resident / 2**30:.1f} GiB, above {limit / 2**30:.1f} GiB, at {where}"
        )

    previous = signal.signal(signal.SIGPROF, check)
    signal.setitimer(signal.ITIMER_PROF, every_s, every_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
