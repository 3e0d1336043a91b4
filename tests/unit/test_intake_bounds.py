"""Intake on the fakes, with many reports on one incident and with partners' referrals: the
incident's document embeds only its first reports and counts them all, every report is
listed by page (a partner: its own), matching still finds an incident by any of its
reports; a report of the bureau never joins a partner's referral; an upload over its bound
is refused naming the attachment setting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.intake.bootstrap import IntakeParts, build
from services.intake.projections import INCIDENT_REPORTS, INCIDENTS, UPKEEP
from shared.settings import CONFIG_DIR
from tests.fakes.harness import FakeService, fake_service, fake_settings

pytestmark = pytest.mark.asyncio

EMBEDDED = 3
PAGE = 4
T0 = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)  # each filing a second after the one before
        return self.now


@pytest.fixture
async def intake() -> AsyncIterator[FakeService]:
    settings = fake_settings(
        archive_embedded_reports=EMBEDDED,
        max_page_size=PAGE,
        max_body_bytes=4096,
        attachment_max_bytes=100_000,
    )
    async with fake_service("intake", build, settings=settings, clock=Clock()) as service:
        yield service


@pytest.fixture
async def api(intake: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with intake.http() as client:
        yield client


MATTER = {"title": "某校食堂饭菜变质引发家长质疑", "excerpt": "有家长在网上反映……"}
LOOK_ALIKE = {"title": "【转】某校食堂饭菜变质，引发家长质疑！", "excerpt": "有家长在网上反映……"}
LATER = {"title": "县道养护施工路段夜间无警示灯", "excerpt": "有司机反映夜间行车险些追尾。"}
LATER_LOOK_ALIKE = {
    "title": "县道养护施工路段夜间无警示灯！",
    "excerpt": "有司机反映夜间行车险些追尾",
}
OTHER = {"title": "城区公园健身器材损坏无人维修", "excerpt": "市民称多处器材已损坏数月。"}


def report(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "central",
        "url": "https://news.example.com/2026/1121/a1.html",
        **MATTER,
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "unit_ids": ["school-a"],
    }
    body.update(overrides)
    return body


def monitor(intake: FakeService) -> dict[str, str]:
    return intake.token("monitor-chen", "school-a", "monitor")


def office(intake: FakeService) -> dict[str, str]:
    return intake.token("office-li", "county", "office")


def partner(intake: FakeService) -> dict[str, str]:
    return intake.token("partner-wxb", "county", "partner")


async def file(api: httpx.AsyncClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    resp = await api.post("/intake/v1/reports", json=report(**overrides), headers=headers)
    assert resp.status_code in (200, 201), resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def every_report(
    api: httpx.AsyncClient, incident_id: str, headers: dict[str, str]
) -> tuple[list[dict[str, Any]], list[int]]:
    """All the incident's reports the caller sees, page by page; and each page's size."""
    items: list[dict[str, Any]] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE} | ({"cursor": cursor} if cursor else {})
        page = await api.get(
            f"/intake/v1/incidents/{incident_id}/reports", params=params, headers=headers
        )
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        sizes.append(len(page.json()["items"]))
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items, sizes


# --------------------------------------------------------------------------- many reports


async def test_an_incident_embeds_its_first_reports_counts_all_and_lists_them_by_page(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    first = await file(api, monitor(intake))
    filed = [first["report_id"]]
    for n in range(6):
        more = await file(api, monitor(intake), url=f"{report()['url']}?n={n}", **LOOK_ALIKE)
        assert more["incident_id"] == first["incident_id"]
        filed.append(more["report_id"])
    incident_id = first["incident_id"]

    view = await api.get(f"/intake/v1/incidents/{incident_id}", headers=office(intake))

    assert view.status_code == 200, view.text
    assert view.json()["report_count"] == 7
    assert [r["report_id"] for r in view.json()["reports"]] == filed[:EMBEDDED]
    stored = await intake.db[INCIDENTS].find_one({"_id": incident_id})
    assert stored is not None
    assert len(stored["reports"]) == EMBEDDED
    listed, sizes = await every_report(api, incident_id, office(intake))
    assert [r["report_id"] for r in listed] == filed  # oldest first, each once
    assert sizes == [PAGE, 3]
    assert [r["match"] for r in listed] == [None] + ["similar_text"] * 6
    page = await api.get(f"/intake/v1/incidents/{incident_id}/reports", headers=office(intake))
    assert page.json()["total"] == 7


async def test_the_page_refuses_a_limit_above_the_page_size_and_a_cursor_it_did_not_give(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    incident_id = (await file(api, monitor(intake)))["incident_id"]
    base = f"/intake/v1/incidents/{incident_id}/reports"

    too_many = await api.get(base, params={"limit": PAGE + 1}, headers=office(intake))
    forged = await api.get(base, params={"cursor": "not-a-cursor"}, headers=office(intake))

    assert too_many.status_code == 422, too_many.text
    assert too_many.json()["error"]["details"][0]["field"] == "limit"
    assert "YUQING_MAX_PAGE_SIZE" in too_many.json()["error"]["message"] + str(
        too_many.json()["error"]["details"]
    )
    assert forged.status_code == 400, forged.text
    assert forged.json()["error"]["details"]["field"] == "cursor"


async def test_a_report_beyond_the_embedded_ones_still_matches_by_its_url_and_its_text(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    incident_id = (await file(api, monitor(intake)))["incident_id"]
    for n in range(EMBEDDED):
        await file(api, monitor(intake), url=f"https://bbs.example.org/t/{n}", **LOOK_ALIKE)
    # The fifth: a look-alike under its own URL, then a different text under that URL.
    late_url = "https://weibo.example.com/status/late"
    late = await file(api, monitor(intake), url=late_url, **LOOK_ALIKE)
    renamed = await file(api, monitor(intake), url=late_url, **LATER)
    assert late["incident_id"] == renamed["incident_id"] == incident_id

    by_url = await file(api, monitor(intake), url=late_url, **OTHER)
    by_text = await file(
        api, monitor(intake), url="https://tieba.example.com/p/9", **LATER_LOOK_ALIKE
    )

    assert by_url["incident_id"] == by_text["incident_id"] == incident_id
    listed, _ = await every_report(api, incident_id, office(intake))
    assert [r["match"] for r in listed[-2:]] == ["same_url", "similar_text"]
    view = await api.get(f"/intake/v1/incidents/{incident_id}", headers=office(intake))
    assert (len(view.json()["reports"]), view.json()["report_count"]) == (EMBEDDED, 8)


async def test_a_partner_pages_only_its_own_reports_and_others_get_404(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    school = await file(api, monitor(intake))
    for n in range(EMBEDDED):
        await file(api, monitor(intake), url=f"https://bbs.example.org/t/{n}", **LOOK_ALIKE)
    referral = await file(api, partner(intake), source_type="referral", url="https://x.cn/r")
    merged = await api.post(
        f"/intake/v1/incidents/{referral['incident_id']}/merge",
        json={"into": school["incident_id"], "reason": "同一事项"},
        headers=office(intake),
    )
    assert merged.status_code == 200, merged.text
    base = f"/intake/v1/incidents/{school['incident_id']}/reports"

    own = await api.get(base, headers=partner(intake))
    whole = await api.get(base, headers=office(intake))
    view = await api.get(f"/intake/v1/incidents/{school['incident_id']}", headers=partner(intake))

    assert own.status_code == 200, own.text
    assert own.json()["total"] == 1
    assert [(r["report_id"], r["match"]) for r in own.json()["items"]] == [
        (referral["report_id"], None)  # why intake put it there is the bureau's reasoning
    ]
    assert whole.json()["total"] == EMBEDDED + 2
    listed, _ = await every_report(api, school["incident_id"], office(intake))
    assert listed[-1]["match"] == "merged_referral"
    # Its report is beyond the embedded ones: its view still shows it, and counts its own.
    assert [r["report_id"] for r in view.json()["reports"]] == [referral["report_id"]]
    assert view.json()["report_count"] == 1
    for stranger in (
        intake.token("partner-other", "county", "partner"),
        intake.token("monitor-b", "school-b", "monitor"),
    ):
        refused = await api.get(base, headers=stranger)
        assert refused.status_code == 404, refused.text
    unknown = await api.get("/intake/v1/incidents/inc-000000000000/reports", headers=office(intake))
    assert unknown.status_code == 404


async def test_an_incident_stored_with_every_report_embedded_is_counted_and_trimmed_at_start(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    incident_id = (await file(api, monitor(intake)))["incident_id"]
    stored = await intake.db[INCIDENTS].find_one({"_id": incident_id})
    assert stored is not None
    summary = stored["reports"][0]
    legacy = [
        {**summary, "report_id": f"rep-old{n:08d}", "received_at": T0 + timedelta(minutes=n)}
        for n in range(5)
    ]
    # As stored before reports were counted: all of them embedded, no count, none listed.
    await intake.db[INCIDENTS].update_one(
        {"_id": incident_id},
        {"$set": {"reports": legacy}, "$unset": {"report_count": ""}},
    )
    await intake.db[INCIDENT_REPORTS].delete_many({"incident_id": incident_id})
    await intake.db[UPKEEP].delete_many({})  # nor any start-up's upkeep
    parts = intake.parts
    assert isinstance(parts, IntakeParts)

    await parts.views.ensure_indexes()

    view = await api.get(f"/intake/v1/incidents/{incident_id}", headers=office(intake))
    assert view.json()["report_count"] == 5
    assert [r["report_id"] for r in view.json()["reports"]] == [
        r["report_id"] for r in legacy[:EMBEDDED]
    ]
    listed, _ = await every_report(api, incident_id, office(intake))
    assert [r["report_id"] for r in listed] == [r["report_id"] for r in legacy]


async def test_a_watch_embeds_its_first_reports_and_counts_them_all(tmp_path: Path) -> None:
    # The fourtier pack's watch attaches a matching report without reopening.
    settings = fake_settings(
        tmp_path, archive_embedded_reports=EMBEDDED, plan=CONFIG_DIR / "plans" / "fourtier"
    )
    async with (
        fake_service("intake", build, settings=settings, clock=Clock()) as intake,
        intake.http() as api,
    ):
        incident_id = (await file(api, monitor(intake)))["incident_id"]
        leader = intake.token("leader-zhang", "county", "leader")
        resolve = f"/intake/v1/incidents/{incident_id}/resolve"
        assert (
            await api.post(resolve, json={"reason": "已平息"}, headers=leader)
        ).status_code == 200
        during = [(await file(api, monitor(intake)))["report_id"] for _ in range(5)]

        view = (await api.get(f"/intake/v1/incidents/{incident_id}", headers=leader)).json()

        assert view["status"] == "resolved"
        assert view["watch"]["report_count"] == 5
        assert [r["report_id"] for r in view["watch"]["reports"]] == during[:EMBEDDED]


# --------------------------------------------------------------------------- referrals


async def test_a_units_report_never_joins_a_partners_referral(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    referral = await file(
        api, partner(intake), source_type="referral", url="https://wx.example.cn/ref/1"
    )
    assert referral["referral"] is True

    by_text = await api.post(
        "/intake/v1/reports",
        json=report(url="https://bbs.example.org/own", **LOOK_ALIKE),
        headers=monitor(intake),
    )
    by_url = await file(api, monitor(intake), url="https://wx.example.cn/ref/1", **OTHER)

    # Each opens the school's own incident (neither reads like another school report);
    # the referral's URL then leads the school's people to the school's incident.
    assert by_text.status_code == 201, by_text.text
    school = by_text.json()
    assert school["incident_id"] != referral["incident_id"]
    assert school["referral"] is False
    assert (by_url["new_incident"], by_url["referral"]) == (True, False)
    assert by_url["incident_id"] not in (referral["incident_id"], school["incident_id"])
    again = await file(api, monitor(intake), url="https://wx.example.cn/ref/1", **LATER)
    assert again["incident_id"] == by_url["incident_id"]
    page = await api.get(
        f"/intake/v1/incidents/{referral['incident_id']}/reports", headers=office(intake)
    )
    assert [r["report_id"] for r in page.json()["items"]] == [referral["report_id"]]
    # The partner's own repost of its referral still joins its referral.
    own = await file(
        api, partner(intake), source_type="referral", url="https://wx.example.cn/ref/2"
    )
    assert own["incident_id"] == referral["incident_id"]
    # Merged, every report of the referral moves, and the referral keeps none of the school's.
    merged = await api.post(
        f"/intake/v1/incidents/{referral['incident_id']}/merge",
        json={"into": school["incident_id"], "reason": "同一事项"},
        headers=office(intake),
    )
    assert merged.status_code == 200, merged.text
    (event,) = await intake.published("ReferralMerged")
    assert set(event.payload.model_dump()["report_ids"]) == {
        referral["report_id"],
        own["report_id"],
    }
    listed, _ = await every_report(api, school["incident_id"], office(intake))
    assert {referral["report_id"], own["report_id"]} <= {r["report_id"] for r in listed}


async def test_another_partners_report_opens_its_own_referral(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    first = await file(api, partner(intake), source_type="referral")

    other = await file(
        api,
        intake.token("partner-other", "county", "partner"),
        source_type="referral",
        url="https://other.example.cn/1",
        **LOOK_ALIKE,
    )

    assert other["referral"] is True
    assert other["incident_id"] != first["incident_id"]


# --------------------------------------------------------------------------- uploads


async def test_an_upload_over_its_bound_is_refused_naming_the_attachment_setting(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    report_id = (await file(api, monitor(intake)))["report_id"]
    big = b"\x89PNG\r\n\x1a\n" + b"x" * 200_000

    r = await api.post(
        f"/intake/v1/reports/{report_id}/attachments",
        files={"file": ("截图.png", big, "image/png")},
        headers=monitor(intake),
    )

    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "payload_too_large"
    assert "YUQING_ATTACHMENT_MAX_BYTES" in error["message"]
    assert "100000 bytes" in error["message"]
    assert "YUQING_MAX_BODY_BYTES" not in error["message"]
    assert error["details"] == [
        {"field": "file", "reason": "at most 100000 bytes", "type": "too_large"}
    ]
