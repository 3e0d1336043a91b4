"""The assessment (考评) against the real Kafka-protocol broker and MongoDB-protocol server:
the office's findings go out through the archive's outbox and come back through Kafka
into the log, the view, the timeline and the period's assessment."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.archive.bootstrap import ArchiveParts, build
from shared.bus import ensure_topics
from shared.events import Actor, Envelope, MediaTier, ObligationFulfilled
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.service.test_archive_service import T0, auth, event, incident_events, until_view
from tests.service.upstream_events import kafka_headers

pytestmark = pytest.mark.asyncio

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


async def test_findings_come_back_through_kafka_into_the_period_assessment(
    archive: Archive,
    client: httpx.AsyncClient,
    produce: Callable[[list[Envelope]], Awaitable[None]],
    settings: Settings,
) -> None:
    office = auth(settings, "office-li", "county", ["office"])
    events = incident_events("inc-s", "school-a", MediaTier.CENTRAL)
    phone = events[3]
    met = event(
        ObligationFulfilled(
            obligation_id="inc-s-phone_quick_report",
            fulfilled_by="spokesperson-sun",
            fulfilled_at=T0 + timedelta(minutes=10),
        ),
        "inc-s",
        "obligations-inc-s",
        3,
        T0 + timedelta(minutes=10),
        "school-a",
        phone,
        Actor(type="person", id="spokesperson-sun", unit_id="school-a"),
    )
    await produce([*events, met])
    await until_view(
        client, office, "inc-s", lambda v: any(o["fulfilled_by"] for o in v["obligations"])
    )

    untrue = await client.post(
        "/archive/v1/obligations/inc-s-phone_quick_report/untrue",
        json={"reason": "快报内容与事实不符"},
        headers=office,
    )
    released = await client.post(
        "/archive/v1/incidents/inc-s/uncleared-releases",
        json={
            "released_by": "spokesperson-sun",
            "channel": "个人微博",
            "released_at": (T0 + timedelta(minutes=20)).isoformat(),
            "content": "未经审核的情况说明",
        },
        headers=office,
    )
    praised = await client.post(
        "/archive/v1/incidents/inc-s/commendations",
        json={"person_id": "monitor-chen", "reason": "发现及时"},
        headers=office,
    )
    assert [r.status_code for r in (untrue, released, praised)] == [202, 202, 202], [
        r.text for r in (untrue, released, praised)
    ]
    stored = await archive.store.load("assessment-inc-s")
    assert [e.event_type for e in stored] == [
        "FulfilmentMarkedUntrue",
        "UnclearedReleaseRecorded",
        "CommendationRecorded",
    ]

    # Through the outbox, Kafka and the log, as every event comes.
    view = await until_view(client, office, "inc-s", lambda v: bool(v["commendations"]))
    assert [o["untrue"]["reason"] for o in view["obligations"] if o["untrue"]] == [
        "快报内容与事实不符"
    ]
    assert [r["channel"] for r in view["uncleared_releases"]] == ["个人微博"]
    again = await client.post(
        "/archive/v1/obligations/inc-s-phone_quick_report/untrue",
        json={"reason": "再次"},
        headers=office,
    )
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_marked_untrue")

    period = {
        "from": (T0 - timedelta(hours=1)).isoformat(),
        "to": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    body = (await client.get("/archive/v1/assessment", params=period, headers=office)).json()
    people = {p["person_id"]: p["counts"] for p in body["people"]}
    assert (people["spokesperson-sun"]["untrue"], people["spokesperson-sun"]["on_time"]) == (1, 0)
    assert people["spokesperson-sun"]["uncleared_release"] == 1
    assert people["monitor-chen"]["commendation"] == 1
    report = await client.get("/archive/v1/assessment/report", params=period, headers=office)
    assert report.text.startswith("# 网络舆情处置考评报告（")
    assert "### 谎报（1）" in report.text
