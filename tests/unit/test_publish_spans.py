"""The outbox relay's send is a span of the event's trace, and the consumer's span is its
child: the hop over Kafka shows in the trace as the collector receives it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.grading.bootstrap import build as build_grading
from services.intake.bootstrap import build as build_intake
from shared.bus import TRACEPARENT_HEADER, OutboxRelay
from shared.tracing import parent_span_of
from tests.fakes.harness import fake_service
from tests.fakes.mongo import FakeMongo
from tests.unit.test_intake_service import report
from tests.unit.test_tracing import TRACE_ID, TRACEPARENT, spans

__all__ = ["spans"]  # the fixture, shared with test_tracing (one provider per process)


@dataclass
class Broker:
    """Takes the relay's sends; refuses the ones named in `refuse`."""

    refuse: set[str] = field(default_factory=set)
    sent: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def publish(self, body: bytes, topic: str, **kwargs: Any) -> Any:
        headers = kwargs["headers"]
        self.sent.append((body, headers))
        offset = len(self.sent) - 1
        refused = headers["event_type"] in self.refuse

        async def ack() -> Any:
            if refused:
                raise ConnectionError("the broker is away")
            return type("Meta", (), {"topic": topic, "partition": 1, "offset": offset})()

        return ack()


async def test_the_relays_send_is_a_span_and_the_consumers_its_child(
    spans: InMemorySpanExporter,
) -> None:
    mongo = FakeMongo()
    now = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
    async with (
        fake_service("intake", build_intake, mongo=mongo, clock=lambda: now) as intake,
        fake_service("grading", build_grading, mongo=mongo) as grading,
    ):
        office = intake.token("office-li", "county", "office")
        async with intake.http() as http:
            answer = await http.post(
                "/intake/v1/reports", json=report(), headers={**office, "traceparent": TRACEPARENT}
            )
        assert answer.status_code == 201, answer.text
        broker = Broker(refuse={"IncidentOpened"})
        relay = OutboxRelay("intake", intake.store, broker, intake.runner.settings)  # type: ignore[arg-type]
        with pytest.raises(ConnectionError):  # the refused send stays in the outbox
            await relay.relay_once()
        (received,) = [(b, h) for b, h in broker.sent if h["event_type"] == "ReportReceived"]
        body, headers = received
        assert grading.runner.consumer is not None
        await grading.runner.consumer.receive(
            body, grading.runner.settings.topic("intake.events"), headers
        )

    finished = spans.get_finished_spans()
    producers = {s.name: s for s in finished if s.kind is SpanKind.PRODUCER}
    sent = producers["intake publishes ReportReceived"]
    assert f"{sent.context.trace_id:032x}" == TRACE_ID
    assert sent.attributes is not None
    assert sent.attributes["messaging.destination.partition.id"] == "1"
    refused = producers["intake publishes IncidentOpened"]
    assert refused.status.status_code is StatusCode.ERROR
    assert headers[TRACEPARENT_HEADER] == f"00-{TRACE_ID}-{sent.context.span_id:016x}-01"
    (hop,) = [s for s in finished if s.name == "grading handles ReportReceived"]
    assert hop.parent is not None
    assert hop.parent.span_id == sent.context.span_id  # the hop over Kafka, in the trace
    assert f"{hop.context.trace_id:032x}" == TRACE_ID


def test_a_traceparent_of_another_trace_is_not_taken_as_the_parent() -> None:
    correlation = uuid.uuid4()
    span = "00f067aa0ba902b7"
    assert parent_span_of(f"00-{correlation.hex}-{span}-01", correlation) == int(span, 16)
    for other in (f"00-{uuid.uuid4().hex}-{span}-01", f"00-{correlation.hex}-{'0' * 16}-01", "x"):
        assert parent_span_of(other, correlation) is None
    assert parent_span_of(None, correlation) is None
