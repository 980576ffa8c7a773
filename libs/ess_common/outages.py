"""Telling an outage from a failure: whether an error says a server ESS itself runs on
(PostgreSQL, RabbitMQ, the head) could not be reached, rather than that the work itself is wrong.

An outage is no reason to give work up: a message that met one is retried, with backoff, for
as long as the outage lasts (`dispatch`). This is the one place that knows the drivers'
connection errors (asyncpg, SQLAlchemy, aiormq/aio-pika).
"""

from __future__ import annotations

import errno

import aiormq.exceptions
import asyncpg  # type: ignore[import-untyped]
import sqlalchemy.exc

from ess_common.errors import HeadUnavailable

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

#: Errors that only a database or bus client raises for a server it cannot reach or use now.
_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    # The connection pool had none to give in time: the server is slow to take connections.
    sqlalchemy.exc.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    # What an edge's worker met asking the head where its work stands.
    HeadUnavailable,
)


def _unavailable(sqlstate: object, message: str) -> bool:
    if not isinstance(sqlstate, str):
        return False
    if sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return True
    # `ALTER DATABASE .. ALLOW_CONNECTIONS false`: "not currently accepting connections".
    return sqlstate == "55000" and "accepting connections" in message


def is_outage(exc: BaseException) -> bool:
    """Whether the error says the database or the bus was unreachable.

    A socket error counts when it is the error itself, as the drivers raise it on connecting
    (asyncpg's refused connection is not wrapped); one that an HTTP or storage client wraps
    (a source that is down) is that work's failure, to be retried a bounded number of times
    and then reported, not an outage of ESS.
    """
    if isinstance(exc, _OUTAGE_TYPES):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        # The driver's error, as SQLAlchemy's adapter gives it and as asyncpg raised it.
        originals = (exc.orig, getattr(exc.orig, "__cause__", None))
        return any(
            original is not None
            and (
                isinstance(original, (*_OUTAGE_TYPES, ConnectionError))
                or _unavailable(getattr(original, "sqlstate", None), str(original))
            )
            for original in originals
        )
    if _unavailable(getattr(exc, "sqlstate", None), str(exc)):
        return True
    return isinstance(exc, ConnectionError) or (
        isinstance(exc, OSError)
        and (exc.errno in _UNREACHABLE_ERRNOS or "Connect call failed" in str(exc))
    )
