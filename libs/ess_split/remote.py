"""Split one event range straight from a remote ROOT file, without downloading the file.

Consumes a URL and a 1-based inclusive event range: ``http(s)://`` (presigned S3 URLs
included; WebDAV's ``dav(s)://`` read as such), ``s3://bucket/key`` (presigned here with the
edge's S3 credentials, so that no S3 filesystem package is needed), ``root://`` (through
fsspec-xrootd) or ``file://`` (a replica on a file system the edge mounts).
uproot opens the file through fsspec (``uproot_io``); the engine reads its header, directories
and records; then, with concurrent requests, the baskets that hold the range's entries of every
event tree (of a zlib or LZMA basket only its beginning, up to the range's end: ``prefetch``)
and whatever is carried whole into range files; no other byte of the file is requested.
Produces the range file at a local path, holding the same entries, objects and metadata as the
range file ``split_root_file`` writes (buffer capacities may differ where a cut basket is read
only up to the range's end), and the number of bytes fetched: the response bodies received
over HTTP, counted as they arrive (so a server that ignored the byte ranges would show), or the
bytes requested from XRootD.

This is the on-demand path: ``split_range`` is the coroutine the splitter service calls.
Failures to reach the file are ``RetryableError``; a file that is not there is ``NotFound``;
a file that cannot be split, or does not hold the range, is a ``SplitError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from ess_common import xrootd
from ess_common.errors import NotFound, PermanentError, RetryableError, Unauthorized
from ess_common.settings import EssSettings
from ess_common.source_access import SourceAccess
from ess_common.source_urls import as_read
from ess_split.errors import SplitError
from ess_split.format.codecs import Compression
from ess_split.split import RangeFile, RangeTarget, open_source, planned, write_ranges
from ess_split.uproot_io import (
    KEPT,
    fsspec_handler,
    local_handler,
    num_requested_bytes,
    set_identity,
)

__all__ = [
    "forget_kept",
    "keep_opening",
    "kept_opening",
    "presign_s3",
    "split_range",
    "split_range_remote",
]

#: Seconds to connect, and to wait for any read, before the source counts as unreachable.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


@dataclass
class _Received:
    """Bytes of response bodies received by one HTTP client session."""

    bytes: int = 0


def split_range_remote(
    url: str,
    first_event: int,
    last_event: int,
    out_path: Path,
    *,
    n_events: int | None = None,
    compression: Compression | None = None,
    settings: EssSettings | None = None,
    identity: str | None = None,
    access: SourceAccess | None = None,
) -> tuple[RangeFile, int]:
    """Write source events first_event..last_event (1-based, inclusive) of ``url`` to ``out_path``.

    Returns the range file and the bytes fetched. ``n_events`` is the file's expected event
    count (default: the entries of its largest TTree); ``compression`` as in
    ``split_root_file`` (default: the source's, with whole source baskets copied). An
    ``s3://`` URL needs ``settings`` for the S3 endpoint and credentials. ``identity`` names
    the file's content (e.g. scope, LFN, size and adler32; never the URL, whose signature
    changes): what the split fetched is then kept in this process, and the next range of the
    same file fetches neither the opening again nor the beginnings of baskets fetched already
    (``_Kept``). ``access`` is how grid storage is read over HTTP(S): the CAs trusted and the
    bearer token sent (never to a URL presigned here). Call from a thread without a running
    event loop; ``split_range`` is the coroutine.
    """
    _check_range(first_event, last_event)
    url = as_read(url)
    access = access or SourceAccess()
    if url.startswith("s3://"):
        if settings is None:
            raise ValueError("an s3:// URL needs the settings with the S3 endpoint and keys")
        url = asyncio.run(presign_s3(url, settings))
        access = access.for_presigned()
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        received = _Received()
        options = _http_options(received, access)
        with _mapped_errors(url):
            written = _split(
                url,
                options,
                first_event,
                last_event,
                out_path,
                n_events,
                compression,
                identity=identity,
            )
        return written, received.bytes
    if scheme == "root":
        if importlib.util.find_spec("fsspec_xrootd") is None:
            raise PermanentError(
                f"{_public(url)}: reading root:// URLs needs the fsspec-xrootd package, "
                "which is not installed on this edge"
            )
        xrootd.limit_waits()
        requested: list[int] = []
        with _mapped_errors(url):
            written = _split(
                url,
                {},
                first_event,
                last_event,
                out_path,
                n_events,
                compression,
                requested,
                identity=identity,
            )
        # XRootD returns exactly the byte ranges asked for.
        return written, requested[0]
    if scheme == "file":
        requested = []
        with _mapped_errors(url):
            written = _split(
                url2pathname(urlsplit(url).path),
                {"handler": local_handler()},
                first_event,
                last_event,
                out_path,
                n_events,
                compression,
                requested,
            )
        return written, requested[0]
    raise ValueError(
        f"cannot split from {_public(url)}: use http(s)://, dav(s)://, s3://, root:// or file://"
    )


async def split_range(
    url: str,
    first_event: int,
    last_event: int,
    out_path: Path,
    *,
    settings: EssSettings | None = None,
    n_events: int | None = None,
    compression: Compression | None = None,
    identity: str | None = None,
    access: SourceAccess | None = None,
) -> tuple[RangeFile, int]:
    """``split_range_remote`` for the event loop: S3 signing here, the split in a thread."""
    _check_range(first_event, last_event)
    if url.startswith("s3://"):
        if settings is None:
            raise ValueError("an s3:// URL needs the settings with the S3 endpoint and keys")
        url = await presign_s3(url, settings)
        access = access.for_presigned() if access is not None else None
    return await asyncio.to_thread(
        split_range_remote,
        url,
        first_event,
        last_event,
        out_path,
        n_events=n_events,
        compression=compression,
        identity=identity,
        access=access,
    )


async def presign_s3(url: str, settings: EssSettings) -> str:
    """A short-lived presigned GET URL for ``s3://bucket/key`` on the settings' S3 endpoint."""
    parsed = urlsplit(url)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise ValueError(f"{url!r} is not s3://<bucket>/<key>")
    access = settings.s3_access_key
    secret = settings.s3_secret_key
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=None if access is None else access.get_secret_value(),
        aws_secret_access_key=None if secret is None else secret.get_secret_value(),
        region_name=settings.s3_region,
        # The same addressing as the S3 store, so that any S3 server works.
        config=AioConfig(s3={"addressing_style": "path"}, signature_version="s3v4"),
    ) as client:
        signed: str = await client.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=settings.signed_url_ttl_s,
        )
    return signed


