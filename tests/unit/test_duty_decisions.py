"""A duty opened as a body decides (`opens_on: decided`, `decided_by: <role>`), on the town
pack (seed 003 篇一 二（二）: report to the county cyberspace office 根据舆情情况, as the town
leading group decides): the duty is not owed at grading; the deciding role records its
decision (`POST /notifications/v1/incidents/{id}/decisions`); yes opens it counted from
the decision, no is recorded and opens nothing. Notification runs on the fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from services.archive.domain.fold import fold
from services.archive.domain.ordering import Logged
from services.archive.domain.timeline import timeline
from services.notification.bootstrap import build as build_notification
from shared.catalogue import Catalogue
from shared.events import (
    Actor,
    DutyDecided,
    Envelope,
    FiredRule,
    IncidentGraded,
    IncidentOpened,
    IncidentResolved,
    ObligationOpened,
)
from shared.plan_rules import ObligationPolicy
from shared.policy import PolicyError, load_policy
from shared.settings import CONFIG_DIR
from tests.fakes.duties import ACTIONS_POLICY
from tests.fakes.duties import duties_by_kind as owed
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

TOWN = CONFIG_DIR / "plans" / "town"
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
KIND = "county_report_decided"
CATALOGUE = Catalogue.load(CONFIG_DIR / "catalogue.yaml")


class Upstream(Streams):
    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(
            title="镇集市占道经营", unit_ids=("school-a",), first_report_id="r1"
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: int = 2) -> Envelope:
        payload = IncidentGraded(
            level=level,
            category="suggestion",
            rules_fired=(FiredRule(rule_id="tier-provincial", reason="省级媒体"),),
            rulebook_version="test",
            plan_id="town",
            plan_version="2026.12.1-seed003-1",
        )
        return self.event(incident_id, payload, "grade")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def town(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeService]:
    settings = fake_settings(tmp_path, plan=TOWN)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=clock
    ) as service:
        yield service


async def decide(
    service: FakeService, incident_id: str, body: dict[str, Any], *who: str
) -> httpx.Response:
    person, role = who or ("leader-zhang", "leader")
    async with service.http() as http:
        return await http.post(
            f"/notifications/v1/incidents/{incident_id}/decisions",
            json=body,
            headers=service.token(person, "county", role),
        )


YES = {"kind": KIND, "decision": "yes", "reason": "省级媒体已关注，领导小组研判决定上报"}
NO = {"kind": KIND, "decision": "no", "reason": "已就地化解，领导小组决定不报"}


async def decisions(service: FakeService) -> list[DutyDecided]:
    found = [e.payload for e in await service.published("DutyDecided")]
    return [p for p in found if isinstance(p, DutyDecided)]


async def test_yes_opens_the_county_report_counted_from_the_decision(
    town: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await town.consume(up.opened("inc-1"), up.graded("inc-1"))
    assert KIND not in await owed(town, "inc-1")  # not owed until the group decides

    clock.now = T0 + timedelta(minutes=40)
    r = await decide(town, "inc-1", YES)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert (answer["decision"], answer["decided_by"]) == ("yes", "leader-zhang")
    duty = (await owed(town, "inc-1"))[KIND]
    assert duty["obligation_id"] == answer["obligation_id"]
    assert datetime.fromisoformat(duty["counted_from"]) == clock.now
    assert datetime.fromisoformat(duty["deadline"]) == clock.now + timedelta(hours=1)
    assert duty["plan_version"] == "2026.12.1-seed003-1"

    (decided,) = await decisions(town)
    assert (decided.kind, decided.decision, decided.decided_by) == (KIND, True, "leader-zhang")
    assert decided.reason == YES["reason"]
    events = await town.published()
    decided_event = next(e for e in events if e.event_type == "DutyDecided")
    opened = next(
        e for e in events if isinstance(e.payload, ObligationOpened) and e.payload.kind == KIND
    )
    assert opened.causation_id == decided_event.event_id
    assert decided_event.actor.id == "leader-zhang"

    again = await decide(town, "inc-1", YES)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "decision_refused"


async def test_no_is_recorded_and_opens_nothing_and_a_later_yes_still_can(
    town: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await town.consume(up.opened("inc-1"), up.graded("inc-1"))
    r = await decide(town, "inc-1", NO)
    assert r.status_code == 201, r.text
    assert r.json()["obligation_id"] is None
    assert KIND not in await owed(town, "inc-1")
    (decided,) = await decisions(town)
    assert (decided.decision, decided.reason) == (False, NO["reason"])

    clock.now = T0 + timedelta(hours=5)  # the matter grew: the group decides again
    r = await decide(town, "inc-1", YES)
    assert r.status_code == 201, r.text
    assert (await owed(town, "inc-1"))[KIND]["state"] == "open"


async def test_the_archive_view_keeps_each_decision_and_the_duty_the_yes_opened(
    town: FakeService, clock: Clock
) -> None:
    up = Upstream()
    upstream = [up.opened("inc-1"), up.graded("inc-1")]
    await town.consume(*upstream)
    assert (await decide(town, "inc-1", NO)).status_code == 201
    clock.now = T0 + timedelta(hours=5)
    opened = (await decide(town, "inc-1", YES)).json()["obligation_id"]

    told = upstream + await town.published()
    view = fold("inc-1", [Logged(n + 1, e) for n, e in enumerate(told)])
    assert [(d.decision, d.reason, d.decided_by, d.at) for d in view.decisions] == [
        (False, NO["reason"], "leader-zhang", T0),
        (True, YES["reason"], "leader-zhang", T0 + timedelta(hours=5)),
    ]
    assert [(o.kind, o.obligation_id) for o in view.obligations if o.kind == KIND] == [
        (KIND, opened)
    ]


async def test_only_the_deciding_role_decides_and_only_a_duty_the_incident_has(
    town: FakeService,
) -> None:
    up = Upstream()
    await town.consume(up.opened("inc-1"), up.graded("inc-1"))
    office = await decide(town, "inc-1", YES, "office-li", "office")
    assert office.status_code == 403
    assert office.json()["error"]["code"] == "not_decider"
    assert office.json()["error"]["message"].startswith("决定“较大舆情：镇领导小组决定上报的")

    wrong = await decide(town, "inc-1", {**YES, "kind": "county_report"})
    assert wrong.status_code == 422
    assert "kind" in wrong.text
    bad = await decide(town, "inc-1", {**YES, "decision": "maybe"})
    assert bad.status_code == 422
    assert "decision" in bad.text
    assert await decisions(town) == []


async def test_an_incident_not_graded_or_ended_takes_no_decision(town: FakeService) -> None:
    up = Upstream()
    await town.consume(up.opened("inc-1"))
    r = await decide(town, "inc-1", YES)
    assert r.status_code == 409
    await town.consume(
        up.graded("inc-1"), up.event("inc-1", IncidentResolved(reason="已处置"), "incident")
    )
    r = await decide(town, "inc-1", YES)
    assert r.status_code == 409
    assert await decisions(town) == []


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"opens_on": "decided"}, "levels.1 (phone_quick_report).decided_by: a duty that opens"),
        ({"decided_by": "leader"}, "levels.1 (phone_quick_report).decided_by: only for a duty"),
        (
            {"opens_on": "decided", "decided_by": "leader", "after": "written_quick_report"},
            "levels.1 (phone_quick_report).after: a duty that opens on decided",
        ),
    ],
)
def test_a_decided_duty_written_wrong_names_the_file_entry_and_field(
    tmp_path: Path, entry: dict[str, str], said: str
) -> None:
    data = yaml.safe_load(ACTIONS_POLICY)
    data["levels"][1][0].pop("counted_from")
    data["levels"][1][0].update(entry)
    path = tmp_path / "obligations.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path, ObligationPolicy)
    assert str(path) in str(err.value)
    assert said in str(err.value)


def test_the_archive_timeline_says_what_the_group_decided_in_chinese() -> None:
    decided = DutyDecided(
        kind=KIND,
        title="较大舆情：镇领导小组决定上报的，按程序报县网信办等相关部门",
        decision=False,
        reason="已就地化解",
        decided_by="leader-zhang",
        level=2,
    )
    event = Envelope.new(
        decided,
        incident_id="inc-1",
        stream_id="obligations-inc-1",
        stream_version=1,
        actor=Actor(type="person", id="leader-zhang", unit_id="county"),
        occurred_at=T0,
    )
    (entry,) = timeline(
        [Logged(1, event)], ZoneInfo("Asia/Shanghai"), CATALOGUE, (), {"leader-zhang": "张组长"}
    )
    assert entry.summary == (
        "张组长决定不开启报送义务：较大舆情：镇领导小组决定上报的，按程序报县网信办等相关部门；"
        "理由：已就地化解"
    )
