"""The archive service against the real Kafka-protocol broker and MongoDB-protocol server:
events produced on the five topics, read back through its HTTP API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.archive import projections
from services.archive.bootstrap import ArchiveParts, build
from shared.bus import ensure_topics
from shared.events import (
    Actor,
    Envelope,
    EventPayload,
    FiredRule,
    IncidentGraded,
    IncidentOpened,
    IncidentResolved,
    MediaTier,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
    StatementDrafted,
)
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.service.upstream_events import kafka_headers

pytestmark = pytest.mark.asyncio

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
RULE = Actor.rule("rulebook")
LEVEL_BY_TIER = {MediaTier.CENTRAL: 1, MediaTier.PROVINCIAL: 2}


def event(
    payload: EventPayload,
    incident: str,
    stream: str,
    version: int,
    when: datetime,
    unit: str,
    cause: Envelope | None = None,
    actor: Actor | None = None,
) -> Envelope:
    fields: dict[str, Any] = {
        "stream_id": stream,
        "stream_version": version,
        "occurred_at": when,
        "actor": actor or Actor(type="person", id="monitor-chen", unit_id=unit),
    }
    made = (
        cause.caused(payload, **fields)
        if cause
        else Envelope.new(payload, incident_id=incident, unit_id=unit, **fields)
    )
    return made.model_copy(update={"recorded_at": when + timedelta(milliseconds=5)})


def incident_events(
    incident: str, unit: str, tier: MediaTier, filed_by: str = "monitor-chen"
) -> list[Envelope]:
    """A report opening an incident, its grade, two obligations and a draft statement."""
    received = event(
        ReportReceived(
            report_id=f"{incident}-r1",
            source_type=SourceType.NEWS,
            source_name="人民网",
            media_tier=tier,
            url=f"https://news.example/{incident}",
            normalized_url=f"news.example/{incident}",
            title=f"{unit} 食堂问题",
            excerpt="家长反映",
            author=None,
            published_at=T0 - timedelta(minutes=10),
            observed_at=T0 - timedelta(minutes=2),
            reach=Reach(views=120000),
            unit_ids=(unit,),
            filed_by=filed_by,
        ),
        incident,
        f"report-{incident}-r1",
        1,
        T0,
        unit,
    )
    opened = event(
        IncidentOpened(
            title=f"{unit} 食堂问题", unit_ids=(unit,), first_report_id=f"{incident}-r1"
        ),
        incident,
        f"incident-{incident}",
        1,
        T0 + timedelta(seconds=1),
        unit,
        received,
    )
    graded = event(
        IncidentGraded(
            level=LEVEL_BY_TIER.get(tier, 3),
            category="inquiry",
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体报道"),),
            rulebook_version="1",
        ),
        incident,
        f"grading-{incident}",
        1,
        T0 + timedelta(seconds=2),
        unit,
        opened,
        RULE,
    )
    obligations = [
        event(
            ObligationOpened(
                obligation_id=f"{incident}-{kind}",
                kind=kind,
                title=title,
                level=1,
                owner_role="office",
                recipients=("leader-zhang",),
                counted_from=graded.occurred_at,
                deadline=graded.occurred_at + timedelta(minutes=minutes),
            ),
            incident,
            f"obligations-{incident}",
            version,
            T0 + timedelta(seconds=2 + version),
            unit,
            graded,
            RULE,
        )
        for version, (kind, title, minutes) in enumerate(
            [("phone_quick_report", "手机快报", 30), ("written_quick_report", "纸质快报", 60)],
            start=1,
        )
    ]
    drafted = event(
        StatementDrafted(
            statement_id=f"{incident}-s1",
            kind="online_reply",
            version=1,
            title="情况回复",
            body="经核查……",
            author="spokesperson-sun",
        ),
        incident,
        f"statement-{incident}-s1",
        1,
        T0 + timedelta(minutes=5),
        unit,
    )
    return [received, opened, graded, *obligations, drafted]


Archive = ServiceRunner[ArchiveParts]


@pytest.fixture
async def archive(settings: Settings) -> AsyncIterator[Archive]:
    await ensure_topics(settings)
    runner = ServiceRunner.connect("archive", build, Context.from_settings(settings))
    await runner.start()
    yield runner
    await runner.stop()


@pytest.fixture
async def produce(settings: Settings) -> AsyncIterator[Callable[[list[Envelope]], Awaitable[None]]]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()

    async def send(events: list[Envelope]) -> None:
        for e in events:
            await producer.send_and_wait(
                settings.topic(e.topic),
                e.to_json(),
                key=e.incident_id.encode(),
                headers=kafka_headers(settings, e),
            )

    yield send
    await producer.stop()


@pytest.fixture
async def client(archive: Archive) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=archive.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def auth(settings: Settings, sub: str, unit: str, roles: list[str]) -> dict[str, str]:
    token = Context.from_settings(settings).tokens.issue(sub, unit, roles)
    return {"Authorization": f"Bearer {token}"}


async def until_view(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    incident: str,
    holds: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """The incident's view once `holds` is true of it (the archive is fed over Kafka)."""
    async with asyncio.timeout(20):
        while True:
            response = await client.get(f"/archive/v1/incidents/{incident}", headers=headers)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                if holds(body):
                    return body
            await asyncio.sleep(0.2)


