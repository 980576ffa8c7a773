"""Delivery is at least once, so an edge may work one event twice. What it publishes for it
carries an id derived from the event's: the second outcome is the same event again, which a
consumer (and a trace) tells apart from the outcome of another event."""

from __future__ import annotations

from ess_common.edge_work import work_handler
from ess_common.errors import PermanentError
from ess_common.events import Event, FileAssigned, FileCached, parse_event
from ess_common.messaging.bus import Delivery
from ess_common.messaging.memory import MemoryBus
from tests.common.test_events import work
from tests.helpers import eventually


async def outcomes(events: list[FileAssigned], *, fail: bool = False) -> list[Event]:
    bus = MemoryBus("ess-redelivery-test")
    await bus.start()
    published: list[bytes] = []

    async def keep(delivery: Delivery) -> None:
        published.append(delivery.body)

    await bus.consume("ess-redelivery-test.watch", ["#"], keep)

    async def do(event: FileAssigned) -> Event:
        if fail:
            raise PermanentError("no source holds the file")
        return FileCached(work=event.work, cache_path="/x")

    handler = work_handler(bus, FileAssigned, "precache", 3, do)
    for event in events:
        await handler(Delivery("q", event.routing_key(), event.model_dump_json().encode()))
    try:
        await eventually(lambda: len(published) == len(events))
    finally:
        await bus.close()
    return [parse_event(body) for body in published]


async def test_working_one_event_twice_publishes_one_event_twice() -> None:
    assigned = FileAssigned(work=work())
    first, again = await outcomes([assigned, assigned])
    assert isinstance(first, FileCached) and first.event_id == again.event_id
    assert first.event_id != assigned.event_id


async def test_another_event_of_the_same_work_has_an_outcome_of_its_own() -> None:
    assigned = FileAssigned(work=work())
    reassigned = FileAssigned(work=assigned.work)
    first, second = await outcomes([assigned, reassigned])
    assert first.event_id != second.event_id


async def test_a_failure_reported_twice_is_one_event() -> None:
    assigned = FileAssigned(work=work())
    first, again = await outcomes([assigned, assigned], fail=True)
    assert first.type_name() == "file.failed" and first.event_id == again.event_id
