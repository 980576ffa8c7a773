"""The edge's server, in process with the head API it asks (SQLite, local directory and real S3
stores): lookups answered as the head answers them from a short-lived cache of the head's
dataset information, fetched once however many pilots ask; range files served from the edge's
disk or pulled through once, with HTTP Range; a pilot served through the edge; the edge process
serving on its port and announcing it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ess_common.cache_space import CacheSpace
from ess_common.db.session import SessionMaker, make_engine, make_session_maker
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore
from ess_edge.auth import Gate
from ess_edge.datasets import DatasetCache
from ess_edge.objects import ObjectCache
from ess_edge.on_demand import OnDemand
from ess_edge.server import EdgeState, create_edge_app, make_server
from ess_edge.service import Edge
from ess_pilot.client import PilotClient
from tests.head_api.support import SCOPE, Head, Prepared, prepare, running_head
from tests.helpers import eventually, free_port

LFN = "EVNT.08716373._000060.pool.root.1"
N_EVENTS = 1000
EPR = 100
EDGE_URL = "http://edge.test"
HEAD_URL = "http://testserver"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedStore:
    """The store, counting downloads; each waits until the gate opens."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.gate.set()
        self.downloads: list[str] = []

    async def download(self, key: str, path: Path) -> None:
        self.downloads.append(key)
        await self.gate.wait()
        await self.store.download(key, path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class GatedHead(httpx.AsyncBaseTransport):
    """The head app, counting requests for dataset information; each waits for the gate."""

    def __init__(self, head: Head) -> None:
        self.inner = httpx.ASGITransport(app=head.client._transport.app)  # type: ignore[attr-defined]
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/files/"):
            self.asked.append(request.url.path)
            await self.gate.wait()
        return await self.inner.handle_async_request(request)


@dataclass
class Cdn:
    head: Head
    edge: httpx.AsyncClient
    state: EdgeState
    head_transport: GatedHead
    store: GatedStore
    clock: Clock
    sessions: SessionMaker
    workdir: Path

    async def prepare(self, lfn: str = LFN, *, key: str = "task-1", epr: int = EPR) -> Prepared:
        return await prepare(
            self.sessions,
            self.store.store,
            self.workdir / key,
            key=key,
            lfn=lfn,
            n_events=N_EVENTS,
            events_per_range=epr,
        )


@pytest.fixture
async def cdn(sqlite_url: str, store: ObjectStore, tmp_path: Path) -> AsyncIterator[Cdn]:
    engine = make_engine(sqlite_url)
    sessions = make_session_maker(engine)
    settings = EdgeSettings(
        edge_name="edge-cdn",
        edge_cache_dir=tmp_path / "cache",
        edge_quota_bytes=10 * 2**20,
        edge_url=EDGE_URL,
        head_url=HEAD_URL,
        edge_lookup_ttl_s=30,
    )
    gated = GatedStore(store)
    clock = Clock()
    try:
        async with running_head(sessions, store) as head:
            transport = GatedHead(head)
            async with httpx.AsyncClient(transport=transport, base_url=HEAD_URL) as to_head:
                space = CacheSpace(settings.edge_cache_dir, settings.edge_quota_bytes)
                objects = ObjectCache(space, gated)
                state = EdgeState(
                    settings=settings,
                    url=EDGE_URL,
                    space=space,
                    store=gated,
                    datasets=DatasetCache(to_head, HEAD_URL, 30, clock=clock),
                    objects=objects,
                    on_demand=OnDemand(
                        settings, store=gated, space=space, objects=objects, bus=None, http=to_head
                    ),
                    gate=Gate(to_head, HEAD_URL),
                )
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=create_edge_app(state)), base_url=EDGE_URL
                ) as edge:
                    yield Cdn(head, edge, state, transport, gated, clock, sessions, tmp_path)
    finally:
        await engine.dispose()


async def edge_lookup(cdn: Cdn, start: int, last: int, lfn: str = LFN) -> httpx.Response:
    params: dict[str, str | int] = {
        "scope": SCOPE,
        "LFN": lfn,
        "startEvent": start,
        "lastEvent": last,
    }
    return await cdn.edge.get("/v1/ranges", params=params)


def without_urls(answer: dict[str, Any]) -> list[dict[str, Any]]:
    drop = {"url", "edge_url", "expires_in_s"}
    return [{k: v for k, v in p.items() if k not in drop} for p in answer["pieces"]]