async def until_ingested(
    client: httpx.AsyncClient, headers: dict[str, str], incident: str, count: int
) -> dict[str, Any]:
    return await until_view(client, headers, incident, lambda v: v["event_count"] >= count)


async def test_events_from_all_topics_become_the_incident_view_and_timeline(
    archive: Archive,
    client: httpx.AsyncClient,
    produce: Callable[[list[Envelope]], Awaitable[None]],
    settings: Settings,
) -> None:
    admin = auth(settings, "admin", "county", ["admin"])
    events = incident_events("inc-a", "school-a", MediaTier.CENTRAL)
    received, opened, graded, phone, written, drafted = events
    # Downstream topics first: the archive's intake consumer is lagging.
    await produce([graded, phone, written, drafted])
    await produce([received, opened])

    view = await until_ingested(client, admin, "inc-a", 6)

    assert view["status"] == "open"
    assert (view["level"], view["category"], view["unit_ids"]) == (1, "inquiry", ["school-a"])
    assert view["title"] == "school-a 食堂问题"
    assert [r["report_id"] for r in view["reports"]] == ["inc-a-r1"]
    assert [(g["change"], g["level"]) for g in view["grade_history"]] == [("graded", 1)]
    obligations = {o["title"]: o for o in view["obligations"]}
    assert {t: (o["state"], o["fulfilled_at"]) for t, o in obligations.items()} == {
        "手机快报": ("open", None),
        "纸质快报": ("open", None),
    }
    deadline = datetime.fromisoformat(obligations["手机快报"]["deadline"])
    assert deadline - graded.occurred_at == timedelta(minutes=30)
    assert [
        (s["statement_id"], s["kind"], s["state"], s["version"]) for s in view["statements"]
    ] == [("inc-a-s1", "online_reply", "draft", 1)]
    assert view["complete"] is True

    # A redelivered event, as at-least-once delivery may do, changes nothing.
    await produce([graded])
    await asyncio.sleep(1.5)
    response = await client.get("/archive/v1/incidents/inc-a/timeline", headers=admin)
    assert response.status_code == 200
    timeline = response.json()["events"]
    assert [e["event_id"] for e in timeline] == [str(e.event_id) for e in events]
    assert [e["event_type"] for e in timeline] == [
        "ReportReceived",
        "IncidentOpened",
        "IncidentGraded",
        "ObligationOpened",
        "ObligationOpened",
        "StatementDrafted",
    ]
    assert timeline[0]["summary"] == "舆情件来自 人民网（中央媒体）：school-a 食堂问题"
    assert timeline[2]["summary"].startswith("研判为一级（重大），类别：询问")
    assert timeline[3]["summary"].startswith("开启报送义务：手机快报，截止 ")
    assert timeline[2]["actor"] == {"type": "rule", "id": "rulebook", "unit_id": None}
    assert await archive.db[projections.LOG].count_documents({"incident_id": "inc-a"}) == 6

    # As it stood after the opening and before the grade.
    as_of = (T0 + timedelta(seconds=1, milliseconds=500)).isoformat()
    before = await client.get("/archive/v1/incidents/inc-a", params={"as_of": as_of}, headers=admin)
    assert before.status_code == 200
    assert (before.json()["level"], before.json()["obligations"]) == (None, [])
    assert before.json()["title"] == "school-a 食堂问题"

    # The read model is disposable: rebuilt from the log by a replay it is the same.
    await archive.db[projections.VIEWS].delete_many({})
    views = archive.parts.views
    job = await views.run_replay((await views.start_replay("admin")).job_id, batch_size=10)
    assert (job.state, job.total) == ("completed", 1)
    rebuilt = await client.get("/archive/v1/incidents/inc-a", headers=admin)
    assert rebuilt.json() == view


