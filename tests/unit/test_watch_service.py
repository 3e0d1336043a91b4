"""The watch after resolution through intake's API on the fakes, started on the packs that
carry it (school: a report during the watch reopens; fourtier: it is attached for the
office), then handed to every other service: none dead-letters the new events, and the
archive's incident view and timeline show the watch in the bureau's words."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.cli import composition_root
from shared.events import Envelope, IncidentWatchStarted
from shared.settings import CONFIG_DIR
from tests.fakes.harness import FakeService, fake_service, fake_settings

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
REPORT = {
    "source_type": "forum",
    "source_name": "县论坛",
    "media_tier": "county",
    "url": "https://bbs.county.example.cn/t/7",
    "title": "网友反映实验小学食堂饭菜变质",
    "excerpt": "有家长反映食堂午餐有异味。",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "reach": {"views": 900},
    "unit_ids": ["school-a"],
}


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.step = timedelta(0)  # how far each reading moves it

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


class Intake:
    def __init__(self, service: FakeService, api: httpx.AsyncClient, clock: Clock) -> None:
        self.service, self.api, self.clock = service, api, clock
        self.monitor = service.token("monitor-chen", "school-a", "monitor")
        self.leader = service.token("leader-zhang", "county", "leader")
        self.partner = service.token("partner-wxb", "county", "partner")

    async def file(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        return await self.api.post(
            "/intake/v1/reports", json={**REPORT, **body}, headers=headers or self.monitor
        )

    async def resolve(self, incident_id: str) -> None:
        resolved = await self.api.post(
            f"/intake/v1/incidents/{incident_id}/resolve",
            json={"reason": "舆情平息"},
            headers=self.leader,
        )
        assert resolved.status_code == 200, resolved.text

    async def incident(self, incident_id: str) -> dict[str, Any]:
        got = await self.api.get(f"/intake/v1/incidents/{incident_id}", headers=self.leader)
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body

    async def types(self, incident_id: str) -> list[str]:
        return [
            e.event_type for e in await self.service.published() if e.incident_id == incident_id
        ]


@asynccontextmanager
async def intake_on(pack: str, tmp_path: Path) -> AsyncIterator[Intake]:
    clock = Clock()
    settings = fake_settings(tmp_path, plan=CONFIG_DIR / "plans" / pack)
    async with (
        fake_service("intake", composition_root("intake"), settings=settings, clock=clock) as svc,
        svc.http() as api,
    ):
        yield Intake(svc, api, clock)


async def test_on_the_school_pack_a_report_during_the_watch_reopens_the_incident(
    tmp_path: Path,
) -> None:
    async with intake_on("school", tmp_path) as intake:
        first = (await intake.file()).json()
        incident_id = first["incident_id"]
        intake.clock.now = T0 + timedelta(hours=6)
        await intake.resolve(incident_id)
        until = T0 + timedelta(hours=6, days=7)
        watched = await intake.incident(incident_id)
        assert watched["status"] == "resolved"
        assert watched["watch"]["on_report"] == "reopen"
        assert datetime.fromisoformat(watched["watch"]["until"]) == until
        assert watched["watch"]["plan_version"] == "2026.12.4-seed000-1"

        # Five days on: past intake's 72-hour window, within the plan's seven-day watch.
        intake.clock.now = T0 + timedelta(days=5)
        again = await intake.file(url="https://bbs.county.example.cn/t/7?from=timeline")

        assert again.status_code == 200, again.text
        assert again.json()["incident_id"] == incident_id
        assert (await intake.types(incident_id))[-6:] == [
            "IncidentResolved",
            "IncidentWatchStarted",
            "IncidentReopened",
            "ReportReceived",
            "ReportAttached",
            "WatchReportReceived",
        ]
        view = await intake.incident(incident_id)
        assert view["status"] == "open"
        assert "善后跟踪期内" in view["history"][-1]["reason"]
        assert [(r["report_id"], r["reopened"]) for r in view["watch"]["reports"]] == [
            (again.json()["report_id"], True)
        ]


async def test_the_watch_counts_from_the_resolutions_own_instant(tmp_path: Path) -> None:
    """Read on a clock that moves between reads: the watch ends its period after the
    resolution as recorded, not after another reading of the clock."""
    async with intake_on("school", tmp_path) as intake:
        incident_id = (await intake.file()).json()["incident_id"]
        intake.clock.step = timedelta(milliseconds=1)
        await intake.resolve(incident_id)
        published = await intake.service.published()
        (resolution,) = [e for e in published if e.event_type == "IncidentResolved"]
        (started,) = [e for e in published if e.event_type == "IncidentWatchStarted"]

    assert isinstance(started.payload, IncidentWatchStarted)
    assert started.payload.watch_until == resolution.occurred_at + timedelta(days=7)


async def test_on_the_fourtier_pack_a_report_during_the_watch_is_attached_and_after_it_opens_anew(
    tmp_path: Path,
) -> None:
    async with intake_on("fourtier", tmp_path) as intake:
        incident_id = (await intake.file()).json()["incident_id"]
        await intake.resolve(incident_id)

        intake.clock.now = T0 + timedelta(days=2)
        during = await intake.file(title="【转】网友反映实验小学食堂饭菜变质！")
        assert during.status_code == 200, during.text
        assert during.json()["incident_id"] == incident_id
        view = await intake.incident(incident_id)
        assert view["status"] == "resolved"  # the office sees it; the incident stays closed
        assert view["watch"]["on_report"] == "attach"
        assert [r["report_id"] for r in view["watch"]["reports"]] == [during.json()["report_id"]]
        assert [r["reopened"] for r in view["watch"]["reports"]] == [False]
        assert len(view["reports"]) == 2

        # A partner's report during the watch neither joins nor reopens: a referral.
        referred = await intake.file(
            headers=intake.partner, source_type="referral", url="https://bbs.county.example.cn/t/7"
        )
        assert referred.status_code == 201, referred.text
        assert referred.json()["referral"] is True
        assert referred.json()["incident_id"] != incident_id

        intake.clock.now = T0 + timedelta(days=7, seconds=1)
        after = await intake.file()
        assert after.status_code == 201, after.text
        assert after.json()["new_incident"] is True
        assert after.json()["incident_id"] != incident_id
        assert (await intake.incident(incident_id))["status"] == "resolved"


async def test_a_look_alike_under_another_url_finds_the_watched_incident_days_later(
    tmp_path: Path,
) -> None:
    async with intake_on("fourtier", tmp_path) as intake:
        incident_id = (await intake.file()).json()["incident_id"]
        await intake.resolve(incident_id)
        # Five days on: beyond the 72 hours texts are compared over, within the watch.
        intake.clock.now = T0 + timedelta(days=5)
        look_alike = await intake.file(
            url="https://weibo.example.com/p/99",
            title="【转】网友反映实验小学食堂饭菜变质！",
            source_type="weibo",
        )
        assert look_alike.status_code == 200, look_alike.text
        assert look_alike.json()["incident_id"] == incident_id
        view = await intake.incident(incident_id)
        assert view["reports"][-1]["match"] == "similar_text"
        assert [r["report_id"] for r in view["watch"]["reports"]] == [
            look_alike.json()["report_id"]
        ]

        # After the watch the same text is another matter.
        intake.clock.now = T0 + timedelta(days=8)
        later = await intake.file(
            url="https://weibo.example.com/p/100",
            title="【转】网友反映实验小学食堂饭菜变质！",
            source_type="weibo",
        )
        assert later.status_code == 201, later.text


async def test_the_huaning_pack_keeps_the_reopen_window_and_records_no_watch(
    tmp_path: Path,
) -> None:
    async with intake_on("huaning", tmp_path) as intake:
        incident_id = (await intake.file()).json()["incident_id"]
        await intake.resolve(incident_id)
        assert (await intake.incident(incident_id))["watch"] is None
        intake.clock.now = T0 + timedelta(hours=71)
        again = await intake.file()
        assert again.json()["incident_id"] == incident_id
        assert "WatchReportReceived" not in await intake.types(incident_id)
        assert "IncidentWatchStarted" not in await intake.types(incident_id)


async def watched_events(tmp_path: Path) -> tuple[list[Envelope], str, str]:
    """Intake's events of a fourtier incident resolved and a report during its watch."""
    async with intake_on("fourtier", tmp_path / "f") as intake:
        incident_id = (await intake.file()).json()["incident_id"]
        await intake.resolve(incident_id)
        intake.clock.now = T0 + timedelta(days=1)
        report_id = (await intake.file()).json()["report_id"]
        return await intake.service.published(), incident_id, report_id


