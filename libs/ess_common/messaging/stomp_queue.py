"""Which RabbitMQ queue a STOMP request destination names (no STOMP client needed: settings
validate the destination with it)."""

from __future__ import annotations

#: STOMP destinations that name a RabbitMQ queue: `/queue/<name>` (declared by its first user)
#: and `/amq/queue/<name>` (an existing queue, declared by nobody).
QUEUE_DESTINATIONS = ("/queue/", "/amq/queue/")


def ingress_queue(destination: str) -> str:
    """The queue a request destination names: `/queue/X` and `/amq/queue/X` -> `X`."""
    for prefix in QUEUE_DESTINATIONS:
        name = destination.removeprefix(prefix)
        if name != destination and name and "/" not in name:
            return name
    raise ValueError(
        f"STOMP request destination {destination!r} must be a queue, /queue/<name> or "
        "/amq/queue/<name>: a topic subscription would be a classic queue of its own"
    )
