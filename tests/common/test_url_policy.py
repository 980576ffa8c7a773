"""The URL policy of sources and callbacks (`ess_common.url_policy`): what it refuses by
default in every way an address can be written, what settings allow, file:// roots with their
links followed, and a host name checked by what it resolves to now."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from ess_common.settings import EdgeSettings, HeadSettings
from ess_common.url_policy import UrlPolicy, UrlRefused

DEFAULT = UrlPolicy("source")

REFUSED = [
    "http://127.0.0.1/x",
    "http://127.1/x",
    "http://2130706433/x",
    "http://0x7f000001/x",
    "http://localhost:15672/api/definitions",
    "http://LOCALHOST./x",
    "http://app.localhost/x",
    "https://[::1]/x",
    "http://[::ffff:127.0.0.1]/x",
    "http://[::ffff:169.254.169.254]/x",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
    "http://[2002:7f00:1::]/x",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1%25eth0]/x",
    "http://0.0.0.0:8000/x",
    "root://127.0.0.1:1094//data/f",
    "davs://[::1]:443/f",
    "http://user:pass@storage.example.org/f",
    "https://token@storage.example.org/f",
    "s3://key:secret@bucket/f",
    "file:///etc/passwd",
    "file://otherhost/data/f",
    "http://storage.example.org:notaport/f",
    "http:///no-host",
    "http://[::1/x",
    "http://user:pass@[::1/x",
]
ALLOWED = [
    "https://storage.example.org/f",
    "root://eosatlas.cern.ch//eos/atlas/f",
    "davs://dcache.example.org:2880/pnfs/f",
    "s3://bucket/key",
    "http://10.1.2.3/f",
    "http://192.168.0.4:8080/f",
    "https://[2001:db8::1]/f",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused_by_default(url: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        DEFAULT.check(url)
    assert ":pass@" not in str(refused.value) and "secret" not in str(refused.value)


@pytest.mark.parametrize("url", ALLOWED)
def test_allowed_by_default(url: str) -> None:
    DEFAULT.check(url)


def test_networks_allowed_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESS_SOURCE_NETWORKS", "127.0.0.0/8, ::1/128")
    monkeypatch.setenv("ESS_CALLBACK_NETWORKS", "169.254.0.0/16")
    settings = HeadSettings()
    for url in ("http://127.0.0.1:8080/f", "http://localhost/f", "http://[::1]/f"):
        settings.source_policy.check(url)
    settings.callback_policy.check("http://169.254.169.254/cb")
    with pytest.raises(UrlRefused, match="ESS_CALLBACK_NETWORKS"):
        settings.callback_policy.check("http://127.0.0.1/cb")
    with pytest.raises(UrlRefused, match="ESS_SOURCE_NETWORKS"):
        settings.source_policy.check("http://169.254.169.254/f")
    # Credentials are refused whatever the networks.
    with pytest.raises(UrlRefused, match="credentials"):
        settings.source_policy.check("http://u:p@127.0.0.1/f")


def test_settings_refuse_what_is_no_network_or_no_absolute_folder() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        EdgeSettings(source_networks="127.0.0.0/8,nonsense")
    with pytest.raises(ValueError, match="absolute"):
        EdgeSettings(source_file_roots="data/files")


async def test_file_roots_with_links_followed(tmp_path: Path) -> None:
    root = tmp_path / "samples"
    root.mkdir()
    (root / "f.root").write_bytes(b"x")
    (root / "escape").symlink_to("/etc/passwd")
    policy = EdgeSettings(source_file_roots=str(root)).source_policy
    policy.check((root / "f.root").as_uri())
    await policy.check_resolved((root / "f.root").as_uri())
    for outside in ("file:///etc/passwd", f"file://{root}/../../etc/passwd"):
        with pytest.raises(UrlRefused, match="outside ESS_SOURCE_FILE_ROOTS"):
            policy.check(outside)
    # Named inside the root, the file is elsewhere: refused when it is read.
    policy.check((root / "escape").as_uri())
    with pytest.raises(UrlRefused, match="outside ESS_SOURCE_FILE_ROOTS"):
        await policy.check_resolved((root / "escape").as_uri())


async def test_a_name_is_checked_by_what_it_resolves_to_now() -> None:
    name = socket.gethostname()
    (first, *_) = {info[4][0] for info in socket.getaddrinfo(name, None)}
    address = ipaddress.ip_address(str(first).split("%", 1)[0])
    network = ipaddress.ip_network(f"{address}/{address.max_prefixlen}")
    # This machine's own name, refused by what it resolves to (not by how it is written).
    policy = UrlPolicy("source", refused=((network, "this machine"),))
    policy.check(f"http://{name}/f")
    with pytest.raises(UrlRefused, match=f"{name} resolves to {address}"):
        await policy.check_resolved(f"http://{name}/f")
    allowed = UrlPolicy("source", allowed=(network,), refused=((network, "this machine"),))
    await allowed.check_resolved(f"http://{name}/f")
    # A name that does not resolve is left to the fetch to fail.
    await DEFAULT.check_resolved("http://no-such-host.invalid/f")
