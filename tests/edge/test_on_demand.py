"""On-demand splits at the edge, in process with the head API it asks (SQLite; local directory
and real S3 stores, the source file read from the local disk or from S3): a range nobody
prepared is split from the source, uploaded, served and recorded; identical asks share one
split; past the capacity the answer is 503 at once; a long split answers 202 and a second ask
gets it; the head passes asks to the closest edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import httpx
import pytest
import uproot

from ess_broker.on_demand import handle_range_split
from ess_cli.sample import write_sample_file
from ess_common.cache_space import CacheSpace
from ess_common.checksums import adler32_of_file
from ess_common.db.models import Edge, EdgeStatus, Range
from ess_common.db.requests import record_request
from ess_common.db.session import SessionMaker, make_engine, make_session_maker, unit_of_work
from ess_common.events import RangeSplitOnDemand, RequestSpec, parse_event
from ess_common.messaging.bus import Delivery
from ess_common.messaging.memory import MemoryBus
from ess_common.settings import EdgeSettings
from ess_common.store.base import ObjectStore, on_demand_key
from ess_common.store.s3 import S3Store
from ess_edge.auth import Gate
from ess_edge.datasets import DatasetCache
from ess_edge.objects import ObjectCache
from ess_edge.on_demand import OnDemand
from ess_edge.server import EdgeState, create_edge_app
from tests.head_api.support import SCOPE, Head, running_head
from tests.helpers import S3Settings, eventually

LFN = "DAOD_SAMPLE.on_demand._000001.root"
N_EVENTS = 1000
EDGE_URL = "http://edge.test"
HEAD_URL = "http://testserver"


class HeldSource(httpx.AsyncBaseTransport):
    """The head app; asks for a file's source wait while the gate is closed."""

    def __init__(self, head: Head) -> None:
        self.inner = httpx.ASGITransport(app=head.client._transport.app)  # type: ignore[attr-defined]
        self.gate = asyncio.Event()
        self.gate.set()
        self.sources_asked = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/source"):
            self.sources_asked += 1
            await self.gate.wait()
        return await self.inner.handle_async_request(request)


@dataclass
class Rig:
    head: Head
    edge: httpx.AsyncClient
    state: EdgeState
    to_head: HeldSource
    sessions: SessionMaker
    source: Path
    bus: MemoryBus
    announced: list[RangeSplitOnDemand]

    async def ask(self, start: int, last: int, **params: Any) -> httpx.Response:
        return await self.edge.post(
            "/v1/ranges/on-demand",
            params=params,
            json={"scope": SCOPE, "LFN": LFN, "startEvent": start, "lastEvent": last},
        )


async def _source_url(store: ObjectStore, path: Path) -> str:
    if isinstance(store, S3Store):
        await store.put_file("sources/source.root", path)
        return f"s3://{store.bucket}/sources/source.root"
    return path.resolve().as_uri()


async def _record(sessions: SessionMaker, source: Path, url: str, epr: int) -> None:
    spec = RequestSpec.model_validate(
        {
            "dataset": f"{SCOPE}:on.demand",
            "idempotency_key": "on-demand-1",
            "events_per_range": epr,
            "files": [
                {
                    "scope": SCOPE,
                    "lfn": LFN,
                    "n_events": N_EVENTS,
                    "size": source.stat().st_size,
                    "adler32": adler32_of_file(source),
                    "sources": [url],
                }
            ],
        }
    )
    async with unit_of_work(sessions) as session:
        await record_request(session, spec)


