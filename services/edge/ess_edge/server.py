"""The edge's HTTP server: pilots look event ranges up and download range files here, as they
would at the head, from a site close to them.

`GET /v1/ranges` and `POST /v1/ranges/lookup` answer with the head's shapes and rule
(`ess_common.ranges`) from a short-lived cache of the head's dataset information; each piece's
`url` is this edge's `GET /v1/objects/{key}`, which serves the file from the edge's disk, or
pulls it through from the object store once, with HTTP Range support. When the edge has no room
to hold a file it redirects to a signed URL of the object store. `POST /v1/ranges/on-demand`
answers like a lookup, splitting the range first when nobody prepared it (`on_demand`).
`GET /v1/cache` tells the cache's use and hit ratio.

Every `/v1` route takes the head's bearer tokens (`auth.Gate`); `/healthz` is open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ess_common import metrics, readiness
from ess_common.cache_space import CacheSpace
from ess_common.errors import (
    EssError,
)
from ess_common.events import MAX_EVENT
from ess_common.http_input import guard
from ess_common.messaging.bus import Bus
from ess_common.ranges import (
    BatchLookup,
    LookupAnswer,
    RangeEntry,
    RangeFailure,
    RangeNotPrepared,
    RangeResult,
    make_piece,
    not_splittable_on_demand,
    range_result,
)
from ess_common.refusals import refusal
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore
from ess_common.tokens import TokenBook
from ess_edge.auth import Gate
from ess_edge.datasets import DatasetCache
from ess_edge.objects import ObjectCache
from ess_edge.on_demand import OnDemand


@dataclass
class EdgeState:
    settings: EdgeSettings
    url: str
    space: CacheSpace
    store: ObjectStore
    datasets: DatasetCache
    objects: ObjectCache
    on_demand: OnDemand
    gate: Gate
    #: The edge's bus, for `/readyz` (none in a test that serves pilots only).
    bus: Bus | None = None

    @classmethod
    def build(
        cls,
        settings: EdgeSettings,
        store: ObjectStore,
        space: CacheSpace,
        http: httpx.AsyncClient,
        bus: Bus | None = None,
    ) -> EdgeState:
        objects = ObjectCache(space, store, evictor_every_s=settings.edge_evict_interval_s)
        return cls(
            settings=settings,
            url=settings.public_url,
            space=space,
            store=store,
            datasets=DatasetCache(
                http, settings.head_url, settings.edge_lookup_ttl_s, token=settings.edge_token
            ),
            objects=objects,
            on_demand=OnDemand(
                settings, store=store, space=space, objects=objects, bus=bus, http=http
            ),
            gate=Gate(http, settings.head_url, book=TokenBook.from_settings(settings.tokens)),
            bus=bus,
        )

    def _piece_url(self, key: str) -> str:
        return f"{self.url}/v1/objects/{key}"

    def _answer(
        self, scope: str, lfn: str, start: int, last: int, entries: list[RangeEntry]
    ) -> LookupAnswer:
        pieces = [
            make_piece(
                first_event=r.first_event,
                last_event=r.last_event,
                key=r.key,
                size=r.size,
                adler32=r.adler32,
                start=start,
                last=last,
                # Not signed and not expiring: the edge's own address, on the site's network.
                url=self._piece_url(r.key),
                expires_in_s=0,
                edge_url=self._piece_url(r.key),
            )
            for r in entries
        ]
        return LookupAnswer(scope=scope, lfn=lfn, start_event=start, last_event=last, pieces=pieces)

    async def answer(self, scope: str, lfn: str, start: int, last: int) -> LookupAnswer:
        with metrics.lookup("edge", "route"):
            entries = await self.datasets.lookup(scope, lfn, start, last)
        return self._answer(scope, lfn, start, last, entries)

    async def answer_on_demand(
        self, scope: str, lfn: str, start: int, last: int, wait_s: float
    ) -> LookupAnswer | None:
        """As `answer`, splitting the range first when nobody prepared it; None while that
        split runs past `wait_s`."""
        try:
            return await self.answer(scope, lfn, start, last)
        except RangeNotPrepared as exc:
            if exc.code == RangeFailure.UNKNOWN_FILE:
                raise not_splittable_on_demand(scope, lfn, start, last) from None
        done = await self.on_demand.split((scope, lfn, start, last), wait_s)
        if done is None:
            return None
        if done.local is not None:
            return self._answer(scope, lfn, start, last, [done.entry])
        # Kept by the object store only (no room here): a signed URL of it.
        r = done.entry
        url = await self.store.signed_url(r.key, self.settings.signed_url_ttl_s)
        pieces = [
            make_piece(
                first_event=r.first_event,
                last_event=r.last_event,
                key=r.key,
                size=r.size,
                adler32=r.adler32,
                start=start,
                last=last,
                url=url,
                expires_in_s=self.settings.signed_url_ttl_s,
            )
        ]
        return LookupAnswer(scope=scope, lfn=lfn, start_event=start, last_event=last, pieces=pieces)


#: How a position is documented (as at the head): the lookup refuses what breaks the
#: convention with its reason and code (bad_range).
_POSITION: dict[str, Any] = {
    "le": MAX_EVENT,
    "json_schema_extra": {"minimum": 1},
    "description": "1-based, in the original file; 1 <= startEvent <= lastEvent",
}


class OnDemandAsk(BaseModel):
    """One PanDA event range to look up, or to split now when no request prepared it."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    scope: str
    lfn: str = Field(alias="LFN")
    start_event: int = Field(alias="startEvent", le=MAX_EVENT)
    last_event: int = Field(alias="lastEvent", le=MAX_EVENT)


