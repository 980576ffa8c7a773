"""The head's routes for a CDN of edges (SQLite and PostgreSQL): an operator drains, disables
and enables an edge; edges fetch a file's dataset information; a pilot that says where it runs
is pointed at the closest live edge, the object store staying the fallback."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ess_common.db.models import Edge, EdgeStatus, File, FileStatus, utcnow
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.store.local import LocalStore
from ess_head_api.auth import Role
from tests.head_api.support import (
    EDGE_LOST_AFTER_S,
    SCOPE,
    Head,
    Prepared,
    prepare,
    record,
    running_head,
)

LFN = "EVNT.08716373._000088.pool.root.1"
TOKENS = {role: secrets.token_hex(16) for role in Role}


def bearer(role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    tokens = {role.value: [token] for role, token in TOKENS.items()}
    async with running_head(sessions, store, tokens=tokens) as running:
        yield running


async def add_edge(
    sessions: SessionMaker,
    name: str,
    *,
    site: str = "CERN-PROD",
    region: str = "europe",
    status: EdgeStatus = EdgeStatus.ALIVE,
    silent: bool = False,
    where: tuple[float, float] | None = None,
) -> None:
    beat = utcnow() - timedelta(seconds=EDGE_LOST_AFTER_S * (3 if silent else 0))
    async with unit_of_work(sessions) as session:
        session.add(
            Edge(
                name=name,
                site=site,
                region=region,
                url=f"http://{name}.example.org:8001",
                latitude=where[0] if where else None,
                longitude=where[1] if where else None,
                quota_bytes=10**9,
                free_bytes=10**9,
                queued=0,
                load=0.0,
                version="test",
                status=status,
                last_heartbeat=beat,
            )
        )


async def prepared_file(head: Head, sessions: SessionMaker, tmp_path: Path) -> Prepared:
    return await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="task-edges",
        lfn=LFN,
        n_events=300,
        events_per_range=100,
    )


async def post(head: Head, path: str, role: Role = Role.ADMIN) -> Any:
    return await head.client.post(path, headers=bearer(role))


async def test_an_operator_drains_disables_and_enables_an_edge(
    head: Head, sessions: SessionMaker
) -> None:
    await add_edge(sessions, "edge-a")
    in_flight = await record(sessions, "task-in-flight", LFN, 100, 10)

    drained = await post(head, "/v1/edges/edge-a/drain")
    assert (drained.status_code, drained.json()["status"]) == (200, "draining")
    async with sessions() as session:
        f = await session.get(File, in_flight)
        assert f is not None and (f.status, f.edge) == (FileStatus.ASSIGNED, "edge-a")

    disabled = await post(head, "/v1/edges/edge-a/disable")
    assert disabled.json()["status"] == "disabled"
    async with sessions() as session:
        f = await session.get(File, in_flight)
        assert f is not None and (f.status, f.edge) == (FileStatus.PENDING, None)

    enabled = await post(head, "/v1/edges/edge-a/enable")
    assert (enabled.json()["status"], enabled.json()["alive"]) == ("alive", True)
    shown = await head.client.get("/v1/edges/edge-a", headers=bearer(Role.PILOT))
    assert shown.json()["status"] == "alive"
    assert (await head.client.get("/v1/edges/nope", headers=bearer(Role.PILOT))).status_code == 404
    assert (await post(head, "/v1/edges/nope/drain")).status_code == 404


async def test_a_lost_edge_comes_back_by_heartbeating_not_by_enabling(
    head: Head, sessions: SessionMaker
) -> None:
    await add_edge(sessions, "edge-lost", status=EdgeStatus.LOST, silent=True)
    assert (await post(head, "/v1/edges/edge-lost/enable")).json()["status"] == "lost"
    assert (await post(head, "/v1/edges/edge-lost/drain")).json()["status"] == "draining"


async def test_only_an_admin_acts_on_edges_and_readers_see_them(
    head: Head, sessions: SessionMaker
) -> None:
    await add_edge(sessions, "edge-a")
    for action in ("drain", "disable", "enable"):
        for role in (Role.PILOT, Role.PANDA, Role.EDGE):
            assert (await post(head, f"/v1/edges/edge-a/{action}", role)).status_code == 403
        answer = await head.client.post(f"/v1/edges/edge-a/{action}")
        assert answer.status_code == 401
    for role in (Role.PILOT, Role.PANDA, Role.ADMIN):
        listed = await head.client.get("/v1/edges", headers=bearer(role))
        assert listed.status_code == 200, listed.text
    async with sessions() as session:
        edge = await session.scalar(select(Edge).where(Edge.name == "edge-a"))
        assert edge is not None and edge.status == EdgeStatus.ALIVE


async def test_edges_fetch_every_prepared_copy_of_a_file(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    fine = await prepared_file(head, sessions, tmp_path)
    coarse = await prepare(
        sessions,
        head.state.store,
        tmp_path / "coarse",
        key="task-coarse",
        lfn=LFN,
        n_events=300,
        events_per_range=300,
    )
    await record(sessions, "task-not-split", LFN, 300, 50)

    answer = await head.client.get(f"/v1/files/{SCOPE}/{LFN}/ranges", headers=bearer(Role.EDGE))

    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert (info["scope"], info["lfn"], info["n_events"]) == (SCOPE, LFN, 300)
    copies = {c["file_id"]: c for c in info["copies"]}
    assert set(copies) == {fine.file_id, coarse.file_id}
    assert copies[fine.file_id]["events_per_range"] == 100
    assert [
        (r["first_event"], r["last_event"], r["key"]) for r in copies[fine.file_id]["ranges"]
    ] == [(r.first_event, r.last_event, r.key) for r in fine.ranges]
    unknown = await head.client.get(
        f"/v1/files/{SCOPE}/EVNT.none/ranges", headers=bearer(Role.EDGE)
    )
    assert unknown.status_code == 404
    refused = await head.client.get(f"/v1/files/{SCOPE}/{LFN}/ranges")
    assert refused.status_code == 401


async def hinted(head: Head, **place: Any) -> list[str | None]:
    params = {"scope": SCOPE, "LFN": LFN, "startEvent": 90, "lastEvent": 110, **place}
    answer = await head.client.get("/v1/ranges", params=params, headers=bearer(Role.PILOT))
    assert answer.status_code == 200, answer.text
    pieces = answer.json()["pieces"]
    assert all(p["url"].startswith("http://testserver/v1/objects/") for p in pieces)
    return [p["edge_url"] for p in pieces]


async def test_a_pilot_is_pointed_at_the_closest_live_edge(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    prepared = await prepared_file(head, sessions, tmp_path)
    keys = [r.key for r in prepared.ranges[:2]]
    await add_edge(sessions, "edge-bnl", site="BNL-ATLAS", region="us", where=(40.9, -72.9))
    await add_edge(sessions, "edge-mwt2", site="MWT2", region="us", where=(41.8, -87.6))
    await add_edge(sessions, "edge-cern", where=(46.2, 6.1))
    await add_edge(sessions, "edge-silent", site="DESY-HH", silent=True)
    await add_edge(sessions, "edge-drained", site="RAL", status=EdgeStatus.DRAINING)

    def at(edge: str) -> list[str | None]:
        return [f"http://{edge}.example.org:8001/v1/objects/{key}" for key in keys]

    assert await hinted(head) == [None, None]
    assert await hinted(head, site="BNL-ATLAS") == at("edge-bnl")
    assert await hinted(head, site="CERN-PROD", region="us") == at("edge-cern")
    # No edge at the site: one in the region (the same one for the same file, every time).
    in_region = await hinted(head, site="AGLT2", region="us")
    assert in_region[0] in (at("edge-bnl")[0], at("edge-mwt2")[0])
    assert await hinted(head, site="AGLT2", region="us") == in_region
    # Nowhere known but coordinates: the nearest edge.
    assert await hinted(head, latitude=42.3, longitude=-83.7) == at("edge-mwt2")
    # A silent or drained edge is never offered; nothing close: the object store only.
    assert await hinted(head, site="DESY-HH") == [None, None]
    assert await hinted(head, site="RAL", region="uk") == [None, None]

    batch = await head.client.post(
        "/v1/ranges/lookup",
        json={
            "site": "BNL-ATLAS",
            "eventRanges": [
                {"eventRangeID": "r1", "LFN": LFN, "scope": SCOPE, "startEvent": 1, "lastEvent": 5}
            ],
        },
        headers=bearer(Role.PILOT),
    )
    (result,) = batch.json()
    assert result["pieces"][0]["edge_url"] == at("edge-bnl")[0]
