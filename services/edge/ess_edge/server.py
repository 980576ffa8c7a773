"""The edge's HTTP server: pilots look event ranges up and download range files here, as they
would at the head, from a site close to them.

`GET /v1/ranges` and `POST /v1/ranges/lookup` answer with the head's shapes and rule
(`ess_common.ranges`) from a short-lived cache of the head's dataset information; each piece's
`url` is this edge's `GET /v1/objects/{key}`, which serves the file from the edge's disk, or
pulls it through from the object store once, with HTTP Range support. When the edge has no room
to hold a file it redirects to a signed URL of the object store. `GET /v1/cache` tells the
cache's use and hit ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from ess_common.cache_space import CacheSpace
from ess_common.errors import EssError, NotFound, PermanentError, RetryableError
from ess_common.ranges import (
    BatchLookup,
    LookupAnswer,
    RangeResult,
    make_piece,
    range_result,
)
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore
from ess_edge.datasets import DatasetCache
from ess_edge.objects import ObjectCache


@dataclass
class EdgeState:
    settings: EdgeSettings
    url: str
    space: CacheSpace
    store: ObjectStore
    datasets: DatasetCache
    objects: ObjectCache

    @classmethod
    def build(
        cls, settings: EdgeSettings, store: ObjectStore, space: CacheSpace, http: httpx.AsyncClient
    ) -> EdgeState:
        return cls(
            settings=settings,
            url=settings.public_url,
            space=space,
            store=store,
            datasets=DatasetCache(
                http, settings.head_url, settings.edge_lookup_ttl_s, token=settings.edge_token
            ),
            objects=ObjectCache(space, store, evictor_every_s=settings.edge_evict_interval_s),
        )

    async def answer(self, scope: str, lfn: str, start: int, last: int) -> LookupAnswer:
        entries = await self.datasets.lookup(scope, lfn, start, last)
        pieces = []
        for r in entries:
            url = f"{self.url}/v1/objects/{r.key}"
            pieces.append(
                make_piece(
                    first_event=r.first_event,
                    last_event=r.last_event,
                    key=r.key,
                    size=r.size,
                    adler32=r.adler32,
                    start=start,
                    last=last,
                    # Not signed and not expiring: the edge's own address, on the site's network.
                    url=url,
                    expires_in_s=0,
                    edge_url=url,
                )
            )
        return LookupAnswer(scope=scope, lfn=lfn, start_event=start, last_event=last, pieces=pieces)


class RangeFileResponse(FileResponse):
    # Range files are megabytes: larger reads than Starlette's 64 KiB cost fewer loop turns.
    chunk_size = 1024 * 1024


def _status(exc: EssError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, PermanentError):
        return 422
    if isinstance(exc, RetryableError):
        return 503
    return 500


def create_edge_app(state: EdgeState) -> FastAPI:
    app = FastAPI(title="ESS edge", summary="Event-range lookups and range files near the pilots")
    app.state.edge = state

    @app.exception_handler(EssError)
    async def ess_error(_: Request, exc: EssError) -> JSONResponse:
        code = _status(exc)
        headers = {"Retry-After": "5"} if code == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "edge": state.settings.edge_name}

    @app.get("/v1/ranges", response_model=LookupAnswer)
    async def lookup_range(
        scope: str,
        lfn: Annotated[str, Query(alias="LFN")],
        start_event: Annotated[int, Query(alias="startEvent")],
        last_event: Annotated[int, Query(alias="lastEvent")],
    ) -> LookupAnswer:
        """As the head's: 1-based, inclusive positions of events in the original file."""
        return await state.answer(scope, lfn, start_event, last_event)

    @app.post("/v1/ranges/lookup", response_model=list[RangeResult], response_model_by_alias=True)
    async def lookup_ranges(body: BatchLookup) -> list[RangeResult]:
        results = []
        for r in body.event_ranges:
            try:
                found: LookupAnswer | EssError = await state.answer(
                    r.scope, r.lfn, r.start_event, r.last_event
                )
            except EssError as exc:
                found = exc
            results.append(range_result(r.event_range_id, found))
        return results

    @app.get("/v1/objects/{key:path}", response_model=None)
    async def get_object(key: str) -> Response:
        """The range file (`Range: bytes=...` answered 206); `X-Cache` says whether it was on
        this edge already (HIT), pulled through now (MISS) or left to the object store (BYPASS,
        a redirect to a signed URL)."""
        found = await state.objects.get(key)
        if found is None:
            signed = await state.store.signed_url(key, state.settings.signed_url_ttl_s)
            return RedirectResponse(signed, status_code=307, headers={"X-Cache": "BYPASS"})
        path, hit = found
        return RangeFileResponse(
            path,
            media_type="application/octet-stream",
            headers={"X-Cache": "HIT" if hit else "MISS"},
        )

    @app.get("/v1/cache")
    async def cache_stats() -> dict[str, Any]:
        usage = await asyncio.to_thread(state.space.usage)
        stats = state.objects.stats
        return {
            "quota_bytes": usage.quota,
            "used_bytes": usage.used,
            "evictable_bytes": usage.evictable,
            "objects": {
                "hits": stats.hits,
                "misses": stats.misses,
                "pulled": stats.pulled,
                "pulled_bytes": stats.pulled_bytes,
                "redirected": stats.redirected,
                "hit_ratio": round(stats.hit_ratio, 4),
            },
            "lookups": {"head_fetches": state.datasets.fetches},
        }

    return app


class EdgeServer(uvicorn.Server):
    """uvicorn inside the edge process: the edge's runtime handles the signals and stops the
    server in its order (`should_exit`), so the server does not take them over."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(app: FastAPI, settings: EdgeSettings) -> EdgeServer:
    return EdgeServer(
        uvicorn.Config(
            app, host=settings.edge_host, port=settings.edge_port, log_config=None, access_log=False
        )
    )
