"""Duties that wait on another duty (`after:` in obligations.yaml), on the four-tier pack
(seed 000 预案2 三1: the leading group responds once the leader has asked the superior).
Notification runs on the fakes through its composition root: the waiting duty is not owed
at grading, opens when the duty it waits on is filed with its clock counted from that
filing, and never opens when that duty is missed unfiled or closed. A plan whose `after`
names no duty of its list, or whose duties wait on each other in a cycle, stops the start
with a message naming the file and the entry."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
    IncidentGraded,
    IncidentOpened,
    IncidentResolved,
    ObligationFulfilled,
    ObligationOpened,
)
from shared.plan import PlanError, load_plan
from shared.policy import PolicyError
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.duties import duties_by_kind as owed
from tests.fakes.duties import fulfil
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

FOURTIER = CONFIG_DIR / "plans" / "fourtier"
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


class Upstream(Streams):
    """Plays intake and grading: events about incidents, numbered per stream."""

    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(
            title="学校门口道路积水", unit_ids=("school-a",), first_report_id="r1"
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: int) -> Envelope:
        payload = IncidentGraded(
            level=level,
            category="inquiry",
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体"),),
            rulebook_version="2026.12-seed000-2",
            plan_id="fourtier",
            plan_version="2026.12.3-seed000-2",
        )
        return self.event(incident_id, payload, "grade")

    def resolved(self, incident_id: str) -> Envelope:
        return self.event(incident_id, IncidentResolved(reason="舆情平息"), "incident")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def notification(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeService]:
    settings = fake_settings(tmp_path, plan=FOURTIER)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=clock
    ) as service:
        yield service


async def opened(service: FakeService, kind: str) -> list[Envelope]:
    return [
        e
        for e in await service.published("ObligationOpened")
        if isinstance(e.payload, ObligationOpened) and e.payload.kind == kind
    ]


# --------------------------------------------------------------------------- opening


async def test_the_groups_response_opens_only_once_the_superior_is_asked_counted_from_then(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-1"), up.graded("inc-1", 1))
    before = await owed(notification, "inc-1")
    assert set(before) == {"superior_request", "round_the_clock_watch"}
    assert await opened(notification, "group_response") == []

    # The leader asked the superior 20 minutes after grading and records it 5 minutes later.
    asked = T0 + timedelta(minutes=20)
    clock.now = T0 + timedelta(minutes=25)
    r = await fulfil(notification, before["superior_request"]["obligation_id"], at=asked)
    assert r.status_code == 200, r.text

    after = await owed(notification, "inc-1")
    response = after["group_response"]
    assert response["state"] == "open"
    assert datetime.fromisoformat(response["deadline"]) == asked + timedelta(hours=2)
    assert response["seconds_left"] == (asked + timedelta(hours=2) - clock.now).total_seconds()
    (event,) = await opened(notification, "group_response")
    assert isinstance(event.payload, ObligationOpened)
    assert event.payload.counted_from == asked
    assert (event.payload.level, event.payload.owner_role) == (1, "leader")
    assert event.payload.recipients == ("office", "propaganda")
    (filed,) = await notification.published("ObligationFulfilled")
    assert event.causation_id == filed.event_id
    assert event.actor == Actor.system("notification")

    # Filing it is the group's own duty, met like any other; nothing opens twice.
    clock.now = T0 + timedelta(hours=1)
    assert (await fulfil(notification, response["obligation_id"])).status_code == 200
    assert len(await opened(notification, "group_response")) == 1


async def test_a_missed_request_opens_no_response_until_it_is_filed_late(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-2"), up.graded("inc-2", 1))
    workflow = notification.parts
    assert isinstance(workflow, NotificationParts)
    clock.now = T0 + timedelta(minutes=45)
    assert await workflow.workflow.record_missed(clock(), 10) == 1

    (missed,) = await notification.published("DeadlineMissed")
    assert isinstance(missed.payload, DeadlineMissed)
    assert missed.payload.kind == "superior_request"
    duties = await owed(notification, "inc-2")
    assert duties["superior_request"]["state"] == "missed"
    assert "group_response" not in duties
    assert await opened(notification, "group_response") == []

    # Asked late all the same: the group's response is owed from that late filing.
    clock.now = T0 + timedelta(hours=1)
    assert (await fulfil(notification, duties["superior_request"]["obligation_id"])).is_success
    (filed,) = await notification.published("ObligationFulfilled")
    assert isinstance(filed.payload, ObligationFulfilled)
    assert filed.payload.late
    (event,) = await opened(notification, "group_response")
    assert isinstance(event.payload, ObligationOpened)
    assert event.payload.counted_from == clock.now
    assert event.payload.deadline == clock.now + timedelta(hours=2)


async def test_a_request_closed_with_the_incident_never_opens_the_response(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-3"), up.graded("inc-3", 1))
    request = (await owed(notification, "inc-3"))["superior_request"]
    await notification.consume(up.resolved("inc-3"))
    clock.now = T0 + timedelta(minutes=10)

    r = await fulfil(notification, request["obligation_id"])
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "obligation_closed"
    assert await opened(notification, "group_response") == []
    assert "group_response" not in await owed(notification, "inc-3")


# --------------------------------------------------------------------------- the loader


def pack(tmp_path: Path, level_1: dict[str, str | None]) -> Path:
    """A copy of the four-tier pack whose tier-1 duties wait as `level_1` says (kind: after)."""
    target = tmp_path / "fourtier"
    shutil.copytree(FOURTIER, target)
    path = target / "obligations.yaml"
    duties = yaml.safe_load(path.read_text(encoding="utf-8"))
    for rule in duties["levels"][1]:
        rule.pop("after", None)
        if level_1.get(rule["kind"]) is not None:
            rule["after"] = level_1[rule["kind"]]
    path.write_text(yaml.safe_dump(duties, allow_unicode=True), encoding="utf-8")
    return target


def refused(target: Path) -> str:
    with pytest.raises(PlanError) as caught:
        load_plan(target, Settings().policy_paths, DIRECTORY)
    message = str(caught.value)
    assert str(target / "obligations.yaml") in message
    return message


def test_the_shipped_pack_orders_the_groups_response_after_the_request() -> None:
    plan = load_plan(FOURTIER, Settings().policy_paths, DIRECTORY)
    waits = {r.kind: r.after for rules in plan.obligations.levels.values() for r in rules}
    assert waits["group_response"] == "superior_request"
    assert waits["office_response"] == "office_request"  # 三3: 经办公室请示, 由办公室会同股室
    assert waits["superior_request"] is None


def test_an_after_naming_no_duty_of_its_level_is_refused_naming_the_entry(
    tmp_path: Path,
) -> None:
    # office_request is a duty of the plan, but of tier 3: tier 1 cannot wait on it.
    message = refused(pack(tmp_path, {"group_response": "office_request"}))
    assert "levels.1 (group_response).after: 'office_request' is not a duty of levels.1" in message


async def test_an_unknown_after_stops_notification_at_start(tmp_path: Path) -> None:
    target = pack(tmp_path, {"group_response": "superior_reqest"})
    settings = fake_settings(tmp_path, plan=target)
    # The service reads its obligations file (duties and delivery) before the plan check.
    with pytest.raises(PolicyError) as caught:
        async with fake_service("notification", build_notification, settings=settings):
            pass
    message = str(caught.value)
    assert str(target / "obligations.yaml") in message
    assert "levels.1 (group_response).after: 'superior_reqest' is not a duty" in message


def test_two_duties_waiting_on_each_other_are_refused_listing_the_cycle(tmp_path: Path) -> None:
    message = refused(
        pack(tmp_path, {"superior_request": "group_response", "group_response": "superior_request"})
    )
    cycle = "superior_request → group_response → superior_request"
    assert "levels.1 (superior_request, group_response).after:" in message
    assert cycle in message
    assert len(re.findall("→", message)) == 2  # the cycle is reported once


def test_a_three_duty_cycle_is_refused_listing_its_members_in_order(tmp_path: Path) -> None:
    message = refused(
        pack(
            tmp_path,
            {
                "superior_request": "round_the_clock_watch",
                "round_the_clock_watch": "group_response",
                "group_response": "superior_request",
            },
        )
    )
    assert "levels.1 (superior_request, round_the_clock_watch, group_response).after:" in message
    assert "superior_request → round_the_clock_watch → group_response → superior_request" in message
