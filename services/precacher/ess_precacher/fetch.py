"""Fetching one source URL to a local path: file://, http(s)://, dav(s):// (WebDAV, read as
HTTP(S)), s3://bucket/key, root://."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ess_common import xrootd
from ess_common.errors import PermanentError, RetryableError
from ess_common.pinned_http import Resolver, pinned_transport, system_resolver
from ess_common.settings import EdgeSettings
from ess_common.source_access import SourceAccess
from ess_common.source_urls import as_read
from ess_common.url_policy import UrlPolicy

CHUNK = 1 << 20


async def fetch_file(url: str, target: Path) -> None:
    source = Path(unquote(urlparse(url).path))
    if not source.is_file():
        raise RetryableError(f"{url}: no such file")
    await asyncio.to_thread(shutil.copyfile, source, target)


async def fetch_http(
    url: str,
    target: Path,
    timeout_s: float,
    access: SourceAccess,
    policy: UrlPolicy,
    *,
    resolver: Resolver = system_resolver,
) -> None:
    """Each connection (redirects' too) goes to the addresses its host resolved to when they
    were checked, never to what the name resolves to later (`ess_common.pinned_http`)."""
    verify = access.ssl_context()
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout_s,
                follow_redirects=True,
                headers=access.headers(),
                # Each redirect's URL is checked as the first one was, its addresses when its
                # connection is made.
                event_hooks=policy.guard_redirects(resolved=False),
                transport=pinned_transport(policy, verify=verify, resolver=resolver),
                trust_env=False,
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise RetryableError(f"{url}: HTTP {response.status_code}")
            with target.open("wb") as out:
                async for chunk in response.aiter_bytes(CHUNK):
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise RetryableError(f"{url}: {exc}") from exc


async def fetch_s3(url: str, target: Path, settings: EdgeSettings) -> None:
    parsed = urlparse(url)
    bucket, key = parsed.netloc, unquote(parsed.path.lstrip("/"))
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    client: Any
    async with get_session().create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=settings.s3_region,
    ) as client:
        # BotoCoreError too (endpoint unreachable, transfer cut): a passing fault of this
        # source, so that the precacher goes on to the next one.
        try:
            response = await client.get_object(Bucket=bucket, Key=key)
            with target.open("wb") as out:
                async with response["Body"] as body:
                    async for chunk in body.iter_chunks(CHUNK):
                        out.write(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise RetryableError(f"{url}: {exc}") from exc


async def fetch_xrootd(url: str, target: Path) -> None:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a dependency
        raise PermanentError("fsspec is needed for root:// sources") from exc

    def _copy() -> None:
        try:
            xrootd.limit_waits()
            with fsspec.open(url, "rb") as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        except (ImportError, ValueError) as exc:
            raise PermanentError(f"{url}: XRootD access needs fsspec-xrootd: {exc}") from exc
        except OSError as exc:
            raise RetryableError(f"{url}: {exc}") from exc

    await asyncio.to_thread(_copy)


async def fetch(url: str, target: Path, settings: EdgeSettings) -> None:
    """Fetch `url` if the source policy allows it now (`ess_common.url_policy`): a refused
    source is a PermanentError naming the rule, and the next source is tried."""
    url = as_read(url)
    policy = settings.source_policy
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        # Its addresses are checked where it connects, pinned for the connection.
        policy.check(url)
    else:
        await policy.check_resolved(url)
    if scheme == "file":
        await fetch_file(url, target)
    elif scheme in ("http", "https"):
        await fetch_http(url, target, settings.download_timeout_s, settings.source_access, policy)
    elif scheme == "s3":
        await fetch_s3(url, target, settings)
    elif scheme in ("root", "xroot"):
        await fetch_xrootd(url, target)
    else:
        raise PermanentError(f"{url}: unsupported scheme {scheme!r}")
