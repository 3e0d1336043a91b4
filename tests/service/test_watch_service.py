"""The watch after resolution (善后跟踪, plan.yaml `watch:`) on the real broker and database,
through intake's HTTP API: started on the school pack (a report during the watch reopens)
and on the fourtier pack (it is attached, the incident staying resolved), with the clock
moved on to the days the reports come."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.intake.bootstrap import IntakeParts, build
from shared.bus import ensure_topics
from shared.service import Context, ServiceRunner
from shared.settings import CONFIG_DIR, Settings

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
REPORT = {
    "source_type": "news",
    "source_name": "人民网",
    "media_tier": "central",
    "url": "https://news.example.com/2026/1121/watch.html",
    "title": "某校食堂饭菜变质引发家长质疑",
    "excerpt": "有家长在网上反映……",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "reach": {"views": 1200},
    "unit_ids": ["school-a"],
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Intake:
    def __init__(self, service: ServiceRunner[IntakeParts], clock: Clock) -> None:
        self.service, self.clock = service, clock

    def auth(self, sub: str, unit: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service.ctx.tokens.issue(sub, unit, [role])}"}

    async def types(self, incident_id: str) -> list[str]:
        cursor = self.service.db["events"].find(
            {"stream_id": f"incident-{incident_id}"}, sort=[("stream_version", 1)]
        )
        return [doc["event_type"] async for doc in cursor]


async def started(settings: Settings, pack: str) -> AsyncIterator[tuple[Intake, httpx.AsyncClient]]:
    await ensure_topics(settings)
    clock = Clock()
    on_pack = settings.model_copy(update={"plan": CONFIG_DIR / "plans" / pack})
    service = ServiceRunner.connect("intake", build, Context.from_settings(on_pack), clock)
    await service.start()
    try:
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            yield Intake(service, clock), api
    finally:
        await service.stop()


@pytest.fixture
async def school(settings: Settings) -> AsyncIterator[tuple[Intake, httpx.AsyncClient]]:
    async for pair in started(settings, "school"):
        yield pair


@pytest.fixture
async def fourtier(settings: Settings) -> AsyncIterator[tuple[Intake, httpx.AsyncClient]]:
    async for pair in started(settings, "fourtier"):
        yield pair


async def file(api: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    resp = await api.post("/intake/v1/reports", json={**REPORT, **body}, headers=headers)
    assert resp.status_code in (200, 201), resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def test_a_report_during_the_school_watch_reopens_the_incident_and_after_it_opens_anew(
    school: tuple[Intake, httpx.AsyncClient],
) -> None:
    intake, api = school
    monitor = intake.auth("monitor-chen", "school-a", "monitor")
    leader = intake.auth("leader-zhang", "county", "leader")
    incident_id = (await file(api, monitor))["incident_id"]
    intake.clock.now = T0 + timedelta(hours=2)
    resolved = await api.post(
        f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "已平息"}, headers=leader
    )
    assert resolved.status_code == 200, resolved.text

    intake.clock.now = T0 + timedelta(days=6)  # past the 72-hour window, within the watch
    during = await file(api, monitor)
    assert during["incident_id"] == incident_id
    assert during["new_incident"] is False
    assert (await intake.types(incident_id))[-6:] == [
        "IncidentResolved",
        "IncidentWatchStarted",
        "IncidentReopened",
        "ReportReceived",
        "ReportAttached",
        "WatchReportReceived",
    ]
    view = (await api.get(f"/intake/v1/incidents/{incident_id}", headers=leader)).json()
    assert view["status"] == "open"
    assert "善后跟踪期内" in view["history"][-1]["reason"]
    assert datetime.fromisoformat(view["watch"]["until"]) == T0 + timedelta(hours=2, days=7)
    assert view["watch"]["reports"][0]["report_id"] == during["report_id"]

    # Resolved again: a new watch; after it a report about the matter opens a new incident.
    resolved_again_at = T0 + timedelta(days=6, hours=1)
    intake.clock.now = resolved_again_at
    again = await api.post(
        f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "再次平息"}, headers=leader
    )
    assert again.status_code == 200, again.text
    intake.clock.now = resolved_again_at + timedelta(days=7, minutes=1)
    after = await file(api, monitor)
    assert after["new_incident"] is True
    assert after["incident_id"] != incident_id


async def test_a_report_during_the_fourtier_watch_is_attached_and_the_incident_stays_resolved(
    fourtier: tuple[Intake, httpx.AsyncClient],
) -> None:
    intake, api = fourtier
    monitor = intake.auth("monitor-chen", "school-a", "monitor")
    office = intake.auth("office-li", "county", "office")
    partner = intake.auth("partner-wxb", "county", "partner")
    incident_id = (await file(api, monitor))["incident_id"]
    resolved = await api.post(
        f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "已平息"}, headers=office
    )
    assert resolved.status_code == 200, resolved.text

    intake.clock.now = T0 + timedelta(days=3)
    during = await file(api, monitor)
    referred = await file(api, partner, source_type="referral")

    assert during["incident_id"] == incident_id
    assert referred["referral"] is True
    assert referred["incident_id"] != incident_id
    view = (await api.get(f"/intake/v1/incidents/{incident_id}", headers=office)).json()
    assert view["status"] == "resolved"
    assert [(r["report_id"], r["reopened"]) for r in view["watch"]["reports"]] == [
        (during["report_id"], False)
    ]
    assert "IncidentReopened" not in await intake.types(incident_id)
