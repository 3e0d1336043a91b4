"""A partner's referral, merged and its claims confirmed, as intake publishes it, handed to
every other service on the fakes: the services that have no business with the new events
(ReferralOpened, ReferralMerged, ReportClaimsConfirmed) pass them by without a dead
letter, and the archive shows the referral link, the merge and the confirmation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from services.cli import composition_root
from shared.events import Envelope, ReportReceived, upcast
from tests.fakes.harness import FakeService, fake_service

pytestmark = pytest.mark.asyncio

SCHOOL = {
    "source_type": "forum",
    "source_name": "县论坛",
    "media_tier": "county",
    "url": "https://bbs.county.example.cn/t/1",
    "title": "网友反映实验小学东门人行道地砖破损",
    "excerpt": "有家长反映东门外人行道地砖松动。",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "reach": {"views": 900},
    "unit_ids": ["school-a"],
}
CLAIM = {**SCHOOL, "source_type": "referral", "media_tier": "central", "reach": {"views": 10}}


@pytest.fixture
async def referred() -> AsyncIterator[tuple[list[Envelope], dict[str, str]]]:
    """Intake's events of a school's incident and a partner's referral merged into it."""
    async with fake_service("intake", composition_root("intake")) as intake, intake.http() as api:
        monitor = intake.token("monitor-chen", "school-a", "monitor")
        partner = intake.token("partner-wxb", "county", "partner")
        office = intake.token("office-li", "county", "office")
        school = (await api.post("/intake/v1/reports", json=SCHOOL, headers=monitor)).json()
        referral = (await api.post("/intake/v1/reports", json=CLAIM, headers=partner)).json()
        merged = await api.post(
            f"/intake/v1/incidents/{referral['incident_id']}/merge",
            json={"into": school["incident_id"], "reason": "同一事项"},
            headers=office,
        )
        assert merged.status_code == 200, merged.text
        confirmed = await api.post(
            f"/intake/v1/reports/{referral['report_id']}/confirm-claims",
            json={"reason": "已核实"},
            headers=office,
        )
        assert confirmed.status_code == 200, confirmed.text
        ids = {
            "school": school["incident_id"],
            "referral": referral["incident_id"],
            "report": referral["report_id"],
        }
        yield await intake.published(), ids


@pytest.mark.parametrize("name", ["grading", "notification", "statement", "archive"])
async def test_every_service_takes_the_new_intake_events_without_a_dead_letter(
    name: str, referred: tuple[list[Envelope], dict[str, str]]
) -> None:
    events, _ = referred
    types = {e.event_type for e in events}
    assert {"ReferralOpened", "ReferralMerged", "ReportClaimsConfirmed"} <= types
    async with fake_service(name, composition_root(name)) as service:
        await service.consume(*events)
        assert service.dead_letters == []


async def test_the_archive_shows_the_referral_its_merge_and_the_confirmed_claim(
    referred: tuple[list[Envelope], dict[str, str]],
) -> None:
    events, ids = referred
    async with AsyncExitStack() as stack:
        archive: FakeService = await stack.enter_async_context(
            fake_service("archive", composition_root("archive"))
        )
        api = await stack.enter_async_context(archive.http())
        await archive.consume(*events)
        admin = archive.token("admin", "county", "admin")

        referral: dict[str, Any] = (
            await api.get(f"/archive/v1/incidents/{ids['referral']}", headers=admin)
        ).json()
        school: dict[str, Any] = (
            await api.get(f"/archive/v1/incidents/{ids['school']}", headers=admin)
        ).json()

    assert referral["referral"]["referred_by"] == "partner-wxb"
    assert referral["referral"]["matched_incident_ids"] == [ids["school"]]
    assert referral["referral"]["merged_into"] == ids["school"]
    assert referral["status"] == "resolved"
    assert referral["reports"][0]["claims_unconfirmed"] is True  # confirmed where it moved
    merged = next(r for r in school["reports"] if r["report_id"] == ids["report"])
    assert merged["match"] == "merged_referral"
    assert merged["claims_unconfirmed"] is False
    assert merged["claims_confirmed"]["confirmed_by"] == "office-li"
    assert school["unit_ids"] == ["school-a"]


async def test_a_report_stored_before_claims_were_recorded_states_facts() -> None:
    body = ReportReceived.model_validate(
        upcast(
            "ReportReceived",
            1,
            {
                "report_id": "rep-1",
                "source_type": "news",
                "source_name": "人民网",
                "media_tier": "central",
                "url": "https://a.example/1",
                "normalized_url": "https://a.example/1",
                "title": "t",
                "excerpt": "",
                "author": None,
                "published_at": "2026-11-21T00:00:00Z",
                "observed_at": "2026-11-21T00:00:00Z",
                "reach": {},
                "unit_ids": ["school-a"],
                "filed_by": "monitor-chen",
            },
        )
    )
    assert body.claims_unconfirmed is False
    assert ReportReceived.SCHEMA_VERSION == 2
