"""What the pilot client's tests share: the dataset ESS prepared (see conftest.py), PanDA
event ranges over it, a PilotClient whose HTTP is recorded, ways to break stored objects, and a
stand-in for the head at its HTTP boundary.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from ess_cli.embedded import Embedded
from ess_common.checksums import adler32_of_bytes
from ess_common.store.local import LocalStore
from ess_pilot import PilotClient, PilotOptions
from tests.helpers import free_port

SCOPE = "mc23_13p6TeV"
EVENTS_PER_RANGE = 500
#: Source files of skhep_testdata and their events.
SOURCES = {"uproot-HZZ.root": 2421, "uproot-Zmumu.root": 2304}
TASK = 12164365
PANDA_ID = 3616045203


@dataclass
class Prepared:
    """A dataset ESS has prepared: its files by LFN, and the running embedded ESS."""

    ess: Embedded
    sources: dict[str, Path]
    n_events: dict[str, int]

    @property
    def url(self) -> str:
        return self.ess.url

    @property
    def lfns(self) -> list[str]:
        return list(self.sources)

    @property
    def store(self) -> LocalStore:
        assert isinstance(self.ess.store, LocalStore)
        return self.ess.store

    def range(self, lfn: str, start: int, last: int, process: int, **extra: Any) -> dict[str, Any]:
        """A PanDA event range as PanDA hands it out."""
        file_id = 10980024041 + self.lfns.index(lfn) if lfn in self.sources else 10980029999
        return {
            "eventRangeID": f"{TASK}-{PANDA_ID}-{file_id}-{process}-1",
            "LFN": lfn,
            "GUID": str(uuid.uuid5(uuid.NAMESPACE_URL, lfn)).upper(),
            "scope": SCOPE,
            "startEvent": start,
            "lastEvent": last,
            **extra,
        }

    async def keys(self, lfn: str, start: int, last: int) -> list[str]:
        """The object keys of the pieces the head answers for events start..last."""
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(
                f"{self.url}/v1/ranges",
                params={"scope": SCOPE, "LFN": lfn, "startEvent": start, "lastEvent": last},
            )
        answer.raise_for_status()
        return [p["key"] for p in answer.json()["pieces"]]

    def object_path(self, key: str) -> Path:
        return self.store.path(key)


@dataclass
class Recorder:
    """Every answer the client's HTTP client got (each names its request)."""

    responses: list[httpx.Response] = field(default_factory=list)

    async def on_response(self, response: httpx.Response) -> None:
        self.responses.append(response)

    @property
    def lookups(self) -> list[httpx.Response]:
        return [r for r in self.responses if r.request.url.path.endswith("/v1/ranges/lookup")]

    @property
    def downloads(self) -> list[httpx.Response]:
        return [r for r in self.responses if "/v1/objects/" in r.request.url.path]

    def downloaded_keys(self) -> list[str]:
        return [r.request.url.path.split("/v1/objects/", 1)[1] for r in self.downloads]


#: Fast retries: the tests must not wait for production backoffs.
FAST: PilotOptions = {"retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05}


@contextlib.asynccontextmanager
async def pilot(
    head_url: str, dest: Path, **options: Any
) -> AsyncIterator[tuple[PilotClient, Recorder]]:
    """A PilotClient whose HTTP traffic is recorded."""
    recorder = Recorder()
    async with httpx.AsyncClient(
        timeout=10, event_hooks={"response": [recorder.on_response]}
    ) as http:
        merged: dict[str, Any] = {**FAST, **options}
        async with PilotClient(head_url, dest, http=http, **merged) as client:
            yield client, recorder


@contextlib.contextmanager
def tampered(path: Path) -> Iterator[None]:
    """The stored object with some bytes changed (same size), put back afterwards."""
    original = path.read_bytes()
    middle = len(original) // 2
    path.write_bytes(
        original[:middle]
        + bytes(b ^ 0xFF for b in original[middle : middle + 16])
        + original[middle + 16 :]
    )
    try:
        yield
    finally:
        path.write_bytes(original)


@contextlib.contextmanager
def removed(path: Path) -> Iterator[None]:
    """The stored object gone, put back afterwards."""
    original = path.read_bytes()
    path.unlink()
    try:
        yield
    finally:
        path.write_bytes(original)


def subprocess_env() -> dict[str, str]:
    """The environment of a `python -m ess_pilot.cli` child, free of the suite's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ESS_")}


class StandIn:
    """At the head's HTTP boundary: a server that is overloaded (503 with Retry-After) for
    lookups, or answers a lookup with a piece it serves itself, failing the first downloads
    (503) or dropping the connection halfway."""

    def __init__(
        self,
        content: bytes = b"",
        *,
        busy_downloads: int = 0,
        forbidden_downloads: int = 0,
        drop: bool = False,
        refuse: str | None = None,
    ) -> None:
        self.content = content
        self.refuse = refuse
        self.busy_downloads = busy_downloads
        self.forbidden_downloads = forbidden_downloads
        self.signed_urls: list[str] = []
        self.drop = drop
        self.port = free_port()
        self.lookups: list[float] = []
        self.downloads: list[str | None] = []
        self.overloaded = True
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _lookup(self, request: web.Request) -> web.Response:
        self.lookups.append(time.monotonic())
        if self.overloaded:
            return web.json_response(
                {"detail": "the head is overloaded"}, status=503, headers={"Retry-After": "1"}
            )
        ranges: list[dict[str, Any]] = (await request.json())["eventRanges"]
        return web.json_response([self._answer(r) for r in ranges])

    def _answer(self, r: dict[str, Any]) -> dict[str, Any]:
        if self.refuse is not None:
            return {"eventRangeID": r["eventRangeID"], "status": "failed", "reason": self.refuse}
        start, last = r["startEvent"], r["lastEvent"]
        piece = {
            "url": f"{self.url}/objects/piece.root?signature={len(self.lookups)}",
            "key": "ranges/stand-in/piece.root",
            "size": len(self.content),
            "adler32": adler32_of_bytes(self.content),
            "file_first_event": 1,
            "file_last_event": 100,
            "start_event": start,
            "last_event": last,
            "local_start_event": start,
            "local_last_event": last,
            "expires_in_s": 60,
        }
        return {
            "eventRangeID": r["eventRangeID"],
            "status": "ok",
            "reason": None,
            "pieces": [piece],
        }

    async def _object(self, request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("Range")
        self.downloads.append(asked)
        self.signed_urls.append(request.query_string)
        if len(self.downloads) <= self.forbidden_downloads:
            return web.Response(status=403, text="Request has expired")
        if len(self.downloads) <= self.busy_downloads:
            return web.Response(status=503, text="busy", headers={"Retry-After": "0"})
        if asked is not None:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            return web.Response(
                status=206,
                body=self.content[start:],
                headers={"Content-Range": f"bytes {start}-{len(self.content) - 1}/{len(self)}"},
            )
        if not self.drop:
            return web.Response(body=self.content)
        # Half the bytes, then the connection is gone.
        response = web.StreamResponse(headers={"Content-Length": str(len(self))})
        await response.prepare(request)
        await response.write(self.content[: len(self) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    def __len__(self) -> int:
        return len(self.content)

    async def __aenter__(self) -> StandIn:
        app = web.Application()
        app.router.add_post("/v1/ranges/lookup", self._lookup)
        app.router.add_get("/objects/piece.root", self._object)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
