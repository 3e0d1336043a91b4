"""The plan in force and the what-if, on grading built through its composition root on the
fakes: GET /grading/v1/plan, the plan recorded in the grade events, and
POST /grading/v1/plan/try (analysts), which replays grading's record through a candidate
pack and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.cli import plan_difference_table
from services.grading.bootstrap import build
from shared.events import (
    Actor,
    Envelope,
    EventPayload,
    IncidentEscalated,
    IncidentGraded,
    MediaTier,
    ObligationFulfilled,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
)
from tests.fakes.harness import FakeService, fake_service, fake_settings

pytestmark = pytest.mark.asyncio

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 20, 11, 0, tzinfo=UTC)  # 19:00 in Shanghai
PLAN = "/grading/v1/plan"
TRY = "/grading/v1/plan/try"


class Upstream:
    """Plays intake and notification, numbering each stream's events."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def event(self, incident_id: str, payload: EventPayload, stream: str, at: datetime) -> Envelope:
        key = f"{stream}-{incident_id}"
        self.versions[key] = self.versions.get(key, 0) + 1
        return Envelope.new(
            payload,
            incident_id=incident_id,
            stream_id=key,
            stream_version=self.versions[key],
            actor=Actor(type="person", id="monitor-chen", unit_id="school-a"),
            unit_id="school-a",
            occurred_at=at,
        )

    def report(self, incident_id: str, n: int, title: str, tier: MediaTier) -> Envelope:
        return self.event(
            incident_id,
            ReportReceived(
                report_id=f"{incident_id}-r{n}",
                source_type=SourceType.NEWS,
                source_name=f"{tier.value}-站点",
                media_tier=tier,
                url=f"https://{tier.value}.example.com/{incident_id}/{n}",
                normalized_url=f"https://{tier.value}.example.com/{incident_id}/{n}",
                title=title,
                excerpt="",
                author=None,
                published_at=T0,
                observed_at=T0,
                reach=Reach(),
                unit_ids=("school-a",),
                filed_by="monitor-chen",
            ),
            "incident",
            T0,
        )

    def duty(
        self, incident_id: str, kind: str, deadline: datetime, met_at: datetime | None
    ) -> list[Envelope]:
        """As notification records a duty opened, and met when `met_at` is given."""
        obligation_id = str(uuid.uuid4())
        opened = self.event(
            incident_id,
            ObligationOpened(
                obligation_id=obligation_id,
                kind=kind,
                title=kind,
                level=3,
                owner_role="office",
                recipients=("leader",),
                counted_from=T0,
                deadline=deadline,
            ),
            "obligations",
            T0,
        )
        if met_at is None:
            return [opened]
        met = self.event(
            incident_id,
            ObligationFulfilled(
                obligation_id=obligation_id,
                fulfilled_by="office-li",
                fulfilled_at=met_at,
                late=met_at > deadline,
            ),
            "obligations",
            met_at,
        )
        return [opened, met]


