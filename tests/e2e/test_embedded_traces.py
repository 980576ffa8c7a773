"""One request, one trace: on the embedded deployment, spans collected by the OpenTelemetry SDK's
in-memory exporter show every hop of a request's work (the head's POST, the broker, each edge's
precacher and splitter, the broker's bookkeeping, the notifier) in a single trace; and every log
line of that work carries the request id and the trace id.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ess_cli.demo import request_body
from ess_cli.embedded import Embedded, embedded_settings
from ess_cli.sample import make_sample_dataset
from ess_common import tracing
from tests.helpers import eventually, free_port


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


class LogLines:
    """Every log line, with what the context bound to it."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def __call__(
        self, _: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        self.lines.append(dict(event))
        raise structlog.DropEvent


@pytest.fixture
def logs() -> LogLines:
    lines = LogLines()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, lines])
    return lines


def hop(span: ReadableSpan) -> tuple[str, str]:
    """(the event, the queue that took it without the exchange's name, and an edge's queue
    by its role): `("file.cached", "cached")` for an edge's splitter,
    `("file.cached", "broker.results")` for the broker."""
    attributes = span.attributes or {}
    event = str(attributes["messaging.rabbitmq.destination.routing_key"])
    queue = str(attributes["messaging.destination.name"]).split(".", 1)[1]
    if event.startswith(("file.", "split.")):
        event = event.rsplit(".", 1)[0]  # the edge's name
    return event, queue.rsplit(".", 1)[1] if queue.startswith("edge.") else queue


def hex_id(value: int) -> str:
    return format(value, "032x")


async def test_a_request_is_one_trace_with_a_span_per_hop(
    tmp_path: Path, spans: InMemorySpanExporter, logs: LogLines
) -> None:
    files = make_sample_dataset(tmp_path / "dataset")[:2]
    head, edges = embedded_settings(tmp_path / "ess", free_port(), edges=2)
    async with Embedded(head, edges) as ess, httpx.AsyncClient(timeout=30) as client:

        async def edges_alive() -> bool:
            listed: list[dict[str, Any]] = (await client.get(f"{ess.url}/v1/edges")).json()
            return sum(bool(e["alive"]) for e in listed) == len(edges)

        await eventually(edges_alive, message="both edges heartbeat")
        created = await client.post(f"{ess.url}/v1/requests", json=request_body(files, 500))
        assert created.status_code == 201, created.text
        request_id = created.json()["id"]

        async def notified() -> bool:
            answer = await client.get(
                f"{ess.url}/v1/requests/{request_id}/events",
                headers={"Accept": "application/json"},
            )
            history: list[dict[str, Any]] = answer.json()
            return any(e["kind"] == "notified" for e in history)

        await eventually(notified, timeout=60, message="the request ready and PanDA told")

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    root = next(s for s in finished if s.kind is SpanKind.SERVER and s.name == "POST /v1/requests")
    assert root.context is not None
    trace_id = root.context.trace_id
    ours = [s for s in finished if s.context is not None and s.context.trace_id == trace_id]
    names = [s.name for s in ours]
    consumed = [s for s in ours if s.kind is SpanKind.CONSUMER]
    # Delivery is at least once: a retried delivery, or an event two relays published at the
    # same moment (SQLite has no row locks), is another span of the same event.
    handled = {(hop(s), str((s.attributes or {})["ess.event_id"])) for s in consumed}
    hops = [h for h, _ in handled]
    # A hop per event: the broker, each file's precacher and splitter (two files on two edges),
    # the broker's record of each result, the notifier.
    n = len(files)
    expected = [
        ("request.created", "broker.requests", 1),
        ("file.assigned", "assigned", n),  # each edge's precacher
        ("file.cached", "cached", n),  # each edge's splitter
        ("file.cached", "broker.results", n),
        ("split.done", "broker.results", n),
        ("request.ready", "notifier", 1),
    ]
    for event, queue, times in expected:
        assert hops.count((event, queue)) == times, (event, queue, hops)
    assert len(hops) == sum(times for *_, times in expected), hops
    assert names.count("precache.download") == len(files), names
    assert names.count("split.file") == len(files), names
    # One tree: every span but the root has its parent in the trace.
    ids = {s.context.span_id for s in ours if s.context is not None}
    for s in ours:
        if s is not root:
            assert s.parent is not None and s.parent.span_id in ids, s.name
    # No other trace holds this request's work.
    for s in finished:
        if s.attributes and s.attributes.get("ess.request_id") == request_id:
            assert s.context is not None and s.context.trace_id == trace_id, s.name

    # Every log line of the request's work carries its request id and its trace id.
    work = {"request.recorded", "files.assigned", "file.cached", "file.split", "request.ready"}
    seen = [line for line in logs.lines if line.get("event") in work]
    assert {line["event"] for line in seen} >= work - {"request.recorded"}, seen
    for line in seen:
        assert line.get("request_id") == request_id, line
        assert line.get("trace_id") == hex_id(trace_id), line
