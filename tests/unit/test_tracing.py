"""One report's path is one trace: the POST that filed it (continuing the caller's
`traceparent`) and every consumer hop after it share the trace id, which is the
correlation id its events carry, as an OpenTelemetry collector would receive them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.grading.bootstrap import build as build_grading
from services.intake.bootstrap import build as build_intake
from services.notification.bootstrap import build as build_notification
from shared.tracing import correlation_of
from tests.fakes.harness import fake_service
from tests.fakes.mongo import FakeMongo
from tests.unit.test_intake_service import report

EXPORTED = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTED))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    # The process's provider is set once; the services' tracer reaches it through the API.
    trace.set_tracer_provider(_PROVIDER)
    EXPORTED.clear()
    yield EXPORTED
    EXPORTED.clear()


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


def test_a_valid_traceparent_names_the_correlation_and_anything_else_starts_a_trace() -> None:
    correlation, parent = correlation_of(TRACEPARENT)
    assert correlation == uuid.UUID(TRACE_ID)
    assert parent is not None
    for bad in (None, "", "garbage", f"00-{'0' * 32}-{CALLER_SPAN}-01", f"01-{TRACE_ID}-x-01"):
        fresh, none = correlation_of(bad)
        assert fresh != uuid.UUID(TRACE_ID)
        assert none is None


async def test_the_post_and_every_consumer_hop_after_it_are_one_trace(
    spans: InMemorySpanExporter,
) -> None:
    mongo = FakeMongo()
    now = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
    async with (
        fake_service("intake", build_intake, mongo=mongo, clock=lambda: now) as intake,
        fake_service("grading", build_grading, mongo=mongo) as grading,
        fake_service("notification", build_notification, mongo=mongo) as notification,
    ):
        office = intake.token("office-li", "county", "office")
        async with intake.http() as http:
            answer = await http.post(
                "/intake/v1/reports", json=report(), headers={**office, "traceparent": TRACEPARENT}
            )
        assert answer.status_code == 201, answer.text
        assert answer.headers["x-correlation-id"] == str(uuid.UUID(TRACE_ID))

        filed = await intake.published()
        assert filed
        assert {e.correlation_id for e in filed} == {uuid.UUID(TRACE_ID)}
        await grading.consume(*filed)
        graded = await grading.published()
        assert graded
        assert {e.correlation_id for e in graded} == {uuid.UUID(TRACE_ID)}
        await notification.consume(*filed, *graded)

    finished = spans.get_finished_spans()
    server = [s for s in finished if s.kind is SpanKind.SERVER]
    hops = [s for s in finished if s.kind is SpanKind.CONSUMER]
    (post,) = [s for s in server if s.name == "POST /intake/v1/reports"]
    assert post.parent is not None
    assert f"{post.parent.span_id:016x}" == CALLER_SPAN  # continues the caller's trace
    assert post.attributes is not None
    assert post.attributes["http.response.status_code"] == 201
    assert {s.name for s in hops} >= {
        "grading handles ReportReceived",
        "notification handles IncidentGraded",
    }
    assert {f"{s.context.trace_id:032x}" for s in [post, *hops]} == {TRACE_ID}
    outcomes = {s.attributes.get("yuqing.outcome") for s in hops if s.attributes}
    assert outcomes == {"handled"}
