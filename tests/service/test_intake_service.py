"""The intake service on the real broker and database, through its HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from services.intake.bootstrap import IntakeParts, build
from shared.bus import ensure_topics
from shared.events import INTAKE_TOPIC, Envelope, utcnow
from shared.service import Context, ServiceRunner
from shared.settings import Settings

# The intake service as its runner holds it: app, store, database, parts, context.
IntakeService = ServiceRunner[IntakeParts]

pytestmark = pytest.mark.asyncio


def report(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "central",
        "url": "https://news.example.com/2026/1121/a1.html",
        "title": "某校食堂饭菜变质引发家长质疑",
        "excerpt": "有家长在网上反映……",
        "author": "网友甲",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 120000, "reposts": 3400, "comments": 800, "likes": 5000},
        "unit_ids": ["school-a"],
    }
    body.update(overrides)
    return body


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[IntakeService]:
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
    token = service.ctx.tokens.issue(sub, unit, list(roles))
    return {"Authorization": f"Bearer {token}"}


def monitor(service: IntakeService) -> dict[str, str]:
    return auth(service, "monitor-chen", "school-a", "monitor")


def leader(service: IntakeService) -> dict[str, str]:
    return auth(service, "leader-zhang", "county", "leader")


async def stream(service: IntakeService, incident_id: str) -> list[dict[str, Any]]:
    cursor = service.db["events"].find(
        {"stream_id": f"incident-{incident_id}"}, sort=[("stream_version", 1)]
    )
    return [doc async for doc in cursor]


async def event_types(service: IntakeService, incident_id: str) -> list[str]:
    return [doc["event_type"] for doc in await stream(service, incident_id)]


async def stored_events(service: IntakeService) -> int:
    return await service.db["events"].count_documents({})


ATTACHMENT = {
    "name": "截图1.png",
    "content_type": "image/png",
    "size": 204800,
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "url": "https://files.example.com/s/1.png",
}
# A text of its own, so that matching by text does not join it to report()'s matter.
OTHER_MATTER = {"title": "县道养护施工路段夜间无警示灯", "excerpt": "有司机反映夜间行车险些追尾。"}
SIMILAR = {
    "title": "【转】某校食堂饭菜变质，引发家长质疑！",
    "excerpt": "有家长在网上反映……",
}


async def test_a_report_opens_an_incident_and_can_be_read_back(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    resp = await api.post("/intake/v1/reports", json=report(), headers=monitor(service))

    assert resp.status_code == 201, resp.text
    answer = resp.json()
    assert answer["new_incident"] is True
    assert answer["incident_id"].startswith("inc-")
    assert await event_types(service, answer["incident_id"]) == [
        "IncidentOpened",
        "ReportReceived",
    ]
    got = await api.get(f"/intake/v1/reports/{answer['report_id']}", headers=monitor(service))
    assert got.status_code == 200
    assert got.json()["filed_by"] == "monitor-chen"
    assert got.json()["incident_id"] == answer["incident_id"]
    assert got.json()["published_at"].startswith("2026-11-21T00:00:00")  # kept in UTC
    incident = await api.get(
        f"/intake/v1/incidents/{answer['incident_id']}", headers=leader(service)
    )
    assert incident.json()["status"] == "open"
    assert [r["report_id"] for r in incident.json()["reports"]] == [answer["report_id"]]
    # Another school's monitor cannot see it.
    other = auth(service, "monitor-b", "school-b", "monitor")
    hidden = await api.get(f"/intake/v1/incidents/{answer['incident_id']}", headers=other)
    assert hidden.status_code == 404


async def test_the_same_item_under_another_link_form_is_attached(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    first = (await api.post("/intake/v1/reports", json=report(), headers=monitor(service))).json()
    again = report(
        url="HTTPS://NEWS.example.com/2026/1121/a1.html/?utm_source=weibo#comments",
        source_name="微博转载",
        media_tier="self_media",
    )
    resp = await api.post("/intake/v1/reports", json=again, headers=leader(service))

    assert resp.status_code == 200, resp.text
    assert resp.json()["incident_id"] == first["incident_id"]
    assert resp.json()["new_incident"] is False
    assert await event_types(service, first["incident_id"]) == [
        "IncidentOpened",
        "ReportReceived",
        "ReportReceived",
        "ReportAttached",
    ]
    view = await api.get(f"/intake/v1/incidents/{first['incident_id']}", headers=leader(service))
    assert [r["match"] for r in view.json()["reports"]] == [None, "same_url"]
    other = await api.post(
        "/intake/v1/reports",
        json=report(url="https://news.example.com/2026/1121/a2.html", **OTHER_MATTER),
        headers=monitor(service),
    )
    assert other.json()["new_incident"] is True


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": None}, "title"),
        ({"media_tier": "tabloid"}, "media_tier"),
        ({"source_type": "radio"}, "source_type"),
        ({"url": "not a url"}, "url"),
        ({"published_at": "2026-11-21T08:00:00"}, "published_at"),
        ({"reach": {"views": -1}}, "reach.views"),
        ({"unit_ids": []}, "unit_ids"),
        ({"title": "长" * 501}, "title"),
        ({"unit_ids": ["no-such-unit"]}, "unit_ids"),
        ({"excerpt": "长" * 5001}, "excerpt"),
        ({"unit_ids": [f"u{i}" for i in range(21)]}, "unit_ids"),
        ({"reach": {"views": 10**13}}, "reach"),
        (
            {"observed_at": "2099-01-01T00:00:00Z", "published_at": "2099-01-01T00:00:00Z"},
            "observed_at",
        ),
        ({"observed_at": "2026-11-21T07:59:00+08:00"}, "body"),  # seen before published
        ({"attachments": [{**ATTACHMENT, "sha256": "x" * 64}]}, "attachments.0.sha256"),
        ({"attachments": [{**ATTACHMENT, "size": -1}]}, "attachments.0.size"),
        ({"attachments": [{**ATTACHMENT, "url": "file:///etc/passwd"}]}, "attachments"),
        ({"attachments": [ATTACHMENT] * 21}, "attachments"),
    ],
)
async def test_bad_input_gets_422_naming_the_field_and_stores_nothing(
    service: IntakeService, api: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in report(**change).items() if v is not None}

    resp = await api.post("/intake/v1/reports", json=body, headers=leader(service))

    assert resp.status_code == 422, resp.text
    assert field in [d["field"] for d in resp.json()["error"]["details"]]
    assert await stored_events(service) == 0


async def test_attachment_metadata_is_kept_with_the_report(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    answer = await api.post(
        "/intake/v1/reports", json=report(attachments=[ATTACHMENT]), headers=monitor(service)
    )

    assert answer.status_code == 201, answer.text
    stored = await api.get(
        f"/intake/v1/reports/{answer.json()['report_id']}", headers=monitor(service)
    )
    assert stored.json()["attachments"] == [ATTACHMENT]


async def test_who_may_file(service: IntakeService, api: httpx.AsyncClient) -> None:
    no_token = await api.post("/intake/v1/reports", json=report())
    assert no_token.status_code == 401
    other_unit = await api.post(
        "/intake/v1/reports", json=report(unit_ids=["school-b"]), headers=monitor(service)
    )
    assert other_unit.status_code == 403
    analyst = auth(service, "analyst-zhao", "county", "analyst")
    read_only = await api.post("/intake/v1/reports", json=report(), headers=analyst)
    assert read_only.status_code == 403
    assert await stored_events(service) == 0
    partner = auth(service, "partner-wxb", "county", "partner")
    referred = await api.post(
        "/intake/v1/reports", json=report(source_type="referral"), headers=partner
    )
    assert referred.status_code == 201
    (event,) = [
        e
        for e in await stream(service, referred.json()["incident_id"])
        if e["event_type"] == "ReportReceived"
    ]
    assert event["actor"]["type"] == "client"
    assert event["payload"]["filed_by"] == "partner-wxb"


async def test_ten_racing_retries_with_one_key_store_one_report(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    headers = {**monitor(service), "Idempotency-Key": "retry-1"}

    responses = await asyncio.gather(
        *(api.post("/intake/v1/reports", json=report(), headers=headers) for _ in range(10))
    )

    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["report_id"] for r in responses}) == 1
    assert await stored_events(service) == 2  # IncidentOpened + ReportReceived, once
    reused = await api.post("/intake/v1/reports", json=report(title="另一件事"), headers=headers)
    assert reused.status_code == 409
    # The key is the filer's: another principal's same key is another request.
    other = {**leader(service), "Idempotency-Key": "retry-1"}
    assert (await api.post("/intake/v1/reports", json=report(), headers=other)).status_code == 200


async def test_lifecycle_and_illegal_transitions(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    incident = (
        await api.post("/intake/v1/reports", json=report(), headers=monitor(service))
    ).json()["incident_id"]
    base = f"/intake/v1/incidents/{incident}"

    by_monitor = await api.post(f"{base}/resolve", json={"reason": "x"}, headers=monitor(service))
    assert by_monitor.status_code == 403
    no_reason = await api.post(f"{base}/dismiss", json={"reason": " "}, headers=leader(service))
    assert no_reason.status_code == 422

    resolved = await api.post(f"{base}/resolve", json={"reason": "已平息"}, headers=leader(service))
    assert resolved.status_code == 200
    assert resolved.json()["status"] == "resolved"
    twice = await api.post(f"{base}/dismiss", json={"reason": "伪"}, headers=leader(service))
    assert twice.status_code == 409
    assert twice.json()["error"]["details"]["status"] == "resolved"

    reopened = await api.post(
        f"{base}/reopen", json={"reason": "再次发酵"}, headers=leader(service)
    )
    assert reopened.json()["status"] == "open"
    office = auth(service, "office-li", "county", "office")
    dismissed = await api.post(f"{base}/dismiss", json={"reason": "网络伪舆情"}, headers=office)
    assert dismissed.json()["status"] == "dismissed"

    # A dismissed pseudo-incident stays dismissed when the same item is filed again.
    again = await api.post("/intake/v1/reports", json=report(), headers=monitor(service))
    assert again.json()["incident_id"] == incident
    assert again.json()["new_incident"] is False
    view = (await api.get(base, headers=leader(service))).json()
    assert view["status"] == "dismissed"
    assert [h["status"] for h in view["history"]] == ["opened", "resolved", "open", "dismissed"]
    missing = await api.post(
        "/intake/v1/incidents/inc-none/resolve", json={"reason": "x"}, headers=leader(service)
    )
    assert missing.status_code == 404


async def test_a_recently_resolved_incident_reopens_when_the_item_is_filed_again(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    incident = (
        await api.post("/intake/v1/reports", json=report(), headers=monitor(service))
    ).json()["incident_id"]
    await api.post(
        f"/intake/v1/incidents/{incident}/resolve",
        json={"reason": "已平息"},
        headers=leader(service),
    )

    again = await api.post("/intake/v1/reports", json=report(), headers=monitor(service))

    assert again.json()["incident_id"] == incident
    assert (await event_types(service, incident))[-4:] == [
        "IncidentResolved",
        "IncidentReopened",
        "ReportReceived",
        "ReportAttached",
    ]


async def test_stored_events_are_relayed_to_kafka(
    service: IntakeService, api: httpx.AsyncClient, settings: Settings
) -> None:
    resp = await api.post("/intake/v1/reports", json=report(), headers=monitor(service))
    assert resp.status_code == 201, resp.text
    stored = {doc["event_id"] for doc in await stream(service, resp.json()["incident_id"])}
    assert stored

    reader = AIOKafkaConsumer(
        settings.topic(INTAKE_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"{settings.db_prefix}-relay-reader",
    )
    await reader.start()
    relayed: set[str] = set()
    try:
        async with asyncio.timeout(20):
            while not stored <= relayed:
                for records in (await reader.getmany(timeout_ms=300)).values():
                    relayed |= {str(Envelope.from_json(r.value).event_id) for r in records}
    finally:
        await reader.stop()


async def test_a_near_identical_text_from_another_site_joins_the_incident(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    first = (await api.post("/intake/v1/reports", json=report(), headers=monitor(service))).json()
    repost = report(url="https://bbs.example.org/t/991", source_name="某论坛", **SIMILAR)

    resp = await api.post("/intake/v1/reports", json=repost, headers=monitor(service))

    assert resp.status_code == 200, resp.text
    assert resp.json()["incident_id"] == first["incident_id"]
    view = await api.get(f"/intake/v1/incidents/{first['incident_id']}", headers=leader(service))
    first_seen, attached = view.json()["reports"]
    assert first_seen["match"] is None
    assert attached["match"] == "similar_text"
    assert service.parts.policy.similar_text.threshold <= attached["score"] < 1
    # The repost's own link now leads to the incident too.
    again = await api.post(
        "/intake/v1/reports",
        json=report(url="https://bbs.example.org/t/991/?from=share", **OTHER_MATTER),
        headers=leader(service),
    )
    assert again.json()["incident_id"] == first["incident_id"]


async def test_the_same_text_about_another_unit_or_another_matter_opens_its_own(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    first = (await api.post("/intake/v1/reports", json=report(), headers=monitor(service))).json()
    other_unit = await api.post(
        "/intake/v1/reports",
        json=report(url="https://news.example.com/b/1", unit_ids=["school-b"]),
        headers=leader(service),
    )
    other_matter = await api.post(
        "/intake/v1/reports",
        json=report(url="https://news.example.com/b/2", **OTHER_MATTER),
        headers=monitor(service),
    )

    assert other_unit.json()["new_incident"] is True
    assert other_matter.json()["new_incident"] is True
    assert (
        len(
            {
                first["incident_id"],
                other_unit.json()["incident_id"],
                other_matter.json()["incident_id"],
            }
        )
        == 3
    )


async def test_the_same_url_about_another_unit_opens_that_units_own_incident(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    first = (await api.post("/intake/v1/reports", json=report(), headers=monitor(service))).json()
    school_b = auth(service, "monitor-b", "school-b", "monitor")

    other_unit = await api.post(
        "/intake/v1/reports", json=report(unit_ids=["school-b"]), headers=school_b
    )

    assert other_unit.status_code == 201, other_unit.text
    own = other_unit.json()["incident_id"]
    assert own != first["incident_id"]
    view = await api.get(f"/intake/v1/incidents/{first['incident_id']}", headers=leader(service))
    assert view.json()["unit_ids"] == ["school-a"]
    hidden = await api.get(f"/intake/v1/incidents/{first['incident_id']}", headers=school_b)
    assert hidden.status_code == 404
    # The URL is now claimed for school-b as well: another text under it joins school-b's.
    again = await api.post(
        "/intake/v1/reports",
        json=report(unit_ids=["school-b"], **OTHER_MATTER),
        headers=school_b,
    )
    assert again.json()["incident_id"] == own
    joined = await api.get(f"/intake/v1/incidents/{own}", headers=school_b)
    assert [r["match"] for r in joined.json()["reports"]] == [None, "same_url"]


async def test_a_look_alike_filed_after_the_window_opens_a_new_incident(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    first = (await api.post("/intake/v1/reports", json=report(), headers=monitor(service))).json()
    window = service.parts.policy.similar_text.window
    # As if the first report had been filed just before the window began.
    await service.db["reports"].update_one(
        {"_id": first["report_id"]},
        {"$set": {"received_at": utcnow() - window - timedelta(minutes=1)}},
    )

    late = await api.post(
        "/intake/v1/reports",
        json=report(url="https://bbs.example.org/t/992", **SIMILAR),
        headers=monitor(service),
    )

    assert late.json()["new_incident"] is True
    assert late.json()["incident_id"] != first["incident_id"]


async def test_a_look_alike_of_a_dismissed_pseudo_incident_joins_it_without_reopening(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    incident = (
        await api.post("/intake/v1/reports", json=report(), headers=monitor(service))
    ).json()["incident_id"]
    await api.post(
        f"/intake/v1/incidents/{incident}/dismiss",
        json={"reason": "网络伪舆情：图片系旧图"},
        headers=leader(service),
    )

    repost = await api.post(
        "/intake/v1/reports",
        json=report(url="https://bbs.example.org/t/993", **SIMILAR),
        headers=monitor(service),
    )

    assert repost.json()["incident_id"] == incident
    assert repost.json()["new_incident"] is False
    view = (await api.get(f"/intake/v1/incidents/{incident}", headers=leader(service))).json()
    assert view["status"] == "dismissed"
    assert (await event_types(service, incident))[-2:] == ["ReportReceived", "ReportAttached"]


async def test_reports_of_one_url_filed_at_once_make_one_incident(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    # Texts too unlike to match: only the URL brings them together.
    titles = ["食堂饭菜变质", "校车超载事故", "教师体罚学生", "宿舍漏水无人修", "操场塌陷"]

    answers = await asyncio.gather(
        *(
            api.post(
                "/intake/v1/reports",
                json=report(
                    url="https://news.example.com/2026/1121/once.html", title=title, excerpt=title
                ),
                headers=monitor(service),
            )
            for title in titles
        )
    )

    assert len({a.json()["incident_id"] for a in answers}) == 1, [a.text for a in answers]
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 201]


async def test_near_identical_reports_filed_at_once_make_one_incident(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    sites = ["a", "b", "c", "d", "e"]

    answers = await asyncio.gather(
        *(
            api.post(
                "/intake/v1/reports",
                json=report(url=f"https://{site}.example.org/t/1", **SIMILAR),
                headers=monitor(service),
            )
            for site in sites
        )
    )

    assert len({a.json()["incident_id"] for a in answers}) == 1, [a.text for a in answers]
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 201]
