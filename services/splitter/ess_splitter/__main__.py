"""`python -m ess_splitter`: run one edge's splitter until SIGTERM."""

from __future__ import annotations

from ess_common.messaging.factory import make_bus
from ess_common.runtime import run_main, run_parts
from ess_common.settings import EdgeSettings
from ess_common.store.factory import make_store
from ess_splitter.service import Splitter


async def run(settings: EdgeSettings) -> None:
    bus = make_bus(settings)
    store = make_store(settings)
    splitter = Splitter(settings, bus, store)
    await run_parts(
        (store.start, store.close), (bus.start, bus.close), (splitter.start, splitter.stop)
    )


def main() -> None:
    run_main(EdgeSettings(), run)


if __name__ == "__main__":
    main()
