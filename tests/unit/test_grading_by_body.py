"""Grading by a body and a leader's instruction (seed 003 篇三 第四条, 第十七条), on the test
pack tests/plans/huaning_body (plan.yaml `grading: {confirmed_by: leader}`).

Grading on the fakes: the rulebook's grade is a proposal (IncidentGradeProposed) until the
leader confirms it or changes it with a reason (IncidentGraded, carrying who confirmed);
a later report that raises it proposes again; the override waits for the confirmation; a
leader's instruction (批示/签批) is recorded on the incident. Notification on the fakes: a
duty with `opens_on: proposed` opens on the proposal, the others on the confirmation, and
`opens_on: instructed` on a signed instruction, each counted from its event. The archive
shows the proposal, the confirmation and the instruction. Plans without `grading` grade at
once, as they always did. Bad packs and bad requests are refused naming file, entry or field.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from services.archive.domain.cases import case_figures
from services.archive.domain.fold import fold
from services.archive.domain.ordering import Logged
from services.archive.domain.timeline import timeline
from services.grading.bootstrap import build as build_grading
from services.notification.bootstrap import build as build_notification
from shared.catalogue import Catalogue
from shared.directory import Directory
from shared.events import (
    Actor,
    Envelope,
    FiredRule,
    IncidentGraded,
    IncidentGradeProposed,
    IncidentOpened,
    LeaderInstructionRecorded,
    MediaTier,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
)
from shared.plan import PlanError, load_plan, read_manifest
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

BODY = Path(__file__).resolve().parents[1] / "plans" / "huaning_body"
VERSION = read_manifest(BODY).version
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
GRADE = "/grading/v1/incidents/{}/grade"
CONFIRM = "/grading/v1/incidents/{}/confirm"
OVERRIDE = "/grading/v1/incidents/{}/override"
INSTRUCT = "/grading/v1/incidents/{}/instructions"
LIST = "/notifications/v1/obligations"


class Intake(Streams):
    """Plays intake: an incident and its reports."""

    def __init__(self) -> None:
        super().__init__(
            T0, Actor(type="person", id="monitor-chen", unit_id="school-a"), unit_id="school-a"
        )
        self.reports = 0

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(title="公路塌方", unit_ids=("school-a",), first_report_id="rep-1")
        return self.event(incident_id, payload)

    def report(self, incident_id: str, tier: MediaTier = MediaTier.COUNTY) -> Envelope:
        self.reports += 1
        n = self.reports
        return self.event(
            incident_id,
            ReportReceived(
                report_id=f"rep-{n}",
                source_type=SourceType.NEWS,
                source_name=f"{tier.value}-站点",
                media_tier=tier,
                url=f"https://{tier.value}.example.com/{n}",
                normalized_url=f"https://{tier.value}.example.com/{n}",
                title="公路塌方致车辆受阻",
                excerpt="",
                author=None,
                published_at=T0,
                observed_at=T0,
                reach=Reach(views=0),
                unit_ids=("school-a",),
                filed_by="monitor-chen",
            ),
        )


class Grading(Streams):
    """Plays grading for notification: a proposal, its confirmation, an instruction."""

    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"), unit_id="school-a")

    def proposed(self, incident_id: str, level: int) -> Envelope:
        payload = IncidentGradeProposed(
            level=level,
            category="hype",
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体"),),
            rulebook_version="2026.1",
            confirm_role="leader",
            plan_id="huaning-body",
            plan_version=VERSION,
        )
        return self.event(incident_id, payload, "grade")

    def confirmed(self, incident_id: str, level: int) -> Envelope:
        payload = IncidentGraded(
            level=level,
            category="hype",
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体"),),
            rulebook_version="2026.1",
            plan_id="huaning-body",
            plan_version=VERSION,
            confirmed_by="leader-zhang",
        )
        return self.event(incident_id, payload, "grade")

    def instructed(self, incident_id: str, level: int, *, signed: bool) -> Envelope:
        payload = LeaderInstructionRecorded(
            instruction_id=f"ins-{incident_id}-{signed}",
            text="请涉事部门立即核实并处置",
            signed=signed,
            instructed_by="leader-zhang",
            level=level,
            category="hype",
        )
        return self.event(incident_id, payload, "grade")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def grading(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeService]:
    settings = fake_settings(tmp_path, plan=BODY)
    async with fake_service("grading", build_grading, settings=settings, clock=clock) as service:
        yield service


@pytest.fixture
async def notification(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeService]:
    settings = fake_settings(tmp_path, plan=BODY)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=clock
    ) as service:
        yield service


def leader(service: FakeService) -> dict[str, str]:
    return service.token("leader-zhang", "county", "leader")


def office(service: FakeService) -> dict[str, str]:
    return service.token("office-li", "county", "office")


async def post(service: FakeService, path: str, headers: dict[str, str], body: Any) -> Any:
    async with service.http() as api:
        return await api.post(path, json=body, headers=headers)


async def grade_of(service: FakeService, incident_id: str) -> dict[str, Any]:
    async with service.http() as api:
        r = await api.get(GRADE.format(incident_id), headers=leader(service))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def fields(r: Any) -> list[str]:
    return [d["field"] for d in r.json()["error"]["details"]]


# --------------------------------------------------------------------------- grading


async def test_the_rulebook_proposes_and_the_leader_confirms_the_grade(
    grading: FakeService, clock: Clock
) -> None:
    intake = Intake()
    await grading.consume(intake.opened("inc-1"), intake.report("inc-1", MediaTier.PROVINCIAL))
    (proposal,) = await grading.published()
    assert isinstance(proposal.payload, IncidentGradeProposed)
    assert (proposal.payload.level, proposal.payload.confirm_role) == (2, "leader")
    assert (proposal.payload.plan_id, proposal.payload.plan_version) == ("huaning-body", VERSION)
    shown = await grade_of(grading, "inc-1")
    assert (shown["proposed"], shown["confirm_role"], shown["level"]) == (True, "leader", 2)

    # The office may see it but not decide it; the leader confirms it as proposed.
    r = await post(grading, CONFIRM.format("inc-1"), office(grading), {})
    assert r.status_code == 403, r.text
    clock.now = T0 + timedelta(minutes=20)
    r = await post(grading, CONFIRM.format("inc-1"), leader(grading), {})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "incident_id": "inc-1",
        "level": 2,
        "category": proposal.payload.category,
        "confirmed_by": "leader-zhang",
        "reason": None,
    }
    _, graded = await grading.published()
    assert isinstance(graded.payload, IncidentGraded)
    assert graded.occurred_at == clock.now
    assert graded.payload.confirmed_by == "leader-zhang"
    assert graded.payload.rules_fired == proposal.payload.rules_fired
    assert graded.payload.plan_version == VERSION
    shown = await grade_of(grading, "inc-1")
    assert (shown["proposed"], shown["confirmed_by"]) == (False, "leader-zhang")
    assert [h["event_type"] for h in shown["history"]] == [
        "IncidentGradeProposed",
        "IncidentGraded",
    ]

    # Nothing is proposed any more: a second confirmation is refused.
    r = await post(grading, CONFIRM.format("inc-1"), leader(grading), {})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "confirm_refused"


async def test_the_leader_changes_the_proposal_only_with_a_reason_and_a_level_of_the_plan(
    grading: FakeService,
) -> None:
    intake = Intake()
    await grading.consume(intake.opened("inc-2"), intake.report("inc-2"))
    (proposal,) = await grading.published()
    assert isinstance(proposal.payload, IncidentGradeProposed)
    assert proposal.payload.level == 3

    r = await post(grading, CONFIRM.format("inc-2"), leader(grading), {"level": 2})
    assert r.status_code == 422, r.text
    assert fields(r) == ["reason"]
    r = await post(grading, CONFIRM.format("inc-2"), leader(grading), {"level": 7, "reason": "x"})
    assert r.status_code == 422, r.text
    assert fields(r) == ["level"]
    r = await post(
        grading, CONFIRM.format("inc-2"), leader(grading), {"category": "nonsense", "reason": "x"}
    )
    assert r.status_code == 422, r.text
    assert fields(r) == ["category"]
    # The override waits for the confirmation: the proposal is the body's to decide.
    r = await post(grading, OVERRIDE.format("inc-2"), leader(grading), {"level": 1, "reason": "x"})
    assert r.status_code == 409, r.text

    body = {"level": 2, "reason": "市网管办确定为二级：涉及国道通行"}
    r = await post(grading, CONFIRM.format("inc-2"), leader(grading), body)
    assert r.status_code == 200, r.text
    _, graded = await grading.published()
    assert isinstance(graded.payload, IncidentGraded)
    assert graded.payload.level == 2
    assert graded.payload.confirmation_reason == "市网管办确定为二级：涉及国道通行"
    assert (await grade_of(grading, "inc-2"))["history"][-1]["reason"] == body["reason"]


async def test_a_report_that_raises_an_unconfirmed_grade_proposes_again(
    grading: FakeService,
) -> None:
    intake = Intake()
    await grading.consume(intake.opened("inc-3"), intake.report("inc-3"))
    await grading.consume(intake.report("inc-3"))  # nothing new: no second proposal
    await grading.consume(intake.report("inc-3", MediaTier.CENTRAL))
    events = await grading.published()
    assert [e.event_type for e in events] == ["IncidentGradeProposed", "IncidentGradeProposed"]
    assert [e.payload.level for e in events if isinstance(e.payload, IncidentGradeProposed)] == [
        3,
        1,
    ]
    r = await post(grading, CONFIRM.format("inc-3"), leader(grading), {})
    assert r.status_code == 200, r.text
    assert r.json()["level"] == 1


async def test_a_leader_records_an_instruction_signed_or_not(grading: FakeService) -> None:
    intake = Intake()
    await grading.consume(intake.opened("inc-4"), intake.report("inc-4", MediaTier.PROVINCIAL))
    path = INSTRUCT.format("inc-4")
    body = {"text": "请涉事部门立即核实，按批示意见处置", "signed": True}
    assert (await post(grading, path, office(grading), body)).status_code == 403
    r = await post(grading, path, leader(grading), {"text": " ", "signed": True})
    assert r.status_code == 422, r.text
    assert fields(r) == ["text"]
    r = await post(grading, path, leader(grading), {"text": "请核实"})
    assert r.status_code == 422, r.text
    assert fields(r) == ["signed"]
    missing = await post(grading, INSTRUCT.format("inc-none"), leader(grading), body)
    assert missing.status_code == 404, missing.text

    r = await post(grading, path, leader(grading), body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["signed"], out["instructed_by"], out["level"]) == (True, "leader-zhang", 2)
    r = await post(grading, path, leader(grading), {"text": "持续关注", "signed": False})
    assert r.status_code == 201, r.text
    given = await grading.published("LeaderInstructionRecorded")
    assert [
        e.payload.signed for e in given if isinstance(e.payload, LeaderInstructionRecorded)
    ] == [
        True,
        False,
    ]
    shown = await grade_of(grading, "inc-4")
    assert [(i["text"], i["signed"]) for i in shown["instructions"]] == [
        ("请涉事部门立即核实，按批示意见处置", True),
        ("持续关注", False),
    ]
    # Still a proposal: an instruction does not grade it.
    assert shown["proposed"] is True


async def test_a_plan_without_a_body_grades_at_once_and_has_nothing_to_confirm(
    tmp_path: Path,
) -> None:
    async with fake_service("grading", build_grading, clock=lambda: T0) as grading:
        intake = Intake()
        await grading.consume(intake.opened("inc-5"), intake.report("inc-5"))
        (graded,) = await grading.published()
        assert isinstance(graded.payload, IncidentGraded)
        assert graded.payload.confirmed_by is None
        r = await post(grading, CONFIRM.format("inc-5"), leader(grading), {})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "confirm_refused"
        r = await post(grading, CONFIRM.format("inc-none"), leader(grading), {})
        assert r.status_code == 404, r.text


# --------------------------------------------------------------------------- notification


async def duties(service: FakeService, incident_id: str) -> dict[str, dict[str, Any]]:
    async with service.http() as http:
        r = await http.get(LIST, params={"incident_id": incident_id}, headers=office(service))
    assert r.status_code == 200, r.text
    return {d["kind"]: d for d in r.json()["obligations"]}


async def test_duties_open_on_the_proposal_the_confirmation_and_a_signed_instruction(
    notification: FakeService,
) -> None:
    intake, grading = Intake(), Grading()
    await notification.consume(intake.opened("inc-6"))
    await notification.consume(grading.proposed("inc-6", 1))
    owed = await duties(notification, "inc-6")
    # 第十三条: the half-hour quick report counts from the proposal; the rest wait.
    assert set(owed) == {"phone_quick_report"}
    assert datetime.fromisoformat(owed["phone_quick_report"]["deadline"]) == T0 + timedelta(
        minutes=30
    )

    grading.at = T0 + timedelta(minutes=40)
    await notification.consume(grading.confirmed("inc-6", 1))
    owed = await duties(notification, "inc-6")
    assert set(owed) == {"phone_quick_report", "written_quick_report", "tracking_update"}
    written = owed["written_quick_report"]
    assert datetime.fromisoformat(written["counted_from"]) == grading.at
    assert datetime.fromisoformat(written["deadline"]) == grading.at + timedelta(hours=1)

    # An unsigned 《网上舆情》 is kept under watch: nothing opens. A signed one is acted on.
    grading.at = T0 + timedelta(hours=2)
    await notification.consume(grading.instructed("inc-6", 1, signed=False))
    assert "instruction_handling_major" not in await duties(notification, "inc-6")
    grading.at = T0 + timedelta(hours=3)
    await notification.consume(grading.instructed("inc-6", 1, signed=True))
    handling = (await duties(notification, "inc-6"))["instruction_handling_major"]
    assert datetime.fromisoformat(handling["counted_from"]) == grading.at
    assert datetime.fromisoformat(handling["deadline"]) == grading.at + timedelta(hours=4)
    assert (handling["owner_role"], handling["plan_version"]) == ("dept_head", VERSION)
    opened = [
        e.payload.kind
        for e in await notification.published("ObligationOpened")
        if isinstance(e.payload, ObligationOpened)
    ]
    assert sorted(opened) == sorted(
        [
            "phone_quick_report",
            "written_quick_report",
            "tracking_update",
            "instruction_handling_major",
        ]
    )


async def test_a_proposal_raised_again_opens_the_new_levels_proposal_duties_once(
    notification: FakeService,
) -> None:
    intake, grading = Intake(), Grading()
    await notification.consume(intake.opened("inc-7"), grading.proposed("inc-7", 2))
    assert set(await duties(notification, "inc-7")) == {"seek_guidance"}
    grading.at = T0 + timedelta(minutes=10)
    await notification.consume(grading.proposed("inc-7", 1), grading.proposed("inc-7", 1))
    owed = await duties(notification, "inc-7")
    assert set(owed) == {"seek_guidance", "phone_quick_report"}
    quick = owed["phone_quick_report"]
    assert datetime.fromisoformat(quick["counted_from"]) == grading.at


# --------------------------------------------------------------------------- archive


def logged(events: list[Envelope]) -> list[Logged]:
    return [Logged(seq=n + 1, event=e) for n, e in enumerate(events)]


def test_the_archive_shows_the_proposal_who_confirmed_it_and_the_instructions() -> None:
    intake, grading = Intake(), Grading()
    events = [intake.opened("inc-8"), grading.proposed("inc-8", 1)]
    view = fold("inc-8", logged(events))
    assert (view.level, view.grade_proposed) == (None, True)
    grading.at = T0 + timedelta(minutes=30)
    events += [grading.confirmed("inc-8", 1), grading.instructed("inc-8", 1, signed=True)]
    view = fold("inc-8", logged(events))
    assert (view.level, view.grade_proposed) == (1, False)
    assert [(g.change, g.confirmed_by, g.confirm_role) for g in view.grade_history] == [
        ("proposed", None, "leader"),
        ("graded", "leader-zhang", None),
    ]
    assert [(i.text, i.signed) for i in view.instructions] == [("请涉事部门立即核实并处置", True)]

    # The case counts the confirmed levels only: a proposal changed down was never its level.
    changed = [intake.opened("inc-9"), grading.proposed("inc-9", 1), grading.confirmed("inc-9", 2)]
    figures = case_figures(fold("inc-9", logged(changed)), T0 + timedelta(days=1))
    assert (figures.level, figures.highest_level) == (2, 2)

    catalogue = Catalogue.load(CONFIG_DIR / "catalogue.yaml")
    lines = [
        e.summary
        for e in timeline(
            logged(events), ZoneInfo("Asia/Shanghai"), catalogue, people={"leader-zhang": "张组长"}
        )
    ]
    assert lines[1].startswith(f"规则拟定为{catalogue.level(1)}")
    assert f"待{catalogue.role('leader')}确认" in lines[1]
    assert lines[2].startswith(f"张组长 确认级别：研判为{catalogue.level(1)}")
    assert lines[3] == "张组长 签批：请涉事部门立即核实并处置"


# --------------------------------------------------------------------------- the pack


def copy(tmp_path: Path) -> Path:
    target = tmp_path / "huaning_body"
    shutil.copytree(BODY, target)
    manifest = yaml.safe_load((target / "plan.yaml").read_text(encoding="utf-8"))
    manifest["files"] = {
        name: str(CONFIG_DIR / f"{name}.yaml") for name in ("rulebook", "approval", "catalogue")
    }
    (target / "plan.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), "utf-8")
    return target


def edit(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def test_the_pack_loads_and_maps_articles_four_and_seventeen() -> None:
    plan = load_plan(BODY, Settings().policy_paths, DIRECTORY)
    assert plan.manifest.grading.confirmed_by is not None
    assert plan.manifest.grading.confirmed_by.value == "leader"
    entries = {a.entry for a in plan.manifest.articles}
    assert {"plan.yaml#grading.confirmed_by", "obligations.yaml#instruction_handling"} <= entries
    on = {r.kind: r.opens_on for rules in plan.obligations.levels.values() for r in rules}
    assert on["phone_quick_report"] == "proposed"
    assert on["instruction_handling_major"] == "instructed"
    assert on["written_quick_report"] == "graded"


def test_a_confirming_role_nobody_holds_or_a_partner_is_refused_naming_the_entry(
    tmp_path: Path,
) -> None:
    pack = copy(tmp_path)
    edit(pack / "plan.yaml", lambda d: d["grading"].update(confirmed_by="spokesperson"))
    nobody = Directory.model_validate(
        {
            **DIRECTORY.model_dump(mode="json"),
            "people": [
                p
                for p in DIRECTORY.model_dump(mode="json")["people"]
                if "spokesperson" not in p["roles"]
            ],
        }
    )
    with pytest.raises(PlanError) as caught:
        load_plan(pack, Settings().policy_paths, nobody)
    assert "plan.yaml: grading.confirmed_by: nobody in the directory holds the role" in str(
        caught.value
    )
    edit(pack / "plan.yaml", lambda d: d["grading"].update(confirmed_by="partner"))
    with pytest.raises(PlanError) as caught:
        load_plan(pack, Settings().policy_paths, DIRECTORY)
    assert "plan.yaml" in str(caught.value)
    assert "grading: Value error, confirmed_by: a partner cannot decide" in str(caught.value)


def test_an_unknown_opens_on_is_refused_naming_the_file_and_entry(tmp_path: Path) -> None:
    pack = copy(tmp_path)
    edit(pack / "obligations.yaml", lambda d: d["levels"][2][0].update(opens_on="signed"))
    with pytest.raises(PlanError) as caught:
        load_plan(pack, Settings().policy_paths, DIRECTORY)
    message = str(caught.value)
    assert "obligations.yaml" in message
    assert "levels.2 (seek_guidance).opens_on: 'signed' is not one of" in message
    assert "proposed, instructed" in message