class Splitting(BaseModel):
    """The split goes on: ask again (the same body) after `retry_after_s`."""

    status: str = "splitting"
    retry_after_s: int


class RangeFileResponse(FileResponse):
    # Range files are megabytes: larger reads than Starlette's 64 KiB cost fewer loop turns.
    chunk_size = 1024 * 1024


def create_edge_app(state: EdgeState) -> FastAPI:
    app = FastAPI(title="ESS edge", summary="Event-range lookups and range files near the pilots")
    app.state.edge = state
    guard(app, state.settings.max_body_bytes)

    @app.exception_handler(EssError)
    async def ess_error(_: Request, exc: EssError) -> JSONResponse:
        return refusal(exc)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "edge": state.settings.edge_name}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Whether the bus and the object store answer (an edge has no database)."""
        probes = {"store": readiness.store_probe(state.store)}
        if state.bus is not None:
            probes["bus"] = readiness.bus_probe(state.bus)
        failed = await readiness.failures(probes)
        if failed:
            return JSONResponse(
                {"status": "unready", "edge": state.settings.edge_name, "failed": failed},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "edge": state.settings.edge_name})

    async def admitted(authorization: Annotated[str | None, Header()] = None) -> None:
        await state.gate.check(authorization)

    api = APIRouter(prefix="/v1", dependencies=[Depends(admitted)])

    @api.get("/ranges", response_model=LookupAnswer)
    async def lookup_range(
        scope: str,
        lfn: Annotated[str, Query(alias="LFN")],
        start_event: Annotated[int, Query(alias="startEvent", **_POSITION)],
        last_event: Annotated[int, Query(alias="lastEvent", **_POSITION)],
    ) -> LookupAnswer:
        """As the head's: 1-based, inclusive positions of events in the original file."""
        return await state.answer(scope, lfn, start_event, last_event)

    @api.post("/ranges/lookup", response_model=list[RangeResult], response_model_by_alias=True)
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

    @api.post(
        "/ranges/on-demand",
        response_model=LookupAnswer,
        responses={
            202: {"model": Splitting, "description": "still splitting: ask again"},
            503: {"description": "the on-demand capacity is in use: see Retry-After"},
        },
    )
    async def on_demand(
        ask: OnDemandAsk,
        wait: Annotated[float | None, Query(ge=0, le=120, description="seconds to wait")] = None,
    ) -> LookupAnswer | JSONResponse:
        """The range's pieces as `GET /v1/ranges` gives them; when no request prepared the
        range, this edge splits just that range from the file's source first. The answer comes
        within `wait` seconds (default `ESS_EDGE_ON_DEMAND_WAIT_S`), else 202: ask again.
        Identical asks share one split; past this edge's capacity the answer is 503 at once."""
        wait_s = state.settings.edge_on_demand_wait_s if wait is None else wait
        found = await state.answer_on_demand(
            ask.scope, ask.lfn, ask.start_event, ask.last_event, wait_s
        )
        if found is None:
            return JSONResponse(
                Splitting(retry_after_s=1).model_dump(),
                status_code=202,
                headers={"Retry-After": "1"},
            )
        return found

    @api.get("/objects/{key:path}", response_model=None)
    async def get_object(key: str) -> Response:
        """The range file (`Range: bytes=...` answered 206); `X-Cache` says whether it was on
        this edge already (HIT), pulled through now (MISS) or left to the object store (BYPASS,
        a redirect to a signed URL)."""
        found = await state.objects.get(key)
        edge = state.settings.edge_name
        if found is None:
            metrics.CACHE_MISSES.labels(edge, "range").inc()
            signed = await state.store.signed_url(key, state.settings.signed_url_ttl_s)
            return RedirectResponse(signed, status_code=307, headers={"X-Cache": "BYPASS"})
        path, hit = found
        (metrics.CACHE_HITS if hit else metrics.CACHE_MISSES).labels(edge, "range").inc()
        return RangeFileResponse(
            path,
            media_type="application/octet-stream",
            headers={"X-Cache": "HIT" if hit else "MISS"},
        )

    @api.get("/cache")
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
            "on_demand": {
                "slots": state.on_demand.slots,
                "in_flight": state.on_demand.in_flight,
                "started": state.on_demand.started,
                "refused": state.on_demand.refused,
            },
        }

    app.include_router(api)
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
