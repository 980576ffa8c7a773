"""The head API's requests, edges, dead letters, schema, health and OpenAPI routes, on SQLite and
the real PostgreSQL: what PanDA and operators see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from ess_common.db.models import (
    DeadLetter,
    Edge,
    EdgeStatus,
    File,
    FileStatus,
    OutboxMessage,
    Range,
    Request,
    RequestStatus,
    utcnow,
)
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import RequestCreated, parse_event
from ess_common.messaging.bus import Delivery
from ess_common.store.local import LocalStore
from tests.head_api.support import (
    EDGE,
    EDGE_LOST_AFTER_S,
    SCOPE,
    Head,
    file_entry,
    request_body,
    running_head,
)
from tests.helpers import eventually


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store) as running:
        yield running


async def outbox_rows(sessions: SessionMaker) -> list[OutboxMessage]:
    async with sessions() as session:
        return list((await session.scalars(select(OutboxMessage))).all())


async def test_post_creates_the_request_and_publishes_request_created(
    head: Head, sessions: SessionMaker
) -> None:
    published: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        published.append(delivery)

    await head.bus.consume("broker-requests", ["request.created"], record)
    body = request_body("task-1", "EVNT.01.pool.root.1", "EVNT.02.pool.root.1")

    response = await head.client.post("/v1/requests", json=body)

    assert response.status_code == 201, response.text
    view = response.json()
    assert response.headers["Location"] == f"/v1/requests/{view['id']}"
    assert view["idempotency_key"] == "task-1"
    assert view["dataset"] == body["dataset"]
    assert view["status"] == RequestStatus.RECEIVED
    assert view["files_total"] == 2
    assert view["files_by_status"] == {"pending": 2}
    assert view["ranges"] == 0

    # Written to the outbox in the request's transaction, then published by the relay.
    (row,) = await outbox_rows(sessions)
    assert row.routing_key == "request.created"
    assert row.published_at is not None
    await eventually(lambda: published, message="request.created consumed from the bus")
    (delivery,) = published
    assert delivery.routing_key == "request.created"
    event = parse_event(delivery.body)
    assert isinstance(event, RequestCreated)
    assert event.correlation_id == view["id"]
    assert event.idempotency_key == "task-1"
    assert event.events_per_range == body["events_per_range"]
    assert [f.lfn for f in event.files] == ["EVNT.01.pool.root.1", "EVNT.02.pool.root.1"]

    fetched = await head.client.get(response.headers["Location"])
    assert fetched.status_code == 200
    assert fetched.json()["id"] == view["id"]


async def test_resubmission_is_the_same_request(head: Head, sessions: SessionMaker) -> None:
    body = request_body("task-2")
    first = await head.client.post("/v1/requests", json=body)
    again = await head.client.post("/v1/requests", json=body)

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    # Announced once: the broker is not asked twice.
    assert [r.routing_key for r in await outbox_rows(sessions)] == ["request.created"]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Request)) == 1
        assert await session.scalar(select(func.count()).select_from(File)) == 1


async def test_concurrent_resubmissions_make_one_request(
    head: Head, sessions: SessionMaker
) -> None:
    body = request_body("task-race")

    responses = await asyncio.gather(
        *(head.client.post("/v1/requests", json=body) for _ in range(5))
    )

    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert [r.routing_key for r in await outbox_rows(sessions)] == ["request.created"]


async def test_same_key_with_other_content_is_a_conflict(head: Head) -> None:
    first = await head.client.post("/v1/requests", json=request_body("task-3"))
    assert first.status_code == 201, first.text

    other = await head.client.post(
        "/v1/requests", json=request_body("task-3", events_per_range=250)
    )

    assert other.status_code == 409, other.text
    reason = other.json()["detail"]
    assert "task-3" in reason
    assert first.json()["id"] in reason
    assert "different content" in reason


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body[field] = value

    return change


def _set_file(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["files"][0][field] = value

    return change


@pytest.mark.parametrize(
    ("change", "where", "reason"),
    [
        (_set("dataset", "mc15.no.scope"), "dataset", "scope:name"),
        (_set_file("lfn", "../../etc/passwd"), "lfn", "without '..'"),
        (_set_file("lfn", "EVNT/../x.root"), "lfn", "without '..'"),
        (_set_file("adler32", "zz12"), "adler32", "not hexadecimal"),
        (_set_file("adler32", "123456789"), "adler32", "not hexadecimal"),
        (_set("events_per_range", 0), "events_per_range", "greater than 0"),
        (_set_file("sources", ["gopher://x/y"]), "sources", "must start with one of"),
    ],
    ids=[
        "dataset-without-colon",
        "lfn-climbing",
        "lfn-with-dotdot-inside",
        "adler32-not-hex",
        "adler32-too-long",
        "zero-events-per-range",
        "unknown-source-scheme",
    ],
)
async def test_invalid_request_is_refused_with_its_reason(
    head: Head, change: Callable[[dict[str, Any]], None], where: str, reason: str
) -> None:
    body = request_body("task-bad")
    change(body)

    response = await head.client.post("/v1/requests", json=body)

    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(where in map(str, p["loc"]) and reason in p["msg"] for p in problems), problems
    assert (await head.client.get("/v1/requests")).json() == []


async def test_a_request_without_files_needs_a_catalogue(head: Head) -> None:
    body = request_body("task-no-files")
    del body["files"]
    response = await head.client.post("/v1/requests", json=body)
    assert response.status_code == 422, response.text
    assert "ESS_RUCIO_URL" in response.json()["detail"]
    assert (await head.client.get("/v1/requests")).json() == []


async def test_a_file_listed_twice_is_refused(head: Head) -> None:
    body = request_body("task-twice", "EVNT.01.pool.root.1", "EVNT.01.pool.root.1")
    response = await head.client.post("/v1/requests", json=body)
    assert response.status_code == 422, response.text
    assert "listed twice" in str(response.json()["detail"])


async def test_request_status_shows_progress_per_file(head: Head, sessions: SessionMaker) -> None:
    lfns = ["EVNT.01.pool.root.1", "EVNT.02.pool.root.1", "EVNT.03.pool.root.1"]
    created = await head.client.post("/v1/requests", json=request_body("task-4", *lfns))
    request_id = created.json()["id"]
    async with unit_of_work(sessions) as session:
        files = {
            f.lfn: f
            for f in await session.scalars(select(File).where(File.request_id == request_id))
        }
        split, failed = files[lfns[0]], files[lfns[1]]
        split.status, split.edge, split.attempt = FileStatus.SPLIT, EDGE, 1
        failed.status, failed.edge, failed.attempt = FileStatus.FAILED, EDGE, 2
        failed.error = "precache on edge-a: no source delivered the file"
        session.add_all(
            Range(
                file_id=split.id,
                request_id=request_id,
                scope=SCOPE,
                lfn=split.lfn,
                first_event=first,
                last_event=first + 999,
                object_key=f"ranges/{first}",
                size=10,
                adler32="00000001",
            )
            for first in (1, 1001)
        )

    response = await head.client.get(f"/v1/requests/{request_id}")

    assert response.status_code == 200, response.text
    view = response.json()
    assert view["files_total"] == 3
    assert view["files_by_status"] == {"split": 1, "failed": 1, "pending": 1}
    assert view["ranges"] == 2
    progress = {f["lfn"]: f for f in view["files"]}
    assert progress[lfns[0]] | {"id": 0} == {
        "id": 0,
        "scope": SCOPE,
        "lfn": lfns[0],
        "status": "split",
        "edge": EDGE,
        "attempt": 1,
        "n_events": file_entry(lfns[0])["n_events"],
        "ranges": 2,
        "error": None,
    }
    assert progress[lfns[1]]["status"] == "failed"
    assert progress[lfns[1]]["attempt"] == 2
    assert "no source delivered" in progress[lfns[1]]["error"]
    assert progress[lfns[2]]["status"] == "pending"
    assert progress[lfns[2]]["edge"] is None
    assert progress[lfns[2]]["ranges"] == 0


async def test_unknown_request_is_404(head: Head) -> None:
    response = await head.client.get("/v1/requests/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


async def test_requests_are_listed_by_status(head: Head, sessions: SessionMaker) -> None:
    ids = {}
    for key in ("task-a", "task-b", "task-c"):
        ids[key] = (await head.client.post("/v1/requests", json=request_body(key))).json()["id"]
    async with unit_of_work(sessions) as session:
        for key, status in (("task-a", RequestStatus.READY), ("task-b", RequestStatus.FAILED)):
            await session.execute(
                update(Request).where(Request.id == ids[key]).values(status=status)
            )

    async def keys(query: str) -> list[str]:
        response = await head.client.get(f"/v1/requests{query}")
        assert response.status_code == 200, response.text
        return sorted(r["idempotency_key"] for r in response.json())

    assert await keys("?status=ready") == ["task-a"]
    assert await keys("?status=failed") == ["task-b"]
    assert await keys("?status=received") == ["task-c"]
    assert await keys("?status=cancelled") == []
    assert await keys("") == ["task-a", "task-b", "task-c"]
    assert len(await keys("?limit=2")) == 2
    wrong = await head.client.get("/v1/requests?status=done")
    assert wrong.status_code == 422
    assert "status" in str(wrong.json()["detail"])


async def test_edges_are_alive_while_they_heartbeat(head: Head, sessions: SessionMaker) -> None:
    now = utcnow()
    stale = now - timedelta(seconds=EDGE_LOST_AFTER_S * 4)
    rows = [
        ("edge-fresh", EdgeStatus.ALIVE, now),
        ("edge-silent", EdgeStatus.ALIVE, stale),
        ("edge-draining", EdgeStatus.DRAINING, now),
    ]
    async with unit_of_work(sessions) as session:
        session.add_all(
            Edge(
                name=name,
                site="CERN-PROD",
                region="europe",
                url=f"http://{name}.example.org:8001",
                quota_bytes=10 * 2**30,
                free_bytes=4 * 2**30,
                queued=3,
                load=0.25,
                version="0.1.0",
                status=status,
                last_heartbeat=beat,
            )
            for name, status, beat in rows
        )

    response = await head.client.get("/v1/edges")

    assert response.status_code == 200, response.text
    edges = {e["name"]: e for e in response.json()}
    assert [e["name"] for e in response.json()] == sorted(edges)
    assert edges["edge-fresh"]["alive"] is True
    assert edges["edge-silent"]["alive"] is False
    assert edges["edge-silent"]["status"] == "alive"  # not yet marked lost by the sweep
    assert edges["edge-silent"]["seconds_since_heartbeat"] >= EDGE_LOST_AFTER_S * 4
    assert edges["edge-draining"]["alive"] is False
    fresh = edges["edge-fresh"]
    assert 0 <= fresh["seconds_since_heartbeat"] < EDGE_LOST_AFTER_S
    assert (fresh["quota_bytes"], fresh["free_bytes"], fresh["queued"]) == (
        10 * 2**30,
        4 * 2**30,
        3,
    )
    assert (fresh["site"], fresh["region"], fresh["load"], fresh["version"]) == (
        "CERN-PROD",
        "europe",
        0.25,
        "0.1.0",
    )


async def test_dead_letters_are_listed_newest_first(head: Head, sessions: SessionMaker) -> None:
    assert (await head.client.get("/v1/dead-letters")).json() == []
    async with unit_of_work(sessions) as session:
        for n, request_id in enumerate(["req-1", None, "req-1"]):
            session.add(
                DeadLetter(
                    queue="ess.broker.requests",
                    routing_key="request.created",
                    reason=f"invalid message: number {n}",
                    request_id=request_id,
                    body='{"broken": true}',
                )
            )
            await session.flush()

    everything = await head.client.get("/v1/dead-letters")
    only = await head.client.get("/v1/dead-letters", params={"request_id": "req-1"})
    limited = await head.client.get("/v1/dead-letters", params={"limit": 1})

    assert everything.status_code == 200, everything.text
    assert [d["reason"] for d in everything.json()] == [
        "invalid message: number 2",
        "invalid message: number 1",
        "invalid message: number 0",
    ]
    first = everything.json()[0]
    assert (first["queue"], first["routing_key"], first["body"]) == (
        "ess.broker.requests",
        "request.created",
        '{"broken": true}',
    )
    assert [d["reason"][-1] for d in only.json()] == ["2", "0"]
    assert len(limited.json()) == 1


async def test_request_created_schema_is_a_json_schema(head: Head) -> None:
    response = await head.client.get("/v1/schemas/request-created")

    assert response.status_code == 200
    schema = response.json()
    assert schema["type"] == "object"
    assert schema["title"] == "RequestCreated"
    assert {"dataset", "idempotency_key", "events_per_range"} <= set(schema["required"])
    assert "files" in schema["properties"]
    assert schema["properties"]["event_type"]["const"] == "request.created"
    files = schema["properties"]["files"]
    assert files["type"] == "array" and files["default"] == []
    dataset_file = schema["$defs"]["DatasetFile"]
    assert {"scope", "lfn", "n_events", "size", "adler32", "sources"} <= set(
        dataset_file["properties"]
    )
    # What the schema describes is what the head accepts.
    example = request_body("task-schema")
    assert RequestCreated.model_validate(example).idempotency_key == "task-schema"


async def test_health_and_readiness(head: Head) -> None:
    healthz = await head.client.get("/healthz")
    readyz = await head.client.get("/readyz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    assert (readyz.status_code, readyz.json()) == (200, {"status": "ready"})


async def test_openapi_lists_every_route(head: Head) -> None:
    response = await head.client.get("/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "ESS head API"
    paths = document["paths"]
    expected = {
        "/v1/requests": {"get", "post"},
        "/v1/requests/{request_id}": {"get"},
        "/v1/requests/{request_id}/ranges": {"get"},
        "/v1/requests/{request_id}/events": {"get"},
        "/v1/requests/{request_id}/cancel": {"post"},
        "/v1/requests/{request_id}/retry": {"post"},
        "/v1/admin/expire": {"post"},
        "/v1/dead-letters": {"get"},
        "/v1/schemas/request-created": {"get"},
        "/v1/ranges": {"get"},
        "/v1/ranges/lookup": {"post"},
        "/v1/ranges/on-demand": {"post"},
        "/v1/edges": {"get"},
        "/v1/edges/{name}": {"get"},
        "/v1/edges/{name}/drain": {"post"},
        "/v1/edges/{name}/disable": {"post"},
        "/v1/edges/{name}/enable": {"post"},
        "/v1/edges/{name}/enroll": {"post"},
        "/v1/edges/{name}/enrollment": {"delete"},
        "/v1/edges/{name}/assignments": {"get"},
        "/v1/edges/{name}/assignments/{file_id}": {"get"},
        "/v1/files/{scope}/{lfn}/ranges": {"get"},
        "/v1/files/{scope}/{lfn}/source": {"get"},
        "/v1/objects/{key}": {"get"},
        "/v1/whoami": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }
    assert set(paths) == set(expected)
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
    assert {"201", "200", "409", "422"} <= set(paths["/v1/requests"]["post"]["responses"])
