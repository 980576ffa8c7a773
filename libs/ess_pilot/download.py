"""Downloading pieces: in parallel, retried, resumed, verified, and reused when already held.

A piece lands at `<dest>/<object key>`. While it transfers it is `<key>.part`; a new attempt
(or a new process) continues that file with an HTTP `Range` request. Only a file whose size
and adler32 match the lookup's answer is moved into place, and recorded as held (held.py).
The adler32 is summed over the bytes as they are written (`_RunningSum`), so a finished
transfer is checked without reading the file again; only a `.part` left by an earlier process
is read once, to start the sum where the transfer resumes.

One client per destination directory: two processes writing the same `.part` would corrupt it
(the checksum catches that, at the cost of a new download).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import random
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from ess_pilot.held import CHUNK, HeldFile, HeldFiles, adler32_of_file
from ess_pilot.progress import Progress
from ess_pilot.ranges import BadAnswer, Piece, ServedPiece

log = logging.getLogger("ess_pilot")


class DownloadFailed(Exception):
    """A piece could not be had, after the retries when retrying could help."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class Transient(Exception):
    """Another attempt may succeed (5xx, connection lost, wrong bytes)."""

    def __init__(
        self, reason: str, retry_after_s: float | None = None, *, stale_url: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.stale_url = stale_url


class Permanent(Exception):
    """Retrying cannot help (404 and most other 4xx, a bad answer)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more attempts after the first, with exponential backoff (and jitter, so that
    the pilots of one task do not come back in step); a `Retry-After` is waited at least."""

    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, failures: int, retry_after_s: float | None = None) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2.0 ** max(0, failures - 1))
        backoff *= 1 + random.random() / 4
        if retry_after_s is not None:
            return max(backoff, min(retry_after_s, self.max_retry_after_s))
        return backoff


def gave_up(policy: RetryPolicy) -> str:
    n = policy.attempts
    return f"gave up after {n} attempt{'s' if n != 1 else ''}"


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdecimal():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def error_detail(response: httpx.Response) -> str:
    """A short text of an error answer, for the reason a range failed."""
    with contextlib.suppress(httpx.HTTPError):
        await response.aread()
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and "detail" in body:
                return f": {body['detail']}"[:300]
        text = response.text.strip()
        if text:
            return f": {text}"[:300]
    return ""


