"""The plan recorded in grade events: version 1 events (before plans were recorded) upcast
with no plan, and the archive's incident view shows the plan each grade was decided under."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.archive.domain import Logged, fold
from shared.events import (
    Actor,
    Envelope,
    FiredRule,
    IncidentEscalated,
    IncidentGraded,
)

T0 = datetime(2026, 11, 20, 11, 0, tzinfo=UTC)
RULE = Actor.rule("rulebook")
FIRED = (FiredRule(rule_id="level-default", reason="一般舆情"),)


def graded(plan_version: str) -> IncidentGraded:
    return IncidentGraded(
        level=3,
        category="inquiry",
        rules_fired=FIRED,
        rulebook_version="2026.11-seed003",
        plan_id="huaning",
        plan_version=plan_version,
    )


def envelope(payload: IncidentGraded | IncidentEscalated, version: int, at: datetime) -> Envelope:
    return Envelope.new(
        payload,
        incident_id="inc-1",
        stream_id="grade-inc-1",
        stream_version=version,
        actor=RULE,
        unit_id="school-a",
        occurred_at=at,
    )


def test_grade_events_of_version_1_read_as_graded_under_no_known_plan() -> None:
    stored = json.loads(envelope(graded("x"), 1, T0).to_json())
    stored["schema_version"] = 1
    for key in ("plan_id", "plan_version"):
        del stored["payload"][key]
    old = Envelope.model_validate(stored)
    assert isinstance(old.payload, IncidentGraded)
    assert (old.payload.plan_id, old.payload.plan_version) == (None, None)
    assert old.schema_version == IncidentGraded.SCHEMA_VERSION == 3
    assert IncidentEscalated.SCHEMA_VERSION == 2


def test_the_archive_shows_the_plan_version_that_applied_to_each_grade() -> None:
    first = envelope(graded("2026.11-seed003"), 1, T0)
    # The plan's version changed while the incident was open: the escalation says so, and
    # the incident stays on the version it was graded under.
    later = envelope(
        IncidentEscalated(
            from_level=3,
            to_level=1,
            category="inquiry",
            reason="央视报道",
            rules_fired=FIRED,
            rulebook_version="2026.12",
            plan_id="huaning",
            plan_version="2026.12",
        ),
        2,
        T0 + timedelta(hours=2),
    )
    view = fold("inc-1", [Logged(seq=1, event=first), Logged(seq=2, event=later)])
    assert (view.plan_id, view.plan_version) == ("huaning", "2026.11-seed003")
    assert [(g.change, g.plan_id, g.plan_version) for g in view.grade_history] == [
        ("graded", "huaning", "2026.11-seed003"),
        ("escalated", "huaning", "2026.12"),
    ]
    shown = view.model_dump(mode="json")
    assert shown["plan_version"] == "2026.11-seed003"
    assert shown["grade_history"][1]["plan_version"] == "2026.12"
