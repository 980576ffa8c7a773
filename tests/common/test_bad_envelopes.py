"""Messages whose ESS headers are malformed: dead-lettered with the reason, on both buses,
and never a reason for a consumer to stop taking messages."""

from __future__ import annotations

from typing import Any

from ess_common.messaging.bus import ATTEMPT_HEADER, OUTAGES_HEADER, REASON_HEADER, Bus
from ess_common.messaging.envelope import read_envelope
from tests.common.test_bus_contract import Recorder, watch_dead_letters
from tests.helpers import UniqueNames, eventually

PREFETCH = 2

BAD_HEADERS: list[dict[str, Any]] = [
    {ATTEMPT_HEADER: "not-a-number"},
    {ATTEMPT_HEADER: -3},
    {ATTEMPT_HEADER: True},
    {OUTAGES_HEADER: "many"},
    {"x-ess-routing-key": 17},
]


async def test_malformed_headers_are_dead_lettered_and_the_consumer_goes_on(
    bus: Bus, unique: UniqueNames
) -> None:
    queue = unique("envelope")
    handled = Recorder()
    dead, audit = await watch_dead_letters(bus, queue)
    await bus.consume(queue, ["work.*"], handled, prefetch=PREFETCH)
    # More bad messages than the consumer may hold unacknowledged at once.
    assert len(BAD_HEADERS) > PREFETCH
    for number, headers in enumerate(BAD_HEADERS):
        await bus.publish("work.bad", f"bad {number}".encode(), headers=headers)
    await bus.publish("work.good", b"good")

    await eventually(handled.got(1))
    await eventually(dead.got(len(BAD_HEADERS)))
    await eventually(audit.got(len(BAD_HEADERS)))
    assert handled.bodies == [b"good"], "no malformed message reaches the handler"
    reasons = sorted(str(d.headers[REASON_HEADER]) for d in dead.seen)
    assert all(reason.startswith("bad envelope: header x-ess-") for reason in reasons), reasons
    assert any("not-a-number" in reason for reason in reasons), reasons
    assert {d.routing_key for d in dead.seen} == {"work.bad"}
    assert sorted(d.body for d in dead.seen) == [f"bad {n}".encode() for n in range(5)]


def test_a_good_envelope_reads_counts_given_as_text_or_bytes() -> None:
    envelope = read_envelope(
        "q", "work.a", b"{}", {ATTEMPT_HEADER: b"3", OUTAGES_HEADER: "2", "x-ess-routing-key": "k"}
    )
    assert envelope.problem is None
    assert (envelope.delivery.attempt, envelope.delivery.outages) == (3, 2)
    assert envelope.delivery.routing_key == "k"
