"""The lookup path as it reads the bookkeeping: failure codes of batch answers, the answers as
the OpenAPI document describes them, copies that belong to no request's file, the live edges
read at most once a second, and a lookup that survives a lost database connection; on SQLite
and the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ess_common.db.hot_reads import hot_reads
from ess_common.db.models import Edge, utcnow
from ess_common.db.session import (
    SessionMaker,
    engine_of,
    make_engine,
    make_session_maker,
    unit_of_work,
)
from ess_common.events import MAX_EVENT
from ess_common.ranges import best_cover
from ess_common.store.local import LocalStore
from ess_head_api.lookup import FoundRange, copies_of, live_edges
from tests.head_api.support import SCOPE, Head, prepare, record, running_head

LFN = "EVNT.08716373._000070.pool.root.1"
N_EVENTS = 1000

if TYPE_CHECKING:
    from tests.conftest import PostgresServer


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store) as running:
        yield running


def panda(n: int, start: int, last: int, lfn: str = LFN) -> dict[str, Any]:
    return {
        "eventRangeID": f"12164365-3616045203-10980024041-{n}-8",
        "LFN": lfn,
        "GUID": "2FC641BA-0000-0000-0000-000000000000",
        "scope": SCOPE,
        "startEvent": start,
        "lastEvent": last,
    }


async def prepared_and_waiting(
    head: Head, sessions: SessionMaker, tmp_path: Path, key: str, number: str
) -> str:
    """`LFN` prepared, and another file recorded but not split yet; returns the latter's LFN."""
    await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key=key,
        lfn=LFN,
        n_events=N_EVENTS,
        events_per_range=100,
    )
    waiting = f"EVNT.08716373._{number}.pool.root.1"
    await record(sessions, f"{key}-waiting", waiting, N_EVENTS, 100)
    return waiting