async def test_the_chain_verifies_until_a_stored_event_is_edited(
    archive: Archive,
    client: httpx.AsyncClient,
    produce: Callable[[list[Envelope]], Awaitable[None]],
    settings: Settings,
) -> None:
    analyst = auth(settings, "analyst-zhao", "county", ["analyst"])
    events = incident_events("inc-v", "road-1", MediaTier.PROVINCIAL)
    await produce(events)
    await until_ingested(client, analyst, "inc-v", 6)

    intact = await client.get("/archive/v1/incidents/inc-v/verify", headers=analyst)
    assert intact.json()["ok"] is True
    assert intact.json()["length"] == 6

    exported = await client.get(
        "/archive/v1/events", params={"incident_id": "inc-v", "after": 0}, headers=analyst
    )
    lines = [json.loads(line) for line in exported.text.splitlines()]
    # in ingest order, which across topics need not be the order they were produced in
    assert sorted(line["envelope"]["event_id"] for line in lines) == sorted(
        str(e.event_id) for e in events
    )
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    resumed = await client.get(
        "/archive/v1/events",
        params={"incident_id": "inc-v", "after": lines[3]["seq"]},
        headers=analyst,
    )
    assert [json.loads(line)["seq"] for line in resumed.text.splitlines()] == [
        line["seq"] for line in lines[4:]
    ]
    monitor = auth(settings, "monitor-chen", "road-1", ["monitor"])
    assert (await client.get("/archive/v1/events", headers=monitor)).status_code == 403
    # A partner's client exports none of the bureau's events, whatever roles it carries.
    partner_analyst = auth(settings, "partner-wxb", "county", ["partner", "analyst"])
    partner_export = await client.get("/archive/v1/events", headers=partner_analyst)
    assert (partner_export.status_code, partner_export.text) == (200, "")

    graded_id = str(events[2].event_id)
    await archive.db[projections.LOG].update_one(
        {"_id": graded_id}, {"$set": {"envelope.payload.level": 3}}
    )

    broken = await client.get("/archive/v1/incidents/inc-v/verify", headers=analyst)
    assert broken.json()["ok"] is False
    assert broken.json()["broken"]["event_id"] == graded_id