def _check_range(first_event: int, last_event: int) -> None:
    if first_event < 1 or last_event < first_event:
        raise ValueError(
            f"events {first_event}..{last_event} are not a 1-based range of at least one event"
        )


def _http_options(received: _Received, access: SourceAccess) -> dict[str, Any]:
    async def on_chunk(
        session: aiohttp.ClientSession,
        context: Any,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        received.bytes += len(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(on_chunk)
    return {
        "client_kwargs": {
            "trace_configs": [trace],
            "timeout": aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
        },
        # A presigned URL's query is signed as it is; re-encoding it would break the signature.
        "encoded": True,
        # A session of its own, so that the count is this split's alone.
        "skip_instance_cache": True,
        # Passed with every request.
        "ssl": access.ssl_context(),
        "headers": access.headers(),
    }


def forget_kept() -> None:
    """Drop what this process kept of remote files."""
    KEPT.clear()


def kept_opening(identity: str) -> list[tuple[int, bytes]] | None:
    """The byte runs of the opening of ``identity``'s file (its header, directories, streamers
    and records, as a split read them) that this process keeps, or None. Another process given
    them (``keep_opening``) splits ranges of the file without fetching its opening."""
    return KEPT.opening_runs(identity)


def keep_opening(identity: str, runs: list[tuple[int, bytes]]) -> None:
    """Keep ``runs`` (from ``kept_opening`` in another process) as ``identity``'s opening."""
    for start, data in runs:
        KEPT.put(identity, start, data)
    KEPT.opened_with(identity, [start for start, _ in runs])


def _split(
    url: str,
    options: dict[str, Any],
    first_event: int,
    last_event: int,
    out_path: Path,
    n_events: int | None,
    compression: Compression | None,
    requested: list[int] | None = None,
    identity: str | None = None,
) -> RangeFile:
    out_path = Path(out_path)
    options = {"handler": fsspec_handler(identity is not None), **options}
    with KEPT.opening(identity) as starts:
        source = open_source(url, _public(url), **options)
        if identity is not None:
            set_identity(source.uproot, identity)
        try:
            plan = planned(source, n_events)
        except BaseException:
            source.close()
            raise
        if identity is not None:
            KEPT.opened_with(identity, starts)
    with source:
        if last_event > plan.n_events:
            raise SplitError(
                f"{_public(url)} holds {plan.n_events} events; "
                f"events {first_event}..{last_event} are not all in it"
            )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        (written,) = write_ranges(
            plan,
            [RangeTarget(first_event, last_event, out_path)],
            compression=compression,
            remote=True,
        )
        if requested is not None:
            requested.append(num_requested_bytes(source.uproot) + source.pread_bytes)
    return written


@contextlib.contextmanager
def _mapped_errors(url: str) -> Iterator[None]:
    """Turn the ways a remote read fails into ESS's retryable and permanent errors."""
    where = _public(url)
    try:
        yield
    except aiohttp.ClientConnectorCertificateError as exc:
        # Also a ValueError; another source may be signed by an authority the edge trusts.
        raise RetryableError(
            f"{where}: the server's certificate was not verified ({exc.certificate_error}); "
            "ESS_SOURCE_CA_PATH names the authorities trusted besides the system's"
        ) from exc
    except (SplitError, ValueError, PermanentError):
        raise
    except FileNotFoundError as exc:
        raise NotFound("file", where) from exc
    except aiohttp.ClientResponseError as exc:
        if exc.status in (404, 410):
            raise NotFound("file", where) from exc
        if exc.status == 401:
            raise Unauthorized(f"{where}: HTTP 401 {exc.message}") from exc
        # 403 is also what an expired signature gets, 5xx a server in trouble: a later attempt
        # (signing again) may succeed.
        raise RetryableError(f"{where}: HTTP {exc.status} {exc.message}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if xrootd.not_found(exc):
            raise NotFound("file", where) from exc
        raise RetryableError(f"{where}: {type(exc).__name__}: {exc}") from exc


def _public(url: str) -> str:
    """``url`` without its query, which for a presigned URL holds the signature."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
