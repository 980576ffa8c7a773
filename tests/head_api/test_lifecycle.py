"""A request's life after its creation, through the head API on SQLite and PostgreSQL: cancel
(work stops, edges' late results change nothing, the space promised to edges is free), retry
of the failed files only, per-range progress a page at a time, and expiry of old requests with
their range files (local directory and S3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from ess_broker.bookkeeping import handle_file_failed, handle_split_done
from ess_common.db.models import (
    File,
    FileStatus,
    Notification,
    OutboxMessage,
    Range,
    Request,
    RequestStatus,
    utcnow,
)
from ess_common.db.session import SessionMaker, unit_of_work
from ess_common.events import (
    DatasetFile,
    FileFailed,
    FileWork,
    RangeInfo,
    RequestCancelled,
    RequestFailed,
    SplitDone,
    parse_event,
)
from ess_common.store.base import ObjectStore, range_key
from ess_common.store.local import LocalStore
from ess_head_api.lifecycle import expire
from ess_notifier.service import Notifier
from tests.head_api.support import (
    EDGE,
    SCOPE,
    Head,
    file_entry,
    prepare,
    request_body,
    running_head,
)

LFNS = ("EVNT.01.pool.root.1", "EVNT.02.pool.root.1", "EVNT.03.pool.root.1")
DAY = 24 * 3600.0


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store, request_ttl_s=DAY) as running:
        yield running


async def create(head: Head, key: str, *lfns: str) -> str:
    response = await head.client.post("/v1/requests", json=request_body(key, *lfns))
    assert response.status_code == 201, response.text
    request_id: str = response.json()["id"]
    return request_id


async def files_of(sessions: SessionMaker, request_id: str) -> dict[str, File]:
    async with sessions() as session:
        rows = await session.scalars(select(File).where(File.request_id == request_id))
        return {f.lfn: f for f in rows}


async def set_file(sessions: SessionMaker, file_id: int, **values: object) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(update(File).where(File.id == file_id).values(**values))


def work_of(f: File) -> FileWork:
    return FileWork(
        request_id=f.request_id,
        file_id=f.id,
        attempt=f.attempt,
        edge=EDGE,
        file=DatasetFile.model_validate(file_entry(f.lfn)),
        events_per_range=1000,
    )


def split_of(f: File) -> SplitDone:
    return SplitDone(
        work=work_of(f),
        ranges=[
            RangeInfo(first_event=1, last_event=1000, key=f"ranges/{f.id}/1", size=5, adler32="1"),
            RangeInfo(
                first_event=1001, last_event=2000, key=f"ranges/{f.id}/2", size=5, adler32="2"
            ),
        ],
    )


async def outbox_events(sessions: SessionMaker, routing_key: str) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboxMessage.body).where(OutboxMessage.routing_key == routing_key)
        )
        return list(rows)


async def in_flight(sessions: SessionMaker) -> int:
    """Files whose bytes an edge was promised: what the broker counts against its space."""
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(File)
                .where(File.status.in_((FileStatus.ASSIGNED, FileStatus.CACHED)))
            )
            or 0
        )


# --- create -------------------------------------------------------------------------------


async def test_a_request_of_an_unsupported_schema_version_is_refused_with_the_reason(
    head: Head,
) -> None:
    body = request_body("life-v2") | {"schema_version": 2}
    response = await head.client.post("/v1/requests", json=body)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "schema_version"]
    assert "unsupported schema_version 2; supported: 1" in problem["msg"]
    explicit = await head.client.post(
        "/v1/requests", json=request_body("life-v1") | {"schema_version": 1}
    )
    implicit = await head.client.post("/v1/requests", json=request_body("life-v1"))
    assert (explicit.status_code, implicit.status_code) == (201, 200)
    assert explicit.json()["id"] == implicit.json()["id"]


# --- cancel ---------------------------------------------------------------------------------


async def test_cancel_stops_the_work_and_frees_what_edges_were_promised(
    head: Head, sessions: SessionMaker
) -> None:
    request_id = await create(head, "life-cancel", *LFNS)
    files = await files_of(sessions, request_id)
    split, cached, assigned = (files[lfn] for lfn in LFNS)
    for f, status in ((split, FileStatus.ASSIGNED), (cached, FileStatus.CACHED)):
        await set_file(sessions, f.id, status=status, edge=EDGE, attempt=1)
    await set_file(sessions, assigned.id, status=FileStatus.ASSIGNED, edge=EDGE, attempt=1)
    files = await files_of(sessions, request_id)
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_of(files[LFNS[0]]))
    assert await in_flight(sessions) == 2

    response = await head.client.post(
        f"/v1/requests/{request_id}/cancel", json={"reason": "task aborted in JEDI"}
    )

    assert response.status_code == 200, response.text
    view = response.json()
    assert view["status"] == RequestStatus.CANCELLED
    assert view["error"] == "task aborted in JEDI"
    assert view["files_by_status"] == {"split": 1, "cancelled": 2}
    assert await in_flight(sessions) == 0
    (body,) = await outbox_events(sessions, "request.cancelled")
    event = parse_event(body)
    assert isinstance(event, RequestCancelled)
    assert (event.request_id, event.reason) == (request_id, "task aborted in JEDI")

    # The edge's result for a cancelled file arrives late: it changes nothing.
    late = await files_of(sessions, request_id)
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_of(late[LFNS[1]]))
        await handle_file_failed(
            session,
            FileFailed(work=work_of(late[LFNS[2]]), stage="precache", reason="x", retryable=True),
            max_file_attempts=3,
        )
    after = await files_of(sessions, request_id)
    assert [after[lfn].status for lfn in LFNS] == ["split", "cancelled", "cancelled"]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Range)) == 2
        request = await session.get(Request, request_id)
        assert request is not None and request.status == RequestStatus.CANCELLED


async def test_cancel_is_idempotent_and_refused_for_a_ready_request(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    request_id = await create(head, "life-cancel-twice")
    first = await head.client.post(f"/v1/requests/{request_id}/cancel")
    again = await head.client.post(f"/v1/requests/{request_id}/cancel")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["error"] == "cancelled by request"
    # Announced once.
    assert len(await outbox_events(sessions, "request.cancelled")) == 1

    ready = await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="life-ready",
        lfn="EVNT.09.pool.root.1",
        n_events=100,
        events_per_range=100,
    )
    refused = await head.client.post(f"/v1/requests/{ready.request_id}/cancel")
    assert refused.status_code == 409, refused.text
    assert "is ready: it cannot be cancelled" in refused.json()["detail"]
    missing = await head.client.post("/v1/requests/nope/cancel")
    assert missing.status_code == 404


async def test_a_cancel_reason_is_checked(head: Head) -> None:
    request_id = await create(head, "life-cancel-reason")
    response = await head.client.post(f"/v1/requests/{request_id}/cancel", json={"reason": ""})
    assert response.status_code == 422, response.text


# --- retry ----------------------------------------------------------------------------------


async def fail_one_file(sessions: SessionMaker, request_id: str) -> tuple[File, File]:
    """Files 1 split, 2 failed for good at its second attempt: the request failed, as the
    bookkeeping leaves it."""
    files = await files_of(sessions, request_id)
    good, bad = files[LFNS[0]], files[LFNS[1]]
    await set_file(sessions, good.id, status=FileStatus.ASSIGNED, edge=EDGE, attempt=1)
    await set_file(sessions, bad.id, status=FileStatus.ASSIGNED, edge=EDGE, attempt=2)
    files = await files_of(sessions, request_id)
    async with unit_of_work(sessions) as session:
        await handle_split_done(session, split_of(files[LFNS[0]]))
        await handle_file_failed(
            session,
            FileFailed(
                work=work_of(files[LFNS[1]]),
                stage="precache",
                reason="every source had a bad adler32",
                retryable=False,
            ),
            max_file_attempts=3,
        )
    files = await files_of(sessions, request_id)
    return files[LFNS[0]], files[LFNS[1]]


async def test_retry_puts_back_only_the_failed_files(head: Head, sessions: SessionMaker) -> None:
    request_id = await create(head, "life-retry", LFNS[0], LFNS[1])
    _, bad = await fail_one_file(sessions, request_id)
    assert bad.status == FileStatus.FAILED
    failed = await head.client.get(f"/v1/requests/{request_id}")
    assert failed.json()["status"] == RequestStatus.FAILED
    assert "bad adler32" in failed.json()["error"]

    response = await head.client.post(f"/v1/requests/{request_id}/retry")

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["files_retried"] == 1
    view = answer["request"]
    assert (view["status"], view["error"]) == (RequestStatus.ASSIGNED, None)
    after = await files_of(sessions, request_id)
    assert after[LFNS[0]].status == FileStatus.SPLIT
    assert (after[LFNS[0]].attempt, after[LFNS[0]].edge) == (1, EDGE)
    retried = after[LFNS[1]]
    # Back in the pool; its attempts go on counting, so its next assignment is attempt 3.
    assert (retried.status, retried.edge, retried.attempt) == (FileStatus.PENDING, None, 2)

    again = await head.client.post(f"/v1/requests/{request_id}/retry")
    assert again.status_code == 409, again.text
    assert "only a failed request can be retried" in again.json()["detail"]
    assert (await head.client.post("/v1/requests/nope/retry")).status_code == 404


async def test_a_new_failure_after_a_retry_is_announced_again(
    head: Head, sessions: SessionMaker
) -> None:
    request_id = await create(head, "life-refail", LFNS[0], LFNS[1])
    await fail_one_file(sessions, request_id)
    async with httpx.AsyncClient() as http:
        notifier = Notifier(head.state.settings, head.bus, sessions, http)
    (body,) = await outbox_events(sessions, "request.failed")
    first = parse_event(body)
    assert isinstance(first, RequestFailed)
    async with unit_of_work(sessions) as session:
        await notifier.handle_request_event(session, first)

    assert (await head.client.post(f"/v1/requests/{request_id}/retry")).status_code == 200
    # The old failure redelivered now is out of date: not announced.
    async with unit_of_work(sessions) as session:
        await notifier.handle_request_event(session, first)
    files = await files_of(sessions, request_id)
    await set_file(sessions, files[LFNS[1]].id, status=FileStatus.ASSIGNED, edge=EDGE, attempt=3)
    files = await files_of(sessions, request_id)
    async with unit_of_work(sessions) as session:
        await handle_file_failed(
            session,
            FileFailed(work=work_of(files[LFNS[1]]), stage="split", reason="no", retryable=False),
            max_file_attempts=3,
        )
    bodies = await outbox_events(sessions, "request.failed")
    second = parse_event(bodies[-1])
    assert isinstance(second, RequestFailed) and second.event_id != first.event_id
    async with unit_of_work(sessions) as session:
        await notifier.handle_request_event(session, second)

    async with sessions() as session:
        rows = (
            await session.execute(
                select(Notification.id, Notification.event, Notification.payload).order_by(
                    Notification.id
                )
            )
        ).all()
    (old_id, old_event, old_payload), (_, new_event, new_payload) = rows
    assert old_event == f"request.failed@{old_id}"
    assert new_event == "request.failed"
    assert old_payload["event_id"] == str(first.event_id)
    assert new_payload["event_id"] == str(second.event_id)


# --- per-range progress ---------------------------------------------------------------------


async def test_ranges_are_listed_a_page_at_a_time(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    prepared = await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="life-pages",
        lfn="EVNT.05.pool.root.1",
        n_events=1000,
        events_per_range=100,
    )
    url = f"/v1/requests/{prepared.request_id}/ranges"
    seen: list[dict[str, object]] = []
    after: int | None = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"after": after} if after is not None else {})
        response = await head.client.get(url, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["request_id"] == prepared.request_id
        seen += page["ranges"]
        pages += 1
        after = page["next_after"]
        if after is None:
            break
    assert pages == 4
    assert [(r["first_event"], r["last_event"]) for r in seen] == [
        (r.first_event, r.last_event) for r in prepared.ranges
    ]
    assert [(r["key"], r["size"], r["adler32"]) for r in seen] == [
        (r.key, r.size, r.adler32) for r in prepared.ranges
    ]
    assert {r["file_id"] for r in seen} == {prepared.file_id}

    one_file = await head.client.get(url, params={"file_id": prepared.file_id + 1})
    assert one_file.json()["ranges"] == []
    missing = await head.client.get("/v1/requests/nope/ranges")
    assert missing.status_code == 404
    too_many = await head.client.get(url, params={"limit": 1001})
    assert too_many.status_code == 422


# --- expiry ---------------------------------------------------------------------------------


async def age(sessions: SessionMaker, request_id: str, seconds: float) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(
            update(Request)
            .where(Request.id == request_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


async def test_old_finished_requests_expire_with_their_range_files(
    sessions: SessionMaker, store: ObjectStore, tmp_path: Path
) -> None:
    async with running_head(sessions, store, request_ttl_s=DAY) as head:
        old = await prepare(
            sessions,
            store,
            tmp_path / "old",
            key="life-old",
            lfn="EVNT.06.pool.root.1",
            n_events=700,
            events_per_range=100,
        )
        recent = await prepare(
            sessions,
            store,
            tmp_path / "recent",
            key="life-recent",
            lfn="EVNT.07.pool.root.1",
            n_events=200,
            events_per_range=100,
        )
        open_id = await create(head, "life-open")
        cancelled_id = await create(head, "life-cancelled")
        assert (await head.client.post(f"/v1/requests/{cancelled_id}/cancel")).status_code == 200
        # Objects no range row names: a late result of another attempt at the old file,
        # and an upload of the cancelled request's work, stopped half way.
        (cancelled_file,) = (await files_of(sessions, cancelled_id)).values()
        unrecorded = tmp_path / "unrecorded.root"
        unrecorded.write_bytes(b"an attempt that never counted")
        stray = {
            "old": range_key(SCOPE, "EVNT.06.pool.root.1", 100, old.file_id, 7, 1, 100),
            "cancelled": range_key(SCOPE, cancelled_file.lfn, 100, cancelled_file.id, 1, 101, 200),
            "recent": range_key(SCOPE, "EVNT.07.pool.root.1", 100, recent.file_id, 7, 1, 100),
        }
        for key in stray.values():
            await store.put_file(key, unrecorded)
        for request_id in (old.request_id, open_id, cancelled_id):
            await age(sessions, request_id, 2 * DAY)
        await age(sessions, recent.request_id, DAY / 2)
        async with unit_of_work(sessions) as session:
            session.add(
                Notification(
                    request_id=old.request_id,
                    event="request.ready",
                    kind="message",
                    target="panda:request.ready",
                    payload={},
                )
            )

        response = await head.client.post("/v1/admin/expire")

        assert response.status_code == 200, response.text
        assert sorted(response.json()["expired"]) == sorted([old.request_id, cancelled_id])
        for r in old.ranges:
            assert await store.size(r.key) is None, r.key
        for r in recent.ranges:
            assert await store.size(r.key) == r.size
        assert await store.size(stray["old"]) is None
        assert await store.size(stray["cancelled"]) is None
        assert await store.size(stray["recent"]) == unrecorded.stat().st_size
        async with sessions() as session:
            left = set((await session.scalars(select(Request.id))).all())
            assert left == {recent.request_id, open_id}
            for table in (File, Range, Notification):
                orphans = await session.scalar(
                    select(func.count())
                    .select_from(table)
                    .where(table.request_id.in_([old.request_id, cancelled_id]))
                )
                assert orphans == 0, table
        # Nothing left to expire; the lookup of an expired file answers not found.
        assert (await head.client.post("/v1/admin/expire")).json()["expired"] == []
        gone = await head.client.get(
            "/v1/ranges",
            params={
                "scope": "mc15_13TeV",
                "LFN": "EVNT.06.pool.root.1",
                "startEvent": 1,
                "lastEvent": 1,
            },
        )
        assert gone.status_code == 404
        # The same key again is a new request that prepares the dataset anew.
        again = await head.client.post("/v1/requests", json=request_body("life-cancelled"))
        assert again.status_code == 201, again.text
        assert again.json()["id"] != cancelled_id


async def test_expiry_deletes_in_batches_and_can_be_turned_off(
    head: Head, sessions: SessionMaker, tmp_path: Path
) -> None:
    old = await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="life-batches",
        lfn="EVNT.08.pool.root.1",
        n_events=1000,
        events_per_range=100,
    )
    await age(sessions, old.request_id, 2 * DAY)
    store = head.state.store
    assert await expire(sessions, store, 0) == []
    assert await store.size(old.ranges[0].key) is not None

    expired = await expire(sessions, store, DAY, requests_per_round=1, ranges_per_batch=3)

    assert expired == [old.request_id]
    for r in old.ranges:
        assert await store.size(r.key) is None
