"""What /metrics tells an operator of the event flow (shared/metrics.py): the events a
service stored (`yuqing_events_appended_total`) and the messages its consumer gave up on
(`yuqing_dead_letters_total`). Each service is built through its composition root on the
fakes and /metrics read from its gateway, as Prometheus scrapes it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.cli import composition_root
from shared.bus import signed_headers
from shared.events import (
    DEAD_LETTER_TOPIC,
    INTAKE_TOPIC,
    Actor,
    Envelope,
    IncidentResolved,
)
from shared.gateway import Gateway
from shared.signing import BusKeys
from shared.store import UnitOfWork
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.unit.test_intake_service import report

APPENDED = "yuqing_events_appended_total"
DEAD_LETTERS = "yuqing_dead_letters_total"


async def scraped(on: FakeService, metric: str, **labels: str) -> float:
    """The value of one sample of `metric` on the /metrics of `on`'s gateway (0 when absent)."""
    gateway = Gateway([on.runner], on.runner.settings)
    transport = httpx.ASGITransport(app=gateway.root)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
        answer = await api.get("/metrics")
    assert answer.status_code == 200, answer.text
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == metric and sample.labels == labels:
                return float(sample.value)
    return 0.0


def resolved(incident_id: str) -> Envelope:
    return Envelope.new(
        IncidentResolved(reason="已平息"),
        incident_id=incident_id,
        stream_id=f"incident-{incident_id}",
        stream_version=1,
        actor=Actor.system("intake"),
    )


# --------------------------------------------------------------------------- appended


async def test_the_events_a_report_stores_move_the_appended_counter_by_type() -> None:
    async with fake_service("intake", composition_root("intake")) as intake:
        monitor = intake.token("monitor-chen", "school-a", "monitor")

        async def counts() -> tuple[float, float]:
            return (
                await scraped(intake, APPENDED, service="intake", event_type="IncidentOpened"),
                await scraped(intake, APPENDED, service="intake", event_type="ReportReceived"),
            )

        before = await counts()
        async with intake.http() as api:
            # A report refused stores nothing, and counts nothing.
            refused = await api.post(
                "/intake/v1/reports", json=report(unit_ids=[]), headers=monitor
            )
            assert refused.status_code == 422, refused.text
            assert await counts() == before
            filed = await api.post("/intake/v1/reports", json=report(), headers=monitor)
            assert filed.status_code == 201, filed.text
        opened, received = await counts()
        assert (opened - before[0], received - before[1]) == (1, 1)


async def test_events_of_a_transaction_undone_are_not_counted() -> None:
    async with fake_service("intake", composition_root("intake")) as intake:
        before = await scraped(intake, APPENDED, service="intake", event_type="IncidentResolved")

        async def append_then_fail(uow: UnitOfWork) -> None:
            await uow.append([resolved("inc-undone")], 0)
            raise RuntimeError("the command fails after appending")

        with pytest.raises(RuntimeError):
            await intake.store.transaction(append_then_fail)
        assert await intake.published("IncidentResolved") == []
        assert await scraped(intake, APPENDED, service="intake", event_type="IncidentResolved") == (
            before
        )

        await intake.store.append([resolved("inc-kept")], 0)
        after = await scraped(intake, APPENDED, service="intake", event_type="IncidentResolved")
        assert after - before == 1


# --------------------------------------------------------------------------- dead letters


@pytest.fixture
async def grading(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FakeService, list[tuple[str, dict[str, Any]]]]]:
    """Grading with its consumer's own dead-lettering (the harness's stand-in removed) and
    the broker's publish kept: what went to which topic, as the record and its headers."""
    # A topic prefix of its own: the counter's topic label is this test's alone.
    settings = fake_settings(topic_prefix="metrics-dlq.")
    async with fake_service("grading", composition_root("grading"), settings=settings) as svc:
        consumer = svc.runner.consumer
        assert consumer is not None
        del consumer.dead_letter  # the harness's stand-in: back to the consumer's own
        sent: list[tuple[str, dict[str, Any]]] = []

        async def publish(message: bytes, topic: str, **kwargs: Any) -> None:
            sent.append((topic, {"record": json.loads(message), **kwargs}))

        monkeypatch.setattr(consumer.broker, "publish", publish)
        yield svc, sent


async def test_a_bad_message_dead_lettered_moves_the_dead_letter_counter(
    grading: tuple[FakeService, list[tuple[str, dict[str, Any]]]],
) -> None:
    svc, sent = grading
    source = svc.runner.settings.topic(INTAKE_TOPIC)
    labels = {"service": "grading", "topic": source}
    assert await scraped(svc, DEAD_LETTERS, **labels) == 0

    # A good event is handled, not dead-lettered: the counter stays.
    await svc.consume(resolved("inc-good"))
    assert sent == []
    assert await scraped(svc, DEAD_LETTERS, **labels) == 0

    await svc.receive(b"\x00 not json", INTAKE_TOPIC, {})
    assert await scraped(svc, DEAD_LETTERS, **labels) == 1
    # An event signed with another key than the deployment's: refused, counted again.
    forged = resolved("inc-forged")
    wrong_key = BusKeys(b"another-deployments-bus-secret-of-32-bytes")
    await svc.receive(forged.to_json(), INTAKE_TOPIC, signed_headers(forged, "intake", wrong_key))
    assert await scraped(svc, DEAD_LETTERS, **labels) == 2

    # Each went to the dead-letter topic with its reason.
    assert [topic for topic, _ in sent] == [svc.runner.settings.topic(DEAD_LETTER_TOPIC)] * 2
    reasons = [what["record"]["reason"] for _, what in sent]
    assert reasons[0].startswith("malformed event")
    assert "signature" in reasons[1]
    assert {what["headers"]["source_topic"] for _, what in sent} == {source}
