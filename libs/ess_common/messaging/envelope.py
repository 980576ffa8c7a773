"""Reading a delivery's envelope, the same way on every bus.

Consumes what a bus hands over (queue, routing key, body, headers) and produces the `Delivery`
a handler sees, or the reason its envelope cannot be read. The ESS headers (`x-ess-attempt`,
`x-ess-outages`, `x-ess-routing-key`) come from any publisher, so they are checked here,
before anything relies on them: a message with a malformed one is dead-lettered with the
reason, never allowed to stop a consumer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ess_common.messaging.bus import (
    ATTEMPT_HEADER,
    OUTAGES_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    REFUSED_HEADER,
    ROUTING_KEY_HEADER,
    Delivery,
)


@dataclass(frozen=True)
class Envelope:
    """The delivery to hand to the handler, and why its envelope is bad (None when good)."""

    delivery: Delivery
    problem: str | None = None


class _Malformed(ValueError):
    pass


def _count(headers: Mapping[str, Any], name: str, default: int, least: int) -> int:
    value = headers.get(name)
    if value is None:
        return default
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise _Malformed(f"header {name} is not text") from None
    # A bool is an int to Python, never a count to a publisher.
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise _Malformed(f"header {name} is not an integer: {str(value)[:100]!r}")
    if number < least:
        raise _Malformed(f"header {name} is {number}, less than {least}")
    return number


def _text(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None or value == "" or value == b"":
        return None
    # AMQP's byte array (`x`) comes as a bytearray, its byte string as bytes.
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"header {name} is not UTF-8") from None
    if not isinstance(value, str):
        raise _Malformed(f"header {name} is not text: {type(value).__name__}")
    return value


def read_envelope(
    queue: str, routing_key: str | None, body: bytes, headers: Mapping[str, Any] | None
) -> Envelope:
    """The delivery of a message as it came off `queue`. A retried message keeps the routing
    key it was first published with (`x-ess-routing-key`)."""
    given: dict[str, Any] = dict(headers or {})
    try:
        key = _text(given, ROUTING_KEY_HEADER) or routing_key or ""
        attempt = _count(given, ATTEMPT_HEADER, 1, 1)
        outages = _count(given, OUTAGES_HEADER, 0, 0)
    except _Malformed as bad:
        # Whatever the headers say, the dead letter still names the key the message came with.
        fallback = Delivery(queue, routing_key or "", body, given, 1)
        return Envelope(fallback, f"bad envelope: {bad}")
    return Envelope(Delivery(queue, key, body, given, attempt, outages))


def retry_headers(delivery: Delivery, *, outage: bool) -> dict[str, Any]:
    """The headers of the delivery sent again later: an outage counts apart from the
    attempts, and the routing key it was first published with stays."""
    headers = dict(delivery.headers)
    if outage:
        headers.update({ATTEMPT_HEADER: delivery.attempt, OUTAGES_HEADER: delivery.outages + 1})
    else:
        headers.update({ATTEMPT_HEADER: delivery.attempt + 1, OUTAGES_HEADER: delivery.outages})
    headers[ROUTING_KEY_HEADER] = delivery.routing_key
    return headers


def dead_headers(delivery: Delivery, reason: str, *, refused: bool = False) -> dict[str, Any]:
    """The headers of the delivery as a dead letter: its reason, queue and first key, and
    whether it was refused."""
    headers = dict(delivery.headers)
    # Only this consumer says whether it refused the message, never its publisher.
    headers.pop(REFUSED_HEADER, None)
    if refused:
        headers[REFUSED_HEADER] = "1"
    headers.update(
        {
            REASON_HEADER: reason[:4000],
            QUEUE_HEADER: delivery.queue,
            ROUTING_KEY_HEADER: delivery.routing_key,
        }
    )
    # Whoever consumes the dead letter has its own attempts; the reason already says how many
    # were spent here.
    headers.pop(ATTEMPT_HEADER, None)
    headers.pop(OUTAGES_HEADER, None)
    return headers