@pytest.fixture
async def rig(
    sqlite_url: str, store: ObjectStore, tmp_path: Path, s3_settings: S3Settings
) -> AsyncIterator[Rig]:
    source = tmp_path / "source.root"
    write_sample_file(source, N_EVENTS, seed=11)
    engine = make_engine(sqlite_url)
    sessions = make_session_maker(engine)
    await _record(sessions, source, await _source_url(store, source), epr=250)
    settings = EdgeSettings(
        edge_name="edge-od",
        edge_cache_dir=tmp_path / "cache",
        edge_quota_bytes=50 * 2**20,
        edge_url=EDGE_URL,
        head_url=HEAD_URL,
        edge_on_demand_slots=1,
        s3_endpoint_url=s3_settings.endpoint_url,
        s3_access_key=s3_settings.access_key,
        s3_secret_key=s3_settings.secret_key,
        s3_region=s3_settings.region,
    )
    bus = MemoryBus("ess-od-test")
    await bus.start()
    announced: list[RangeSplitOnDemand] = []

    async def keep(delivery: Delivery) -> None:
        event = parse_event(delivery.body)
        assert isinstance(event, RangeSplitOnDemand)
        announced.append(event)

    await bus.consume("ess-od-test.watch", ["range.split.*"], keep)
    try:
        async with running_head(sessions, store) as head:
            to_head = HeldSource(head)
            async with httpx.AsyncClient(transport=to_head, base_url=HEAD_URL) as http:
                space = CacheSpace(settings.edge_cache_dir, settings.edge_quota_bytes)
                objects = ObjectCache(space, store)
                state = EdgeState(
                    settings=settings,
                    url=EDGE_URL,
                    space=space,
                    store=store,
                    datasets=DatasetCache(http, HEAD_URL, 30),
                    objects=objects,
                    on_demand=OnDemand(
                        settings, store=store, space=space, objects=objects, bus=bus, http=http
                    ),
                    gate=Gate(http, HEAD_URL),
                )
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=create_edge_app(state)),
                    base_url=EDGE_URL,
                    timeout=60,
                ) as edge:
                    try:
                        yield Rig(head, edge, state, to_head, sessions, source, bus, announced)
                    finally:
                        to_head.gate.set()
                        await state.on_demand.close()
    finally:
        await bus.close()
        await engine.dispose()


def _events(path: Path) -> dict[str, Any]:
    with uproot.open(path) as f:
        arrays = f["events"].arrays(library="ak")
    return {name: ak.to_list(arrays[name]) for name in arrays.fields}


async def _download(rig: Rig, url: str, dest: Path) -> Path:
    response = await rig.edge.get(url.removeprefix(EDGE_URL))
    assert response.status_code == 200, response.text
    dest.write_bytes(response.content)
    return dest


async def test_a_range_nobody_prepared_is_split_served_and_recorded(
    rig: Rig, tmp_path: Path
) -> None:
    response = await rig.ask(37, 251)
    assert response.status_code == 200, response.text
    (piece,) = response.json()["pieces"]
    assert piece["key"] == on_demand_key(SCOPE, LFN, 37, 251)
    assert (piece["file_first_event"], piece["file_last_event"]) == (37, 251)
    assert (piece["local_start_event"], piece["local_last_event"]) == (1, 215)
    assert piece["url"] == f"{EDGE_URL}/v1/objects/{piece['key']}"

    got = _events(await _download(rig, piece["url"], tmp_path / "got.root"))
    with uproot.open(rig.source) as f:
        source = f["events"].arrays(library="ak")
    for name, values in got.items():
        assert values == ak.to_list(source[name][36:251]), name
    assert await rig.state.store.size(piece["key"]) == piece["size"]

    # Announced to the head; once recorded, the head's own lookup answers with it.
    await eventually(lambda: len(rig.announced) == 1)
    async with unit_of_work(rig.sessions) as session:
        await handle_range_split(session, rig.announced[0])
    async with unit_of_work(rig.sessions) as session:  # recorded once, however often told
        await handle_range_split(session, rig.announced[0])
    async with rig.sessions() as session:
        rows = (await session.scalars(Range.__table__.select())).all()
    assert len(rows) == 1
    looked_up = await rig.head.client.get(
        "/v1/ranges", params={"scope": SCOPE, "LFN": LFN, "startEvent": 40, "lastEvent": 250}
    )
    assert looked_up.status_code == 200, looked_up.text
    assert [p["key"] for p in looked_up.json()["pieces"]] == [piece["key"]]
    assert looked_up.json()["pieces"][0]["local_start_event"] == 4


async def test_identical_asks_share_one_split_and_others_past_the_capacity_get_503(
    rig: Rig,
) -> None:
    rig.to_head.gate.clear()
    first = asyncio.create_task(rig.ask(1, 100))
    second = asyncio.create_task(rig.ask(1, 100))
    await eventually(lambda: rig.to_head.sources_asked == 1)

    refused = await rig.ask(101, 200)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert "capacity" in refused.json()["detail"]

    rig.to_head.gate.set()
    answers = await asyncio.gather(first, second)
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert rig.state.on_demand.started == 1
    cache = (await rig.edge.get("/v1/cache")).json()["on_demand"]
    assert cache == {"slots": 1, "in_flight": 0, "started": 1, "refused": 1}

    # The slot is free again.
    assert (await rig.ask(101, 200)).status_code == 200


