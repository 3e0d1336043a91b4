"""The town pack (config/plans/town, seed 003 篇一) run on the fakes: it loads with its three
levels named as the town names them; a grade opens the level's duties in the order the plan
gives (first to the town's leading group, then to the county office), an escalation the new
level's, and the result report waits for the resolution; statements are cleared by the
town's chain; the README maps every article the pack carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from services.grading.bootstrap import build as build_grading
from services.notification.bootstrap import SHIPPED_TEMPLATES
from services.notification.bootstrap import build as build_notification
from services.notification.delivery import Templates
from services.statement.bootstrap import build as build_statement
from shared.catalogue import Catalogue
from shared.directory import Directory
from shared.events import (
    Actor,
    Envelope,
    FiredRule,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    MediaTier,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
)
from shared.plan import load_plan, read_manifest
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

TOWN = CONFIG_DIR / "plans" / "town"
VERSION = read_manifest(TOWN).version
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
LEVELS = {
    1: ("major", "重大网络舆情（一级预警）", "重大"),
    2: ("large", "较大网络舆情（二级预警）", "较大"),
    3: ("general", "一般网络舆情（三级预警）", "一般"),
}
FULFIL = "/notifications/v1/obligations/{}/fulfil"


class Upstream(Streams):
    """Plays intake and grading on the town pack."""

    def __init__(self) -> None:
        super().__init__(
            T0, Actor(type="person", id="monitor-chen", unit_id="school-a"), unit_id="school-a"
        )

    def report(self, incident_id: str, tier: MediaTier) -> Envelope:
        url = f"https://{tier.value}.example.com/{incident_id}"
        payload = ReportReceived(
            report_id=f"{incident_id}-r1",
            source_type=SourceType.NEWS,
            source_name=f"{tier.value}-站点",
            media_tier=tier,
            url=url,
            normalized_url=url,
            title="镇区道路积水，请问何时处理",
            excerpt="",
            author=None,
            published_at=T0,
            observed_at=T0,
            reach=Reach(views=0),
            unit_ids=("school-a",),
            filed_by="monitor-chen",
        )
        return self.event(incident_id, payload, "incident")

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(
            title="镇区道路积水", unit_ids=("school-a",), first_report_id=f"{incident_id}-r1"
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: int, category: str = "inquiry") -> Envelope:
        payload = IncidentGraded(
            level=level,
            category=category,
            rules_fired=(FiredRule(rule_id="tier-provincial", reason="省级媒体"),),
            rulebook_version="2026.1",
            plan_id="town",
            plan_version=VERSION,
        )
        return self.event(incident_id, payload, "grade")

    def escalated(self, incident_id: str, to: int) -> Envelope:
        payload = IncidentEscalated(
            from_level=to + 1,
            to_level=to,
            category="inquiry",
            reason="中央媒体报道",
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体"),),
            rulebook_version="2026.1",
            plan_id="town",
            plan_version=VERSION,
        )
        return self.event(incident_id, payload, "grade")


def on_town(tmp_path: Path) -> Settings:
    return fake_settings(tmp_path, plan=TOWN)


async def opened(service: FakeService, incident_id: str) -> dict[str, ObligationOpened]:
    found: dict[str, ObligationOpened] = {}
    for event in await service.published("ObligationOpened"):
        if event.incident_id == incident_id and isinstance(event.payload, ObligationOpened):
            found[event.payload.kind] = event.payload
    return found


# --------------------------------------------------------------------------- the pack


def test_the_town_pack_loads_with_three_levels_named_as_the_town_names_them() -> None:
    plan = load_plan(TOWN, Settings().policy_paths, DIRECTORY)
    assert (plan.id, plan.manifest.seed) == ("town", "003 篇一")
    assert [level.id for level in plan.manifest.levels] == [v[0] for v in LEVELS.values()]
    for rank, (_, name, short) in LEVELS.items():
        assert (plan.catalogue.level(rank), plan.catalogue.level_name(rank)) == (name, short)
    assert plan.catalogue.role("leader") == "镇网络舆情应对处置工作领导小组"
    assert plan.catalogue.role("office") == "党政办"
    # Duties, chains and names are the pack's; grading is by the deployment's rulebook.
    assert {name: path.parent for name, path in plan.paths.items()} == {
        "rulebook": CONFIG_DIR,
        "obligations": TOWN,
        "approval": TOWN,
        "catalogue": TOWN,
    }
    kinds = {rank: [r.kind for r in plan.obligations.levels[rank]] for rank in LEVELS}
    assert kinds == {
        1: [
            "group_report_major",
            "county_report",
            "response_plan",
            "full_time_watch",
            "result_report_major",
        ],
        2: ["group_report", "county_report_decided", "result_report"],
        3: ["department_handling", "handling_result"],
    }
    waits = {r.kind: r.after for r in plan.obligations.levels[1]}
    # 二（二）先报送镇领导小组，再由领导小组报县网信办.
    assert waits["county_report"] == "group_report_major"
    assert waits["response_plan"] == "group_report_major"


def test_the_readme_maps_every_article_the_pack_carries() -> None:
    readme = (TOWN / "README.md").read_text(encoding="utf-8")
    manifest = yaml.safe_load((TOWN / "plan.yaml").read_text(encoding="utf-8"))
    for article in manifest["articles"]:
        file_name, anchor = article["entry"].split("#", 1)
        assert f"`{file_name}` `{anchor}`" in readme, article
    assert "## 未承载的条款及原因" in readme
    assert "三（三）" in readme  # 资料归档: not carried, and why


# --------------------------------------------------------------------------- duties


async def test_a_level_2_grade_reports_to_the_group_and_an_escalation_then_to_the_county(
    tmp_path: Path,
) -> None:
    up, clock = Upstream(), Clock(T0)
    async with fake_service(
        "notification", build_notification, settings=on_town(tmp_path), clock=clock
    ) as notification:
        await notification.consume(up.opened("inc-1"), up.graded("inc-1", 2))
        first = await opened(notification, "inc-1")
        assert set(first) == {"group_report", "online_reply"}
        report = first["group_report"]
        assert (report.owner_role, report.recipients) == ("office", ("leader",))
        assert report.deadline == T0 + timedelta(hours=2)
        assert first["online_reply"].deadline == T0 + timedelta(hours=24)

        # Central media report it: 重大. The first report to the group is owed within 30m;
        # the county report and the response plan wait on it.
        up.at = T0 + timedelta(hours=1)
        await notification.consume(up.escalated("inc-1", 1))
        major = await opened(notification, "inc-1")
        assert set(major) - set(first) == {"group_report_major", "full_time_watch"}
        assert major["group_report_major"].deadline == up.at + timedelta(minutes=30)
        assert major["full_time_watch"].deadline == up.at + timedelta(hours=6)

        filed_at = up.at + timedelta(minutes=20)
        clock.now = filed_at
        office = notification.token("office-li", "county", "office")
        async with notification.http() as http:
            r = await http.post(
                FULFIL.format(major["group_report_major"].obligation_id), json={}, headers=office
            )
        assert r.status_code == 200, r.text
        then = await opened(notification, "inc-1")
        county, plan = then["county_report"], then["response_plan"]
        assert (county.owner_role, county.counted_from) == ("leader", filed_at)
        assert county.deadline == filed_at + timedelta(hours=1)
        assert plan.recipients == ("office", "dept_head")
        assert plan.deadline == filed_at + timedelta(hours=2)
        assert "result_report_major" not in then  # owed at the resolution


async def test_a_level_3_grade_is_the_departments_and_a_miss_alerts_the_office(
    tmp_path: Path,
) -> None:
    up = Upstream()
    async with fake_service(
        "notification", build_notification, settings=on_town(tmp_path), clock=Clock(T0)
    ) as notification:
        await notification.consume(up.opened("inc-2"), up.graded("inc-2", 3, "rumor"))
        duties = await opened(notification, "inc-2")
    assert set(duties) == {"department_handling", "rumor_rebuttal"}
    handling = duties["department_handling"]
    assert (handling.owner_role, handling.recipients, handling.alert_roles) == (
        "dept_head",
        ("office",),
        ("office",),
    )
    assert handling.deadline == T0 + timedelta(hours=24)
    assert duties["rumor_rebuttal"].deadline == T0 + timedelta(hours=12)


def test_the_notification_texts_name_the_level_as_the_town_does() -> None:
    templates = Templates(
        SHIPPED_TEMPLATES, ZoneInfo("Asia/Shanghai"), Catalogue.load(TOWN / "catalogue.yaml")
    )
    message = templates.render(
        "opened",
        level=1,
        deadline=T0 + timedelta(minutes=30),
        obligation_title="重大舆情：发现后立即报送镇网络舆情应对处置工作领导小组（30分钟内）",
        recipient="张组长",
        incident_title="镇区道路积水",
        units=["实验小学"],
        incident_url="http://localhost/i/1",
        ack_url="http://localhost/a/1",
    )
    assert message.subject.startswith("【重大舆情】请于2026-12-01 10:30前完成")
    assert "级别：重大舆情" in message.body


# --------------------------------------------------------------------------- grading, statements


async def test_grading_on_the_town_pack_records_its_id_and_shows_its_names(
    tmp_path: Path,
) -> None:
    up = Upstream()
    async with fake_service("grading", build_grading, settings=on_town(tmp_path)) as grading:
        await grading.consume(up.report("inc-3", MediaTier.CENTRAL))
        (graded,) = await grading.published("IncidentGraded")
        async with grading.http() as http:
            answer = await http.get(
                "/grading/v1/plan", headers=grading.token("office-li", "county", "office")
            )
    assert isinstance(graded.payload, IncidentGraded)
    assert (graded.payload.level, graded.payload.plan_id) == (1, "town")
    assert graded.payload.plan_version == VERSION
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    assert [(lv["key"], lv["name"]) for lv in view["levels"]] == [
        (key, name) for key, name, _ in LEVELS.values()
    ]
    assert [s["role"]["name"] for s in view["levels"][0]["chain"]] == [
        "党政办",
        "镇网络舆情应对处置工作领导小组",
    ]
    # The result report is shown as owed at the resolution, not with the grade.
    opens = {d["kind"]: d["opens_on"] for d in view["levels"][0]["duties"]}
    assert opens["result_report_major"] == "resolved", opens
    assert {k for k, v in opens.items() if v == "graded"}, opens


async def test_a_general_statement_is_cleared_by_the_department_then_the_office(
    tmp_path: Path,
) -> None:
    up = Upstream()
    async with fake_service("statement", build_statement, settings=on_town(tmp_path)) as statement:
        await statement.consume(up.opened("inc-4"), up.graded("inc-4", 3))
        author = statement.token("spokesperson-sun", "school-a", "spokesperson")
        body = {"title": "情况说明", "body": "经核查……", "kind": "online_reply"}
        async with statement.http() as http:
            drafted = await http.post(
                "/statements/v1/incidents/inc-4/statements", json=body, headers=author
            )
            assert drafted.status_code == 201, drafted.text
            submitted = await http.post(
                f"/statements/v1/statements/{drafted.json()['statement_id']}/submit",
                headers=author,
            )
    assert submitted.status_code == 200, submitted.text
    chain = [(s["role"], s["unit_id"]) for s in submitted.json()["chain"]]
    assert chain == [("dept_head", "school-a"), ("office", None)]
