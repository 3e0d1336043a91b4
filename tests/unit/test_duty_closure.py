"""Duties that open when the incident is resolved (`opens_on: resolved` in obligations.yaml),
on the town pack (seed 003 篇一 二（二）: 在处置完接收的舆情信息后 ... 将处置情况上报有关部门).
Notification runs on the fakes through its composition root: such a duty is not owed at
grading; resolving closes the other open duties and opens it, counted from the resolution;
it is met or missed like any other; a dismissal opens none; reopening closes it while it is
open and the next resolution owes it afresh. A bad `opens_on` stops the start with a message
naming the file and the entry."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.notification.bootstrap import NotificationParts
from services.notification.bootstrap import build as build_notification
from shared.directory import Directory
from shared.events import (
    Actor,
    DeadlineMissed,
    Envelope,
    FiredRule,
    IncidentDismissed,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    ObligationClosed,
    ObligationOpened,
)
from shared.plan import PlanError, load_plan, read_manifest
from shared.policy import PolicyError
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.duties import FULFIL, LIST
from tests.fakes.duties import duties_by_kind as duties
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

TOWN = CONFIG_DIR / "plans" / "town"
VERSION = read_manifest(TOWN).version
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


class Upstream(Streams):
    """Plays intake and grading on the town pack."""

    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(
            title="镇区道路积水群众反映", unit_ids=("school-a",), first_report_id="r1"
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: int, category: str = "inquiry") -> Envelope:
        payload = IncidentGraded(
            level=level,
            category=category,
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体"),),
            rulebook_version="2026.1",
            plan_id="town",
            plan_version=VERSION,
        )
        return self.event(incident_id, payload, "grade")

    def resolved(self, incident_id: str) -> Envelope:
        return self.event(
            incident_id, IncidentResolved(reason="已回复群众，积水已排除"), "incident"
        )

    def dismissed(self, incident_id: str) -> Envelope:
        return self.event(incident_id, IncidentDismissed(reason="误报"), "incident")

    def reopened(self, incident_id: str) -> Envelope:
        return self.event(incident_id, IncidentReopened(reason="又有新的报道"), "incident")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def notification(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeService]:
    settings = fake_settings(tmp_path, plan=TOWN)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=clock
    ) as service:
        yield service


async def opened(service: FakeService, kind: str) -> list[ObligationOpened]:
    return [
        e.payload
        for e in await service.published("ObligationOpened")
        if isinstance(e.payload, ObligationOpened) and e.payload.kind == kind
    ]


async def test_resolving_closes_what_is_owed_and_opens_the_result_report_counted_from_then(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-1"), up.graded("inc-1", 1))
    before = await duties(notification, "inc-1")
    assert set(before) == {"group_report_major", "full_time_watch", "online_reply"}

    up.at = clock.now = T0 + timedelta(hours=5)
    await notification.consume(up.resolved("inc-1"))
    after = await duties(notification, "inc-1")
    for kind in ("group_report_major", "full_time_watch", "online_reply"):
        assert after[kind]["state"] == "closed", kind
        assert after[kind]["closed_reason"] == "事件已办结：已回复群众，积水已排除"
    report = after["result_report_major"]
    assert report["state"] == "open"
    assert (report["plan_id"], report["plan_version"]) == ("town", VERSION)
    assert datetime.fromisoformat(report["counted_from"]) == up.at
    assert datetime.fromisoformat(report["deadline"]) == up.at + timedelta(hours=24)
    assert report["title"] == "重大舆情处置完毕：总结分析、查找问题不足，上报处置情况"
    (event,) = await opened(notification, "result_report_major")
    assert (event.owner_role, event.recipients, event.plan_version) == (
        "office",
        ("leader",),
        VERSION,
    )
    closed = await notification.published("ObligationClosed")
    assert len(closed) == 3
    assert all(
        isinstance(e.payload, ObligationClosed)
        and e.payload.obligation_id != report["obligation_id"]
        for e in closed
    )

    # Filed the next morning: met on time, though the incident is closed.
    clock.now = up.at + timedelta(hours=20)
    office = notification.token("office-li", "county", "office")
    async with notification.http() as http:
        r = await http.post(
            FULFIL.format(report["obligation_id"]),
            json={"reference": "处置情况报告"},
            headers=office,
        )
    assert r.status_code == 200, r.text
    filed = (await duties(notification, "inc-1"))["result_report_major"]
    assert (filed["state"], filed["late"]) == ("fulfilled", False)


async def test_a_result_report_not_filed_is_missed_and_alerts_the_group(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-2"), up.graded("inc-2", 3))
    up.at = T0 + timedelta(hours=1)
    await notification.consume(up.resolved("inc-2"))
    report = (await duties(notification, "inc-2"))["handling_result"]
    # 一般: the department reports its handling to 党政办, 3 days from the resolution.
    assert datetime.fromisoformat(report["deadline"]) == up.at + timedelta(days=3)
    assert report["owner_role"] == "dept_head"

    parts = notification.parts
    assert isinstance(parts, NotificationParts)
    clock.now = up.at + timedelta(days=3, minutes=1)
    assert await parts.workflow.record_missed(clock(), 10) == 1
    (missed,) = await notification.published("DeadlineMissed")
    assert isinstance(missed.payload, DeadlineMissed)
    assert (missed.payload.kind, missed.payload.alerted_roles) == ("handling_result", ("office",))
    assert missed.occurred_at == up.at + timedelta(days=3)


async def test_a_grade_seen_after_the_resolution_still_owes_the_result_report(
    notification: FakeService,
) -> None:
    # Intake's resolution and grading's grade come on two topics: their order is not given.
    up = Upstream()
    graded = up.graded("inc-5", 2)
    up.at = T0 + timedelta(hours=2)
    resolved = up.resolved("inc-5")
    await notification.consume(up.opened("inc-5"), resolved, graded)
    owed = await duties(notification, "inc-5")
    # Nothing is owed of the time it was open; the result report is, from the resolution.
    assert set(owed) == {"result_report"}
    report = owed["result_report"]
    assert datetime.fromisoformat(report["counted_from"]) == resolved.occurred_at
    assert datetime.fromisoformat(report["deadline"]) == resolved.occurred_at + timedelta(days=3)


async def test_a_dismissed_incident_owes_no_result_report(
    notification: FakeService,
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-3"), up.graded("inc-3", 2), up.dismissed("inc-3"))
    owed = await duties(notification, "inc-3")
    assert "result_report" not in owed
    assert owed["group_report"]["state"] == "closed"


async def test_reopening_closes_the_open_result_report_and_the_next_resolution_owes_it_again(
    notification: FakeService,
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-4"), up.graded("inc-4", 2))
    up.at = T0 + timedelta(hours=1)
    await notification.consume(up.resolved("inc-4"))
    first = (await duties(notification, "inc-4"))["result_report"]
    assert first["state"] == "open"

    up.at = T0 + timedelta(hours=2)
    await notification.consume(up.reopened("inc-4"))
    rows = await duties(notification, "inc-4")
    again = rows["group_report"]  # the level's duties are owed afresh, from the reopening
    assert datetime.fromisoformat(again["counted_from"]) == up.at
    assert "result_report" in rows
    office = notification.token("office-li", "county", "office")
    async with notification.http() as http:
        r = await http.get(LIST, params={"incident_id": "inc-4"}, headers=office)
    states = {d["obligation_id"]: d for d in r.json()["obligations"]}
    assert states[first["obligation_id"]]["state"] == "closed"
    assert states[first["obligation_id"]]["closed_reason"] == "事件重新处置：办结后重新报送"

    up.at = T0 + timedelta(hours=6)
    await notification.consume(up.resolved("inc-4"))
    second = (await duties(notification, "inc-4"))["result_report"]
    assert second["obligation_id"] != first["obligation_id"]
    assert second["state"] == "open"
    assert datetime.fromisoformat(second["deadline"]) == up.at + timedelta(days=3)
    assert len(await opened(notification, "result_report")) == 2


# --------------------------------------------------------------------------- the loader


def pack(tmp_path: Path, change: dict[str, dict[str, Any]]) -> Path:
    """A copy of the town pack with the fields of tier-1 duties changed as `change` says."""
    target = tmp_path / "town"
    shutil.copytree(TOWN, target)
    path = target / "obligations.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for rule in data["levels"][1]:
        rule.update(change.get(rule["kind"], {}))
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return target


def refused(target: Path) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan(target, Settings().policy_paths, DIRECTORY)
    message = str(caught.value)
    assert str(target / "obligations.yaml") in message
    return message


def test_the_shipped_town_pack_opens_its_result_reports_at_resolution() -> None:
    plan = load_plan(TOWN, Settings().policy_paths, DIRECTORY)
    assert plan.obligations.closure_kinds() == {
        "result_report_major",
        "result_report",
        "handling_result",
    }
    assert "result_report_major" not in {r.kind for r in plan.obligations.rules_for(1, None)}


def test_an_unknown_opens_on_is_refused_naming_the_entry(tmp_path: Path) -> None:
    message = refused(pack(tmp_path, {"result_report_major": {"opens_on": "closed"}}))
    assert "levels.1 (result_report_major).opens_on: 'closed' is not one of graded, resolved" in (
        message
    )


def test_a_duty_at_resolution_cannot_wait_on_another_or_recur(tmp_path: Path) -> None:
    waiting = refused(pack(tmp_path, {"result_report_major": {"after": "group_report_major"}}))
    assert "levels.1 (result_report_major).after: a duty that opens on resolved cannot wait" in (
        waiting
    )
    shutil.rmtree(tmp_path / "town")
    recurring = refused(pack(tmp_path, {"result_report_major": {"every": "24h"}}))
    assert "levels.1 (result_report_major).every: a duty that opens on resolved cannot recur" in (
        recurring
    )


def test_no_duty_can_wait_on_one_opened_at_resolution(tmp_path: Path) -> None:
    message = refused(pack(tmp_path, {"county_report": {"after": "result_report_major"}}))
    assert "levels.1 (county_report).after: 'result_report_major' opens on resolved" in message


async def test_a_bad_opens_on_stops_notification_at_start(tmp_path: Path) -> None:
    target = pack(tmp_path, {"result_report_major": {"opens_on": "resolution"}})
    settings = fake_settings(tmp_path, plan=target)
    with pytest.raises(PolicyError) as caught:
        async with fake_service("notification", build_notification, settings=settings):
            pass
    assert str(target / "obligations.yaml") in str(caught.value)
    assert "levels.1 (result_report_major).opens_on: 'resolution'" in str(caught.value)


# --------------------------------------------------------------------------- the other packs


@pytest.mark.parametrize(
    ("pack_name", "level", "kind"),
    [
        ("fourtier", 1, "summary_assessment"),  # 预案2 五2 总结评估
        ("fourtier", 2, "summary_assessment_major"),
        ("fourtier", 4, None),  # the section's tier owes none
        ("school", 1, "summary_review"),  # 预案1 四（五）总结评估
        ("school", 3, None),
    ],
)
async def test_the_seed_plans_owe_their_review_at_resolution(
    tmp_path: Path, pack_name: str, level: int, kind: str | None
) -> None:
    target = CONFIG_DIR / "plans" / pack_name
    version = read_manifest(target).version
    up = Upstream()
    graded = IncidentGraded(
        level=level,
        category="inquiry",
        rules_fired=(FiredRule(rule_id="level-default", reason="默认"),),
        rulebook_version="r",
        plan_id=pack_name,
        plan_version=version,
    )
    settings = fake_settings(tmp_path, plan=target)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=Clock(T0)
    ) as service:
        await service.consume(up.opened("inc-p"), up.event("inc-p", graded, "grade"))
        at_grade = {p.kind for p in await service_opened(service)}
        up.at = T0 + timedelta(hours=3)
        await service.consume(up.resolved("inc-p"))
        at_closure = {p.kind: p for p in await service_opened(service)}
    new = {k: p for k, p in at_closure.items() if k not in at_grade}
    if kind is None:
        assert new == {}
        return
    assert set(new) == {kind}
    review = new[kind]
    assert (review.owner_role, review.plan_version) == ("leader", version)
    assert (review.counted_from, review.deadline) == (up.at, up.at + timedelta(days=7))


async def service_opened(service: FakeService) -> list[ObligationOpened]:
    return [
        e.payload
        for e in await service.published("ObligationOpened")
        if isinstance(e.payload, ObligationOpened)
    ]