async def test_a_range_that_follows_another_fetches_only_what_lies_past_it(rig: Rig) -> None:
    """The slot's process keeps what it fetched of a remote file: the next range fetches
    neither the opening nor the beginnings of the baskets again."""
    assert (await rig.ask(1, 100)).status_code == 200
    assert (await rig.ask(101, 200)).status_code == 200
    first = rig.state.on_demand.finished((SCOPE, LFN, 1, 100))
    second = rig.state.on_demand.finished((SCOPE, LFN, 101, 200))
    assert first is not None and second is not None
    if isinstance(rig.state.store, S3Store):
        assert 0 < second.fetched_bytes < first.fetched_bytes / 2
    else:
        # A file:// replica is read from a file system the edge mounts: nothing is kept.
        assert second.fetched_bytes > 0


async def test_the_ranges_of_one_file_go_to_its_own_slot_while_it_is_free(rig: Rig) -> None:
    settings = rig.state.settings.model_copy(update={"edge_on_demand_slots": 3})
    on_demand = OnDemand(
        settings,
        store=rig.state.store,
        space=rig.state.space,
        objects=rig.state.objects,
        bus=None,
        http=rig.state.on_demand.http,
    )
    files = [f"{SCOPE}:EVNT.{n:06d}.pool.root.1:1000:0a1b2c3d" for n in range(12)]
    own = {identity: on_demand._slot_for(identity) for identity in files}

    assert set(own.values()) == {0, 1, 2}
    assert all(on_demand._slot_for(identity) == own[identity] for identity in files)
    on_demand._busy.add(own[files[0]])
    taken_over = on_demand._slot_for(files[0])
    assert taken_over != own[files[0]]
    on_demand._busy.add(taken_over)
    assert on_demand._slot_for(files[0]) not in on_demand._busy


async def test_a_slot_that_has_not_opened_the_file_is_handed_the_opening(rig: Rig) -> None:
    """A file's range that goes to another slot (its own is busy) fetches no opening again."""

    def two_slots() -> OnDemand:
        return OnDemand(
            rig.state.settings.model_copy(update={"edge_on_demand_slots": 2}),
            store=rig.state.store,
            space=rig.state.space,
            objects=rig.state.objects,
            bus=None,
            http=rig.state.on_demand.http,
        )

    source = rig.source
    identity = f"{SCOPE}:{LFN}:{source.stat().st_size}:{adler32_of_file(source)}"
    handing, cold = two_slots(), two_slots()
    try:
        own = handing._slot_for(identity)
        assert await handing.split((SCOPE, LFN, 1, 100), 60) is not None
        for on_demand in (handing, cold):
            on_demand._busy.add(own)
        handed = await handing.split((SCOPE, LFN, 401, 500), 60)
        assert handed is not None and handed.local is not None
        events = _events(handed.local)
        fresh = await cold.split((SCOPE, LFN, 401, 500), 60)
        assert fresh is not None and fresh.local is not None
        assert _events(fresh.local) == events
    finally:
        await handing.close()
        await cold.close()
    opening = handing.openings.runs.get(identity)
    if isinstance(rig.state.store, S3Store):
        assert opening is not None
        assert identity in handing.openings.held[1 - own]
        opened = sum(len(data) for _, data in opening)
        assert 0 < handed.fetched_bytes <= fresh.fetched_bytes - opened + 1024
    else:
        # A file:// replica is read from a file system the edge mounts: nothing is kept.
        assert opening is None


async def test_a_split_longer_than_the_wait_answers_202_then_the_result(rig: Rig) -> None:
    rig.to_head.gate.clear()
    pending = await rig.ask(500, 600, wait=0)
    assert pending.status_code == 202
    assert pending.headers["Retry-After"] == "1"
    assert pending.json()["status"] == "splitting"
    rig.to_head.gate.set()

    async def answered() -> bool:
        return (await rig.ask(500, 600, wait=0)).status_code == 200

    # The split runs in a worker process: a busy machine may take a while to finish it.
    await eventually(answered, timeout=60)
    assert rig.state.on_demand.started == 1