async def test_principals_see_only_their_units_incidents_in_stable_pages(
    archive: Archive,
    client: httpx.AsyncClient,
    produce: Callable[[list[Envelope]], Awaitable[None]],
    settings: Settings,
) -> None:
    admin = auth(settings, "admin", "county", ["admin"])
    await produce(incident_events("inc-a", "school-a", MediaTier.CENTRAL))
    await produce(incident_events("inc-b", "school-b", MediaTier.PROVINCIAL, "partner-wxb"))
    await produce(incident_events("inc-c", "school-a", MediaTier.COUNTY))
    for incident in ("inc-a", "inc-b", "inc-c"):
        await until_ingested(client, admin, incident, 6)

    school_a = auth(settings, "monitor-chen", "school-a", ["monitor"])
    listed = await client.get("/archive/v1/incidents", headers=school_a)
    assert listed.status_code == 200
    assert {i["incident_id"] for i in listed.json()["items"]} == {"inc-a", "inc-c"}
    hidden = await client.get("/archive/v1/incidents/inc-b", headers=school_a)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"
    timeline = await client.get("/archive/v1/incidents/inc-b/timeline", headers=school_a)
    assert timeline.status_code == 404

    partner = auth(settings, "partner-wxb", "county", ["partner"])
    referred = await client.get("/archive/v1/incidents", headers=partner)
    assert [i["incident_id"] for i in referred.json()["items"]] == ["inc-b"]
    # A second role does not widen a partner's view to every incident.
    partner_analyst = auth(settings, "partner-wxb", "county", ["partner", "analyst"])
    listed = await client.get("/archive/v1/incidents", headers=partner_analyst)
    assert [i["incident_id"] for i in listed.json()["items"]] == ["inc-b"]
    other = await client.get("/archive/v1/incidents/inc-a", headers=partner_analyst)
    assert other.status_code == 404

    level_one = await client.get("/archive/v1/incidents", params={"level": 1}, headers=admin)
    assert [i["incident_id"] for i in level_one.json()["items"]] == ["inc-a"]
    by_unit = await client.get("/archive/v1/incidents", params={"unit": "school-b"}, headers=admin)
    assert [i["incident_id"] for i in by_unit.json()["items"]] == ["inc-b"]

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/archive/v1/incidents", params=params, headers=admin)).json()
        seen += [i["incident_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # opened at the same instant, so the incident id decides, newest first
    assert seen == ["inc-c", "inc-b", "inc-a"]

    assert (await client.get("/archive/v1/incidents")).status_code == 401
    too_big = await client.get("/archive/v1/incidents", params={"limit": 1000}, headers=admin)
    assert too_big.status_code == 422
    assert too_big.json()["error"]["details"][0]["field"] == "limit"


def resolution(events: list[Envelope], when: datetime) -> Envelope:
    opened = events[1]
    return event(
        IncidentResolved(reason="舆情平息"),
        opened.incident_id,
        opened.stream_id,
        2,
        when,
        str(opened.unit_id),
        actor=Actor(type="person", id="leader-zhang", unit_id="county"),
    )


async def until_status(
    client: httpx.AsyncClient, headers: dict[str, str], incident: str, status: str
) -> dict[str, Any]:
    return await until_view(client, headers, incident, lambda v: v["status"] == status)


async def test_a_resolved_incident_is_reviewed_into_a_case_with_a_chinese_report(
    archive: Archive,
    client: httpx.AsyncClient,
    produce: Callable[[list[Envelope]], Awaitable[None]],
    settings: Settings,
) -> None:
    office = auth(settings, "office-li", "county", ["office"])
    monitor = auth(settings, "monitor-chen", "school-a", ["monitor"])
    body = {
        "cause": "食堂供货商以次充好",
        "handling": "当日回复，更换供货商",
        "lessons": "加强抽检",
    }
    events = incident_events("inc-r", "school-a", MediaTier.CENTRAL)
    await produce(events)
    await until_ingested(client, office, "inc-r", 6)

    early = await client.post("/archive/v1/incidents/inc-r/review", json=body, headers=office)
    assert early.status_code == 409
    assert early.json()["error"]["details"] == {"status": "open"}

    await produce([resolution(events, T0 + timedelta(minutes=50))])
    await until_status(client, office, "inc-r", "resolved")
    refused = await client.post("/archive/v1/incidents/inc-r/review", json=body, headers=monitor)
    assert refused.status_code == 403

    # Two reviews of the one resolution at once: the store's version check lets one in,
    # and the other, decided again, finds the resolution reviewed.
    leader = auth(settings, "leader-zhang", "county", ["leader"])
    both = await asyncio.gather(
        client.post("/archive/v1/incidents/inc-r/review", json=body, headers=office),
        client.post("/archive/v1/incidents/inc-r/review", json=body, headers=leader),
    )
    assert sorted(r.status_code for r in both) == [202, 409], [r.text for r in both]
    accepted = next(r for r in both if r.status_code == 202)
    figures = accepted.json()["figures"]
    assert figures["seconds_to_grade"] == 2
    # Not met by their deadlines (30 and 60 minutes after the grade), and no miss recorded:
    # the archive says open and overdue, and leaves "missed" to notification.
    assert [(o["title"], o["outcome"], o["overdue"]) for o in figures["obligations"]] == [
        ("手机快报", "open", True),
        ("纸质快报", "open", True),
    ]
    again = await client.post("/archive/v1/incidents/inc-r/review", json=body, headers=office)
    assert again.status_code == 409
    stored = await archive.store.load("review-inc-r")
    assert [(e.event_type, e.stream_version) for e in stored] == [
        ("ReviewRecorded", 1),
        ("CaseArchived", 2),
    ]

    # The review reaches the view through Kafka and the log, as every event does.
    view = await until_status(client, office, "inc-r", "archived")
    assert view["review"]["cause"] == "食堂供货商以次充好"
    assert view["case_id"] == accepted.json()["case_id"]
    timeline = (await client.get("/archive/v1/incidents/inc-r/timeline", headers=office)).json()
    assert [e["event_type"] for e in timeline["events"]][-2:] == ["ReviewRecorded", "CaseArchived"]

    found = await client.get("/archive/v1/cases", params={"q": "供货商"}, headers=office)
    assert [c["incident_id"] for c in found.json()["items"]] == ["inc-r"]
    none = await client.get("/archive/v1/cases", params={"unit": "school-b"}, headers=office)
    assert none.json()["items"] == []
    case_id = view["case_id"]
    case = await client.get(f"/archive/v1/cases/{case_id}", headers=monitor)
    assert case.json()["figures"] == figures
    school_b = auth(settings, "monitor-li", "school-b", ["monitor"])
    assert (await client.get(f"/archive/v1/cases/{case_id}", headers=school_b)).status_code == 404

    markdown = await client.get(f"/archive/v1/cases/{case_id}/report", headers=office)
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "## 三、经验教训\n\n加强抽检" in markdown.text
    html = await client.get(
        f"/archive/v1/cases/{case_id}/report", headers={**office, "Accept": "text/html"}
    )
    assert html.headers["content-type"].startswith("text/html")
    assert "<h2>一、事件起因</h2>" in html.text

    period = {"from": (T0 - timedelta(hours=1)).isoformat(), "to": T0.isoformat()}
    assessed = await client.get(
        "/archive/v1/accountability",
        params={**period, "to": (T0 + timedelta(hours=1)).isoformat()},
        headers=office,
    )
    assert assessed.status_code == 200, assessed.text
    [unit] = assessed.json()["units"]
    totals = unit["totals"]
    assert (unit["unit_id"], totals["open"], totals["overdue"], totals["missed"]) == (
        "school-a",
        2,
        2,
        0,
    )
    before = await client.get("/archive/v1/accountability", params=period, headers=office)
    assert before.json()["units"] == []
    outside = await client.get(
        "/archive/v1/accountability", params={**period, "unit": "school-b"}, headers=monitor
    )
    assert outside.status_code == 403


async def read_model_documents(archive: Archive, collection: str) -> list[dict[str, Any]]:
    return [doc async for doc in archive.db[collection].find({}, sort=[("_id", 1)])]


async def test_replay_rebuilds_the_read_models_in_fresh_collections_and_swaps_them_in(
    archive: Archive,
    client: httpx.AsyncClient,
    produce: Callable[[list[Envelope]], Awaitable[None]],
    settings: Settings,
) -> None:
    admin = auth(settings, "admin", "county", ["admin"])
    for incident, unit in (("inc-1", "school-a"), ("inc-2", "school-b"), ("inc-3", "road-1")):
        await produce(incident_events(incident, unit, MediaTier.PROVINCIAL))
        await until_ingested(client, admin, incident, 6)
    live = await read_model_documents(archive, projections.VIEWS)
    live_rows = await read_model_documents(archive, projections.ROWS)
    listed = (await client.get("/archive/v1/incidents", headers=admin)).json()

    monitor = auth(settings, "monitor-chen", "school-a", ["monitor"])
    assert (await client.post("/archive/v1/replay", headers=monitor)).status_code == 403
    started = await client.post("/archive/v1/replay", headers=admin)
    assert started.status_code == 202, started.text
    job = started.json()
    async with asyncio.timeout(20):
        while job["state"] == "running":
            await asyncio.sleep(0.2)
            progress = await client.get(f"/archive/v1/replay/{job['job_id']}", headers=admin)
            job = progress.json()
    assert (job["state"], job["processed"], job["total"]) == ("completed", 3, 3)
    fresh = job["collections"]["incidents"]
    assert fresh != projections.VIEWS
    assert await read_model_documents(archive, fresh) == live
    # The list's rows too: each view's document but the view, rebuilt beside it.
    fresh_rows = job["collections"]["incident_rows"]
    assert fresh_rows != projections.ROWS
    assert await read_model_documents(archive, fresh_rows) == live_rows
    assert [{k: v for k, v in doc.items() if k != "view"} for doc in live] == live_rows
    assert (await client.get("/archive/v1/incidents", headers=admin)).json() == listed
    kept = await archive.db.list_collection_names()
    assert projections.VIEWS not in kept
    assert projections.ROWS not in kept


async def test_events_ingested_while_a_replay_builds_are_in_the_models_it_swaps_in(
    archive: Archive,
    client: httpx.AsyncClient,
    produce: Callable[[list[Envelope]], Awaitable[None]],
    settings: Settings,
) -> None:
    admin = auth(settings, "admin", "county", ["admin"])
    events = incident_events("inc-d", "school-a", MediaTier.CENTRAL)
    await produce(events[:3])
    await until_ingested(client, admin, "inc-d", 3)

    job = await archive.parts.views.start_replay("admin")
    second = await client.post("/archive/v1/replay", headers=admin)
    assert second.status_code == 409
    # Ingested while the replay is under way: the API still serves the old collections.
    await produce(events[3:])
    await until_ingested(client, admin, "inc-d", 6)
    finished = await archive.parts.views.run_replay(job.job_id, batch_size=1)

    assert finished.state == "completed"
    view = (await client.get("/archive/v1/incidents/inc-d", headers=admin)).json()
    assert view["event_count"] == 6
    assert [s["statement_id"] for s in view["statements"]] == ["inc-d-s1"]