class _Tally:
    """The bytes of one piece the progress line counts, kept honest across restarts."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.counted = 0

    def set(self, value: int) -> None:
        if value >= self.counted:
            self.progress.advance(value - self.counted)
        else:
            self.progress.rewind(self.counted - value)
        self.counted = value


class _RunningSum:
    """The adler32 of the first `size` bytes of a `.part` file, kept as they are written."""

    def __init__(self) -> None:
        self.size = 0
        self.value = 1

    def reset(self) -> None:
        self.size, self.value = 0, 1

    def add(self, chunk: bytes) -> None:
        self.value = zlib.adler32(chunk, self.value)
        self.size += len(chunk)

    async def start_at(self, part: Path, offset: int) -> None:
        """Summed up to `offset` of `part` (read again only when the sum is elsewhere)."""
        if self.size != offset:
            self.value = await asyncio.to_thread(_adler32_of_prefix, part, offset)
            self.size = offset

    def hex(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08x}"


def _adler32_of_prefix(path: Path, size: int) -> int:
    value, left = 1, size
    with path.open("rb") as f:
        while left and (chunk := f.read(min(CHUNK, left))):
            value = zlib.adler32(chunk, value)
            left -= len(chunk)
    return value


#: Sidecars written in one hand-over to a worker thread during a fetch.
SIDECAR_BATCH = 32

#: Asks again for a piece's signed URL (scope, LFN): the fresh piece, or None.
Refresh = Callable[[Piece, str, str], Awaitable[Piece | None]]


class Downloader:
    """Fetches pieces into `dest`, at most `max_parallel` transfers at a time; a key asked for
    twice (two ranges in one file) is downloaded once. A signed URL about to expire, or refused
    (401, 403), is asked for again through `refresh` before the next attempt. A piece's
    `edge_url` (the closest edge) is tried first; when the edge fails, the next attempts use the
    signed `url`. `auth` goes with a request to an edge (a piece's `edge_url`, or a URL under
    one of `ess_urls`), never to a signed URL: the signature is its credential, and an object
    store refuses a second one."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        dest: Path,
        *,
        policy: RetryPolicy,
        max_parallel: int = 4,
        progress: Progress | None = None,
        refresh: Refresh | None = None,
        auth: Mapping[str, str] | None = None,
        ess_urls: Sequence[str] = (),
    ) -> None:
        self.http = http
        self.refresh = refresh
        self.auth = dict(auth or {})
        self.ess_urls = tuple(u.rstrip("/") + "/" for u in ess_urls)
        self.held = HeldFiles(dest)
        self.policy = policy
        self.progress = progress if progress is not None else Progress(enabled=False)
        self._slots = asyncio.Semaphore(max_parallel)
        self._inflight: dict[str, asyncio.Task[ServedPiece]] = {}
        self._verified: dict[Path, tuple[int, int, str]] = {}
        self._dirs: set[Path] = set()
        self._sidecars: asyncio.Task[None] | None = None

    async def cancel(self) -> None:
        """Stops downloads still running (their callers gave up); writes the sidecars of the
        files held so far."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.flush()

    async def flush(self) -> None:
        """Every held file's sidecar written."""
        while self._sidecars is not None and not self._sidecars.done():
            await asyncio.shield(self._sidecars)
        await self._write_sidecars()

    def _hold(self, held: HeldFile) -> None:
        """Held now; the sidecars are written SIDECAR_BATCH at a time in a worker thread (each
        hand-over to a thread costs the event loop the GIL for a while), the rest by `flush`."""
        self.held.add(held)
        idle = self._sidecars is None or self._sidecars.done()
        if idle and self.held.unwritten >= SIDECAR_BATCH:
            self._sidecars = asyncio.create_task(self._write_sidecars(), name="held sidecars")

    async def _write_sidecars(self) -> None:
        while batch := self.held.take_unwritten():
            await asyncio.to_thread(self.held.write_sidecars, batch)

    def _make_dir(self, directory: Path) -> None:
        if directory not in self._dirs:
            directory.mkdir(parents=True, exist_ok=True)
            self._dirs.add(directory)

    async def get(self, piece: Piece, scope: str, lfn: str) -> ServedPiece:
        """The piece on disk, verified (raises DownloadFailed)."""
        task = self._inflight.get(piece.key)
        if task is None:
            self.progress.add(1, piece.size)
            task = asyncio.create_task(self._obtain(piece, scope, lfn), name=f"get {piece.key}")
            self._inflight[piece.key] = task
            task.add_done_callback(lambda _: self._inflight.pop(piece.key, None))
        served = await asyncio.shield(task)
        # Another range may share the file but ask for other events of it.
        return ServedPiece(piece, served.path, served.reused)

    async def reuse(self, pieces: list[Piece], scope: str, lfn: str) -> list[ServedPiece] | None:
        """Held pieces, if every one of them still verifies; a broken one is forgotten."""
        served = []
        for piece in pieces:
            path = self.held.path(piece.key)
            if not await self.verified(path, piece):
                held = self.held.held(scope, lfn, piece.key)
                if held is not None:
                    log.warning("held.broken key=%s", piece.key)
                    self.held.forget(held)
                return None
            served.append(ServedPiece(piece, path, reused=True))
        self.progress.add(len(served), 0)
        for _ in served:
            self.progress.file_done(ok=True, reused=True)
        return served

    async def verified(self, path: Path, piece: Piece) -> bool:
        """Whether `path` is the piece: size, then adler32 (computed once per file state)."""
        try:
            stat = path.stat()
            if stat.st_size != piece.size:
                return False
            cached = self._verified.get(path)
            if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
                return cached[2] == piece.adler32
            actual = await asyncio.to_thread(adler32_of_file, path)
        except OSError:
            return False
        self._verified[path] = (stat.st_size, stat.st_mtime_ns, actual)
        return actual == piece.adler32

    async def _obtain(self, piece: Piece, scope: str, lfn: str) -> ServedPiece:
        try:
            served = await self._attempts(piece, scope, lfn)
        except DownloadFailed:
            self.progress.file_done(ok=False)
            raise
        except OSError as exc:
            # The local disk (full, not writable): no range needing the file can be served.
            self.progress.file_done(ok=False)
            raise DownloadFailed(piece.key, f"local file: {exc}") from None
        self.progress.file_done(ok=True, reused=served.reused)
        return served

    async def _attempts(self, piece: Piece, scope: str, lfn: str) -> ServedPiece:
        path = self.held.path(piece.key)
        held = HeldFile(
            key=piece.key,
            scope=scope,
            lfn=lfn,
            size=piece.size,
            adler32=piece.adler32,
            file_first_event=piece.file_first_event,
            file_last_event=piece.file_last_event,
        )
        if await self.verified(path, piece):
            self._hold(held)
            self.progress.advance(piece.size)
            return ServedPiece(piece, path, reused=True)
        self._make_dir(path.parent)
        part = path.with_name(path.name + ".part")
        tally = _Tally(self.progress)
        summed = _RunningSum()
        reason, wait, stale = "", None, False
        edge_first = bool(piece.edge_url) and piece.edge_url != piece.url
        if edge_first and await self._from_edge(piece, part, tally, summed):
            return self._kept(piece, part, path, held)
        for attempt in range(self.policy.attempts):
            if attempt:
                await asyncio.sleep(self.policy.delay(attempt, wait))
            if stale or piece.url_expiring:
                piece = await self._refreshed(piece, scope, lfn)
            try:
                async with self._slots:
                    await self._transfer(piece, part, tally, summed, piece.url)
                await self._check(piece, part, tally, summed)
            except Transient as exc:
                reason, wait, stale = exc.reason, exc.retry_after_s, exc.stale_url
                log.warning(
                    "download.attempt_failed key=%s attempt=%d/%d reason=%s",
                    piece.key,
                    attempt + 1,
                    self.policy.attempts,
                    reason,
                )
                continue
            except (Permanent, BadAnswer) as exc:
                raise DownloadFailed(piece.key, str(exc)) from None
            return self._kept(piece, part, path, held)
        raise DownloadFailed(piece.key, f"{reason} ({gave_up(self.policy)})")

    async def _from_edge(
        self, piece: Piece, part: Path, tally: _Tally, summed: _RunningSum
    ) -> bool:
        """One try at the closest edge; False (the signed URL next) when it fails."""
        try:
            async with self._slots:
                await self._transfer(piece, part, tally, summed, piece.edge_url)
            await self._check(piece, part, tally, summed)
        except (Transient, Permanent) as exc:
            log.warning("download.edge_failed key=%s reason=%s", piece.key, exc)
            return False
        return True

    def _kept(self, piece: Piece, part: Path, path: Path, held: HeldFile) -> ServedPiece:
        os.replace(part, path)
        stat = path.stat()
        self._verified[path] = (stat.st_size, stat.st_mtime_ns, piece.adler32)
        self._hold(held)
        return ServedPiece(piece, path)

    async def _refreshed(self, piece: Piece, scope: str, lfn: str) -> Piece:
        """The piece with a fresh signed URL, or as it was when none can be had."""
        if self.refresh is None:
            return piece
        fresh = await self.refresh(piece, scope, lfn)
        if fresh is None or (fresh.key, fresh.size, fresh.adler32) != (
            piece.key,
            piece.size,
            piece.adler32,
        ):
            log.warning("download.no_fresh_url key=%s", piece.key)
            return piece
        log.info("download.fresh_url key=%s", piece.key)
        return replace(
            piece, url=fresh.url, expires_in_s=fresh.expires_in_s, received_at=fresh.received_at
        )

    async def _transfer(
        self, piece: Piece, part: Path, tally: _Tally, summed: _RunningSum, url: str
    ) -> None:
        """Brings `part` to the piece's size from `url`, continuing what is there; `summed`
        follows the bytes of `part`."""
        try:
            offset = part.stat().st_size
        except FileNotFoundError:
            offset = 0
        if offset > piece.size:
            part.unlink()
            offset = 0
        tally.set(offset)
        if offset and offset == piece.size:
            return
        # Byte offsets must be those of the object itself, not of a compressed encoding.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if url == piece.edge_url or url.startswith(self.ess_urls):
            headers.update(self.auth)
        try:
            async with self.http.stream("GET", url, headers=headers) as response:
                offset = await self._accept(response, piece, part, offset)
                tally.set(offset)
                if offset:
                    await summed.start_at(part, offset)
                else:
                    summed.reset()
                with part.open("r+b" if offset else "wb") as out:
                    out.seek(offset)
                    out.truncate()
                    # As they arrive: what came before a lost connection is kept.
                    async for chunk in response.aiter_bytes():
                        offset += len(chunk)
                        if offset > piece.size:
                            out.close()
                            part.unlink()
                            summed.reset()
                            tally.set(0)
                            raise Transient(
                                f"size mismatch for {piece.key}: expected {piece.size} bytes, "
                                "got more"
                            )
                        out.write(chunk)
                        summed.add(chunk)
                        tally.set(offset)
        except httpx.TransportError as exc:
            # What arrived stays in `part`: the next attempt continues from there.
            raise Transient(f"download of {piece.key}: {type(exc).__name__}: {exc}") from None

    async def _accept(self, response: httpx.Response, piece: Piece, part: Path, offset: int) -> int:
        """Where the answer's bytes start in the file, or why there are none."""
        status = response.status_code
        if status == 206:
            start = _content_range_start(response.headers.get("content-range"))
            if start == offset:
                return offset
            part.unlink(missing_ok=True)
            raise Transient(f"download of {piece.key}: resumed at byte {start}, not {offset}")
        if status == 200:
            return 0  # the whole object, whatever was asked
        if status == 416:
            part.unlink(missing_ok=True)
            raise Transient(f"download of {piece.key}: HTTP 416 for bytes {offset}-")
        detail = await error_detail(response)
        if status >= 500 or status in (408, 429):
            raise Transient(
                f"download of {piece.key}: HTTP {status}{detail}",
                retry_after_s(response.headers.get("retry-after")),
            )
        if status in (401, 403):
            # What an object store answers for an expired signed URL.
            raise Transient(f"download of {piece.key}: HTTP {status}{detail}", stale_url=True)
        if status == 404:
            raise Permanent(f"object {piece.key} is missing at the store (HTTP 404{detail})")
        raise Permanent(f"download of {piece.key}: HTTP {status}{detail}")

    async def _check(self, piece: Piece, part: Path, tally: _Tally, summed: _RunningSum) -> None:
        size = part.stat().st_size
        if size < piece.size:
            # The answer ended early: the next attempt continues from here.
            raise Transient(f"download of {piece.key}: {size} of {piece.size} bytes arrived")
        if summed.size == size:
            actual = summed.hex()
        else:
            # A whole `.part` left by an earlier process: nothing was transferred now.
            actual = await asyncio.to_thread(adler32_of_file, part)
        if actual != piece.adler32:
            # A bad beginning kept would spoil every resumed attempt.
            part.unlink()
            summed.reset()
            tally.set(0)
            raise Transient(
                f"adler32 mismatch for {piece.key}: expected {piece.adler32}, got {actual}"
            )


def _content_range_start(value: str | None) -> int | None:
    """`bytes 100-199/200` -> 100."""
    if not value or not value.startswith("bytes "):
        return None
    first = value[len("bytes ") :].split("-", 1)[0]
    return int(first) if first.isdecimal() else None