async def test_prepared_unknown_and_outside_ranges_are_not_split(rig: Rig) -> None:
    unknown = await rig.edge.post(
        "/v1/ranges/on-demand",
        json={"scope": SCOPE, "LFN": "NOT.KNOWN.root", "startEvent": 1, "lastEvent": 5},
    )
    assert unknown.status_code == 404
    outside = await rig.ask(900, N_EVENTS + 1)
    assert outside.status_code == 422
    assert "beyond" in outside.json()["detail"]
    bad = await rig.ask(10, 5)
    assert bad.status_code == 422
    assert rig.state.on_demand.started == 0


async def test_the_head_passes_asks_to_the_closest_live_edge(rig: Rig) -> None:
    async with unit_of_work(rig.sessions) as session:
        session.add(
            Edge(
                name="edge-od",
                site="SITE-A",
                region="europe",
                url=EDGE_URL,
                quota_bytes=1,
                free_bytes=1,
                version="test",
                status=EdgeStatus.ALIVE,
            )
        )
    rig.head.client._transport.app.state.edge_http = rig.edge  # type: ignore[attr-defined]
    body = {"scope": SCOPE, "LFN": LFN, "startEvent": 3, "lastEvent": 9, "site": "SITE-A"}
    response = await rig.head.client.post("/v1/ranges/on-demand", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["X-ESS-Edge"] == "edge-od"
    assert response.json()["pieces"][0]["key"] == on_demand_key(SCOPE, LFN, 3, 9)

    rig.to_head.gate.clear()
    held = asyncio.create_task(rig.ask(20, 30))
    await eventually(lambda: rig.to_head.sources_asked == 2)
    body = {"scope": SCOPE, "LFN": LFN, "startEvent": 40, "lastEvent": 50}
    busy = await rig.head.client.post("/v1/ranges/on-demand", json=body)
    assert busy.status_code == 503
    assert "Retry-After" in busy.headers
    rig.to_head.gate.set()
    assert (await held).status_code == 200


async def test_with_no_live_edge_the_head_answers_503_at_once(rig: Rig) -> None:
    body = {"scope": SCOPE, "LFN": LFN, "startEvent": 3, "lastEvent": 9}
    response = await rig.head.client.post("/v1/ranges/on-demand", json=body)
    assert response.status_code == 503
    assert "no live edge" in response.json()["detail"]


async def test_the_head_refuses_a_file_no_request_holds(rig: Rig) -> None:
    body = {"scope": SCOPE, "LFN": "NOT.KNOWN.root", "startEvent": 3, "lastEvent": 9}
    response = await rig.head.client.post("/v1/ranges/on-demand", json=body)
    assert response.status_code == 404
    assert "no request holds the file" in response.json()["detail"]


async def test_a_source_the_policy_refuses_is_not_read_on_demand(rig: Rig) -> None:
    """A file recorded with sources the edge's URL policy refuses (by another way than the
    head API's POST, or before the policy said so): no split reads them; the ask is refused
    with every source's reason."""
    lfn = "EVNT.refused.pool.root.1"
    spec = RequestSpec.model_validate(
        {
            "dataset": f"{SCOPE}:on.demand.refused",
            "idempotency_key": "on-demand-refused",
            "events_per_range": 250,
            "files": [
                {
                    "scope": SCOPE,
                    "lfn": lfn,
                    "n_events": N_EVENTS,
                    "size": rig.source.stat().st_size,
                    "adler32": adler32_of_file(rig.source),
                    "sources": [rig.source.resolve().as_uri(), "http://[::1]:9/source.root"],
                }
            ],
        }
    )
    async with unit_of_work(rig.sessions) as session:
        await record_request(session, spec)
    on_demand = rig.state.on_demand
    on_demand.settings = on_demand.settings.model_copy(
        update={"source_file_roots": [], "source_networks": []}
    )
    response = await rig.edge.post(
        "/v1/ranges/on-demand",
        json={"scope": SCOPE, "LFN": lfn, "startEvent": 1, "lastEvent": 10},
    )
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert "ESS_SOURCE_FILE_ROOTS" in detail and "ESS_SOURCE_NETWORKS" in detail, detail
    assert rig.announced == []
