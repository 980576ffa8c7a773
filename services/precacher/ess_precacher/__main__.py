"""`python -m ess_precacher`: run one edge's precacher until SIGTERM."""

from __future__ import annotations

from ess_common.messaging.factory import make_bus
from ess_common.rucio import make_catalogue
from ess_common.runtime import run_main, run_parts
from ess_common.settings import EdgeSettings
from ess_precacher.service import Precacher


async def run(settings: EdgeSettings) -> None:
    bus = make_bus(settings)
    precacher = Precacher(settings, bus, make_catalogue(settings))
    await run_parts((bus.start, bus.close), (precacher.start, precacher.stop))


def main() -> None:
    run_main(EdgeSettings(), run)


if __name__ == "__main__":
    main()
