"""The assessment (考评) through the archive's HTTP API on the in-memory fakes: the office's
findings recorded in the archive's own stream and back through the log, the period's
assessment and its document, and who sees what."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.archive.bootstrap import build
from shared.events import Actor, ObligationFulfilled, ReportReceived
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.unit.test_archive_service import NOW, T0, Clock, Story

pytestmark = pytest.mark.asyncio

# Up to an hour after the archive's clock: what the office records now is in it.
PERIOD = {
    "from": (T0 - timedelta(hours=1)).isoformat(),
    "to": (NOW + timedelta(hours=1)).isoformat(),
}
SUN = Actor(type="person", id="spokesperson-sun", unit_id="school-a")


@pytest.fixture
async def archive() -> AsyncIterator[FakeService]:
    async with fake_service("archive", build, clock=Clock(NOW)) as service:
        yield service


@pytest.fixture
async def api(archive: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with archive.http() as client:
        yield client


def office(archive: FakeService) -> dict[str, str]:
    return archive.token("office-li", "county", "office")


async def fed_back(archive: FakeService) -> None:
    """What the archive recorded in its own stream, back through the log as Kafka brings it."""
    await archive.consume(*await archive.published())


async def story_with_a_met_duty(archive: FakeService, incident_id: str = "inc-a") -> Story:
    story = Story(incident_id, "school-a").opened()
    story.add(
        ObligationFulfilled(
            obligation_id=f"{incident_id}-phone",
            fulfilled_by="spokesperson-sun",
            fulfilled_at=T0 + timedelta(minutes=10),
        ),
        "obligation-phone",
        T0 + timedelta(minutes=10),
        actor=SUN,
    )
    await archive.consume(*story.events)
    return story


async def assessment(
    api: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> dict[str, Any]:
    response = await api.get("/archive/v1/assessment", params={**PERIOD, **params}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def counts(body: dict[str, Any], key: str) -> dict[str, int]:
    rows = {u["unit_id"]: u["counts"] for u in body["units"]}
    rows |= {p["person_id"]: p["counts"] for p in body["people"]}
    return {k: v for k, v in rows[key].items() if v}


# --------------------------------------------------------------------------- 谎报


async def test_a_fulfilment_found_untrue_is_recorded_and_counted_against_the_fulfiller(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await story_with_a_met_duty(archive)
    url = "/archive/v1/obligations/inc-a-phone/untrue"

    before = await assessment(api, office(archive))
    accepted = await api.post(
        url, json={"reason": "快报称已核实，实际未核实"}, headers=office(archive)
    )
    again_before_the_log = await api.post(url, json={"reason": "再次"}, headers=office(archive))
    [recorded] = await archive.published()
    await fed_back(archive)
    again = await api.post(url, json={"reason": "再次"}, headers=office(archive))
    after = await assessment(api, office(archive))

    assert counts(before, "spokesperson-sun") == {"on_time": 1}
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["record_id"] == "inc-a-phone"
    assert (recorded.event_type, recorded.stream_id) == (
        "FulfilmentMarkedUntrue",
        "assessment-inc-a",
    )
    assert recorded.payload.model_dump()["fulfilled_by"] == "spokesperson-sun"
    # Already found untrue: told so before and after the finding is back in the log.
    for refused in (again_before_the_log, again):
        assert (refused.status_code, refused.json()["error"]["code"]) == (
            409,
            "already_marked_untrue",
        )
    assert counts(after, "spokesperson-sun") == {"untrue": 1}
    assert counts(after, "school-a") == {"untrue": 1, "open": 1, "overdue": 1}
    [record] = next(p for p in after["people"] if p["person_id"] == "spokesperson-sun")["records"]
    assert (record["reason"], record["recorded_by"]) == ("快报称已核实，实际未核实", "office-li")
    view = (await api.get("/archive/v1/incidents/inc-a", headers=office(archive))).json()
    phone = next(o for o in view["obligations"] if o["obligation_id"] == "inc-a-phone")
    assert phone["untrue"]["reason"] == "快报称已核实，实际未核实"


async def test_finding_untrue_refuses_an_unmet_duty_a_hidden_one_a_role_and_no_reason(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await story_with_a_met_duty(archive)
    body = {"reason": "不实"}

    unmet = await api.post(
        "/archive/v1/obligations/inc-a-written/untrue", json=body, headers=office(archive)
    )
    other_unit = await api.post(
        "/archive/v1/obligations/inc-a-phone/untrue",
        json=body,
        headers=archive.token("leader-b", "school-b", "leader"),
    )
    unknown = await api.post(
        "/archive/v1/obligations/no-such-duty/untrue", json=body, headers=office(archive)
    )
    monitor = await api.post(
        "/archive/v1/obligations/inc-a-phone/untrue",
        json=body,
        headers=archive.token("monitor-chen", "school-a", "monitor"),
    )
    no_reason = await api.post(
        "/archive/v1/obligations/inc-a-phone/untrue", json={"reason": ""}, headers=office(archive)
    )

    assert (unmet.status_code, unmet.json()["error"]["code"]) == (409, "not_fulfilled")
    assert (other_unit.status_code, unknown.status_code) == (404, 404)
    assert (
        other_unit.json()["error"]["details"]["kind"]
        == unknown.json()["error"]["details"]["kind"]
        == "obligation"
    )
    assert monitor.status_code == 403
    assert no_reason.status_code == 422
    assert "reason" in no_reason.text
    assert await archive.published() == []


# --------------------------------------------------------------------------- 未经审核发布, 表扬


async def test_a_release_without_clearance_and_commendations_show_in_the_assessment(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await story_with_a_met_duty(archive)
    release = {
        "released_by": "spokesperson-sun",
        "channel": "个人微博",
        "released_at": (T0 + timedelta(hours=1)).isoformat(),
        "content": "未经审核的情况说明",
    }

    released = await api.post(
        "/archive/v1/incidents/inc-a/uncleared-releases", json=release, headers=office(archive)
    )
    person = await api.post(
        "/archive/v1/incidents/inc-a/commendations",
        json={"person_id": "monitor-chen", "reason": "发现及时"},
        headers=archive.token("leader-zhang", "county", "leader"),
    )
    unit = await api.post(
        "/archive/v1/incidents/inc-a/commendations",
        json={"unit_id": "school-a", "reason": "处置得力"},
        headers=office(archive),
    )
    await fed_back(archive)
    body = await assessment(api, office(archive))

    assert [r.status_code for r in (released, person, unit)] == [202, 202, 202]
    assert counts(body, "spokesperson-sun") == {"on_time": 1, "uncleared_release": 1}
    assert counts(body, "monitor-chen") == {"commendation": 1}
    assert counts(body, "school-a")["uncleared_release"] == 1
    assert counts(body, "school-a")["commendation"] == 1  # the unit's own, not its people's
    timeline = (
        await api.get("/archive/v1/incidents/inc-a/timeline", headers=office(archive))
    ).json()
    lines = [e["summary"] for e in timeline["events"]][-3:]
    assert lines[0].startswith(
        "李主任（领导小组办公室） 记录未经审核发布：孙老师（网络发言人）（实验小学）"
    )
    assert lines[2] == "李主任（领导小组办公室） 表扬实验小学：处置得力"


async def test_findings_name_the_field_they_cannot_use(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await story_with_a_met_duty(archive)
    url = "/archive/v1/incidents/inc-a"
    base = {"channel": "微信群", "content": "说明", "released_at": T0.isoformat()}

    future = await api.post(
        f"{url}/uncleared-releases",
        json={
            **base,
            "released_by": "spokesperson-sun",
            "released_at": (NOW + timedelta(hours=1)).isoformat(),
        },
        headers=office(archive),
    )
    stranger = await api.post(
        f"{url}/uncleared-releases",
        json={**base, "released_by": "someone-outside"},
        headers=office(archive),
    )
    nobody = await api.post(f"{url}/commendations", json={"reason": "好"}, headers=office(archive))
    unknown_unit = await api.post(
        f"{url}/commendations", json={"unit_id": "mars", "reason": "好"}, headers=office(archive)
    )
    hidden = await api.post(
        "/archive/v1/incidents/inc-x/commendations",
        json={"unit_id": "school-a", "reason": "好"},
        headers=office(archive),
    )

    # A school's office acts on its own incident but cannot count a finding for another unit.
    elsewhere = await api.post(
        f"{url}/commendations",
        json={"unit_id": "school-b", "reason": "好"},
        headers=archive.token("office-a", "school-a", "office"),
    )
    assert elsewhere.status_code == 403

    def field(response: httpx.Response) -> str:
        assert response.status_code == 422, response.text
        return str(response.json()["error"]["details"][0]["field"])

    assert field(future) == "released_at"
    assert field(stranger) == "unit_id"
    assert field(nobody) == "person_id"
    assert field(unknown_unit) == "unit_id"
    assert hidden.status_code == 404
    assert await archive.published() == []


# --------------------------------------------------------------------------- reading it


async def test_the_assessment_counts_only_what_the_caller_may_assess_and_no_partner_sees_it(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await story_with_a_met_duty(archive, "inc-a")
    other = Story("inc-b", "school-b", filed_by="partner-wxb").opened()
    await archive.consume(*other.events)

    county = await assessment(api, office(archive))
    own = await assessment(api, archive.token("leader-a", "school-a", "leader"))
    partner = await assessment(api, archive.token("partner-wxb", "county", "partner", "analyst"))
    outside = await api.get(
        "/archive/v1/assessment",
        params={**PERIOD, "unit": "school-b"},
        headers=archive.token("leader-a", "school-a", "leader"),
    )
    monitor = await api.get(
        "/archive/v1/assessment", params=PERIOD, headers=archive.token("m", "school-a", "monitor")
    )
    backwards = await api.get(
        "/archive/v1/assessment",
        params={"from": PERIOD["to"], "to": PERIOD["from"]},
        headers=office(archive),
    )
    accountability = await api.get(
        "/archive/v1/accountability", params=PERIOD, headers=office(archive)
    )

    assert [u["unit_id"] for u in county["units"]] == ["school-a", "school-b"]
    assert [u["unit_id"] for u in own["units"]] == ["school-a"]
    assert (partner["units"], partner["people"]) == ([], [])
    assert (outside.status_code, monitor.status_code, backwards.status_code) == (403, 403, 400)
    assert county["concealed_after_minutes"] == 60
    assert accountability.status_code == 200  # the earlier figures still answer
    assert [u["unit_id"] for u in accountability.json()["units"]] == ["school-a", "school-b"]


PERIOD_ROUTES = (
    "/archive/v1/assessment",
    "/archive/v1/assessment/report",
    "/archive/v1/accountability",
)


async def test_a_period_longer_than_the_configured_days_is_refused_naming_from(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await story_with_a_met_duty(archive)
    end = NOW + timedelta(hours=1)

    async def asked(days: timedelta, service: FakeService, client: httpx.AsyncClient) -> list[Any]:
        period = {"from": (end - days).isoformat(), "to": end.isoformat()}
        return [await client.get(r, params=period, headers=office(service)) for r in PERIOD_ROUTES]

    # The default (YUQING_ASSESSMENT_MAX_DAYS=366): a year of 366 days answers, a day more not.
    year = await asked(timedelta(days=366), archive, api)
    longer = await asked(timedelta(days=367), archive, api)
    # A deployment's own bound.
    settings = fake_settings(assessment_max_days=7)
    async with fake_service("archive", build, settings=settings, clock=Clock(NOW)) as week:
        await story_with_a_met_duty(week)
        async with week.http() as client:
            seven = await asked(timedelta(days=7), week, client)
            beyond = await asked(timedelta(days=7, seconds=1), week, client)

    assert [r.status_code for r in year + seven] == [200] * 6
    for refused, days in [(r, "366") for r in longer] + [(r, "7") for r in beyond]:
        assert refused.status_code == 422, refused.text
        (detail,) = refused.json()["error"]["details"]
        assert detail["field"] == "from"
        assert f"longer than {days} days (YUQING_ASSESSMENT_MAX_DAYS)" in detail["reason"]
    # Within the bound the year's figures are the shorter period's: nothing else happened.
    shorter = await assessment(api, office(archive))
    assert counts(year[0].json(), "school-a") == counts(shorter, "school-a")
    assert counts(shorter, "school-a")["on_time"] == 1


async def test_a_unit_reporting_long_after_the_county_knew_is_concealed_by_rule(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    county = Actor(type="person", id="office-li", unit_id="county")
    story = Story("inc-c", "school-a", filed_by="office-li")
    story.opened()
    story.events[0] = story.events[0].model_copy(update={"actor": county})
    late = ReportReceived.model_validate(
        {
            **story.events[0].payload.model_dump(),
            "report_id": "inc-c-r2",
            "filed_by": "monitor-chen",
        }
    )
    story.add(late, "report-r2", T0 + timedelta(hours=2))
    await archive.consume(*story.events)

    body = await assessment(api, office(archive))

    assert counts(body, "monitor-chen") == {"concealed": 1}
    assert counts(body, "school-a")["concealed"] == 1
    [record] = [r for r in body["units"][0]["records"] if r["kind"] == "concealed"]
    assert (record["known_from"], record["delay_seconds"]) == ("office-li", 7200.0)


async def test_the_period_report_is_a_chinese_document_in_markdown_or_html(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await story_with_a_met_duty(archive)
    url = "/archive/v1/assessment/report"

    markdown = await api.get(url, params=PERIOD, headers=office(archive))
    html = await api.get(url, params={**PERIOD, "format": "html"}, headers=office(archive))
    partner = await api.get(
        url, params=PERIOD, headers=archive.token("partner-wxb", "county", "partner", "analyst")
    )

    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith(
        "# 网络舆情处置考评报告（2026-11-21 07:00 至 2026-11-21 15:00）"
    )
    assert "| 孙老师（网络发言人） | 实验小学 | 1 | 0 | 0 | 0 | 0 | 0 | 0 |" in markdown.text
    assert html.headers["content-type"].startswith("text/html")
    assert "<table>" in html.text
    assert "default-src 'none'" in html.text
    assert partner.status_code == 200
    assert "本期无考评记录" in partner.text
