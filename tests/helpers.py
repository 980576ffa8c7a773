"""Helpers shared by the tests: waiting for an outcome with a deadline (never a fixed sleep),
and the settings of the test servers that fixtures hand out.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, overload

# The one helper for a free port, the embedded mode's own: tests take it from here.
from ess_cli.embedded import free_port as free_port
from ess_common.db import enrollments
from ess_common.db.session import make_engine, make_session_maker, unit_of_work
from ess_common.store.s3 import S3Store

T = TypeVar("T")

#: Long enough for a loaded CI machine, short enough that a broken test fails quickly.
DEFAULT_TIMEOUT_S = 10.0


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 - the polling deadline, by design
    interval: float = 0.05,
    *,
    message: str = "",
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 - the polling deadline, by design
    interval: float = 0.05,
    *,
    message: str = "",
) -> T: ...


async def eventually(
    predicate: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109 - the polling deadline, by design
    interval: float = 0.05,
    *,
    message: str = "",
) -> object:
    """Poll `predicate` (sync or async) until it returns something truthy, and return that.

    Raises AssertionError naming the predicate, the message and the last value it returned
    when `timeout` seconds pass first. Exceptions of the predicate itself propagate.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    polls = 0
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        polls += 1
        if result:
            return result
        if loop.time() >= deadline:
            what = message or getattr(predicate, "__qualname__", None) or repr(predicate)
            raise AssertionError(
                f"not true within {timeout}s ({polls} polls): {what}; last value {result!r}"
            )
        await asyncio.sleep(interval)


class UniqueNames:
    """`unique("broker")` -> `"broker-3f2a9c01d4e5"`: names no other test (or run) uses.

    Remembers what it made, so the bus fixture can delete queues of those names afterwards.
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> str:
        made = f"{name}-{uuid.uuid4().hex[:12]}"
        self.names.append(made)
        return made


@dataclass(frozen=True)
class S3Settings:
    """Where the test S3 server is and how to log in (`ESS_TEST_S3_*`)."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str

    def store(self, bucket: str, *, prefix: str = "", create_bucket: bool = True) -> S3Store:
        """An S3Store on this server; not started."""
        return S3Store(
            bucket,
            prefix=prefix,
            endpoint_url=self.endpoint_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            create_bucket=create_bucket,
        )

    def env(self, bucket: str, *, prefix: str = "") -> dict[str, str]:
        """The `ESS_*` variables that point a service (`make_store`) at a bucket of this server."""
        return {
            "ESS_STORE_URL": f"s3://{bucket}/{prefix}".rstrip("/"),
            "ESS_S3_ENDPOINT_URL": self.endpoint_url,
            "ESS_S3_ACCESS_KEY": self.access_key,
            "ESS_S3_SECRET_KEY": self.secret_key,
            "ESS_S3_REGION": self.region,
        }


def local_servers_allowed() -> dict[str, str]:
    """The `ESS_*` variables that let sources and callbacks reach what the tests run on this
    machine (S3, XRootD, HTTP storage and callback receivers on 127.0.0.1, files under the
    temporary folder and the samples), which the URL policy refuses by default."""
    roots = [tempfile.gettempdir()]
    if samples := os.environ.get("ESS_TEST_COFFEA_SAMPLES"):
        roots.append(samples)
    return {
        "ESS_SOURCE_NETWORKS": "127.0.0.0/8,::1/128",
        "ESS_CALLBACK_NETWORKS": "127.0.0.0/8,::1/128",
        "ESS_SOURCE_FILE_ROOTS": ",".join(roots),
    }


async def enroll(db_url: str, edge: str) -> str:
    """Enroll the edge in the database at `db_url` (as the head's admin route does); returns
    its token."""
    engine = make_engine(db_url)
    try:
        async with unit_of_work(make_session_maker(engine)) as session:
            return await enrollments.enroll(session, edge)
    finally:
        await engine.dispose()


#: A public address nothing answers on (TEST-NET-1, RFC 5737): a connection to it times out.
UNANSWERED_PUBLIC = "192.0.2.1"


class Rebinding:
    """A resolver (`ess_common.pinned_http.Resolver`) answering `first` to the first lookup
    and `then` to every later one: a name that resolves to a public address when it is
    checked and to loopback a moment later (DNS rebinding)."""

    def __init__(self, first: str = UNANSWERED_PUBLIC, then: str = "127.0.0.1") -> None:
        self.first = first
        self.then = then
        #: The names looked up, in order.
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return [self.first if len(self.lookups) == 1 else self.then]
