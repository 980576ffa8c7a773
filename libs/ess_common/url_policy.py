"""Which URLs ESS reads input files from (sources) and posts outcomes to (callbacks).

The URLs come from whoever submits a request, so by default they may not reach what only
the machine itself should: a `file://` source outside the folders named in
`ESS_SOURCE_FILE_ROOTS` (none by default), credentials written in the URL (`user:pass@`),
and hosts on loopback, link-local or cloud metadata addresses (127.0.0.0/8, ::1,
169.254.0.0/16 with 169.254.169.254, fe80::/10, 0.0.0.0, ...), also written as IPv4-mapped,
6to4 or NAT64 IPv6 addresses or as short or numeric IPv4 forms (`127.1`, `2130706433`).
A deployment allows what it needs by network: `ESS_SOURCE_NETWORKS` and
`ESS_CALLBACK_NETWORKS` list CIDR blocks that are allowed even so (a site's storage on a
loopback proxy, a test's local servers).

`check` is what the head applies to a request before it records it (422 with the reason);
`check_resolved` is what the precacher, the edge's on-demand splits and the notifier apply
before each connection: the host's names resolved, every address it has checked (a name that
resolves to a refused address is refused too). An HTTP client follows redirects through
`guard_redirects`, which checks each hop the same way. The precacher's and the notifier's HTTP
connections go only to the addresses checked for them (`ess_common.pinned_http`), so that a
name resolving elsewhere between the check and the connection (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from ess_common.errors import PermanentError

__all__ = ["REFUSED_NETWORKS", "Network", "UrlPolicy", "UrlRefused", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What a URL may not reach unless a setting allows it, and why.
REFUSED_NETWORKS: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(cidr), why)
    for cidr, why in (
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("0.0.0.0/8", "this host"),
        ("::/128", "unspecified"),
        ("169.254.0.0/16", "link-local (cloud metadata at 169.254.169.254)"),
        ("fe80::/10", "link-local"),
        ("fd00:ec2::254/128", "cloud metadata"),
        ("100.100.100.200/32", "cloud metadata"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class UrlRefused(PermanentError):
    """A source or callback URL the policy refuses; the reason names the rule."""


def parse_networks(value: object) -> list[Network]:
    """CIDR blocks from a setting: a list, or text separated by commas or spaces."""
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split() if part]
    if not isinstance(value, Sequence):
        raise ValueError("expected CIDR blocks, e.g. 10.0.0.0/8,127.0.0.1/32")
    return [v if isinstance(v, Network) else ipaddress.ip_network(str(v)) for v in value]


def _embedded(address: Address) -> list[Address]:
    """The address and the IPv4 addresses it carries (IPv4-mapped, 6to4, NAT64)."""
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _literal(host: str) -> Address | None:
    """The address a host written as an address stands for, in any form a resolver reads
    (`127.1`, `0x7f000001` and `2130706433` are 127.0.0.1)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class UrlPolicy:
    #: "source" or "callback": named in the reasons.
    what: str
    #: Networks allowed even when REFUSED_NETWORKS holds them, and the setting naming them.
    allowed: tuple[Network, ...] = ()
    setting: str = "ESS_SOURCE_NETWORKS"
    #: Folders `file://` URLs may read from (none: no `file://` URL is allowed).
    file_roots: tuple[Path, ...] = ()
    #: What is refused unless allowed, and why.
    refused: tuple[tuple[Network, str], ...] = REFUSED_NETWORKS

    def refusal(self, address: Address) -> str | None:
        """Why `address` may not be reached, or None."""
        if any(address in n for n in self.allowed if n.version == address.version):
            return None
        for inner in _embedded(address):
            if any(inner in n for n in self.allowed if n.version == inner.version):
                return None
            for network, why in self.refused:
                if network.version == inner.version and inner in network:
                    return (
                        f"{self.what} address {address} is {why}, refused unless {self.setting} "
                        "allows it"
                    )
        return None

    @classmethod
    def of(
        cls, what: str, allowed: Sequence[Network], setting: str, roots: Sequence[Path] = ()
    ) -> UrlPolicy:
        """The policy of settings: roots both as written and with their links followed."""
        real = [Path(os.path.realpath(root)) for root in roots]
        return cls(what, tuple(allowed), setting, tuple(dict.fromkeys([*roots, *real])))

    def check(self, url: str) -> None:
        """Refuse `url` for what it says (no name is resolved): raises UrlRefused."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - a port that is no number is refused here
        except ValueError as exc:
            raise UrlRefused(f"{self.what} {_shown(url)} does not parse: {exc}") from exc
        if parts.username is not None or parts.password is not None:
            raise UrlRefused(f"{self.what} {_shown(url)}: credentials in a URL are refused")
        if parts.scheme == "file":
            self._check_file(url, os.path.normpath(unquote(parts.path)), parts.hostname)
            return
        if parts.scheme == "s3":
            return  # read from the configured object store: the "host" is a bucket
        host = parts.hostname
        if not host:
            raise UrlRefused(f"{self.what} {_shown(url)} names no host")
        addresses: list[Address] = []
        if (address := _literal(host)) is not None:
            addresses.append(address)
        elif host.rstrip(".").lower() in _LOCAL_NAMES or host.rstrip(".").endswith(".localhost"):
            addresses += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        for address in addresses:
            if (why := self.refusal(address)) is not None:
                raise UrlRefused(f"{_shown(url)}: {why}")

    async def check_resolved(self, url: str) -> None:
        """`check`, then every address the host resolves to now (file:// URLs: the real path,
        symbolic links followed). A name that does not resolve is left to the fetch to fail."""
        self.check(url)
        parts = urlsplit(url)
        if parts.scheme == "file":
            real = await asyncio.to_thread(os.path.realpath, unquote(parts.path))
            self._check_file(url, real, parts.hostname)
            return
        if parts.scheme == "s3":
            return
        host = parts.hostname or ""
        if _literal(host) is not None:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError:
            return
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if (why := self.refusal(address)) is not None:
                raise UrlRefused(f"{_shown(url)}: {host} resolves to {address}; {why}")

    def guard_redirects(
        self, *, resolved: bool = True
    ) -> dict[str, list[Callable[[httpx.Request], Awaitable[None]]]]:
        """httpx `event_hooks` checking every request a client sends (redirects included).
        A client whose connections are pinned (`ess_common.pinned_http`) checks the addresses
        it connects to there: `resolved=False` leaves the names to it."""

        async def checked(request: httpx.Request) -> None:
            if resolved:
                await self.check_resolved(str(request.url))
            else:
                self.check(str(request.url))

        return {"request": [checked]}

    def _check_file(self, url: str, path: str, host: str | None) -> None:
        if host not in (None, "", "localhost"):
            raise UrlRefused(f"{self.what} {_shown(url)}: a file:// URL names no other host")
        if not self.file_roots:
            raise UrlRefused(
                f"{self.what} {_shown(url)}: file:// {self.what}s are refused "
                "(ESS_SOURCE_FILE_ROOTS names no folder)"
            )
        if not any(Path(path).is_relative_to(root) for root in self.file_roots):
            roots = ", ".join(map(str, self.file_roots))
            raise UrlRefused(f"{self.what} {_shown(url)}: outside ESS_SOURCE_FILE_ROOTS ({roots})")


def _shown(url: str) -> str:
    """The URL as a reason may quote it: without its credentials, cut short."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparsable: whatever stands before an "@" may be credentials.
        return "***@" + url.rpartition("@")[2][:300] if "@" in url else url[:300]
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + parts.netloc.rpartition("@")[2]
        url = parts._replace(netloc=netloc).geturl()
    return url if len(url) <= 300 else url[:300] + "..."
