"""The event envelope and catalogue: what every service and partner relies on."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from shared import events
from shared.events import (
    ALL_TOPICS,
    Actor,
    Envelope,
    EventPayload,
    FiredRule,
    IncidentGraded,
    IncidentOpened,
    event_types,
    register_upcaster,
    upcast,
)


def opened() -> Envelope:
    return Envelope.new(
        IncidentOpened(title="食堂食材过期", unit_ids=("school-a",), first_report_id="r1"),
        incident_id="inc-1",
        stream_id="incident-inc-1",
        stream_version=1,
        actor=Actor(type="person", id="monitor-chen", unit_id="school-a"),
        unit_id="school-a",
    )


def test_every_event_of_the_design_is_declared_once_with_its_topic() -> None:
    declared = event_types()
    for name in [
        "ReportReceived",
        "IncidentOpened",
        "ReportAttached",
        "IncidentResolved",
        "IncidentDismissed",
        "IncidentReopened",
        "IncidentGraded",
        "IncidentEscalated",
        "GradeOverridden",
        "ObligationOpened",
        "NotificationSent",
        "NotificationFailed",
        "NotificationAcknowledged",
        "ObligationFulfilled",
        "DeadlineMissed",
        "StatementDrafted",
        "StatementRevised",
        "StatementSubmitted",
        "StatementApproved",
        "StatementRejected",
        "StatementPublished",
        "CaseArchived",
        "ReviewRecorded",
    ]:
        assert name in declared, name
        assert declared[name].TOPIC in ALL_TOPICS


def test_an_envelope_round_trips_through_json_with_its_typed_payload() -> None:
    event = opened()

    back = Envelope.from_json(event.to_json())

    assert back == event
    assert isinstance(back.payload, IncidentOpened)
    assert back.payload.unit_ids == ("school-a",)
    assert back.topic == "intake.events"
    wire = json.loads(event.to_json())
    assert wire["event_type"] == "IncidentOpened"
    assert wire["schema_version"] == 1
    assert wire["payload"]["title"] == "食堂食材过期"
    assert wire["occurred_at"].endswith("Z") or "+00:00" in wire["occurred_at"]


def test_events_are_immutable() -> None:
    event = opened()
    with pytest.raises(ValidationError):
        event.incident_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        event.payload.title = "edited"  # type: ignore[misc]


def test_a_caused_event_carries_the_correlation_and_names_its_cause() -> None:
    cause = opened()
    graded = cause.caused(
        IncidentGraded(
            level=1,
            category="inquiry",
            rules_fired=(FiredRule(rule_id="tier.central", reason="中央媒体报道"),),
            rulebook_version="2026.1",
        ),
        stream_id="grade-inc-1",
        stream_version=1,
        actor=Actor.rule("rulebook"),
    )
    assert graded.correlation_id == cause.correlation_id
    assert graded.causation_id == cause.event_id
    assert graded.incident_id == "inc-1"
    assert graded.event_id != cause.event_id


def _wire(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(opened().to_json())
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"event_type": "IncidentVanished"}, "unknown event_type"),
        ({"event_type": "IncidentResolved"}, "reason"),
        ({"occurred_at": "2026-11-21T08:00:00"}, "timezone"),
        ({"stream_version": 0}, "greater than or equal to 1"),
        ({"schema_version": 9}, "newer than this code knows"),
        ({"payload": "text"}, "payload must be an object"),
    ],
)
def test_a_malformed_event_is_refused_with_the_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Envelope.model_validate(_wire(**changes))


def test_an_old_schema_version_is_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test's own event type is declared into copies: the registry every other test
    # (and the AsyncAPI document) reads stays the system's.
    monkeypatch.setattr(events, "_REGISTRY", dict(events._REGISTRY))
    monkeypatch.setattr(events, "_UPCASTERS", dict(events._UPCASTERS))

    class WidgetCounted(EventPayload):
        EVENT_TYPE = "WidgetCounted.test"
        TOPIC = "intake.events"
        SCHEMA_VERSION = 2
        count: int
        unit: str

    @register_upcaster("WidgetCounted.test", 1)
    def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
        return {"count": payload["n"], "unit": "county"}

    assert upcast("WidgetCounted.test", 1, {"n": 3}) == {"count": 3, "unit": "county"}
    stored_v1 = {
        **_wire(),
        "event_type": "WidgetCounted.test",
        "schema_version": 1,
        "payload": {"n": 3},
        "event_id": str(uuid.uuid4()),
    }
    event = Envelope.model_validate(stored_v1)
    assert event.schema_version == 2
    assert event.payload == WidgetCounted(count=3, unit="county")