async def test_lookups_are_answered_as_the_head_answers_them(cdn: Cdn) -> None:
    await cdn.prepare()
    await cdn.prepare(key="task-coarse", epr=500)

    for start, last in ((123, 150), (190, 230), (1, N_EVENTS), (450, 550), (1000, 1000)):
        at_edge = await edge_lookup(cdn, start, last)
        at_head = await cdn.head.client.get(
            "/v1/ranges",
            params={"scope": SCOPE, "LFN": LFN, "startEvent": start, "lastEvent": last},
        )
        assert at_edge.status_code == at_head.status_code == 200, at_edge.text
        assert without_urls(at_edge.json()) == without_urls(at_head.json())
        for piece in at_edge.json()["pieces"]:
            assert piece["url"] == piece["edge_url"] == f"{EDGE_URL}/v1/objects/{piece['key']}"
    # One fetch from the head answered every lookup.
    assert len(cdn.head_transport.asked) == 1


async def test_batch_lookup_fails_what_it_cannot_serve_with_the_heads_reasons(cdn: Cdn) -> None:
    await cdn.prepare()
    body = {
        "eventRanges": [
            {"eventRangeID": "r-ok", "LFN": LFN, "scope": SCOPE, "startEvent": 5, "lastEvent": 7},
            {
                "eventRangeID": "r-far",
                "LFN": LFN,
                "scope": SCOPE,
                "startEvent": 1,
                "lastEvent": 1001,
            },
            {"eventRangeID": "r-zero", "LFN": LFN, "scope": SCOPE, "startEvent": 0, "lastEvent": 3},
            {
                "eventRangeID": "r-unknown",
                "LFN": "EVNT.x.root",
                "scope": SCOPE,
                "startEvent": 1,
                "lastEvent": 2,
            },
        ]
    }
    at_edge = (await cdn.edge.post("/v1/ranges/lookup", json=body)).json()
    at_head = (await cdn.head.client.post("/v1/ranges/lookup", json=body)).json()

    assert [(r["eventRangeID"], r["status"]) for r in at_edge] == [
        ("r-ok", "ok"),
        ("r-far", "failed"),
        ("r-zero", "failed"),
        ("r-unknown", "failed"),
    ]
    assert [r["reason"] for r in at_edge] == [r["reason"] for r in at_head]
    assert "beyond the 1000 events" in at_edge[1]["reason"]
    assert "1-based" in at_edge[2]["reason"]
    assert "not known" in at_edge[3]["reason"]
    assert (await edge_lookup(cdn, 1, 2, "EVNT.x.root")).status_code == 404


async def test_many_pilots_asking_for_one_missing_file_cause_one_fetch(cdn: Cdn) -> None:
    await cdn.prepare()
    cdn.head_transport.gate.clear()
    asks = [asyncio.create_task(edge_lookup(cdn, i + 1, i + 1)) for i in range(20)]
    await eventually(lambda: cdn.head_transport.asked, message="the head asked")
    cdn.head_transport.gate.set()

    answers = await asyncio.gather(*asks)

    assert {a.status_code for a in answers} == {200}
    assert len(cdn.head_transport.asked) == 1


async def test_information_is_kept_for_its_ttl_then_fetched_again(cdn: Cdn) -> None:
    await cdn.prepare()
    assert (await edge_lookup(cdn, 1, 5)).status_code == 200
    cdn.clock.now += 29
    assert (await edge_lookup(cdn, 6, 9)).status_code == 200
    assert len(cdn.head_transport.asked) == 1
    cdn.clock.now += 2
    assert (await edge_lookup(cdn, 6, 9)).status_code == 200
    assert len(cdn.head_transport.asked) == 2


async def test_a_file_prepared_after_the_edge_asked_is_found_a_second_later(cdn: Cdn) -> None:
    first = await edge_lookup(cdn, 1, 5)
    assert first.status_code == 404 and "not known" in first.json()["detail"]
    await cdn.prepare()
    # Within the second the edge says what it knew; after it, it asks again.
    assert (await edge_lookup(cdn, 1, 5)).status_code == 404
    cdn.clock.now += 1.5
    assert (await edge_lookup(cdn, 1, 5)).status_code == 200
    assert len(cdn.head_transport.asked) == 2


