"""What every benchmark page says about the machine it was measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine(*, with_python: bool = False) -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    text = (
        f"{model}, nproc {len(os.sched_getaffinity(0))}, {memory / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}"
    )
    return f"{text}, Python {platform.python_version()}" if with_python else text
