"""An outage of a server a handler needs is no reason to dead-letter its message: it is
retried, without spending the message's attempts, until the server answers again."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import httpx
import sqlalchemy.exc

from ess_common.errors import BadMessage
from ess_common.messaging.bus import Bus, Delivery
from ess_common.messaging.dispatch import backoff
from ess_common.outages import is_outage
from tests.common.test_bus_contract import MAX_ATTEMPTS, Recorder, watch_dead_letters
from tests.helpers import UniqueNames, eventually

#: Deliveries refused for an outage: more than the attempts the bus allows a failing message.
OUTAGE_DELIVERIES = MAX_ATTEMPTS + 3


async def test_a_message_is_retried_through_an_outage_and_keeps_its_attempts(
    bus: Bus, unique: UniqueNames
) -> None:
    queue = unique("outage")

    def fail(delivery: Delivery) -> Exception | None:
        if delivery.outages < OUTAGE_DELIVERIES:
            return ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        if delivery.attempt == 1:
            return RuntimeError("a failure of its own, after the outage")
        return None

    handled = Recorder(fail)
    dead, _ = await watch_dead_letters(bus, queue)
    await bus.consume(queue, ["work.*"], handled, prefetch=1)
    await bus.publish("work.outage", b"{}")

    await eventually(handled.got(OUTAGE_DELIVERIES + 2), timeout=30)
    seen = [(d.attempt, d.outages) for d in handled.seen]
    expected = [(1, n) for n in range(OUTAGE_DELIVERIES + 1)] + [(2, OUTAGE_DELIVERIES)]
    assert seen == expected
    assert dead.seen == [], "an outage dead-letters nothing"


def test_connection_errors_of_the_drivers_are_outages() -> None:
    refused = ConnectionRefusedError(111, "refused")
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, refused)
    assert is_outage(refused)
    assert is_outage(wrapped)
    assert is_outage(asyncpg.exceptions.CannotConnectNowError("the database system is starting"))
    assert is_outage(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert is_outage(OSError(104, "Connection reset by peer"))
    # A source that is down, as an HTTP client reports it: that work's failure, not an outage.
    try:
        raise httpx.ConnectError("source down") from ConnectionRefusedError(111, "refused")
    except httpx.ConnectError as exc:
        assert not is_outage(exc)
    assert not is_outage(TimeoutError("a source took too long"))
    assert not is_outage(BadMessage("no such field"))
    assert not is_outage(ValueError("invalid literal"))
    integrity = sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("duplicate key"))
    assert not is_outage(integrity)


def test_the_wait_between_outage_retries_is_capped() -> None:
    assert backoff(1, 0.5, 60.0) == 0.5
    assert backoff(4, 0.5, 60.0) == 4.0
    # A long outage counts many redeliveries; the wait stays at the cap.
    assert backoff(100_000, 0.5, 60.0) == 60.0
