"""`python -m ess_broker`: run the broker until SIGTERM."""

from __future__ import annotations

from ess_broker.service import Broker
from ess_common.db.session import make_engine, make_session_maker
from ess_common.messaging.factory import make_bus
from ess_common.runtime import run_main, run_parts
from ess_common.settings import HeadSettings


async def run(settings: HeadSettings) -> None:
    engine = make_engine(settings.database_url)
    bus = make_bus(settings)
    broker = Broker(settings, bus, make_session_maker(engine))
    await run_parts((None, engine.dispose), (bus.start, bus.close), (broker.start, broker.stop))


def main() -> None:
    run_main(HeadSettings(), run)


if __name__ == "__main__":
    main()
