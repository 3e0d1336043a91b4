"""The what-if reads what grading recorded of an incident's life, not only its grade: the
first report's publication, a leader's signed instruction, the resolution and a decision on
a duty (DutyDecided), and replays a candidate plan's duties opening on each of them
(POST /grading/v1/plan/try and the `yuqing plan try` table). Grading on the fakes, the
Huaning plan in force, the candidate tests/fakes/rules_pack.py; nothing live is written by
the try."""

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
    DutyDecided,
    Envelope,
    EventPayload,
    IncidentResolved,
    MediaTier,
    ObligationFulfilled,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
)
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.rules_pack import NAME, write_rules_pack

pytestmark = pytest.mark.asyncio

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
PUBLISHED = T0 - timedelta(hours=1)
TRY = "/grading/v1/plan/try"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


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
            actor=Actor(type="person", id="office-li", unit_id="county"),
            unit_id="county",
            occurred_at=at,
        )

    def report(self, incident_id: str, tier: MediaTier = MediaTier.PROVINCIAL) -> Envelope:
        url = f"https://news.example.com/{incident_id}"
        return self.event(
            incident_id,
            ReportReceived(
                report_id=f"{incident_id}-r1",
                source_type=SourceType.NEWS,
                source_name="省报",
                media_tier=tier,
                url=url,
                normalized_url=url,
                title="镇上道路积水",
                excerpt="",
                author=None,
                published_at=PUBLISHED,
                observed_at=PUBLISHED,
                reach=Reach(),
                unit_ids=("county",),
                filed_by="monitor-chen",
            ),
            "incident",
            T0,
        )

    def decided(self, incident_id: str, kind: str, decision: bool, at: datetime) -> Envelope:
        payload = DutyDecided(
            kind=kind,
            title="较大舆情：镇领导小组决定上报的，按程序报县网信办等相关部门",
            decision=decision,
            reason="影响扩大" if decision else "影响有限",
            decided_by="leader-zhang",
            level=2,
        )
        return self.event(incident_id, payload, "obligations", at)

    def duty(
        self, incident_id: str, kind: str, deadline: datetime, met_at: datetime
    ) -> list[Envelope]:
        obligation_id = str(uuid.uuid4())
        opened = ObligationOpened(
            obligation_id=obligation_id,
            kind=kind,
            title=kind,
            level=2,
            owner_role="leader",
            recipients=("leader",),
            counted_from=deadline - timedelta(hours=1),
            deadline=deadline,
        )
        met = ObligationFulfilled(
            obligation_id=obligation_id,
            fulfilled_by="leader-zhang",
            fulfilled_at=met_at,
            late=met_at > deadline,
        )
        return [
            self.event(incident_id, opened, "obligations", deadline - timedelta(hours=1)),
            self.event(incident_id, met, "obligations", met_at),
        ]

    def resolved(self, incident_id: str, at: datetime) -> Envelope:
        return self.event(incident_id, IncidentResolved(reason="已处置"), "incident", at)


CLOCK = Clock()


@pytest.fixture
async def grading(tmp_path: Path) -> AsyncIterator[FakeService]:
    CLOCK.now = T0
    write_rules_pack(tmp_path / "plans")
    settings = fake_settings(tmp_path, plans_dir=tmp_path / "plans")
    async with fake_service("grading", build, settings=settings, clock=CLOCK) as service:
        yield service


async def snapshot(service: FakeService) -> dict[str, list[Any]]:
    names = sorted(await service.db.list_collection_names())
    return {
        name: await service.db[name].find({}, sort=[("_id", 1)]).to_list(None) for name in names
    }


