"""Dataset information for the edge's lookups: what the head knows of a file's prepared copies
(`GET /v1/files/{scope}/{lfn}/ranges`), kept for `edge_lookup_ttl_s`.

A miss is fetched once however many pilots ask at the same time. A range the cached information
does not hold may have been prepared since: it is asked of the head again, at most once per
`_REFRESH_AFTER_S` per file, so that an edge is never more than that behind for new ranges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
from pydantic import SecretStr, ValidationError

from ess_common.errors import RetryableError
from ess_common.ranges import FileRanges, RangeEntry, RangeNotPrepared
from ess_edge.singleflight import SingleFlight

_REFRESH_AFTER_S = 1.0
_MAX_ENTRIES = 10_000


class DatasetCache:
    def __init__(
        self,
        http: httpx.AsyncClient,
        head_url: str,
        ttl_s: float,
        *,
        token: SecretStr | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.head_url = head_url.rstrip("/")
        self.ttl_s = ttl_s
        self.clock = clock
        self._headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._entries: dict[tuple[str, str], tuple[float, FileRanges]] = {}
        self._flight: SingleFlight[tuple[str, str], FileRanges] = SingleFlight()

    @property
    def fetches(self) -> int:
        return self._flight.started

    async def _fetch(self, scope: str, lfn: str) -> FileRanges:
        url = f"{self.head_url}/v1/files/{quote(scope, safe='')}/{quote(lfn, safe='')}/ranges"
        try:
            response = await self.http.get(url, headers=self._headers)
        except httpx.HTTPError as exc:
            raise RetryableError(f"the head is unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            info = FileRanges(scope=scope, lfn=lfn, n_events=None, copies=[])
        elif response.status_code == 200:
            try:
                info = FileRanges.model_validate_json(response.content)
            except ValidationError as exc:
                raise RetryableError(f"the head answered something else: {exc}") from exc
        else:
            raise RetryableError(f"the head answered HTTP {response.status_code}")
        if len(self._entries) >= _MAX_ENTRIES:
            oldest = min(self._entries, key=lambda k: self._entries[k][0])
            del self._entries[oldest]
        self._entries[(scope, lfn)] = (self.clock(), info)
        return info

    async def get(self, scope: str, lfn: str, *, newer_than: float | None = None) -> FileRanges:
        """The file's information, fetched if not held, older than the TTL or than
        `newer_than` (a clock reading)."""
        held = self._entries.get((scope, lfn))
        if held is not None:
            fetched_at, info = held
            fresh = self.clock() - fetched_at < self.ttl_s
            if fresh and (newer_than is None or fetched_at > newer_than):
                return info
        return await self._flight.do((scope, lfn), lambda: self._fetch(scope, lfn))

    async def lookup(self, scope: str, lfn: str, start: int, last: int) -> list[RangeEntry]:
        info = await self.get(scope, lfn)
        try:
            return info.lookup(start, last)
        except RangeNotPrepared:
            fetched_at = self._entries.get((scope, lfn), (self.clock(), info))[0]
            if self.clock() - fetched_at < _REFRESH_AFTER_S:
                raise
        info = await self.get(scope, lfn, newer_than=fetched_at)
        return info.lookup(start, last)