@pytest.mark.parametrize("name", ["grading", "notification", "statement", "archive"])
async def test_every_service_takes_the_watch_events_without_a_dead_letter(
    name: str, tmp_path: Path
) -> None:
    events, _, _ = await watched_events(tmp_path)
    assert {"IncidentWatchStarted", "WatchReportReceived"} <= {e.event_type for e in events}
    async with fake_service(name, composition_root(name)) as service:
        await service.consume(*events)
        assert service.dead_letters == []


async def test_the_archive_shows_the_watch_and_the_timeline_says_it_in_chinese(
    tmp_path: Path,
) -> None:
    events, incident_id, report_id = await watched_events(tmp_path)
    async with fake_service("archive", composition_root("archive")) as archive:
        await archive.consume(*events)
        admin = archive.token("admin", "county", "admin")
        async with archive.http() as api:
            view = (await api.get(f"/archive/v1/incidents/{incident_id}", headers=admin)).json()
            lines = (
                await api.get(f"/archive/v1/incidents/{incident_id}/timeline", headers=admin)
            ).json()["events"]

    until = T0 + timedelta(days=7)
    assert view["status"] == "resolved"
    assert datetime.fromisoformat(view["watch"]["until"]) == until
    assert view["watch"]["on_report"] == "attach"
    assert view["watch"]["plan_id"] == "fourtier"
    assert [r["report_id"] for r in view["watch"]["reports"]] == [report_id]
    assert view["watch"]["reports"][0]["reopened"] is False
    summaries = {e["event_type"]: e["summary"] for e in lines}
    local = until.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    assert summaries["IncidentWatchStarted"].startswith(f"善后跟踪至 {local}")
    assert summaries["WatchReportReceived"].startswith(f"跟踪期内收到新舆情（舆情件 {report_id}）")
    assert "仍为已处置" in summaries["WatchReportReceived"]
