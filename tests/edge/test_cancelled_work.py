"""Queued work of a cancelled request is dropped by the edge's workers: the edge daemon marks
`request.cancelled` where they look, and they acknowledge such work unworked, publishing
nothing and releasing what it held; other work goes on."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ess_common.edge_work import CancelledRequests, work_handler
from ess_common.events import Event, FileAssigned, FileCached, parse_event
from ess_common.messaging.bus import Delivery
from ess_common.messaging.memory import MemoryBus
from tests.common.test_events import work
from tests.helpers import eventually


async def test_work_of_a_cancelled_request_is_dropped_and_other_work_goes_on(
    tmp_path: Path,
) -> None:
    bus = MemoryBus("ess-cancel-test")
    await bus.start()
    published: list[bytes] = []

    async def keep(delivery: Delivery) -> None:
        published.append(delivery.body)

    await bus.consume("ess-cancel-test.watch", ["#"], keep)
    cancelled = CancelledRequests(tmp_path)
    worked: list[str] = []
    dropped: list[str] = []

    async def do(event: FileAssigned) -> Event:
        worked.append(event.work.request_id)
        return FileCached(work=event.work, cache_path="/x")

    handler = work_handler(
        bus,
        FileAssigned,
        "precache",
        3,
        do,
        cancelled=cancelled,
        dropped=lambda e: dropped.append(e.work.request_id),
    )
    gone, kept = FileAssigned(work=work()), FileAssigned(work=work())
    cancelled.mark(gone.work.request_id)
    for event in (gone, kept):
        await handler(Delivery("q", event.routing_key(), event.model_dump_json().encode()))
    try:
        await eventually(lambda: len(published) == 1)
    finally:
        await bus.close()

    assert worked == [kept.work.request_id]
    assert dropped == [gone.work.request_id]
    assert [parse_event(body).event_type for body in published] == ["file.cached"]


def test_marks_are_forgotten_after_their_time(tmp_path: Path) -> None:
    cancelled = CancelledRequests(tmp_path, keep_s=60)
    cancelled.mark("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    cancelled.mark("../../escape")
    assert "1b4e28ba-2fa1-11d2-883f-0016d3cca427" in cancelled
    assert {p.name for p in (tmp_path / "cancelled").iterdir()} == {
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "escape",
    }
    old = time.time() - 120
    os.utime(tmp_path / "cancelled" / "escape", (old, old))
    assert cancelled.forget_old() == 1
    assert "1b4e28ba-2fa1-11d2-883f-0016d3cca427" in cancelled
