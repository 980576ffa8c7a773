"""Range files for pilots: from the edge's disk, or pulled through from the object store once.

A file not on disk is fetched once however many pilots ask at the same time; its bytes are
reserved in the edge's cache account first. When they cannot be (the cache is full of pinned
work), the pilot is sent to the object store instead: `None` from `get`, a redirect from the
server. Pulled-through files are evicted least recently used first, like cached inputs.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from ess_common.cache_space import CacheSpace, SpaceRefused, reserve_waiting, touch
from ess_common.errors import NotFound, RetryableError
from ess_common.store.base import ObjectStore, check_key
from ess_edge.singleflight import SingleFlight

log = structlog.get_logger("ess.edge.objects")


@dataclass
class ObjectStats:
    hits: int = 0
    misses: int = 0
    pulled: int = 0
    pulled_bytes: int = 0
    redirected: int = 0

    @property
    def hit_ratio(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0


class ObjectCache:
    def __init__(
        self,
        space: CacheSpace,
        store: ObjectStore,
        *,
        wait_s: float = 2.0,
        evictor_every_s: float = 2.0,
    ) -> None:
        self.space = space
        self.store = store
        self.wait_s = wait_s
        self.evictor_every_s = evictor_every_s
        self.root = space.root / "objects"
        self.stats = ObjectStats()
        self._flight: SingleFlight[str, Path | None] = SingleFlight()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def get(self, key: str) -> tuple[Path, bool] | None:
        """The file on this edge's disk and whether it was there already (a hit), or None
        when there is no room to hold it."""
        path = self.path(key)
        if path.is_file():
            self.stats.hits += 1
            touch(path)
            return path, True
        self.stats.misses += 1
        if not self._holdable(path):
            # The key is the prefix of other keys here (a directory), or under a file: this
            # disk cannot hold it, the object store may.
            if await self.store.size(key) is None:
                raise NotFound("object", key)
            self.stats.redirected += 1
            return None
        found = await self._flight.do(key, lambda: self._pull(key, path))
        if found is None:
            self.stats.redirected += 1
            return None
        return found, False

    def _holdable(self, path: Path) -> bool:
        """Whether `path` can be a file of this cache: not a directory, not below a file."""
        if path.is_dir():
            return False
        below = path.relative_to(self.root).parents
        return not any((self.root / parent).is_file() for parent in below)

    async def _pull(self, key: str, path: Path) -> Path | None:
        size = await self.store.size(key)
        if size is None:
            raise NotFound("object", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            # A short wait: the evictor frees room within its interval, while a pilot waiting
            # longer would do better at the object store.
            reservation = await reserve_waiting(
                self.space,
                size,
                [part, path],
                wait_s=self.wait_s,
                evictor_every_s=self.evictor_every_s,
            )
        except SpaceRefused as exc:
            log.info("object.no_room", key=key, reason=str(exc))
            return None
        try:
            await self.store.download(key, part)
            got = os.path.getsize(part)
            if got != size:
                raise RetryableError(f"object {key}: {got} bytes arrived of {size}")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
            await asyncio.to_thread(self.space.release, reservation)
        self.stats.pulled += 1
        self.stats.pulled_bytes += size
        log.info("object.pulled", key=key, size=size)
        return path