class Clock:
    """Grading's clock: at T0 while the incidents are graded, three days later for a try."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


CLOCK = Clock()


@pytest.fixture
async def grading() -> AsyncIterator[FakeService]:
    CLOCK.now = T0
    async with fake_service("grading", build, clock=CLOCK) as service:
        yield service


async def graded_under_huaning(grading: FakeService) -> None:
    """Two incidents graded under the Huaning pack, with their duties as notification
    recorded them: an inquiry (direct handling met late at 30h, the reply met at 22:00) and
    a hype case (direct handling met at 10h)."""
    up = Upstream()
    await grading.consume(
        up.report("inc-inquiry", 1, "请问学校门口为什么积水", MediaTier.COUNTY),
        *up.duty(
            "inc-inquiry", "direct_handling", T0 + timedelta(hours=24), T0 + timedelta(hours=30)
        ),
        *up.duty(
            "inc-inquiry",
            "same_day_reply",
            T0 + timedelta(hours=4, minutes=59),
            T0 + timedelta(hours=3),
        ),
        up.report("inc-hype", 1, "有人恶意炒作学校门口积水", MediaTier.COUNTY),
        *up.duty("inc-hype", "direct_handling", T0 + timedelta(hours=24), T0 + timedelta(hours=10)),
    )
    CLOCK.now = T0 + timedelta(days=3)


async def snapshot(service: FakeService) -> dict[str, list[Any]]:
    names = sorted(await service.db.list_collection_names())
    return {
        name: await service.db[name].find({}, sort=[("_id", 1)]).to_list(None) for name in names
    }


# --------------------------------------------------------------------------- the plan in force


async def test_the_plan_in_force_is_shown_with_its_chinese_names(grading: FakeService) -> None:
    async with grading.http() as http:
        answer = await http.get(PLAN, headers=grading.token("office-li", "county", "office"))
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert (plan["id"], plan["name"]) == ("huaning", "华宁公路分局网络舆情应急处置预案")
    assert plan["version"] == "2026.11.1-seed003"
    levels = {level["id"]: level for level in plan["levels"]}
    assert (levels[1]["name"], levels[1]["short"]) == ("一级（重大）", "一级")
    assert [d["kind"] for d in levels[1]["duties"]] == [
        "phone_quick_report",
        "written_quick_report",
        "tracking_update",
    ]
    quick = levels[1]["duties"][0]
    assert (quick["deadline"], quick["owner_role"]["name"]) == ("30m", "领导小组办公室")
    assert levels[1]["duties"][2]["every"] == "24h"
    assert [s["role"]["id"] for s in levels[1]["chain"]] == ["office", "propaganda"]
    assert levels[1]["chain"][1]["role"]["name"] == "宣传部（处置专班）"
    assert levels[3]["chain"] == [
        {"role": {"id": "dept_head", "name": "部门分管领导"}, "unit": "incident"}
    ]
    categories = {c["id"]: c for c in plan["categories"]}
    assert categories["inquiry"]["name"] == "询问"
    reply = categories["inquiry"]["duties"][0]
    assert reply["kind"] == "same_day_reply"
    assert reply["deadline"].startswith("same day by 23:59")


async def test_partners_may_not_read_the_plan(grading: FakeService) -> None:
    async with grading.http() as http:
        partner = await http.get(PLAN, headers=grading.token("partner-wxb", "county", "partner"))
        anonymous = await http.get(PLAN)
    assert partner.status_code == 403
    assert anonymous.status_code == 401


async def test_grade_events_record_the_plan_and_its_version(grading: FakeService) -> None:
    up = Upstream()
    await grading.consume(
        up.report("inc-1", 1, "请问积水", MediaTier.COUNTY),
        up.report("inc-1", 2, "央视报道积水", MediaTier.CENTRAL),
    )
    graded = [e.payload for e in await grading.published("IncidentGraded")]
    escalated = [e.payload for e in await grading.published("IncidentEscalated")]
    assert isinstance(graded[0], IncidentGraded)
    assert isinstance(escalated[0], IncidentEscalated)
    assert (graded[0].plan_id, graded[0].plan_version) == ("huaning", "2026.11.1-seed003")
    assert (escalated[0].plan_id, escalated[0].plan_version) == ("huaning", "2026.11.1-seed003")
    async with grading.http() as http:
        view = await http.get(
            "/grading/v1/incidents/inc-1/grade",
            headers=grading.token("office-li", "county", "office"),
        )
    assert view.json()["plan_id"] == "huaning"


# --------------------------------------------------------------------------- the what-if


async def test_trying_the_school_plan_shows_what_would_differ_and_changes_nothing(
    grading: FakeService,
) -> None:
    await graded_under_huaning(grading)
    before = await snapshot(grading)
    outbox = await grading.published()
    async with grading.http() as http:
        answer = await http.post(
            TRY,
            json={"plan": "school", "since": (T0 - timedelta(days=1)).isoformat()},
            headers=grading.token("analyst-zhao", "county", "analyst"),
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["plan"], result["version"]) == ("school", "2026.12.4-seed000-1")
    incidents = {i["incident_id"]: i for i in result["incidents"]}
    assert set(incidents) == {"inc-inquiry", "inc-hype"}

    inquiry = incidents["inc-inquiry"]
    assert inquiry["differs"]
    assert inquiry["recorded_plan"] == "huaning@2026.11.1-seed003"
    duties = {d["kind"]: d for d in inquiry["duties"]}
    # 48 hours under the school plan: met at 30 hours, on time (late under Huaning).
    assert (duties["direct_handling"]["change"], duties["direct_handling"]["outcome"]) == (
        "moved",
        "met",
    )
    # Graded at 19:00, past the school's 18:00 cut-off: due next day at 12:00.
    assert datetime.fromisoformat(duties["same_day_reply"]["deadline"]) == datetime(
        2026, 11, 21, 12, 0, tzinfo=TZ
    )
    assert inquiry["would_miss"] == []

    hype = incidents["inc-hype"]
    assert (hype["recorded_category"], hype["category"]) == ("hype", "hype")
    told = next(d for d in hype["duties"] if d["kind"] == "facts_told")
    assert (told["change"], told["outcome"]) == ("new", "missed")
    assert hype["would_miss"] == ["facts_told"]

    # The live system is unchanged: every collection as it was, nothing more to publish.
    assert await snapshot(grading) == before
    assert await grading.published() == outbox
    async with grading.http() as http:
        plan = await http.get(PLAN, headers=grading.token("office-li", "county", "office"))
    assert plan.json()["id"] == "huaning"

    table = plan_difference_table(result, TZ)
    assert "plan school 2026.12.4-seed000-1" in table
    assert "*inc-hype" in table
    lines = table.splitlines()
    assert any("facts_told" in line and "missed" in line and "new" in line for line in lines)
    assert any(
        "direct_handling" in line and "11-22 19:00" in line and "met" in line for line in lines
    )
    assert lines[-1] == "2 incidents, 2 would differ (*), 1 with duties late or missed under school"


async def test_trying_the_plan_in_force_shows_no_difference(grading: FakeService) -> None:
    await graded_under_huaning(grading)
    async with grading.http() as http:
        answer = await http.post(
            TRY,
            json={"plan": "huaning", "since": (T0 - timedelta(days=1)).isoformat()},
            headers=grading.token("analyst-zhao", "county", "analyst"),
        )
    incidents = {i["incident_id"]: i for i in answer.json()["incidents"]}
    assert not any(i["differs"] for i in incidents.values())
    assert incidents["inc-inquiry"]["would_miss"] == ["direct_handling"]  # late on record too


async def test_only_analysts_try_plans_and_only_packs_by_name(grading: FakeService) -> None:
    body = {"plan": "school", "since": T0.isoformat()}
    async with grading.http() as http:
        office = await http.post(
            TRY, json=body, headers=grading.token("office-li", "county", "office")
        )
        partner = await http.post(
            TRY, json=body, headers=grading.token("partner-wxb", "county", "partner", "analyst")
        )
        analyst = grading.token("analyst-zhao", "county", "analyst")
        unknown = await http.post(TRY, json={**body, "plan": "nowhere"}, headers=analyst)
        path = await http.post(TRY, json={**body, "plan": "../plans/school"}, headers=analyst)
        absolute = await http.post(TRY, json={**body, "plan": "/etc"}, headers=analyst)
    assert office.status_code == 403
    assert partner.status_code == 403
    assert unknown.status_code == 404
    assert path.status_code == 422
    assert absolute.status_code == 422


async def test_a_malformed_candidate_is_refused_naming_file_and_entry(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    broken = plans / "broken"
    broken.mkdir(parents=True)
    (broken / "plan.yaml").write_text(
        "id: broken\nname: 坏预案\nversion: '1'\nseed: test\nlevels: [1, 2, 3]\n"
        "categories: [inquiry, hype, rumor, suggestion]\n"
        "articles:\n  - article: 第一条\n    entry: obligations.yaml#no_such_duty\n",
        encoding="utf-8",
    )
    settings = fake_settings(tmp_path, plans_dir=plans)
    async with fake_service("grading", build, settings=settings) as grading, grading.http() as http:
        answer = await http.post(
            TRY,
            json={"plan": "broken", "since": T0.isoformat()},
            headers=grading.token("analyst-zhao", "county", "analyst"),
        )
    assert answer.status_code == 422
    assert "obligations.yaml has no entry 'no_such_duty'" in answer.text
    assert str(broken / "plan.yaml") in answer.text
