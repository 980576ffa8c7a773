"""HTTP connections only to the addresses the URL policy checked (`ess_common.url_policy`).

Checking a URL's host and then letting the HTTP client resolve it again leaves a gap: a name
that resolves to a public address when it is checked and to 127.0.0.1 when the client
connects (DNS rebinding) would reach what the policy refuses. Here each connection resolves
its host once, checks every address the policy would refuse (all of them, as
`UrlPolicy.check_resolved` does), and connects to those very addresses; TLS still verifies the
certificate against the host's name. Redirects open connections the same way.

httpx 0.28 takes no network backend of its own, so `pinned_transport` makes its transport's
connection pool again with one: the one place that knows that part of httpx, checked against
the version it was written for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from ess_common.url_policy import UrlPolicy, UrlRefused

__all__ = ["PinnedBackend", "Resolver", "pinned_transport", "system_resolver"]

#: The addresses a host name stands for now (as text), in the order to try them.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_WRITTEN_FOR = "0.28."


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to a host's checked addresses only; a refused one raises `UrlRefused` (a
    permanent error naming the rule) before any byte is sent."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to: resolved once, every one checked."""
        try:
            literal = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            literal = None
        found = [str(literal)] if literal is not None else await self.resolver(host, port)
        for address in found:
            why = self.policy.refusal(ipaddress.ip_address(address.split("%", 1)[0]))
            if why is not None:
                raise UrlRefused(f"{host} resolves to {address}; {why}")
        if not found:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        return found

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.addresses(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlRefused(f"{self.policy.what}: no connection to a local socket ({path})")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pinned_transport(
    policy: UrlPolicy,
    *,
    verify: ssl.SSLContext | bool = True,
    resolver: Resolver = system_resolver,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through `PinnedBackend`. No proxy: a
    proxy would connect for us, to addresses nobody checked."""
    if not httpx.__version__.startswith(_WRITTEN_FOR):
        raise RuntimeError(
            f"ess_common.pinned_http was written for httpx {_WRITTEN_FOR}x, "
            f"not {httpx.__version__}: check how AsyncHTTPTransport makes its pool"
        )
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        network_backend=PinnedBackend(policy, resolver=resolver),
    )
    return transport