async def lived(grading: FakeService) -> None:
    """inc-full: graded at T0 (level 2 under Huaning), the group decided at T0+30m to report
    to the county (met at T0+50m), a leader signed an instruction at T0+1h, resolved a day
    later. inc-open: graded at T0, the group decided not to report, never resolved."""
    up = Upstream()
    decided = T0 + timedelta(minutes=30)
    await grading.consume(
        up.report("inc-full"),
        up.decided("inc-full", "county_report_decided", True, decided),
        *up.duty(
            "inc-full",
            "county_report_decided",
            decided + timedelta(hours=1),
            T0 + timedelta(minutes=50),
        ),
        up.report("inc-open"),
        up.decided("inc-open", "county_report_decided", False, decided),
    )
    CLOCK.now = T0 + timedelta(hours=1)
    async with grading.http() as http:
        signed = await http.post(
            "/grading/v1/incidents/inc-full/instructions",
            json={"text": "请按程序处置并回告", "signed": True},
            headers=grading.token("leader-zhang", "county", "leader"),
        )
    assert signed.status_code == 201, signed.text
    await grading.consume(up.resolved("inc-full", T0 + timedelta(days=1)))
    CLOCK.now = T0 + timedelta(days=5)


async def tried(grading: FakeService) -> dict[str, Any]:
    async with grading.http() as http:
        answer = await http.post(
            TRY,
            json={"plan": NAME, "since": (T0 - timedelta(days=1)).isoformat()},
            headers=grading.token("analyst-zhao", "county", "analyst"),
        )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def counted(incident: dict[str, Any]) -> dict[str, tuple[datetime, str, str]]:
    return {
        d["kind"]: (datetime.fromisoformat(d["counted_from"]), d["opens_on"], d["outcome"])
        for d in incident["duties"]
    }


async def test_each_duty_counts_from_the_recorded_event_it_opens_on(grading: FakeService) -> None:
    await lived(grading)
    before = await snapshot(grading)
    outbox = await grading.published()
    result = await tried(grading)
    incidents = {i["incident_id"]: i for i in result["incidents"]}
    full = incidents["inc-full"]
    assert (full["recorded_level"], full["level"]) == (2, 2)
    duties = counted(full)
    # The record had no proposal: the candidate's body is taken to confirm at once.
    assert duties["proposal_notice"] == (T0, "proposed", "missed")
    assert duties["group_report"] == (T0, "graded", "missed")
    assert duties["county_report_decided"] == (T0 + timedelta(minutes=30), "decided", "met")
    assert duties["instruction_followup"] == (T0 + timedelta(hours=1), "instructed", "missed")
    assert duties["result_report"] == (T0 + timedelta(days=1), "resolved", "missed")
    assert full["not_opened"] == []
    assert set(full["would_miss"]) == {
        "proposal_notice",
        "group_report",
        "instruction_followup",
        "result_report",
        "online_reply",  # the inquiry's reply, never filed on record
    }

    still_open = incidents["inc-open"]
    why = {n["kind"]: (n["why"], n["note"]) for n in still_open["not_opened"]}
    assert why == {
        "county_report_decided": ("decided_against", "记录中决定不开启"),
        "instruction_followup": ("no_signed_instruction", "记录中没有领导签批"),
        "result_report": ("not_resolved", "记录中事件未办结"),
    }

    # The live system is unchanged: every collection as it was, nothing more to publish.
    assert await snapshot(grading) == before
    assert await grading.published() == outbox

    lines = plan_difference_table(result, TZ).splitlines()
    assert any(
        "instruction_followup" in line and "instructed" in line and "missed" in line
        for line in lines
    )
    assert any("result_report" in line and "not opened: 记录中事件未办结" in line for line in lines)
    assert (
        lines[-1] == f"2 incidents, 2 would differ (*), 2 with duties late or missed under {NAME}"
    )


async def test_a_duty_counted_from_publication_counts_from_the_recorded_first_report(
    grading: FakeService,
) -> None:
    up = Upstream()
    await grading.consume(up.report("inc-pub", MediaTier.CENTRAL))
    CLOCK.now = T0 + timedelta(days=5)
    result = await tried(grading)
    (incident,) = result["incidents"]
    assert incident["level"] == 1
    duties = counted(incident)
    # 舆情发生: an hour before the grading, as the recorded report says.
    assert duties["group_report_major"] == (PUBLISHED, "graded", "missed")
    assert duties["full_time_watch"][0] == T0
    why = {n["kind"]: n["why"] for n in incident["not_opened"]}
    assert why["county_report"] == "waits_on_unmet"
