"""Telling an outage from a failure: whether an error says a server ESS needs (PostgreSQL,
RabbitMQ) could not be reached, rather than that the work itself is wrong.

An outage is no reason to give work up: a message that met one is retried, with backoff, for
as long as the outage lasts (`dispatch`). This is the one place that knows the drivers'
connection errors (asyncpg, SQLAlchemy, aiormq/aio-pika).
"""

from __future__ import annotations

import errno

import aiormq.exceptions
import asyncpg  # type: ignore[import-untyped]
import sqlalchemy.exc

#: SQLSTATE classes of a server that cannot serve now: connection exception (08), operator
#: intervention (57P: shutdown, crash, cannot connect now), insufficient resources (53).
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")

_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)

_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
)


def _one_is_outage(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGE_TYPES):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        # `ALTER DATABASE .. ALLOW_CONNECTIONS false`: "not currently accepting connections".
        if sqlstate == "55000" and "accepting connections" in str(exc):
            return True
    # asyncio's connect to several addresses raises a plain OSError naming each refusal.
    return isinstance(exc, OSError) and (
        exc.errno in _UNREACHABLE_ERRNOS or "Connect call failed" in str(exc)
    )


def is_outage(exc: BaseException) -> bool:
    """Whether the error, or one it was raised from, says a server was unreachable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _one_is_outage(current):
            return True
        current = current.__cause__ or current.__context__
    return False
