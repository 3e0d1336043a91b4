"""The grading service on the real broker and database: intake events in, grades out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.grading.bootstrap import GradingParts, build
from shared.bus import ensure_topics
from shared.events import (
    INTAKE_TOPIC,
    Actor,
    Envelope,
    EventPayload,
    IncidentDismissed,
    IncidentOpened,
    IncidentReopened,
    MediaTier,
    Reach,
    ReportReceived,
    SourceType,
)
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.service.upstream_events import kafka_headers

pytestmark = pytest.mark.asyncio
T0 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)


class Intake:
    """Plays the intake service: appends to an incident stream and puts it on the topic."""

    def __init__(self, producer: AIOKafkaProducer, settings: Settings) -> None:
        self.producer = producer
        self.settings = settings
        self.versions: dict[str, int] = {}

    async def emit(self, incident_id: str, payload: EventPayload) -> Envelope:
        version = self.versions.get(incident_id, 0) + 1
        self.versions[incident_id] = version
        event = Envelope.new(
            payload,
            incident_id=incident_id,
            stream_id=f"incident-{incident_id}",
            stream_version=version,
            actor=Actor(type="person", id="monitor-chen", unit_id="school-a"),
            unit_id="school-a",
        )
        await self.producer.send_and_wait(
            self.settings.topic(INTAKE_TOPIC),
            event.to_json(),
            key=incident_id.encode(),
            headers=kafka_headers(self.settings, event),
        )
        return event

    async def report(
        self, incident_id: str, tier: MediaTier, title: str = "某校食堂问题", views: int = 0
    ) -> Envelope:
        n = self.versions.get(incident_id, 0)
        report = ReportReceived(
            report_id=f"rep-{incident_id}-{n}",
            source_type=SourceType.NEWS,
            source_name=f"{tier.value}-站点",
            media_tier=tier,
            url=f"https://{tier.value}.example.com/{n}",
            normalized_url=f"https://{tier.value}.example.com/{n}",
            title=title,
            excerpt="",
            author=None,
            published_at=T0,
            observed_at=T0,
            reach=Reach(views=views),
            unit_ids=("school-a",),
            filed_by="monitor-chen",
        )
        if n == 0:
            await self.emit(
                incident_id,
                IncidentOpened(
                    title=title, unit_ids=("school-a",), first_report_id=report.report_id
                ),
            )
        return await self.emit(incident_id, report)


Grading = ServiceRunner[GradingParts]


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Grading]:
    await ensure_topics(settings)
    runner = ServiceRunner.connect("grading", build, Context.from_settings(settings))
    await runner.start()
    yield runner
    await runner.stop()


@pytest.fixture
async def intake(settings: Settings) -> AsyncIterator[Intake]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    yield Intake(producer, settings)
    await producer.stop()


@pytest.fixture
async def api(service: Grading) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def auth(service: Grading, sub: str, unit: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.ctx.tokens.issue(sub, unit, list(roles))}"}


def leader(service: Grading) -> dict[str, str]:
    return auth(service, "leader-zhang", "county", "leader")


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(15):
        while not await check():
            await asyncio.sleep(0.1)


async def grade_events(service: Grading, incident_id: str) -> list[dict[str, Any]]:
    cursor = service.db["events"].find(
        {"stream_id": f"grade-{incident_id}"}, sort=[("stream_version", 1)]
    )
    return [doc async for doc in cursor]


async def grade_count(service: Grading, incident_id: str, n: int) -> None:
    async def reached() -> bool:
        return len(await grade_events(service, incident_id)) >= n

    await until(reached)


async def test_a_provincial_then_a_central_report_ends_at_level_one_with_the_reason(
    service: Grading, intake: Intake, api: httpx.AsyncClient
) -> None:
    first = await intake.report("inc-a", MediaTier.PROVINCIAL)
    await grade_count(service, "inc-a", 1)
    second = await intake.report("inc-a", MediaTier.CENTRAL)
    await grade_count(service, "inc-a", 2)
    await intake.report("inc-a", MediaTier.COUNTY)  # weaker: changes nothing

    async def third_report_counted() -> bool:
        # The facts are written in the transaction that would have escalated, so once
        # they hold the third report its (absent) grade event is settled too.
        facts = await service.db["facts"].find_one({"_id": "inc-a"})
        return facts is not None and facts.get("report_count") == 3

    await until(third_report_counted)

    graded, escalated = await grade_events(service, "inc-a")
    assert graded["event_type"] == "IncidentGraded"
    assert graded["payload"]["level"] == 2
    assert graded["payload"]["rulebook_version"] == service.parts.rulebook.version
    assert graded["causation_id"] == str(first.event_id)
    assert graded["correlation_id"] == str(first.correlation_id)
    assert graded["actor"] == {"type": "rule", "id": "rulebook", "unit_id": None}
    assert escalated["event_type"] == "IncidentEscalated"
    assert (escalated["payload"]["from_level"], escalated["payload"]["to_level"]) == (2, 1)
    assert "中央级媒体" in escalated["payload"]["reason"]
    assert escalated["causation_id"] == str(second.event_id)

    resp = await api.get("/grading/v1/incidents/inc-a/grade", headers=leader(service))
    assert resp.status_code == 200
    view = resp.json()
    assert view["level"] == 1
    assert view["category"] == "inquiry"
    assert [(h["event_type"], h["level"]) for h in view["history"]] == [
        ("IncidentGraded", 2),
        ("IncidentEscalated", 1),
    ]
    # Units decide who sees it.
    other = auth(service, "monitor-b", "school-b", "monitor")
    assert (await api.get("/grading/v1/incidents/inc-a/grade", headers=other)).status_code == 404


async def test_a_dismissed_incident_is_not_escalated(service: Grading, intake: Intake) -> None:
    await intake.report("inc-d", MediaTier.COUNTY, title="网传某校收费，系造谣")
    await grade_count(service, "inc-d", 1)
    await intake.emit("inc-d", IncidentDismissed(reason="网络伪舆情"))
    await intake.report("inc-d", MediaTier.CENTRAL)

    async def both_reports_counted() -> bool:
        # The facts are written in the transaction that would have escalated, so once
        # they hold the second report its (absent) grade event is settled too.
        facts = await service.db["facts"].find_one({"_id": "inc-d"})
        return facts is not None and facts.get("report_count") == 2

    await until(both_reports_counted)

    (graded,) = await grade_events(service, "inc-d")
    assert graded["payload"]["level"] == 3
    assert graded["payload"]["category"] == "rumor"
    facts = await service.db["facts"].find_one({"_id": "inc-d"})
    assert facts is not None
    assert facts.get("report_count") == 2


async def test_a_dismissed_incident_is_not_regraded_by_hand_until_reopened(
    service: Grading, intake: Intake, api: httpx.AsyncClient
) -> None:
    await intake.report("inc-q", MediaTier.COUNTY)
    await grade_count(service, "inc-q", 1)
    await intake.emit("inc-q", IncidentDismissed(reason="网络伪舆情"))
    url = "/grading/v1/incidents/inc-q/override"

    async def dismissed_seen() -> bool:
        facts = await service.db["facts"].find_one({"_id": "inc-q"})
        return bool(facts and facts.get("dismissed"))

    await until(dismissed_seen)
    refused = await api.post(url, json={"level": 1, "reason": "上级关注"}, headers=leader(service))
    assert refused.status_code == 409
    assert "dismissed" in refused.json()["error"]["message"]

    await intake.emit("inc-q", IncidentReopened(reason="再次发酵"))

    async def reopened_seen() -> bool:
        return not await dismissed_seen()

    await until(reopened_seen)
    raised = await api.post(url, json={"level": 1, "reason": "上级关注"}, headers=leader(service))
    assert raised.status_code == 200, raised.text


async def test_the_leader_overrides_with_a_reason(
    service: Grading, intake: Intake, api: httpx.AsyncClient
) -> None:
    await intake.report("inc-o", MediaTier.CENTRAL)
    await grade_count(service, "inc-o", 1)
    url = "/grading/v1/incidents/inc-o/override"

    office = auth(service, "office-li", "county", "office")
    assert (
        await api.post(url, json={"level": 3, "reason": "x"}, headers=office)
    ).status_code == 403
    no_reason = await api.post(url, json={"level": 3}, headers=leader(service))
    assert no_reason.status_code == 422
    assert no_reason.json()["error"]["details"][0]["field"] == "reason"

    down = await api.post(
        url, json={"level": 3, "reason": "经核实系转载旧闻"}, headers=leader(service)
    )
    assert down.status_code == 200, down.text
    assert down.json()["from_level"] == 1
    same = await api.post(url, json={"level": 3, "reason": "again"}, headers=leader(service))
    assert same.status_code == 409

    view = (await api.get("/grading/v1/incidents/inc-o/grade", headers=leader(service))).json()
    assert view["level"] == 3
    assert view["history"][-1]["reason"] == "经核实系转载旧闻"
    (_, overridden) = await grade_events(service, "inc-o")
    assert overridden["event_type"] == "GradeOverridden"
    assert overridden["actor"]["id"] == "leader-zhang"

    # Another central report is no new fact: the override holds.
    await intake.report("inc-o", MediaTier.CENTRAL)

    async def second_report_counted() -> bool:
        # Waited on inc-o itself: another incident may sit on another partition.
        facts = await service.db["facts"].find_one({"_id": "inc-o"})
        return facts is not None and facts.get("report_count") == 2

    await until(second_report_counted)
    assert len(await grade_events(service, "inc-o")) == 2
    missing = await api.post(
        "/grading/v1/incidents/inc-none/override",
        json={"level": 1, "reason": "x"},
        headers=leader(service),
    )
    assert missing.status_code == 404


async def test_overriding_an_incident_not_graded_yet_is_a_conflict(
    service: Grading, intake: Intake, api: httpx.AsyncClient
) -> None:
    # Dismissed before its report reached grading: known from its facts, never graded.
    await intake.emit("inc-u", IncidentDismissed(reason="网络伪舆情"))
    await intake.report("inc-u", MediaTier.COUNTY)

    async def report_counted() -> bool:
        facts = await service.db["facts"].find_one({"_id": "inc-u"})
        # The dismissal may be recorded (facts without reports) before the report is.
        return facts is not None and facts.get("report_count") == 1

    await until(report_counted)
    assert await grade_events(service, "inc-u") == []
    body = {"level": 1, "reason": "上级关注"}
    url = "/grading/v1/incidents/inc-u/override"
    ungraded = await api.post(url, json=body, headers=leader(service))
    assert ungraded.status_code == 409, ungraded.text
    assert "not been graded" in ungraded.json()["error"]["message"]
    # Another unit's leader still learns nothing about it.
    school_b = auth(service, "leader-b", "school-b", "leader")
    assert (await api.post(url, json=body, headers=school_b)).status_code == 404
    unknown = "/grading/v1/incidents/inc-none/override"
    assert (await api.post(unknown, json=body, headers=leader(service))).status_code == 404


async def test_the_rulebook_in_force_is_served(service: Grading, api: httpx.AsyncClient) -> None:
    assert (await api.get("/grading/v1/rulebook")).status_code == 401
    resp = await api.get("/grading/v1/rulebook", headers=leader(service))
    assert resp.status_code == 200
    body = resp.json()
    assert body["version"] == service.parts.rulebook.version
    tiers = {t["id"]: t for t in body["tiers"]}
    assert tiers["tier-central"]["level"] == 1
    assert set(tiers["tier-central"]["media_tiers"]) == {"central", "national_portal"}


async def test_a_malformed_rulebook_stops_the_service_naming_the_entry(
    settings: Settings, tmp_path: Any
) -> None:
    text = settings.rulebook_path.read_text(encoding="utf-8")
    bad = tmp_path / "rulebook.yaml"
    bad.write_text(text.replace("at_least: 5000\n", "at_least: lots\n"), encoding="utf-8")
    ctx = Context.from_settings(settings.model_copy(update={"rulebook_path": bad}))
    with pytest.raises(ValueError, match=r"reach\[1\] \(reach-reposts-5k\)\.at_least"):
        ServiceRunner.connect("grading", build, ctx)