async def test_range_files_are_pulled_through_once_and_served_with_http_range(cdn: Cdn) -> None:
    prepared = await cdn.prepare()
    first = prepared.ranges[0]
    content = prepared.content(LFN, 1)
    cdn.store.gate.clear()
    gets = [asyncio.create_task(cdn.edge.get(f"/v1/objects/{first.key}")) for _ in range(20)]
    await eventually(
        lambda: cdn.state.objects.stats.misses == 20, message="every pilot waits for one pull"
    )
    cdn.store.gate.set()

    answers = await asyncio.gather(*gets)

    assert {(a.status_code, a.content) for a in answers} == {(200, content)}
    assert {a.headers["x-cache"] for a in answers} == {"MISS"}
    assert cdn.store.downloads == [first.key]
    again = await cdn.edge.get(f"/v1/objects/{first.key}")
    assert (again.status_code, again.headers["x-cache"]) == (200, "HIT")
    part = await cdn.edge.get(f"/v1/objects/{first.key}", headers={"Range": "bytes=10-29"})
    assert part.status_code == 206
    assert part.content == content[10:30]
    assert part.headers["content-range"] == f"bytes 10-29/{len(content)}"
    assert cdn.store.downloads == [first.key]

    stats = (await cdn.edge.get("/v1/cache")).json()
    assert stats["objects"]["pulled"] == 1
    assert stats["objects"]["hits"] == 2
    assert stats["used_bytes"] == len(content)
    assert (await cdn.edge.get("/v1/objects/ranges/none/x.root")).status_code == 404


async def test_without_room_the_pilot_is_sent_to_the_object_store(cdn: Cdn) -> None:
    prepared = await cdn.prepare()
    key = prepared.ranges[0].key
    cdn.state.space.quota = 10  # nothing fits

    answer = await cdn.edge.get(f"/v1/objects/{key}")

    assert answer.status_code == 307
    assert answer.headers["x-cache"] == "BYPASS"
    signed = httpx.URL(answer.headers["location"])
    assert key.split("/")[-1] in signed.path
    assert cdn.store.downloads == []


async def test_a_pilot_is_served_through_the_edge(cdn: Cdn, tmp_path: Path) -> None:
    await cdn.prepare()
    mounts = {
        f"{EDGE_URL}/": httpx.ASGITransport(app=create_edge_app(cdn.state)),
        f"{HEAD_URL}/": cdn.head_transport,
    }
    ranges = [
        {
            "eventRangeID": f"1-2-3-{i}-1",
            "LFN": LFN,
            "scope": SCOPE,
            "startEvent": s,
            "lastEvent": e,
        }
        for i, (s, e) in enumerate([(5, 7), (95, 105), (1000, 1000)])
    ]
    async with (
        httpx.AsyncClient(mounts=mounts, follow_redirects=True) as http,
        PilotClient(HEAD_URL, tmp_path / "pilot", edge_url=EDGE_URL, http=http, retries=0) as pilot,
    ):
        result = await pilot.fetch(ranges)

    assert result.all_served, [o.reason for o in result.failed]
    assert [(p["eventRangeID"], p["startEvent"], p["lastEvent"]) for p in result.payload] == [
        ("1-2-3-0-1", 5, 7),
        ("1-2-3-1-1", 95, 100),
        ("1-2-3-1-1", 1, 5),
        ("1-2-3-2-1", 100, 100),
    ]
    # Three range files, each pulled once through the edge; the head was only asked by the edge.
    assert len(cdn.store.downloads) == len(set(cdn.store.downloads)) == 3
    assert cdn.head_transport.asked == [f"/v1/files/{SCOPE}/{LFN}/ranges"]


async def test_the_edge_process_serves_on_its_port_before_its_first_heartbeat(
    tmp_path: Path, store: ObjectStore
) -> None:
    port = free_port()
    settings = EdgeSettings(
        edge_name="edge-port",
        edge_cache_dir=tmp_path / "cache",
        edge_port=port,
        heartbeat_interval_s=0.1,
    )
    bus = MemoryBus("ess-edge-port")
    await bus.start()
    beats: list[bytes] = []

    async def record(delivery: Any) -> None:
        beats.append(delivery.body)

    await bus.consume("watch", ["edge.heartbeat"], record)
    space = CacheSpace(settings.edge_cache_dir, settings.edge_quota_bytes)
    async with httpx.AsyncClient() as http:
        app = create_edge_app(EdgeState.build(settings, store, space, http))
        edge = Edge(settings, bus, [], server=make_server(app, settings))
        await edge.start()
        try:
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
            assert health.json() == {"status": "ok", "edge": "edge-port"}
            await eventually(lambda: beats, message="a heartbeat")
            assert f'"url":"http://127.0.0.1:{port}"' in beats[0].decode()
        finally:
            await edge.stop()
            await bus.close()
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/healthz")
