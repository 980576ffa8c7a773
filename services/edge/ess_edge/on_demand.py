"""On-demand splits: a pilot asks this edge for events that no request prepared, and the edge
splits just that range, straight from the source file's replica (`ess_split.remote`: only
the baskets the range needs are fetched), uploads it, keeps a copy to serve, and tells the head.

- Capacity: at most `edge_on_demand_slots` splits run at once, each in a process of its own
  slot, beside (not behind) the queued work of prepared requests. An ask past the capacity is
  refused at once (`Busy`: HTTP 503 with Retry-After), never queued.
- A slot's process keeps what its splits fetched of each file (the opening, the beginnings of
  baskets); the ranges of one file go to the same slot whenever it is free, so that a range
  following another fetches only what lies past it. A slot that has not opened the file is
  handed the opening another slot read (`ess_edge.openings`).
- Identical asks share one split: whoever asks for a span being split waits for that split,
  even when every slot is taken.
- The answer comes within the asker's wait; a split that takes longer goes on, and asking again
  joins it or, once it is done, gets its result (`recent`).
- The same span is always written to the same key (`on_demand_key`), so two edges splitting it
  at once upload identical bytes and the head records it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import httpx
import structlog

from ess_common import metrics
from ess_common.cache_space import CacheSpace, SpaceRefused
from ess_common.errors import Busy, NotFound, PermanentError, RetryableError
from ess_common.events import RangeInfo, RangeSplitOnDemand
from ess_common.messaging.bus import Bus, publish_event
from ess_common.ranges import Answer, RangeEntry
from ess_common.settings import EdgeSettings
from ess_common.source_access import SourceAccess
from ess_common.source_urls import as_read
from ess_common.store.base import ObjectStore, on_demand_key
from ess_common.url_policy import UrlRefused
from ess_edge.objects import ObjectCache
from ess_edge.openings import Openings, Runs
from ess_split.errors import SplitError
from ess_split.format.codecs import parse_compression
from ess_split.remote import keep_opening, kept_opening, presign_s3, split_range_remote

log = structlog.get_logger("ess.edge.on_demand")

Span = tuple[str, str, int, int]

#: Finished splits remembered for askers who come back (a poll) before the head has them.
_RECENT = 1024
_RECENT_S = 600.0
#: Source schemes in the order they are tried.
_PREFERRED = ("s3://", "https://", "davs://", "http://", "dav://", "root://", "file://")


class FileSource(Answer):
    """The head's `GET /v1/files/{scope}/{lfn}/source`."""

    scope: str
    lfn: str
    n_events: int
    size: int
    adler32: str
    sources: list[str]


@dataclass(frozen=True)
class Done:
    entry: RangeEntry
    #: Where this edge serves it from: its own disk, else None (the object store's).
    local: Path | None
    fetched_bytes: int
    seconds: float


def split_in_worker(
    url: str,
    first: int,
    last: int,
    out: str,
    n_events: int,
    compression: str,
    identity: str,
    opening: Runs | None = None,
    give_opening: bool = False,
    access: SourceAccess | None = None,
) -> tuple[int, str, int, Runs | None] | tuple[str, str]:
    """In a pool process: split one range; returns its size, adler32, the bytes fetched and,
    when `give_opening`, the file's opening as read; or the kind of failure and its reason
    (ESS's errors do not all survive pickling). `opening` is the file's opening as another
    slot read it: kept here first, so that the source is not asked for it."""
    if opening:
        keep_opening(identity, opening)
    try:
        written, fetched = split_range_remote(
            url,
            first,
            last,
            Path(out),
            n_events=n_events,
            compression=parse_compression(compression),
            identity=identity,
            access=access,
        )
    except NotFound as exc:
        return "missing", str(exc)
    except (PermanentError, ValueError, SplitError) as exc:
        return "permanent", str(exc)
    except Exception as exc:
        return "retryable", f"{type(exc).__name__}: {exc}"
    return written.size, written.adler32, fetched, kept_opening(identity) if give_opening else None


def _raise_failure(url: str, kind: str, reason: str) -> NoReturn:
    where = url.split("?", 1)[0]
    if kind == "missing":
        raise RetryableError(f"{where}: {reason}")
    if kind == "permanent":
        raise PermanentError(f"cannot split from {where}: {reason}")
    raise RetryableError(f"{where}: {reason}")


