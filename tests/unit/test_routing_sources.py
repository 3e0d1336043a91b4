"""Routing by a report's source (obligations.yaml `routing`, seed 003 第十七条: items on the
地方领导留言板 go to the 督办室 of whoever's board it is): a route whose source type and
source-name pattern match one of the incident's reports adds a role at a named unit
(`role@unit`) to the recipients of the duties it opens; the page reaches that unit's
holders of the role. A route naming what the plan or directory does not have stops the
start with a message naming the file, the entry and the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.notification.bootstrap import build as build_notification
from services.notification.delivery import page_steps
from shared.directory import Directory
from shared.events import (
    Actor,
    Envelope,
    FiredRule,
    IncidentGraded,
    IncidentOpened,
    ObligationOpened,
    ReportOrigin,
    SourceType,
)
from shared.identity import Role
from shared.plan_rules import ObligationPolicy, ReportSource
from shared.policy import PolicyError, load_policy
from shared.settings import CONFIG_DIR
from tests.fakes.duties import ACTIONS_POLICY, report
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")
BOARD = ReportSource("leader_board", "人民网地方领导留言板·华宁县委书记")


def policy() -> ObligationPolicy:
    return ObligationPolicy.model_validate(yaml.safe_load(ACTIONS_POLICY))


def test_a_route_adds_its_recipients_for_a_matching_source_only() -> None:
    assert policy().routed("direct_handling", [BOARD]) == ("office@county",)
    assert policy().routed("direct_handling", [ReportSource("weibo", "华宁县发布")]) == ()
    town_board = ReportSource("leader_board", "人民网地方领导留言板·某市市长")
    assert policy().routed("direct_handling", [town_board]) == ()


def test_a_route_limited_to_some_kinds_adds_nothing_to_the_others() -> None:
    data = yaml.safe_load(ACTIONS_POLICY)
    data["routing"][0]["kinds"] = ["phone_quick_report"]
    limited = ObligationPolicy.model_validate(data)
    assert limited.routed("phone_quick_report", [BOARD]) == ("office@county",)
    assert limited.routed("direct_handling", [BOARD]) == ()


def test_a_routed_recipient_pages_that_units_holders_of_the_role() -> None:
    steps = page_steps(DIRECTORY, ["dept_head", "office@county"], [Role.LEADER], ["school-a"])
    assert steps == [["head-liu", "office-li"], ["leader-zhang"]]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"source_name": "(县"}, "routing.0.source_name"),
        ({"source_type": "tieba"}, "routing.0.source_type"),
        ({"kinds": ["no_such_duty"]}, "routing.0 (county-leader-board).kinds: 'no_such_duty'"),
        ({"recipients": [{"role": "督办室", "unit": "county"}]}, "routing.0.recipients.0.role"),
    ],
)
def test_a_malformed_route_names_the_file_entry_and_field(
    tmp_path: Path, change: dict[str, Any], said: str
) -> None:
    data = yaml.safe_load(ACTIONS_POLICY)
    data["routing"][0].update(change)
    path = tmp_path / "obligations.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path, ObligationPolicy)
    assert str(path) in str(err.value)
    assert said in str(err.value)


@pytest.mark.parametrize(
    ("recipient", "said"),
    [
        (
            {"role": "office", "unit": "town-9"},
            "routing.0 (county-leader-board).recipients.0.unit: 'town-9' is not a unit",
        ),
        (
            {"role": "office", "unit": "road-1"},
            "routing.0 (county-leader-board).recipients.0.role: nobody in unit 'road-1'",
        ),
    ],
)
async def test_a_route_to_a_unit_or_role_the_directory_lacks_stops_the_start(
    tmp_path: Path, recipient: dict[str, str], said: str
) -> None:
    data = yaml.safe_load(ACTIONS_POLICY)
    data["routing"][0]["recipients"] = [recipient]
    path = tmp_path / "obligations.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    settings = fake_settings(tmp_path, obligations_policy_path=path)
    with pytest.raises(PolicyError) as err:
        async with fake_service("notification", build_notification, settings=settings):
            pass
    assert str(path) in str(err.value)
    assert said in str(err.value)


# --------------------------------------------------------------------------- the service


class Upstream(Streams):
    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(
            title="留言反映路面破损", unit_ids=("school-a",), first_report_id="r1"
        )
        return self.event(incident_id, payload, "incident")

    def reported(self, incident_id: str, source_type: str, source_name: str) -> Envelope:
        payload = report(
            incident_id,
            published_at=T0 - timedelta(hours=1),
            observed_at=T0,
            source_type=source_type,
            source_name=source_name,
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str) -> Envelope:
        payload = IncidentGraded(
            level=3,
            category="suggestion",
            rules_fired=(FiredRule(rule_id="level-default", reason="一般诉求"),),
            rulebook_version="test",
        )
        return self.event(incident_id, payload, "grade")


@pytest.fixture
async def notification(tmp_path: Path) -> AsyncIterator[FakeService]:
    path = tmp_path / "obligations.yaml"
    path.write_text(ACTIONS_POLICY, encoding="utf-8")
    settings = fake_settings(tmp_path, obligations_policy_path=path)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=Clock(T0)
    ) as service:
        yield service


async def opened_duty(service: FakeService) -> ObligationOpened:
    (event,) = await service.published("ObligationOpened")
    assert isinstance(event.payload, ObligationOpened)
    return event.payload


async def test_a_leader_board_item_goes_to_the_boards_owners_office_as_well(
    notification: FakeService,
) -> None:
    up = Upstream()
    await notification.consume(
        up.opened("inc-1"),
        up.reported("inc-1", "leader_board", BOARD.source_name),
        up.graded("inc-1"),
    )
    duty = await opened_duty(notification)
    assert duty.kind == "direct_handling"
    assert duty.recipients == ("office", "office@county")
    office = notification.token("office-li", "county", "office")
    async with notification.http() as http:
        r = await http.get("/notifications/v1/obligations?incident_id=inc-1", headers=office)
    (row,) = r.json()["obligations"]
    assert row["recipients"] == ["office", "office@county"]
    pages = [doc async for doc in notification.db["pages"].find({})]
    assert [p["steps"][0] for p in pages] == [["office-li"]]


async def test_an_item_from_elsewhere_keeps_the_duties_own_recipients(
    notification: FakeService,
) -> None:
    up = Upstream()
    await notification.consume(
        up.opened("inc-1"), up.reported("inc-1", "weibo", "华宁县发布"), up.graded("inc-1")
    )
    assert (await opened_duty(notification)).recipients == ("office",)


async def test_a_grade_seen_before_intakes_report_is_routed_by_the_first_report_it_names(
    notification: FakeService,
) -> None:
    up = Upstream()
    grade = up.graded("inc-1")
    assert isinstance(grade.payload, IncidentGraded)
    origin = ReportOrigin(
        report_id="r1",
        source_type=SourceType.LEADER_BOARD,
        source_name=BOARD.source_name,
        published_at=T0 - timedelta(hours=1),
        observed_at=T0,
    )
    named = grade.model_copy(
        update={"payload": grade.payload.model_copy(update={"first_report": origin})}
    )
    await notification.consume(up.opened("inc-1"), named)
    assert (await opened_duty(notification)).recipients == ("office", "office@county")


async def test_the_huaning_pack_routes_a_county_leaders_board_item_to_the_county_office(
    tmp_path: Path,
) -> None:
    """Seed 003 第十七条, as the shipped default pack carries it (obligations.yaml
    `routing` county-leader-board): 县委书记's board → the county unit's office."""
    up = Upstream()
    async with fake_service(
        "notification", build_notification, settings=fake_settings(tmp_path), clock=Clock(T0)
    ) as huaning:
        await huaning.consume(
            up.opened("inc-1"),
            up.reported("inc-1", "leader_board", "人民网地方领导留言板·华宁县委书记"),
            up.graded("inc-1"),
        )
        duty = await opened_duty(huaning)
    assert (duty.kind, duty.recipients) == ("direct_handling", ("office", "office@county"))
    assert (duty.plan_id, duty.plan_version) == ("huaning", "2026.11.1-seed003")