async def test_failed_ranges_of_a_batch_say_why_with_a_code(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    waiting = await prepared_and_waiting(head, sessions, tmp_path, "task-codes", "000071")
    asked = [
        panda(1, 101, 150),
        panda(2, 1, 10, lfn=waiting),
        panda(3, 1, 10, lfn="EVNT.unknown.pool.root.1"),
        panda(4, 990, N_EVENTS + 1),
        panda(5, 0, 10),
        panda(6, 20, 10),
    ]

    response = await head.client.post("/v1/ranges/lookup", json={"eventRanges": asked})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    results = response.json()
    assert [(r["eventRangeID"][-3:], r["status"], r["code"]) for r in results] == [
        ("1-8", "ok", None),
        ("2-8", "failed", "not_prepared"),
        ("3-8", "failed", "unknown_file"),
        ("4-8", "failed", "outside_file"),
        ("5-8", "failed", "bad_range"),
        ("6-8", "failed", "bad_range"),
    ]
    assert all(r["reason"] for r in results[1:])


async def test_a_single_lookup_that_cannot_be_served_says_why_with_a_code(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    waiting = await prepared_and_waiting(head, sessions, tmp_path, "task-single", "000072")
    asked = [
        (waiting, 1, 10, 404, "not_prepared"),
        ("EVNT.unknown.pool.root.1", 1, 10, 404, "unknown_file"),
        (LFN, 990, N_EVENTS + 1, 422, "outside_file"),
        (LFN, 20, 10, 422, "bad_range"),
    ]
    for lfn, start, last, status, code in asked:
        params: dict[str, str | int] = {
            "scope": SCOPE,
            "LFN": lfn,
            "startEvent": start,
            "lastEvent": last,
        }
        response = await head.client.get("/v1/ranges", params=params)
        assert response.status_code == status, response.text
        assert response.json()["code"] == code, response.text
        assert response.json()["detail"]
    ok: dict[str, str | int] = {"scope": SCOPE, "LFN": LFN, "startEvent": 1, "lastEvent": 10}
    assert (await head.client.get("/v1/ranges", params=ok)).status_code == 200
    unknown_request = await head.client.get("/v1/requests/no-such-request")
    assert unknown_request.status_code == 404
    assert "code" not in unknown_request.json()


async def test_positions_beyond_what_the_bookkeeping_holds_are_refused_before_looking(
    head: Head,
) -> None:
    body = {"eventRanges": [panda(1, 1, MAX_EVENT + 1)], "site": "CERN-PROD"}

    response = await head.client.post("/v1/ranges/lookup", json=body)

    assert response.status_code == 422
    assert {tuple(p["loc"][-2:]) for p in response.json()["detail"]} == {(0, "lastEvent")}


async def test_the_document_describes_the_answers_sent(head: Head) -> None:
    document = (await head.client.get("/openapi.json")).json()

    def ok_schema(path: str, method: str) -> dict[str, Any]:
        schema: dict[str, Any] = document["paths"][path][method]["responses"]["200"]["content"][
            "application/json"
        ]["schema"]
        return schema

    assert ok_schema("/v1/ranges", "get") == {"$ref": "#/components/schemas/LookupAnswer"}
    batch = ok_schema("/v1/ranges/lookup", "post")
    assert batch["type"] == "array"
    assert batch["items"] == {"$ref": "#/components/schemas/RangeResult"}
    result = document["components"]["schemas"]["RangeResult"]["properties"]
    assert set(result) == {"eventRangeID", "status", "reason", "code", "pieces"}
    codes = document["components"]["schemas"]["RangeFailure"]["enum"]
    assert set(codes) == {"not_prepared", "unknown_file", "outside_file", "bad_range"}
    body = document["components"]["schemas"]["BatchLookup"]["properties"]
    assert {"eventRanges", "site", "region", "latitude", "longitude"} <= set(body)


def found(range_id: int, file_id: int | None, first: int, last: int) -> FoundRange:
    return FoundRange(range_id, file_id, first, last, f"k{range_id}", 1, "00000001")


def test_a_range_outside_any_requests_copy_is_a_copy_of_its_own() -> None:
    rows = [
        # Ordered as the query orders them (a NULL file id first or last, by database).
        found(7, None, 101, 200),
        found(1, 1, 1, 100),
        found(2, 1, 101, 200),
        found(3, 1, 201, 300),
        found(9, None, 150, 250),
    ]

    copies = copies_of(rows)

    assert {k: [r.id for r in rs] for k, rs in copies.items()} == {-7: [7], 1: [1, 2, 3], -9: [9]}
    # One piece on its own beats two of the request's copy.
    assert [r.id for r in best_cover(copies.items(), 160, 240) or []] == [9]
    # A tie goes to the request's copy (a file id is above every negated range id).
    assert [r.id for r in best_cover(copies.items(), 120, 130) or []] == [2]
    # Copies are never mixed: only the request's copy holds 90-260 on its own.
    assert [r.id for r in best_cover(copies.items(), 90, 260) or []] == [1, 2, 3]
    assert best_cover(copies.items(), 90, 301) is None


async def add_edge(sessions: SessionMaker, name: str) -> None:
    async with unit_of_work(sessions) as session:
        session.add(
            Edge(
                name=name,
                site="BNL-ATLAS",
                region="us",
                url=f"http://{name}.example.org:8001/",
                latitude=None,
                longitude=None,
                quota_bytes=10**9,
                free_bytes=10**9,
                queued=0,
                load=0.0,
                version="test",
                last_heartbeat=utcnow() - timedelta(seconds=1),
            )
        )


async def test_the_live_edges_are_read_at_most_once_per_ttl(sessions: SessionMaker) -> None:
    engine = engine_of(sessions)
    await add_edge(sessions, "edge-one")
    first = await live_edges(engine, 30.0, ttl_s=60.0)
    await add_edge(sessions, "edge-two")
    held = await live_edges(engine, 30.0, ttl_s=60.0)
    fresh = await live_edges(engine, 30.0, ttl_s=0.0)

    assert [e.name for e in first] == [e.name for e in held] == ["edge-one"]
    assert sorted(e.name for e in fresh) == ["edge-one", "edge-two"]
    assert {e.url for e in fresh} == {
        "http://edge-one.example.org:8001/",
        "http://edge-two.example.org:8001/",
    }


@pytest.mark.parametrize("hot", [True, False], ids=["hot reads", "sqlalchemy"])
async def test_a_lookup_survives_a_lost_database_connection(
    postgres_server: PostgresServer, tmp_path: Path, hot: bool
) -> None:
    """With the hot reads' pool (as served) and without it: every pooled connection, of both
    pools, is lost at once."""
    await postgres_server.truncate()
    url = await postgres_server.url()
    engine = make_engine(url)
    admin = create_async_engine(url, poolclass=NullPool)
    try:
        sessions = make_session_maker(engine)
        store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
        await store.start()
        async with (
            hot_reads(engine) if hot else nullcontext(),
            running_head(sessions, store) as running,
        ):
            await prepare(
                sessions,
                store,
                tmp_path / "split",
                key="task-lost",
                lfn=LFN,
                n_events=N_EVENTS,
                events_per_range=100,
            )
            params: dict[str, str | int] = {
                "scope": SCOPE,
                "LFN": LFN,
                "startEvent": 5,
                "lastEvent": 7,
            }
            assert (await running.client.get("/v1/ranges", params=params)).status_code == 200
            # The server ends every session but the admin's own: the pooled ones are lost.
            async with admin.connect() as connection:
                ended = await connection.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            assert ended
            again = await running.client.get("/v1/ranges", params=params)
            assert again.status_code == 200, again.text
            assert again.json()["pieces"][0]["file_first_event"] == 1
    finally:
        await admin.dispose()
        await engine.dispose()
