"""Pilot lookups: which prepared files hold a PanDA event range (1-based positions in the
original file), on SQLite and the real PostgreSQL, with files prepared through the broker's
bookkeeping as an edge leaves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ess_common.db.session import SessionMaker
from ess_common.store.local import LocalStore
from tests.head_api.support import (
    SCOPE,
    SIGNED_URL_TTL_S,
    Head,
    Prepared,
    prepare,
    record,
    running_head,
)

LFN = "EVNT.08716373._000060.pool.root.1"
N_EVENTS = 1000
EPR = 100


@pytest.fixture
async def head(sessions: SessionMaker, tmp_path: Path) -> AsyncIterator[Head]:
    store = LocalStore(tmp_path / "objects", "http://testserver", b"k")
    await store.start()
    async with running_head(sessions, store) as running:
        yield running


@pytest.fixture
async def prepared(head: Head, sessions: SessionMaker, tmp_path: Path) -> Prepared:
    return await prepare(
        sessions,
        head.state.store,
        tmp_path / "split",
        key="task-100",
        lfn=LFN,
        n_events=N_EVENTS,
        events_per_range=EPR,
    )


async def lookup(head: Head, start: int, last: int, *, lfn: str = LFN) -> Any:
    return await head.client.get(
        "/v1/ranges", params={"scope": SCOPE, "LFN": lfn, "startEvent": start, "lastEvent": last}
    )


def spans(answer: dict[str, Any]) -> list[tuple[int, int, int, int, int, int]]:
    """Per piece: the events its file holds, the asked events in it, and their local numbers."""
    return [
        (
            p["file_first_event"],
            p["file_last_event"],
            p["start_event"],
            p["last_event"],
            p["local_start_event"],
            p["local_last_event"],
        )
        for p in answer["pieces"]
    ]


async def test_range_inside_one_file_is_one_piece_numbered_locally(
    head: Head, prepared: Prepared
) -> None:
    response = await lookup(head, 123, 150)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["scope"], answer["lfn"], answer["start_event"], answer["last_event"]) == (
        SCOPE,
        LFN,
        123,
        150,
    )
    assert spans(answer) == [(101, 200, 123, 150, 23, 50)]
    (piece,) = answer["pieces"]
    (expected,) = [r for r in prepared.ranges if r.first_event == 101]
    assert (piece["key"], piece["size"], piece["adler32"]) == (
        expected.key,
        expected.size,
        expected.adler32,
    )
    assert piece["expires_in_s"] == SIGNED_URL_TTL_S
    assert piece["url"].startswith("http://testserver/v1/objects/")


async def test_single_event_at_a_file_boundary(head: Head, prepared: Prepared) -> None:
    assert spans((await lookup(head, 200, 200)).json()) == [(101, 200, 200, 200, 100, 100)]
    assert spans((await lookup(head, 201, 201)).json()) == [(201, 300, 201, 201, 1, 1)]
    assert spans((await lookup(head, 1, 1)).json()) == [(1, 100, 1, 1, 1, 1)]
    assert spans((await lookup(head, 1000, 1000)).json()) == [(901, 1000, 1000, 1000, 100, 100)]


async def test_range_straddling_two_files_is_answered_with_both(
    head: Head, prepared: Prepared
) -> None:
    response = await lookup(head, 190, 230)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert spans(answer) == [(101, 200, 190, 200, 90, 100), (201, 300, 201, 230, 1, 30)]
    keys = {r.first_event: r.key for r in prepared.ranges}
    assert [p["key"] for p in answer["pieces"]] == [keys[101], keys[201]]
    # Together the pieces hold exactly the asked events, each once.
    assert sum(p["last_event"] - p["start_event"] + 1 for p in answer["pieces"]) == 41


async def test_the_whole_file(head: Head, prepared: Prepared) -> None:
    response = await lookup(head, 1, N_EVENTS)

    assert response.status_code == 200, response.text
    assert spans(response.json()) == [
        (first, first + EPR - 1, first, first + EPR - 1, 1, EPR)
        for first in range(1, N_EVENTS + 1, EPR)
    ]


@pytest.mark.parametrize(
    ("start", "last"),
    [(0, 10), (0, 0), (10, 5), (-3, 4)],
    ids=["zero", "both-zero", "reversed", "negative"],
)
async def test_positions_outside_the_1_based_convention_are_refused(
    head: Head, prepared: Prepared, start: int, last: int
) -> None:
    response = await lookup(head, start, last)

    assert response.status_code == 422, response.text
    assert "1-based" in str(response.json()["detail"])


async def test_events_beyond_the_file_are_refused(head: Head, prepared: Prepared) -> None:
    for start, last in ((995, N_EVENTS + 1), (N_EVENTS + 1, N_EVENTS + 5)):
        response = await lookup(head, start, last)
        assert response.status_code == 422, response.text
        reason = response.json()["detail"]
        assert f"lastEvent {last}" in reason
        assert f"{N_EVENTS} events" in reason


async def test_unknown_file_is_404(head: Head, prepared: Prepared) -> None:
    response = await lookup(head, 1, 10, lfn="EVNT.unknown.pool.root.1")

    assert response.status_code == 404, response.text
    assert "not known" in response.json()["detail"]


async def test_known_file_not_yet_split_is_404_not_prepared(
    head: Head, sessions: SessionMaker
) -> None:
    await record(sessions, "task-pending", LFN, N_EVENTS, EPR)

    response = await lookup(head, 1, 10)

    assert response.status_code == 404, response.text
    assert "not prepared" in response.json()["detail"]


async def test_the_copy_with_fewest_pieces_wins(
    head: Head, sessions: SessionMaker, prepared: Prepared, tmp_path: Path
) -> None:
    coarse = await prepare(
        sessions,
        head.state.store,
        tmp_path / "coarse",
        key="task-500",
        lfn=LFN,
        n_events=N_EVENTS,
        events_per_range=500,
    )
    coarse_keys = {r.key for r in coarse.ranges}
    fine_keys = {r.key for r in prepared.ranges}

    # Two pieces of the fine copy or one of the coarse: the coarse one.
    straddling = (await lookup(head, 150, 250)).json()
    assert spans(straddling) == [(1, 500, 150, 250, 150, 250)]
    assert straddling["pieces"][0]["key"] in coarse_keys

    # Across the coarse copy's boundary: two pieces of either, and no mixing of copies.
    across = (await lookup(head, 450, 550)).json()
    assert len(across["pieces"]) == 2
    keys = {p["key"] for p in across["pieces"]}
    assert keys <= coarse_keys or keys <= fine_keys

    # Inside one fine range: one piece, numbered within whichever copy answered.
    (piece,) = (await lookup(head, 120, 130)).json()["pieces"]
    assert piece["local_start_event"] == 120 - piece["file_first_event"] + 1


async def test_batch_lookup_answers_every_panda_range(head: Head, prepared: Prepared) -> None:
    def panda(n: int, start: int, last: int, lfn: str = LFN) -> dict[str, Any]:
        return {
            "eventRangeID": f"12164365-3616045203-10980024041-{n}-8",
            "LFN": lfn,
            "GUID": "2FC641BA-0000-0000-0000-000000000000",
            "scope": SCOPE,
            "startEvent": start,
            "lastEvent": last,
        }

    asked = [
        panda(1, 123, 150),
        panda(2, 190, 230),
        panda(3, 1, 10, lfn="EVNT.unknown.pool.root.1"),
        panda(4, 0, 10),
        panda(5, 990, 1200),
        panda(6, 1000, 1000),
    ]

    response = await head.client.post("/v1/ranges/lookup", json={"eventRanges": asked})

    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["eventRangeID"] for r in results] == [a["eventRangeID"] for a in asked]
    assert [r["status"] for r in results] == ["ok", "ok", "failed", "failed", "failed", "ok"]
    assert spans(results[0]) == [(101, 200, 123, 150, 23, 50)]
    assert spans(results[1]) == [(101, 200, 190, 200, 90, 100), (201, 300, 201, 230, 1, 30)]
    assert spans(results[5]) == [(901, 1000, 1000, 1000, 100, 100)]
    for ok in (results[0], results[1], results[5]):
        assert ok["reason"] is None
    for failed in results[2:5]:
        assert failed["pieces"] == []
    assert "not known" in results[2]["reason"]
    assert "1-based" in results[3]["reason"]
    assert "1000 events" in results[4]["reason"]


async def test_batch_lookup_refuses_a_range_without_its_fields(head: Head) -> None:
    body = {"eventRanges": [{"eventRangeID": "1-2-3-4-5", "LFN": LFN, "scope": SCOPE}]}

    response = await head.client.post("/v1/ranges/lookup", json=body)

    assert response.status_code == 422
    missing = {p["loc"][-1] for p in response.json()["detail"]}
    assert missing == {"startEvent", "lastEvent"}
