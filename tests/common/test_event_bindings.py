"""Queues are bound from the event types their handlers take: each event class knows the
routing-key pattern that receives it, and one map of type to handler (`Routes`) gives both a
queue's bindings and what it dispatches, on either bus."""

from __future__ import annotations

import typing

import pytest

from ess_common.events import (
    AnyEvent,
    EdgeEvent,
    Event,
    FileCached,
    FileFailed,
    RequestCancelled,
)
from ess_common.messaging.bus import Bus, Delivery, subscribe
from ess_common.messaging.handlers import Routes, event_handler
from tests.common.state_rows import work_of
from tests.helpers import UniqueNames, eventually


def _event_types() -> list[type[Event]]:
    union = typing.get_args(AnyEvent)[0]
    return list(typing.get_args(union))


def _matches(pattern: str, key: str) -> bool:
    """RabbitMQ's topic match, for patterns with `*` (one word) only."""
    words, keys = pattern.split("."), key.split(".")
    return len(words) == len(keys) and all(w in ("*", k) for w, k in zip(words, keys, strict=True))


def test_each_event_type_names_its_own_binding() -> None:
    types = _event_types()
    assert len({t.type_name() for t in types}) == len(types)
    for t in types:
        assert t.type_name() == t.model_fields["event_type"].default
        if issubclass(t, EdgeEvent):
            assert t.binding() == f"{t.type_name()}.*"
            assert t.binding("edge-a") == f"{t.type_name()}.edge-a"
        else:
            assert t.binding() == t.binding("edge-a") == t.type_name()


def test_an_edge_event_is_routed_to_its_edge_and_received_by_its_binding() -> None:
    cached = FileCached(work=work_of("r-1", 1), cache_path="/cache/f")
    assert cached.routing_key() == "file.cached.edge-a"
    assert _matches(FileCached.binding(), cached.routing_key())
    assert _matches(FileCached.binding("edge-a"), cached.routing_key())
    assert not _matches(FileCached.binding("edge-b"), cached.routing_key())
    cancelled = RequestCancelled(request_id="r-1", dataset="s:d", idempotency_key="k", reason="x")
    assert _matches(RequestCancelled.binding("edge-a"), cancelled.routing_key())


async def _ignore(delivery: Delivery, event: Event) -> None:
    return None


def test_routes_give_the_bindings_and_refuse_a_type_twice() -> None:
    routes = Routes[Delivery]().on(FileCached, _ignore).on(FileFailed, _ignore)
    handler = event_handler(routes)
    assert handler.events == (FileCached, FileFailed)
    assert handler.bindings() == ["file.cached.*", "file.failed.*"]
    assert handler.bindings("edge-b") == ["file.cached.edge-b", "file.failed.edge-b"]
    with pytest.raises(ValueError, match="FileCached is routed twice"):
        routes.on(FileCached, _ignore)


async def test_a_queue_subscribed_for_one_edge_gets_that_edges_events(
    bus: Bus, unique: UniqueNames
) -> None:
    received: dict[str, list[str]] = {"edge-a": [], "edge-b": []}

    def handler_of(edge: str) -> Routes[Delivery]:
        async def record(delivery: Delivery, event: FileCached) -> None:
            received[edge].append(event.work.request_id)

        return Routes[Delivery]().on(FileCached, record)

    for edge in received:
        queue = unique(f"bindings.{edge}")
        await subscribe(bus, queue, event_handler(handler_of(edge)), edge=edge)
    cached = FileCached(work=work_of("r-1", 1), cache_path="/cache/f")
    await bus.publish(cached.routing_key(), cached.model_dump_json().encode())
    await eventually(lambda: received["edge-a"] == ["r-1"], message=str(received))
    assert received["edge-b"] == []
