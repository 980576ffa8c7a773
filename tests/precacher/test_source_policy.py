"""Sources the URL policy refuses (`ess_common.url_policy`) are never read by the precacher,
whatever size and checksum the assignment gives: a file:// path outside the roots (or a link
out of them), a loopback address, a redirect from an allowed server to a refused one, and a
name that resolves to loopback after it was checked (DNS rebinding)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from ess_common.checksums import adler32_of_bytes
from ess_common.errors import RetryableError
from ess_common.url_policy import UrlRefused
from ess_precacher.fetch import fetch_http
from ess_precacher.service import Precacher
from tests.helpers import Rebinding
from tests.precacher.test_precacher import (
    IDLE_BUS,
    Original,
    assigned,
    cached_files,
    edge_settings,
    expect_cached,
    original,
    source,
)

__all__ = ["original", "source"]  # fixtures shared with the precacher's own tests

#: The defaults, whatever the tests' own servers need.
STRICT: dict[str, list[object]] = {"source_networks": [], "source_file_roots": []}


def secret_of_the_host() -> Original:
    path = Path("/etc/passwd")
    data = path.read_bytes()
    return Original(path, data, adler32_of_bytes(data))


async def test_a_file_outside_the_roots_is_never_read(tmp_path: Path, source: Path) -> None:
    passwd = secret_of_the_host()
    link = source.parent / "innocent.root"
    link.symlink_to(passwd.path)
    for roots in ([], [source.parent]):
        settings = edge_settings(tmp_path, **{**STRICT, "source_file_roots": list(roots)})
        precacher = Precacher(settings, IDLE_BUS)
        for url in (passwd.path.as_uri(), link.as_uri()):
            with pytest.raises(RetryableError) as raised:
                await precacher.handle_file_assigned(assigned(passwd, [url]))
            assert "ESS_SOURCE_FILE_ROOTS" in str(raised.value)
            assert cached_files(settings) == []


async def test_a_file_inside_the_roots_is_read(
    tmp_path: Path, source: Path, original: Original
) -> None:
    settings = edge_settings(tmp_path, **{**STRICT, "source_file_roots": [source.parent]})
    await expect_cached(
        Precacher(settings, IDLE_BUS), assigned(original, [source.as_uri()]), original
    )


class Storage:
    """HTTP storage on 127.0.0.1 whose `/hop` redirects to a loopback address it names."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gets: list[str] = []
        self.url = ""

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.gets.append(request.path)
        if request.path == "/hop":
            port = request.url.port
            raise web.HTTPFound(f"http://127.0.0.2:{port}/file")
        return web.Response(body=self.data)


@pytest.fixture
async def storage(original: Original) -> AsyncIterator[Storage]:
    storage = Storage(original.data)
    app = web.Application()
    app.router.add_get("/{name:.+}", storage.serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", 0).start()
    storage.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield storage
    finally:
        await runner.cleanup()


async def test_loopback_sources_and_redirects_to_them_are_refused(
    tmp_path: Path, original: Original, storage: Storage
) -> None:
    refusing = Precacher(edge_settings(tmp_path, **STRICT), IDLE_BUS)
    with pytest.raises(RetryableError) as raised:
        await refusing.handle_file_assigned(assigned(original, [f"{storage.url}/file"]))
    assert "loopback" in str(raised.value) and storage.gets == []

    # 127.0.0.1 allowed, the rest of 127.0.0.0/8 not: the redirect's target is refused.
    only_one = edge_settings(tmp_path, **{**STRICT, "source_networks": ["127.0.0.1/32"]})
    precacher = Precacher(only_one, IDLE_BUS)
    with pytest.raises(RetryableError) as raised:
        await precacher.handle_file_assigned(assigned(original, [f"{storage.url}/hop"]))
    assert "127.0.0.2" in str(raised.value) and "ESS_SOURCE_NETWORKS" in str(raised.value)
    assert storage.gets == ["/hop"]
    assert cached_files(only_one) == []
    await expect_cached(precacher, assigned(original, [f"{storage.url}/file"]), original)


async def test_a_source_name_rebound_to_loopback_never_reaches_it(
    tmp_path: Path, storage: Storage
) -> None:
    """The source's name resolves to a public address, then to 127.0.0.1 (where the storage
    listens): the connection goes to the address checked for it, never to the later answer,
    and the loopback answer is refused with the reason."""
    settings = edge_settings(tmp_path, **STRICT)
    url = f"http://rebind.invalid:{urlsplit(storage.url).port}/file"
    rebinding = Rebinding()
    with pytest.raises(RetryableError, match=r"rebind\.invalid"):
        await fetch_http(
            url,
            tmp_path / "first",
            1.0,
            settings.source_access,
            settings.source_policy,
            resolver=rebinding,
        )
    assert rebinding.lookups == ["rebind.invalid"] and storage.gets == []

    with pytest.raises(UrlRefused, match=r"rebind.invalid resolves to 127\.0\.0\.1; .*loopback"):
        await fetch_http(
            url,
            tmp_path / "second",
            1.0,
            settings.source_access,
            settings.source_policy,
            resolver=rebinding,
        )
    assert storage.gets == []
