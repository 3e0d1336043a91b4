"""The four-tier pack (config/plans/fourtier, seed 000 预案2/3) run on the fakes: four levels
that are the pack's data, graded, obliged, cleared and shown by its Chinese names; inputs
outside the plan in force refused with a 422 naming the field; the Huaning pack unchanged."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from services.archive.bootstrap import build as build_archive
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
    IncidentGraded,
    IncidentOpened,
    MediaTier,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
)
from shared.plan import load_plan
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

FOURTIER = CONFIG_DIR / "plans" / "fourtier"
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
PLAN = "/grading/v1/plan"
TIERS = {
    1: ("especially_major", "特别重大网络舆情", "特别重大"),
    2: ("major_or_large", "重大或较大网络舆情", "重大或较大"),
    3: ("general", "一般网络舆情", "一般"),
    4: ("minor", "影响较小的网络舆情", "影响较小"),
}


class Upstream(Streams):
    """Plays the other services: events about incidents, numbered per stream."""

    def __init__(self) -> None:
        super().__init__(
            T0, Actor(type="person", id="monitor-chen", unit_id="school-a"), unit_id="school-a"
        )

    def report(self, incident_id: str, tier: MediaTier, views: int = 0) -> Envelope:
        url = f"https://{tier.value}.example.com/{incident_id}"
        return self.event(
            incident_id,
            ReportReceived(
                report_id=f"{incident_id}-r1",
                source_type=SourceType.NEWS,
                source_name=f"{tier.value}-站点",
                media_tier=tier,
                url=url,
                normalized_url=url,
                title="学校门口道路积水，请问何时处理",
                excerpt="",
                author=None,
                published_at=T0,
                observed_at=T0,
                reach=Reach(views=views),
                unit_ids=("school-a",),
                filed_by="monitor-chen",
            ),
            "incident",
        )

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(
            title="学校门口道路积水", unit_ids=("school-a",), first_report_id=f"{incident_id}-r1"
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: int, category: str = "inquiry") -> Envelope:
        payload = IncidentGraded(
            level=level,
            category=category,
            rules_fired=(FiredRule(rule_id="level-default", reason="影响较小"),),
            rulebook_version="2026.12-seed000-2",
            plan_id="fourtier",
            plan_version="2026.12.3-seed000-2",
        )
        return self.event(incident_id, payload, "grade")


def on_fourtier(tmp_path: Path, **overrides: Any) -> Settings:
    return fake_settings(tmp_path, plan=FOURTIER, **overrides)


@pytest.fixture
async def grading(tmp_path: Path) -> AsyncIterator[FakeService]:
    async with fake_service("grading", build_grading, settings=on_fourtier(tmp_path)) as service:
        yield service


# --------------------------------------------------------------------------- the pack


def test_the_four_tier_pack_loads_with_its_four_levels_named_in_chinese() -> None:
    plan = load_plan(FOURTIER, Settings().policy_paths, DIRECTORY)
    assert (plan.id, plan.version) == ("fourtier", "2026.12.3-seed000-2")
    assert plan.manifest.ranks == (1, 2, 3, 4)
    assert [level.id for level in plan.manifest.levels] == [t[0] for t in TIERS.values()]
    for rank, (_, name, short) in TIERS.items():
        assert (plan.catalogue.level(rank), plan.catalogue.level_name(rank)) == (name, short)
    # The pack holds all four of its files: none is the deployment's.
    assert {name: path.parent for name, path in plan.paths.items()} == dict.fromkeys(
        ("rulebook", "obligations", "approval", "catalogue"), FOURTIER
    )
    # Each tier is led by another body (三 分级响应): the duty's owner says which.
    owners = {rank: [r.owner_role.value for r in plan.obligations.levels[rank]] for rank in TIERS}
    assert owners == {
        1: ["leader", "leader", "office", "leader"],  # 组长请示上级；领导小组；24小时监控；总结评估
        2: ["propaganda", "leader"],  # 信息股会同相关股室；总结评估
        3: ["office", "office"],  # 办公室请示；办公室会同相关股室
        4: ["dept_head"],  # 相关股室，在办公室指导下
    }
    # 三4: the section works under the office's guidance, so a miss alerts the office.
    (section,) = plan.obligations.levels[4]
    assert [r.value for r in section.alert_roles or ()] == ["office"]
    assert section.within == timedelta(hours=48)


def test_the_readme_maps_every_article_the_pack_carries() -> None:
    readme = (FOURTIER / "README.md").read_text(encoding="utf-8")
    manifest = yaml.safe_load((FOURTIER / "plan.yaml").read_text(encoding="utf-8"))
    for article in manifest["articles"]:
        file_name, anchor = article["entry"].split("#", 1)
        assert f"`{file_name}` `{anchor}`" in readme, article
    assert "## 未承载的条款及原因" in readme


# --------------------------------------------------------------------------- grading


async def test_a_county_report_is_graded_at_tier_4_and_a_central_one_at_tier_1(
    grading: FakeService,
) -> None:
    up = Upstream()
    await grading.consume(
        up.report("inc-minor", MediaTier.COUNTY), up.report("inc-major", MediaTier.CENTRAL)
    )
    graded = {e.incident_id: e.payload for e in await grading.published("IncidentGraded")}
    minor, major = graded["inc-minor"], graded["inc-major"]
    assert isinstance(minor, IncidentGraded)
    assert isinstance(major, IncidentGraded)
    assert (minor.level, minor.category, minor.plan_id) == (4, "inquiry", "fourtier")
    assert [r.rule_id for r in minor.rules_fired] == ["level-default", "category-inquiry"]
    assert (major.level, major.plan_id) == (1, "fourtier")
    assert "tier-central" in [r.rule_id for r in major.rules_fired]
    # On the wire a level stays the rank and a category the plain id.
    event = (await grading.published("IncidentGraded"))[0]
    wire = event.model_dump(mode="json")["payload"]
    assert (wire["level"], wire["category"]) == (4, "inquiry")


async def test_the_plan_view_lists_four_levels_with_names_duties_and_chains(
    grading: FakeService,
) -> None:
    async with grading.http() as http:
        answer = await http.get(PLAN, headers=grading.token("office-li", "county", "office"))
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert (plan["id"], plan["name"]) == (
        "fourtier",
        "学校网络舆情应急预案（四级响应，预案2、预案3）",
    )
    levels = plan["levels"]
    assert [(lv["id"], lv["key"], lv["name"], lv["short"]) for lv in levels] == [
        (rank, *names) for rank, names in TIERS.items()
    ]
    top, minor = levels[0], levels[3]
    assert [d["kind"] for d in top["duties"]] == [
        "superior_request",
        "group_response",
        "round_the_clock_watch",
        "summary_assessment",  # 五2: opened at resolution
    ]
    request = top["duties"][0]
    assert (request["deadline"], request["owner_role"]["name"]) == ("30m", "应急领导小组（组长）")
    assert top["duties"][2]["every"] == "6h"
    assert [s["role"]["name"] for s in top["chain"]] == [
        "应急领导小组办公室",
        "应急领导小组（组长）",
    ]
    assert [s["role"]["name"] for s in levels[1]["chain"]] == ["信息股", "应急领导小组（组长）"]
    (section,) = minor["duties"]
    assert (section["kind"], section["deadline"]) == ("section_handling", "48h")
    assert (section["owner_role"]["name"], section["recipients"][0]["name"]) == (
        "相关股室",
        "应急领导小组办公室",
    )
    assert minor["chain"] == [
        {"role": {"id": "dept_head", "name": "相关股室"}, "unit": "incident"},
        {"role": {"id": "office", "name": "应急领导小组办公室"}, "unit": None},
    ]
    rumor = next(c for c in plan["categories"] if c["id"] == "rumor")
    assert [d["kind"] for d in rumor["duties"]] == ["false_report_contact"]
    assert [k["id"] for k in plan["statement_kinds"]] == [
        "press_release",
        "online_reply",
        "clarification",
        "bulletin",
    ]


async def test_an_override_to_tier_4_is_taken_and_one_outside_the_plan_is_a_422(
    grading: FakeService,
) -> None:
    await grading.consume(Upstream().report("inc-1", MediaTier.CENTRAL))
    leader = grading.token("leader-zhang", "county", "leader")
    url = "/grading/v1/incidents/inc-1/override"
    async with grading.http() as http:
        fifth = await http.post(url, json={"level": 5, "reason": "无第五级"}, headers=leader)
        gossip = await http.post(
            url, json={"level": 2, "category": "gossip", "reason": "无此类"}, headers=leader
        )
        down = await http.post(url, json={"level": 4, "reason": "影响较小"}, headers=leader)
    assert fifth.status_code == 422, fifth.text
    assert fifth.json()["error"]["details"][0]["field"] == "level"
    assert "[1, 2, 3, 4]" in fifth.json()["error"]["details"][0]["reason"]
    assert gossip.status_code == 422, gossip.text
    assert gossip.json()["error"]["details"][0]["field"] == "category"
    assert down.status_code == 200, down.text
    assert (down.json()["from_level"], down.json()["level"]) == (1, 4)


async def test_under_huaning_a_fourth_level_is_refused_naming_the_field() -> None:
    async with fake_service("grading", build_grading) as huaning, huaning.http() as http:
        await huaning.consume(Upstream().report("inc-1", MediaTier.CENTRAL))
        answer = await http.post(
            "/grading/v1/incidents/inc-1/override",
            json={"level": 4, "reason": "四级"},
            headers=huaning.token("leader-zhang", "county", "leader"),
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["field"] == "level"


# --------------------------------------------------------------------------- duties


async def test_a_tier_4_grade_opens_the_sections_duty_and_tier_1_the_groups(
    tmp_path: Path,
) -> None:
    up = Upstream()
    settings = on_fourtier(tmp_path)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=Clock(T0)
    ) as notification:
        await notification.consume(
            up.opened("inc-minor"),
            up.graded("inc-minor", 4),
            up.opened("inc-major"),
            up.graded("inc-major", 1),
        )
        opened = [
            (e.incident_id, e.payload)
            for e in await notification.published("ObligationOpened")
            if isinstance(e.payload, ObligationOpened)
        ]
    minor = [p for i, p in opened if i == "inc-minor"]
    assert [(p.kind, p.level, p.owner_role, p.recipients, p.alert_roles) for p in minor] == [
        ("section_handling", 4, "dept_head", ("office",), ("office",))
    ]
    assert minor[0].deadline - minor[0].counted_from == timedelta(hours=48)
    assert minor[0].title == "影响较小舆情：相关股室在办公室指导下处置并回告办公室"
    major = {p.kind: p for i, p in opened if i == "inc-major"}
    # 三1: the group's response waits on the request to the superior (after:).
    assert set(major) == {"superior_request", "round_the_clock_watch"}
    assert (major["superior_request"].owner_role, major["superior_request"].alert_roles) == (
        "leader",
        ("leader",),
    )
    request = major["superior_request"]
    assert request.deadline - request.counted_from == timedelta(minutes=30)


def test_the_notification_texts_name_the_tier_as_the_pack_does() -> None:
    templates = Templates(
        SHIPPED_TEMPLATES, ZoneInfo("Asia/Shanghai"), Catalogue.load(FOURTIER / "catalogue.yaml")
    )
    message = templates.render(
        "opened",
        level=4,
        deadline=T0 + timedelta(hours=48),
        obligation_title="影响较小舆情：相关股室在办公室指导下处置并回告办公室",
        recipient="刘校长",
        incident_title="学校门口道路积水",
        units=["实验小学"],
        incident_url="http://localhost/i/1",
        ack_url="http://localhost/a/1",
    )
    assert message.subject.startswith("【影响较小舆情】请于2026-12-03 10:00前完成")
    assert "级别：影响较小舆情" in message.body


# --------------------------------------------------------------------------- statements


def pack_with_kinds(tmp_path: Path, kinds: list[str]) -> Path:
    target = tmp_path / "fourtier"
    shutil.copytree(FOURTIER, target)
    manifest = yaml.safe_load((target / "plan.yaml").read_text(encoding="utf-8"))
    manifest["statement_kinds"] = kinds
    (target / "plan.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), "utf-8")
    return target


async def test_a_statement_kind_the_plan_does_not_declare_is_a_422_naming_kind(
    tmp_path: Path,
) -> None:
    up = Upstream()
    target = pack_with_kinds(tmp_path, ["online_reply", "clarification"])
    settings = fake_settings(tmp_path, plan=target)
    async with fake_service("statement", build_statement, settings=settings) as statement:
        await statement.consume(up.opened("inc-1"), up.graded("inc-1", 4))
        author = statement.token("spokesperson-sun", "school-a", "spokesperson")
        body: dict[str, Any] = {"title": "情况通报", "body": "经核查……"}
        async with statement.http() as http:
            url = "/statements/v1/incidents/inc-1/statements"
            release = await http.post(url, json={**body, "kind": "press_release"}, headers=author)
            reply = await http.post(url, json={**body, "kind": "online_reply"}, headers=author)
            submitted = await http.post(
                f"/statements/v1/statements/{reply.json()['statement_id']}/submit",
                headers=author,
            )
    assert release.status_code == 422, release.text
    detail = release.json()["error"]["details"][0]
    assert detail["field"] == "kind"
    assert "'press_release'" in detail["reason"]
    assert reply.status_code == 201, reply.text
    # Tier 4's chain: the section concerned, then the office that guides it.
    assert submitted.status_code == 200, submitted.text
    chain = [(s["role"], s["unit_id"]) for s in submitted.json()["chain"]]
    assert chain == [("dept_head", "school-a"), ("office", None)]


# --------------------------------------------------------------------------- the archive


async def test_the_archive_shows_a_tier_4_incident_by_the_plans_names(tmp_path: Path) -> None:
    up = Upstream()
    graded = up.graded("inc-minor", 4)
    duty = up.event(
        "inc-minor",
        ObligationOpened(
            obligation_id="inc-minor-section",
            kind="section_handling",
            title="影响较小舆情：相关股室在办公室指导下处置并回告办公室",
            level=4,
            owner_role="dept_head",
            recipients=("office",),
            counted_from=T0,
            deadline=T0 + timedelta(hours=48),
            alert_roles=("office",),
        ),
        "obligations",
    )
    settings = on_fourtier(tmp_path)
    async with fake_service("archive", build_archive, settings=settings) as archive:
        await archive.consume(up.report("inc-minor", MediaTier.COUNTY), up.opened("inc-minor"))
        await archive.consume(graded, duty)
        admin = archive.token("admin", "county", "admin")
        async with archive.http() as http:
            view = (await http.get("/archive/v1/incidents/inc-minor", headers=admin)).json()
            timeline = (
                await http.get("/archive/v1/incidents/inc-minor/timeline", headers=admin)
            ).json()
            listed = await http.get("/archive/v1/incidents", params={"level": 4}, headers=admin)
            fifth = await http.get("/archive/v1/incidents", params={"level": 5}, headers=admin)
            inquiries = await http.get(
                "/archive/v1/incidents", params={"category": "inquiry"}, headers=admin
            )
            gossip = await http.get(
                "/archive/v1/incidents", params={"category": "gossip"}, headers=admin
            )
    assert view["level"] == 4
    (obligation,) = view["obligations"]
    assert (obligation["kind"], obligation["state"]) == ("section_handling", "open")
    summaries = [e["summary"] for e in timeline["events"]]
    assert any(s.startswith("研判为影响较小的网络舆情，类别：询问") for s in summaries), summaries
    assert any("责任：相关股室" in s for s in summaries), summaries
    assert listed.status_code == 200, listed.text
    assert [i["incident_id"] for i in listed.json()["items"]] == ["inc-minor"]
    assert fifth.status_code == 422, fifth.text
    assert fifth.json()["error"]["details"][0]["field"] == "level"
    assert [i["incident_id"] for i in inquiries.json()["items"]] == ["inc-minor"]
    assert gossip.status_code == 422, gossip.text
    assert gossip.json()["error"]["details"][0]["field"] == "category"


# --------------------------------------------------------------------------- Huaning unchanged


async def test_the_huaning_pack_keeps_its_three_levels_names_and_wire_values() -> None:
    up = Upstream()
    async with fake_service("grading", build_grading) as huaning, huaning.http() as http:
        await huaning.consume(up.report("inc-1", MediaTier.COUNTY))
        answer = await http.get(PLAN, headers=huaning.token("office-li", "county", "office"))
        graded = await huaning.published("IncidentGraded")
    levels = answer.json()["levels"]
    assert [(lv["id"], lv["key"], lv["name"], lv["short"]) for lv in levels] == [
        (1, "major", "一级（重大）", "一级"),
        (2, "serious", "二级（严重）", "二级"),
        (3, "general", "三级（一般）", "三级"),
    ]
    assert [c["id"] for c in answer.json()["categories"]] == [
        "inquiry",
        "hype",
        "rumor",
        "suggestion",
    ]
    payload = graded[0].model_dump(mode="json")["payload"]
    assert (payload["level"], payload["category"], payload["plan_id"]) == (3, "inquiry", "huaning")


async def test_trying_the_four_tier_pack_on_huaning_incidents_shows_tier_4_duties() -> None:
    up = Upstream()
    async with fake_service("grading", build_grading) as huaning, huaning.http() as http:
        await huaning.consume(up.report("inc-1", MediaTier.COUNTY))
        before = await huaning.published()
        answer = await http.post(
            "/grading/v1/plan/try",
            json={"plan": "fourtier", "since": (T0 - timedelta(days=1)).isoformat()},
            headers=huaning.token("analyst-zhao", "county", "analyst"),
        )
        after = await huaning.published()
        in_force = await http.get(PLAN, headers=huaning.token("office-li", "county", "office"))
    assert answer.status_code == 200, answer.text
    (incident,) = answer.json()["incidents"]
    assert (incident["recorded_level"], incident["level"], incident["differs"]) == (3, 4, True)
    duties = {d["kind"]: d for d in incident["duties"]}
    assert duties["section_handling"]["change"] == "new"
    assert after == before
    assert in_force.json()["id"] == "huaning"
