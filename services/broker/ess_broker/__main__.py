"""`python -m ess_broker`: run the broker until SIGTERM; with `ESS_STOMP_URL` and
`ESS_STOMP_REQUEST_DESTINATION`, also the ingress of PanDA's requests over STOMP."""

from __future__ import annotations

from ess_broker.service import Broker
from ess_common.db.session import make_engine, make_session_maker
from ess_common.messaging.factory import make_bus
from ess_common.messaging.stomp import StompIngress, StompLink
from ess_common.rucio import make_catalogue
from ess_common.runtime import Action, run_main, run_parts
from ess_common.settings import HeadSettings


async def run(settings: HeadSettings) -> None:
    engine = make_engine(settings.database_url)
    bus = make_bus(settings)
    broker = Broker(settings, bus, make_session_maker(engine), make_catalogue(settings))
    parts: list[tuple[Action | None, Action | None]] = [
        (None, engine.dispose),
        (bus.start, bus.close),
        (broker.start, broker.stop),
    ]
    if settings.stomp_url and settings.stomp_request_destination:
        ingress = StompIngress(
            StompLink(settings.stomp_url), settings.stomp_request_destination, bus
        )
        parts.append((ingress.start, ingress.stop))
    await run_parts(*parts)


def main() -> None:
    run_main(HeadSettings(), run)


if __name__ == "__main__":
    main()
