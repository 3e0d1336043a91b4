"""OpenTelemetry traces across the HTTP and Kafka hops: the correlation id is the trace.

A request starts (or continues, from a W3C `traceparent`) a trace whose 128-bit id is the
correlation id of every event the request causes; each consumer handles an event in a span
of the trace its correlation id names, so one report's whole path (the POST, grading,
duties, pages, the archive) is one trace in the collector. Spans are exported over OTLP
only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; otherwise the
API's no-op tracer costs nothing.
"""

from __future__ import annotations

import contextvars
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    set_span_in_context,
)

tracer = trace.get_tracer("yuqing")

# The correlation id of the request being served: what a command's events carry.
_request_correlation: contextvars.ContextVar[uuid.UUID | None] = contextvars.ContextVar(
    "yuqing_request_correlation", default=None
)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def setup_tracing(service_name: str) -> bool:
    """Export spans over OTLP/HTTP when an endpoint is configured; True when it is."""
    if not any(os.environ.get(v) for v in _ENDPOINT_VARIABLES):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def correlation_of(traceparent: str | None) -> tuple[uuid.UUID, Context | None]:
    """The correlation id a request carries (its trace id) and the caller's span as parent;
    a request without a valid `traceparent` starts a trace of its own."""
    match = _TRACEPARENT.match((traceparent or "").strip().lower())
    if match is None or int(match[1], 16) == 0 or int(match[2], 16) == 0:
        return uuid.uuid4(), None
    trace_id, span_id, flags = int(match[1], 16), int(match[2], 16), int(match[3], 16)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return uuid.UUID(int=trace_id), set_span_in_context(NonRecordingSpan(parent))


def _trace_of(correlation: uuid.UUID, parent_span: int | None = None) -> Context:
    """A context whose trace is `correlation`: the parent of every span of its hops."""
    # A span id is 64 bits and never 0: the correlation's low half stands in for the root.
    span_id = parent_span or (correlation.int & (2**64 - 1)) or 1
    parent = SpanContext(
        correlation.int, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return set_span_in_context(NonRecordingSpan(parent))


@contextmanager
def request_span(
    method: str, path: str, traceparent: str | None
) -> Iterator[tuple[uuid.UUID, Span]]:
    """Serve one request inside its trace, with its correlation id current for commands."""
    correlation, parent = correlation_of(traceparent)
    token = _request_correlation.set(correlation)
    try:
        with tracer.start_as_current_span(
            f"{method} {path}",
            context=parent or _trace_of(correlation),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            yield correlation, span
    finally:
        _request_correlation.reset(token)


def request_correlation() -> uuid.UUID | None:
    return _request_correlation.get()


@contextmanager
def consumer_span(
    service: str,
    topic: str,
    *,
    event_type: str,
    event_id: str,
    incident_id: str,
    correlation: uuid.UUID,
    parent_span: int | None = None,
) -> Iterator[Span]:
    """Handle one consumed event in the trace its correlation id names, as a child of the
    span that published it (`parent_span`, from its `traceparent` header) when known."""
    with tracer.start_as_current_span(
        f"{service} handles {event_type}",
        context=_trace_of(correlation, parent_span),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.message.id": event_id,
            "messaging.consumer.group.name": service,
            "yuqing.event_type": event_type,
            "yuqing.incident_id": incident_id,
        },
    ) as span:
        yield span


def publish_span(
    service: str,
    topic: str,
    *,
    event_type: str,
    event_id: str,
    incident_id: str,
    correlation: uuid.UUID,
) -> Span:
    """The span of one event's publication by `service`'s outbox relay, in the trace its
    correlation id names, started now; the relay ends it when the broker answered."""
    return tracer.start_span(
        f"{service} publishes {event_type}",
        context=_trace_of(correlation),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.message.id": event_id,
            "yuqing.event_type": event_type,
            "yuqing.incident_id": incident_id,
        },
    )


def traceparent_of(span: Span) -> str:
    """The W3C `traceparent` naming `span`, sent with the event it published."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_span_of(traceparent: str | None, correlation: uuid.UUID) -> int | None:
    """The publishing span's id a consumed event's `traceparent` names, when it is of the
    event's own trace (anything else is ignored: the trace is the correlation id)."""
    match = _TRACEPARENT.match((traceparent or "").strip().lower())
    if match is None or int(match[1], 16) != correlation.int or int(match[2], 16) == 0:
        return None
    return int(match[2], 16)