class OnDemand:
    def __init__(
        self,
        settings: EdgeSettings,
        *,
        store: ObjectStore,
        space: CacheSpace,
        objects: ObjectCache,
        bus: Bus | None,
        http: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.space = space
        self.objects = objects
        self.bus = bus
        self.http = http
        self.slots = settings.edge_on_demand_slots
        self._running: dict[Span, asyncio.Task[Done]] = {}
        self._recent: OrderedDict[Span, tuple[float, Done]] = OrderedDict()
        #: One process per slot, started when first used; the slots in use.
        self._pools: list[ProcessPoolExecutor | None] = [None] * self.slots
        self._busy: set[int] = set()
        self.openings = Openings(self.slots)
        #: Splits started, for the edge's statistics and the tests.
        self.started = 0
        self.refused = 0
        edge = settings.edge_name
        metrics.ON_DEMAND_SLOTS.labels(edge).set(self.slots)
        self._busy_gauge = metrics.ON_DEMAND_SLOTS_BUSY.labels(edge)
        self._busy_gauge.set(0)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def finished(self, span: Span) -> Done | None:
        held = self._recent.get(span)
        if held is None:
            return None
        at, done = held
        if time.monotonic() - at > _RECENT_S or (
            done.local is not None and not done.local.is_file()
        ):
            del self._recent[span]
            return None
        return done

    async def split(self, span: Span, wait_s: float) -> Done | None:
        """The split span, splitting it if nobody is; None when it is still running after
        `wait_s` (ask again to wait more). Raises Busy when every slot is taken."""
        done = self.finished(span)
        if done is not None:
            return done
        task = self._running.get(span)
        if task is None:
            if len(self._running) >= self.slots:
                self.refused += 1
                metrics.ON_DEMAND_REFUSALS.labels(self.settings.edge_name).inc()
                raise Busy(
                    f"this edge's on-demand capacity ({self.slots} splits at once) is in use; "
                    "ask again later",
                    retry_after_s=self.settings.edge_on_demand_retry_after_s,
                )
            task = asyncio.create_task(self._run(span), name=f"on-demand:{span}")
            self.started += 1
            self._running[span] = task
            self._busy_gauge.set(len(self._running))
            task.add_done_callback(lambda t: self._settled(span, t))
        try:
            # Shielded: an asker who stops waiting (a timeout, a hang-up) leaves the split to
            # the others and to whoever asks again.
            return await asyncio.wait_for(asyncio.shield(task), timeout=wait_s)
        except TimeoutError:
            return None

    def _settled(self, span: Span, task: asyncio.Task[Done]) -> None:
        if self._running.get(span) is task:
            del self._running[span]
        self._busy_gauge.set(len(self._running))
        if task.cancelled():
            return
        edge = self.settings.edge_name
        if task.exception() is not None:
            metrics.ON_DEMAND_SPLITS.labels(edge, "failed").inc()
            return
        done = task.result()
        metrics.ON_DEMAND_SPLITS.labels(edge, "done").inc()
        metrics.SPLIT_SECONDS.labels(edge, "on_demand").observe(done.seconds)
        metrics.SPLIT_INPUT_BYTES.labels(edge, "on_demand").inc(done.fetched_bytes)
        metrics.SPLIT_OUTPUT_BYTES.labels(edge, "on_demand").inc(done.entry.size)
        metrics.SPLIT_RANGES.labels(edge, "on_demand").inc()
        self._recent[span] = (time.monotonic(), done)
        self._recent.move_to_end(span)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    async def _source(self, scope: str, lfn: str) -> FileSource:
        url = (
            f"{self.settings.head_url.rstrip('/')}/v1/files/"
            f"{quote(scope, safe='')}/{quote(lfn, safe='')}/source"
        )
        token = self.settings.edge_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        try:
            response = await self.http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise RetryableError(f"the head is unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            raise NotFound("file", f"{scope}:{lfn}")
        if response.status_code != 200:
            raise RetryableError(
                f"the head answered HTTP {response.status_code} for the source of {scope}:{lfn}"
            )
        return FileSource.model_validate_json(response.content)

    async def _run(self, span: Span) -> Done:
        scope, lfn, first, last = span
        began = time.monotonic()
        source = await self._source(scope, lfn)
        key = on_demand_key(scope, lfn, first, last)
        path = self.objects.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        reservation = await self._reserve(source, first, last, part, path)
        try:
            size, adler32, fetched = await self._split_from_a_source(source, first, last, part)
            await self.store.put_file(key, part)
            if reservation is not None:
                os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
            if reservation is not None:
                await asyncio.to_thread(self.space.release, reservation)
        entry = RangeEntry(first_event=first, last_event=last, key=key, size=size, adler32=adler32)
        if self.bus is not None:
            await publish_event(
                self.bus,
                RangeSplitOnDemand(
                    edge=self.settings.edge_name,
                    scope=scope,
                    lfn=lfn,
                    range=RangeInfo(
                        first_event=first, last_event=last, key=key, size=size, adler32=adler32
                    ),
                ),
                signed_with=self.settings.edge_token,
            )
        seconds = time.monotonic() - began
        log.info(
            "on_demand.split",
            scope=scope,
            lfn=lfn,
            first=first,
            last=last,
            size=size,
            fetched=fetched,
            seconds=round(seconds, 3),
        )
        return Done(entry, path if reservation is not None else None, fetched, seconds)

    async def _reserve(
        self, source: FileSource, first: int, last: int, part: Path, path: Path
    ) -> str | None:
        """Room to keep the range file on this edge, or None: then it is uploaded and served
        from the object store only."""
        share = source.size * (last - first + 1) // max(1, source.n_events)
        estimate = 2 * share + 256 * 1024
        try:
            return await asyncio.to_thread(self.space.reserve, estimate, [part, path])
        except SpaceRefused:
            return None

    async def _split_from_a_source(
        self, source: FileSource, first: int, last: int, out: Path
    ) -> tuple[int, str, int]:
        ordered = sorted(
            source.sources,
            key=lambda u: next((i for i, p in enumerate(_PREFERRED) if u.startswith(p)), 99),
        )
        failures: list[str] = []
        for url in ordered:
            try:
                return await self._split_one(url, first, last, out, source)
            except (RetryableError, UrlRefused) as exc:
                failures.append(str(exc))
                log.warning("on_demand.source_failed", reason=str(exc))
        raise RetryableError(f"no source of the file could be read: {'; '.join(failures)}")

    async def _split_one(
        self, url: str, first: int, last: int, out: Path, source: FileSource
    ) -> tuple[int, str, int]:
        # The head refused what its policy refuses; a name may resolve elsewhere by now.
        await self.settings.source_policy.check_resolved(as_read(url))
        access = self.settings.source_access
        if url.startswith("s3://"):
            url = await presign_s3(url, self.settings)
            access = access.for_presigned()
        # The file's content, not its URL: the slot's process keeps what it fetched of it.
        identity = f"{source.scope}:{source.lfn}:{source.size}:{source.adler32}"
        slot = self._slot_for(identity)
        opening, give_opening = self.openings.to_hand(slot, identity)
        self._busy.add(slot)
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(
                self._executor(slot),
                split_in_worker,
                url,
                first,
                last,
                str(out),
                source.n_events,
                self.settings.split_compression,
                identity,
                opening,
                give_opening,
                access,
            )
        except BrokenProcessPool as exc:
            self._pools[slot] = None
            self.openings.lost(slot)
            raise RetryableError("the on-demand split process died") from exc
        finally:
            self._busy.discard(slot)
        if len(outcome) == 2:
            _raise_failure(url, *outcome)
        size, adler32, fetched, read = outcome
        self.openings.split(slot, identity, read)
        return size, adler32, fetched

    def _slot_for(self, identity: str) -> int:
        """The file's own slot when it is free, else the first free one (there is one: no more
        splits run than there are slots)."""
        digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
        own = int.from_bytes(digest, "big") % self.slots
        if own not in self._busy:
            return own
        return next((n for n in range(self.slots) if n not in self._busy), own)

    def _executor(self, slot: int) -> ProcessPoolExecutor:
        pool = self._pools[slot]
        if pool is None:
            # Spawned, not forked: the edge runs an event loop and threads.
            pool = self._pools[slot] = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        return pool

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        pools = [pool for pool in self._pools if pool is not None]
        self._pools = [None] * self.slots
        for pool in pools:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
