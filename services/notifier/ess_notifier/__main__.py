"""`python -m ess_notifier`: run the notifier until SIGTERM."""

from __future__ import annotations

from ess_common.db.session import make_engine, make_session_maker
from ess_common.messaging.factory import make_bus
from ess_common.messaging.stomp import StompLink, StompPublisher
from ess_common.runtime import run_main, run_parts
from ess_common.settings import HeadSettings
from ess_notifier.delivery import callback_client
from ess_notifier.service import Notifier


async def run(settings: HeadSettings) -> None:
    engine = make_engine(settings.database_url)
    bus = make_bus(settings)
    http = callback_client(settings)
    stomp = StompPublisher(StompLink(settings.stomp_url)) if settings.stomp_url else None
    notifier = Notifier(settings, bus, make_session_maker(engine), http, stomp)
    await run_parts(
        (None, engine.dispose),
        (None, http.aclose),
        (None, stomp.close if stomp else None),
        (bus.start, bus.close),
        (notifier.start, notifier.stop),
    )


def main() -> None:
    run_main(HeadSettings(), run)


if __name__ == "__main__":
    main()
