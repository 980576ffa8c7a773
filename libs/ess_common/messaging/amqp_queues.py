"""How ESS's queues are declared on RabbitMQ: every durable queue of ESS is a quorum queue.

A quorum queue is replicated (Raft) over the nodes of a cluster: losing the node of its leader
loses no message, a follower takes over. A classic queue lives on one node (RabbitMQ 4.0
removed classic mirroring), so it is not used for work. Each queue states its policy rather
than inheriting the server's defaults (RabbitMQ 4 applies a delivery limit of 20 on its own):

- `x-delivery-limit`: a message given back this many times without an acknowledgement (its
  consumer died holding it, again and again: a message that crashes its consumer) is
  dead-lettered rather than redelivered forever. ESS's own retries (`Q.retry`) acknowledge
  the delivery and do not count against it.
- `x-dead-letter-exchange` / `x-dead-letter-routing-key`: where such a message goes (`Q.dead`
  and the audit queue, through `<exchange>.dead`).
- `x-dead-letter-strategy: at-least-once` with `x-overflow: reject-publish` (RabbitMQ 3.10 and
  later): the queue keeps a dead letter until the dead-letter queue has confirmed it, so a
  node lost during dead-lettering loses nothing. An older server dead-letters at most once.

ESS declares no per-consumer transient queue: every queue it consumes is durable and named
for its consumer (a service or an edge), so a restarted consumer finds the messages sent
while it was away. (A per-connection queue, exclusive or auto-deleted, would be a classic
one: it cannot be a quorum queue, and it holds nothing that outlives its consumer.)

A queue that already exists as a classic queue (a deployment from before quorum queues)
cannot be re-declared as a quorum queue: the server refuses the declaration
(PRECONDITION_FAILED) and the service stops with `QueueMigrationRequired`, naming the queue;
`docs/queues.md` gives the operator's migration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ess_common.errors import EssError

#: Where the operator's migration of classic queues is described.
MIGRATION_DOC = "docs/queues.md"


@dataclass(frozen=True)
class QueuePolicy:
    """What every ESS queue is declared with, given the server's capabilities."""

    delivery_limit: int
    #: The server has at-least-once dead-lettering for quorum queues (3.10 and later).
    at_least_once: bool

    def arguments(self, dead_exchange: str, dead_routing_key: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": dead_exchange,
            "x-dead-letter-routing-key": dead_routing_key,
        }
        if self.at_least_once:
            # At-least-once dead-lettering needs a queue that refuses new messages when full
            # rather than dropping its oldest (the latter would be a loss of its own).
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments


def server_version(properties: dict[str, Any] | None) -> tuple[int, ...]:
    """The RabbitMQ version in the server's properties (connection.start); () if unknown."""
    raw = (properties or {}).get("version", b"")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in match.groups() if g is not None) if match else ()


def supports_at_least_once(version: tuple[int, ...]) -> bool:
    return version >= (3, 10)


class QueueMigrationRequired(EssError):
    """A queue exists with other arguments than ESS declares (a classic queue of a deployment
    from before quorum queues, or a delivery limit changed since): nothing is consumed from it
    until the operator has moved it over."""

    def __init__(self, queue: str, server_text: str) -> None:
        super().__init__(
            f"queue {queue!r} exists with other arguments than ESS declares "
            f"(quorum queue, delivery limit, dead-lettering): {server_text}. "
            f"Move its messages to a quorum queue as {MIGRATION_DOC} describes, then start again"
        )
        self.queue = queue
