"""Intake on the real database with many reports on one incident: its document embeds the
first ones and counts them all, why each joined is kept on the embedded and the listed
summary alike, every report is listed by page, and a school's report does not join a
partner's referral."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.intake.bootstrap import IntakeParts, build
from services.intake.projections import INCIDENT_REPORTS, INCIDENTS, UPKEEP
from shared.bus import ensure_topics
from shared.service import Context, ServiceRunner
from shared.settings import Settings

IntakeService = ServiceRunner[IntakeParts]

pytestmark = pytest.mark.asyncio

EMBEDDED = 2


def report(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "central",
        "url": "https://news.example.com/2026/1121/a1.html",
        "title": "某校食堂饭菜变质引发家长质疑",
        "excerpt": "有家长在网上反映……",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "unit_ids": ["school-a"],
    }
    body.update(overrides)
    return body


LOOK_ALIKE = {"title": "【转】某校食堂饭菜变质，引发家长质疑！", "excerpt": "有家长在网上反映……"}


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[IntakeService]:
    settings = settings.model_copy(update={"archive_embedded_reports": EMBEDDED})
    await ensure_topics(settings)
    service = ServiceRunner.connect("intake", build, Context.from_settings(settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def api(service: IntakeService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def auth(service: IntakeService, sub: str, unit: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.ctx.tokens.issue(sub, unit, list(roles))}"}


async def test_many_reports_are_embedded_up_to_the_bound_counted_and_paged(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    monitor = auth(service, "monitor-chen", "school-a", "monitor")
    office = auth(service, "office-li", "county", "office")
    filed = []
    for n in range(5):
        resp = await api.post(
            "/intake/v1/reports",
            json=report(url=f"https://bbs.example.org/t/{n}", **(LOOK_ALIKE if n else {})),
            headers=monitor,
        )
        assert resp.status_code in (200, 201), resp.text
        filed.append(resp.json())
    incident_id = filed[0]["incident_id"]
    assert {f["incident_id"] for f in filed} == {incident_id}

    view = (await api.get(f"/intake/v1/incidents/{incident_id}", headers=office)).json()
    stored = await service.db[INCIDENTS].find_one({"_id": incident_id})
    first = await api.get(
        f"/intake/v1/incidents/{incident_id}/reports", params={"limit": 3}, headers=office
    )
    rest = await api.get(
        f"/intake/v1/incidents/{incident_id}/reports",
        params={"limit": 3, "cursor": first.json()["next_cursor"]},
        headers=office,
    )

    assert view["report_count"] == 5
    assert [(r["report_id"], r["match"]) for r in view["reports"]] == [
        (filed[0]["report_id"], None),
        (filed[1]["report_id"], "similar_text"),
    ]
    assert stored is not None
    assert len(stored["reports"]) == EMBEDDED
    assert first.status_code == rest.status_code == 200, (first.text, rest.text)
    listed = first.json()["items"] + rest.json()["items"]
    assert [r["report_id"] for r in listed] == [f["report_id"] for f in filed]
    assert [r["match"] for r in listed] == [None] + ["similar_text"] * 4
    assert rest.json()["next_cursor"] is None
    assert first.json()["total"] == 5


async def test_a_schools_report_reading_like_a_referral_opens_the_schools_incident(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    partner = auth(service, "partner-wxb", "county", "partner")
    referred = await api.post(
        "/intake/v1/reports", json=report(source_type="referral"), headers=partner
    )
    assert referred.status_code == 201, referred.text

    school = await api.post(
        "/intake/v1/reports",
        json=report(url="https://bbs.example.org/own", **LOOK_ALIKE),
        headers=auth(service, "monitor-chen", "school-a", "monitor"),
    )

    assert school.status_code == 201, school.text
    assert school.json()["incident_id"] != referred.json()["incident_id"]
    assert school.json()["referral"] is False


async def test_an_incident_stored_with_every_report_embedded_is_counted_at_start(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    monitor = auth(service, "monitor-chen", "school-a", "monitor")
    incident_id = (await api.post("/intake/v1/reports", json=report(), headers=monitor)).json()[
        "incident_id"
    ]
    stored = await service.db[INCIDENTS].find_one({"_id": incident_id})
    assert stored is not None
    legacy = [{**stored["reports"][0], "report_id": f"rep-old{n:08d}"} for n in range(4)]
    await service.db[INCIDENTS].update_one(
        {"_id": incident_id}, {"$set": {"reports": legacy}, "$unset": {"report_count": ""}}
    )
    await service.db[INCIDENT_REPORTS].delete_many({"incident_id": incident_id})
    await service.db[UPKEEP].delete_many({})  # what a store of that time holds

    await service.parts.views.ensure_indexes()

    office = auth(service, "office-li", "county", "office")
    view = (await api.get(f"/intake/v1/incidents/{incident_id}", headers=office)).json()
    page = (await api.get(f"/intake/v1/incidents/{incident_id}/reports", headers=office)).json()
    assert view["report_count"] == page["total"] == 4
    assert len(view["reports"]) == EMBEDDED
    assert sorted(r["report_id"] for r in page["items"]) == [r["report_id"] for r in legacy]
