"""The dashboard's recent escalations and missed deadlines (`GET /archive/v1/alerts`,
services/archive/alerts.py), through the archive's HTTP API on the fakes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from shared.events import Actor, DeadlineMissed, FiredRule, GradeOverridden, IncidentEscalated
from tests.fakes.harness import FakeService
from tests.unit.test_archive_service import NOW, T0, Clock, Story
from tests.unit.test_archive_service import api as api
from tests.unit.test_archive_service import archive as archive
from tests.unit.test_archive_service import clock as clock

ALERTS = "/archive/v1/alerts"
WATCH = Actor.rule("deadline-watch")
LEADER = Actor(type="person", id="leader-zhang", unit_id="county")


def escalated_and_missed(incident_id: str, unit: str) -> Story:
    """Graded level 2, escalated to level 1 by a central-media report ten minutes on, and
    its written report (due an hour after the grade) missed."""
    story = Story(incident_id, unit).opened(level=2)
    story.add(
        IncidentEscalated(
            from_level=2,
            to_level=1,
            category="inquiry",
            reason="中央媒体转载，传播范围扩大",
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体报道"),),
            rulebook_version="1",
        ),
        "grading",
        T0 + timedelta(minutes=10),
        story.graded,
        Actor.rule("rulebook"),
    )
    story.add(
        DeadlineMissed(
            obligation_id=f"{incident_id}-written",
            kind="written_quick_report",
            level=2,
            deadline=T0 + timedelta(minutes=60, seconds=2),
            alerted_roles=("leader",),
        ),
        "obligation-written",
        T0 + timedelta(minutes=61),
        actor=WATCH,
    )
    return story


async def alerts(
    api: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await api.get(ALERTS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_escalations_and_misses_are_listed_newest_first_with_what_changed_and_why(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await archive.consume(*escalated_and_missed("inc-a", "school-a").events)
    office = archive.token("office-li", "county", "office")

    missed, escalated = await alerts(api, office)

    assert (escalated["kind"], escalated["incident_id"], escalated["title"]) == (
        "escalated",
        "inc-a",
        "school-a 食堂问题",
    )
    assert (escalated["from_level"], escalated["to_level"], escalated["level_now"]) == (2, 1, 1)
    assert escalated["reason"] == "中央媒体转载，传播范围扩大"
    assert [r["rule_id"] for r in escalated["rules_fired"]] == ["tier-central"]
    assert escalated["raised_by"] is None  # by the rules
    assert escalated["at"].startswith("2026-11-21T00:10:00")
    assert missed["kind"] == "missed"
    assert missed["at"].startswith("2026-11-21T01:01:00")
    assert (missed["duty"]["title"], missed["duty"]["owner_role"]) == ("纸质快报", "office")
    assert missed["duty"]["deadline"].startswith("2026-11-21T01:00:02")
    assert missed["to_level"] == 2


async def test_a_grade_raised_by_hand_is_an_escalation_and_one_lowered_is_not(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    raised, lowered = (
        Story("inc-r", "school-a").opened(level=2),
        Story("inc-l", "school-a").opened(),
    )
    for story, (was, now) in ((raised, (2, 1)), (lowered, (1, 2))):
        story.add(
            GradeOverridden(from_level=was, to_level=now, category="inquiry", reason="人工研判"),
            "grading",
            T0 + timedelta(minutes=20),
            story.graded,
            LEADER,
        )
        await archive.consume(*story.events)
    office = archive.token("office-li", "county", "office")

    (found,) = await alerts(api, office)

    assert (found["incident_id"], found["raised_by"], found["reason"]) == (
        "inc-r",
        "leader-zhang",
        "人工研判",
    )


async def test_a_unit_sees_its_own_alerts_and_a_partner_none(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    for incident_id, unit in (("inc-a", "school-a"), ("inc-b", "school-b")):
        await archive.consume(*escalated_and_missed(incident_id, unit).events)
    school_a = archive.token("head-liu", "school-a", "dept_head")
    analyst = archive.token("analyst-zhao", "school-a", "analyst")
    partner = archive.token("partner-wxb", "county", "partner", "analyst")

    assert {a["incident_id"] for a in await alerts(api, school_a)} == {"inc-a"}
    assert {a["incident_id"] for a in await alerts(api, analyst)} == {"inc-a", "inc-b"}
    assert await alerts(api, partner) == []


async def test_since_and_limit_bound_the_list(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    await archive.consume(*escalated_and_missed("inc-a", "school-a").events)
    office = archive.token("office-li", "county", "office")

    after_escalation = await alerts(api, office, since=(T0 + timedelta(minutes=30)).isoformat())
    first = await api.get(ALERTS, params={"limit": 1}, headers=office)
    too_far = await api.get(
        ALERTS, params={"since": (NOW - timedelta(days=32)).isoformat()}, headers=office
    )
    too_many = await api.get(ALERTS, params={"limit": 101}, headers=office)
    clock.now = T0 + timedelta(days=2)  # both a day and more behind: out of the default window
    later = await alerts(api, office)

    assert [a["kind"] for a in after_escalation] == ["missed"]
    assert ([a["kind"] for a in first.json()["items"]], first.json()["more"]) == (["missed"], True)
    assert too_far.status_code == 422
    assert too_far.json()["error"]["details"][0]["field"] == "since"
    assert too_many.status_code == 422
    assert too_many.json()["error"]["details"][0]["field"] == "limit"
    assert later == []


async def test_an_incident_opened_before_since_shows_what_happened_to_it_since_even_if_closed(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    # Opened at T0; escalated ten minutes on, its report missed an hour on, resolved at two.
    story = escalated_and_missed("inc-old", "school-a")
    await archive.consume(*story.events, story.resolved())
    quiet = Story("inc-quiet", "school-a").opened(level=2)  # opened before, nothing since
    await archive.consume(*quiet.events, quiet.resolved(T0 + timedelta(minutes=3)))
    office = archive.token("office-li", "county", "office")

    since_opening = await alerts(api, office, since=(T0 + timedelta(minutes=5)).isoformat())
    after_the_miss = await alerts(api, office, since=(T0 + timedelta(minutes=90)).isoformat())

    assert [(a["incident_id"], a["kind"], a["status"]) for a in since_opening] == [
        ("inc-old", "missed", "resolved"),
        ("inc-old", "escalated", "resolved"),
    ]
    assert after_the_miss == []  # closed since, but nothing went wrong after `since`
