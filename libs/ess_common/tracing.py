"""OpenTelemetry traces: one trace per request, from the head through the broker, the edge's
precacher and splitter, back to the broker and on to the notifier.

The trace context travels in every message's headers as W3C trace context (`traceparent`,
`tracestate`): `inject` adds the current one to what is published (the outbox keeps it with
the event until its relay publishes it), and `consuming` continues it around each handler,
as a span per hop. A request's trace begins where the request is made (the head's `POST`), or
at the broker when PanDA's message carries none. Heartbeats are not traced: they belong to no
request's work.

Each process makes its spans with an SDK tracer (`configure`), so that trace ids exist and
reach the logs (`trace_id` next to `request_id` on every line of a request's work) whether or
not anything collects the spans. Spans are exported over OTLP/HTTP only when
`ESS_OTLP_ENDPOINT` is set; otherwise nothing is exported and a span costs microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACEPARENT = "traceparent"
#: Routing keys whose deliveries are not traced.
UNTRACED = frozenset({"edge.heartbeat"})

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer = trace.get_tracer("ess")


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Message headers as the propagator reads them: AMQP may hand text over as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def configure(service: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """This process's tracer, for `service`; spans go to `otlp_endpoint` (an OTLP/HTTP
    collector, e.g. http://collector:4318) when one is given. Shut it down at exit."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if otlp_endpoint:
        # Imported only when used: the exporter brings protobuf and requests along.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use(provider)
    return provider


def use(provider: trace.TracerProvider | None) -> None:
    """Make spans with `provider` (None: the global one, which by default makes none)."""
    global _tracer
    _tracer = (provider or trace.get_tracer_provider()).get_tracer("ess")


def inject(headers: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current trace context to `headers` (unless they carry one already)."""
    if TRACEPARENT not in headers:
        _PROPAGATOR.inject(headers)
    return headers


def current_headers() -> dict[str, str]:
    """The current trace context as headers, to be published later (the outbox)."""
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers)
    return headers


def extract(headers: Mapping[str, Any]) -> Context | None:
    """The trace context the headers carry, or None."""
    if TRACEPARENT not in headers:
        return None
    context = _PROPAGATOR.extract(headers, getter=_GETTER)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _bind(span: Span) -> None:
    context = span.get_span_context()
    if context.is_valid:
        structlog.contextvars.bind_contextvars(
            trace_id=format(context.trace_id, "032x"), span_id=format(context.span_id, "016x")
        )


def trace_id_of(headers: Mapping[str, Any] | None) -> str | None:
    """The trace id of a kept trace context (`current_headers`), or None."""
    context = extract(headers or {})
    if context is None:
        return None
    return format(trace.get_current_span(context).get_span_context().trace_id, "032x")


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


@contextmanager
def consuming(
    routing_key: str, queue: str, headers: Mapping[str, Any], attempt: int
) -> Iterator[Span | None]:
    """The span of one delivery's handling, child of the trace the message carries; its ids
    are bound to the log context meanwhile. None for an untraced delivery."""
    if routing_key in UNTRACED:
        yield None
        return
    with _tracer.start_as_current_span(
        f"{routing_key} process",
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation": "process",
            "messaging.destination.name": queue,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "ess.attempt": attempt,
        },
    ) as span:
        _bind(span)
        try:
            yield span
        finally:
            structlog.contextvars.unbind_contextvars("trace_id", "span_id")


@contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[Span]:
    """A span for one piece of work inside a hop (a download, a split)."""
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


@contextmanager
def continued(
    headers: Mapping[str, Any] | None, name: str, **attributes: str | int
) -> Iterator[Span]:
    """A span in the trace of a kept context (`current_headers`), for work done later and
    elsewhere (a notification's attempt by a periodic round); its ids in the log context."""
    with _tracer.start_as_current_span(
        name, context=extract(headers or {}), attributes=attributes
    ) as current:
        _bind(current)
        try:
            yield current
        finally:
            structlog.contextvars.unbind_contextvars("trace_id", "span_id")


def failed(span: Span | None, reason: str) -> None:
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, reason[:500]))


def bind_event(event_id: str) -> None:
    """Name the event the current delivery carries: in the logs and on the span (a redelivery
    or a repeated publish of one event is told apart from another event by it)."""
    structlog.contextvars.bind_contextvars(event_id=event_id)
    trace.get_current_span().set_attribute("ess.event_id", event_id)


def bind_request(request_id: str) -> None:
    """Name the request that the current work belongs to: in the logs and on the span."""
    structlog.contextvars.bind_contextvars(request_id=request_id)
    trace.get_current_span().set_attribute("ess.request_id", request_id)


_REQUEST_PATH = re.compile(r"^/v1/requests/([^/]+)")
#: HTTP requests that begin a trace of their own: those that change something. Reads are
#: traced only when the caller sends a trace context.
_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class TraceRequests:
    """ASGI middleware: a server span per HTTP request that changes something (or comes with
    a trace context), and the request and trace ids bound to the log context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = extract(headers)
        named = _REQUEST_PATH.match(scope["path"])
        bound = {"request_id": named.group(1)} if named else {}
        if parent is None and scope["method"] not in _CHANGING:
            with structlog.contextvars.bound_contextvars(**bound):
                await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with (
            structlog.contextvars.bound_contextvars(**bound),
            _tracer.start_as_current_span(
                f"{scope['method']} {scope['path']}", context=parent, kind=SpanKind.SERVER
            ) as current,
        ):
            _bind(current)
            try:
                await self.app(scope, receive, sending)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    current.update_name(f"{scope['method']} {template}")
                current.set_attribute("http.request.method", scope["method"])
                current.set_attribute("http.response.status_code", status)
                if status >= 500:
                    current.set_status(Status(StatusCode.ERROR))
                structlog.contextvars.unbind_contextvars("trace_id", "span_id")
