"""Forged, unsigned and misplaced events produced straight onto Kafka, against the real
broker and database: the archive and notification consumers dead-letter each with the
reason and none of them changes anything; and an event written straight into the
archive's store, its hash recomputed, is named by `verify` for its signature."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.archive import projections
from services.archive.bootstrap import ArchiveParts
from services.archive.bootstrap import build as build_archive
from services.archive.domain import link_hash
from services.notification.bootstrap import NotificationParts
from services.notification.bootstrap import build as build_notification
from services.notification.dispatch import DELIVERIES, PENDING
from shared.bus import bus_keys, ensure_topics, signed_headers
from shared.events import (
    DEAD_LETTER_TOPIC,
    INTAKE_TOPIC,
    DeadlineMissed,
    Envelope,
    utcnow,
)
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from shared.signing import BusKeys
from tests.service.upstream_events import (
    GRADER,
    bearer,
    client,
    feed,
    graded,
    opened,
    resolved,
    wait_for,
)

pytestmark = pytest.mark.asyncio

INCIDENT = "inc-forged"
ATTACKER = BusKeys(b"the-attackers-own-secret-long-enough-to-sign-with")


@pytest.fixture
async def archive(settings: Settings) -> AsyncIterator[ServiceRunner[ArchiveParts]]:
    await ensure_topics(settings)
    runner = ServiceRunner.connect("archive", build_archive, Context.from_settings(settings))
    await runner.start()
    yield runner
    await runner.stop()


@pytest.fixture
async def notification(
    settings: Settings, archive: ServiceRunner[ArchiveParts]
) -> AsyncIterator[ServiceRunner[NotificationParts]]:
    runner = ServiceRunner.connect(
        "notification", build_notification, Context.from_settings(settings)
    )
    await runner.start()
    yield runner
    await runner.stop()


async def archive_view(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    r = await http.get(f"/archive/v1/incidents/{INCIDENT}", headers=headers)
    return r.json() if r.status_code == 200 else {}


async def open_duties(http: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = await http.get(f"/notifications/v1/obligations?incident_id={INCIDENT}", headers=headers)
    assert r.status_code == 200, r.text
    return [o for o in r.json()["obligations"] if o["state"] == "open"]


def headers_of(signed: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(name, value.encode()) for name, value in signed.items()]


async def dead_letters(settings: Settings, expected: int) -> dict[tuple[str, str], str]:
    """(consumer, event_id) -> reason of each dead-lettered message, once `expected` came."""
    reader = AIOKafkaConsumer(
        settings.topic(DEAD_LETTER_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"{settings.db_prefix}-dlq-reader",
    )
    await reader.start()
    found: dict[tuple[str, str], str] = {}
    try:
        async with asyncio.timeout(30):
            while len(found) < expected:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    for record in records:
                        letter = json.loads(record.value)
                        event_id = json.loads(letter["message"])["event_id"]
                        found[(letter["consumer"], event_id)] = letter["reason"]
    finally:
        await reader.stop()
    return found


async def test_forged_unsigned_and_misplaced_events_are_dead_lettered_and_change_nothing(
    settings: Settings,
    archive: ServiceRunner[ArchiveParts],
    notification: ServiceRunner[NotificationParts],
) -> None:
    admin = bearer(settings, "admin", "county", "admin")
    office = bearer(settings, "office-li", "county", "office")
    await feed(settings, opened(INCIDENT), graded(INCIDENT, 2))
    async with client(archive) as archive_http, client(notification) as notification_http:
        deliveries = notification.parts.store.db[DELIVERIES]

        async def graded_and_owed() -> bool:
            # Graded, the duty opened and its opening (notification's event) archived, and
            # every delivery of its page settled and archived (with no channel configured,
            # each a NotificationFailed): nothing of the system's own is still on its way.
            view = await archive_view(archive_http, admin)
            duties = await open_duties(notification_http, office)
            if len(view.get("obligations", ())) != 1 or len(duties) != 1:
                return False
            settled = await deliveries.count_documents({"state": {"$ne": PENDING}})
            pending = await deliveries.count_documents({"state": PENDING})
            told = view["obligations"][0].get("notifications", [])
            return pending == 0 and settled > 0 and len(told) == settled

        await wait_for(graded_and_owed)
        before = await archive_view(archive_http, admin)
        duties_before = await open_duties(notification_http, office)

        keys = bus_keys(settings)
        forged = resolved(INCIDENT)  # IncidentResolved, signed with a key not the system's
        unsigned = resolved(INCIDENT)
        by_grading = resolved(INCIDENT)  # signed, but by a service whose topic it is not
        now = utcnow()
        misplaced = Envelope.new(  # notification's event, produced onto intake's topic
            DeadlineMissed(
                obligation_id=duties_before[0]["obligation_id"],
                kind=duties_before[0]["kind"],
                level=2,
                deadline=now,
                alerted_roles=("leader",),
            ),
            incident_id=INCIDENT,
            stream_id=f"obligations-{INCIDENT}",
            stream_version=9,
            actor=GRADER,
            occurred_at=now,
        )
        sent: list[tuple[Envelope, list[tuple[str, bytes]]]] = [
            (forged, headers_of(signed_headers(forged, "intake", ATTACKER))),
            (unsigned, []),
            # Signed with notification's own key, as notification publishes it, but here.
            (misplaced, headers_of(signed_headers(misplaced, "notification", keys))),
            (by_grading, headers_of(signed_headers(by_grading, "grading", keys))),
        ]
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            for event, headers in sent:
                await producer.send_and_wait(
                    settings.topic(INTAKE_TOPIC),
                    event.to_json(),
                    key=INCIDENT.encode(),
                    headers=headers,
                )
        finally:
            await producer.stop()

        letters = await dead_letters(settings, expected=2 * len(sent))
        after = await archive_view(archive_http, admin)
        duties_after = await open_duties(notification_http, office)
        verified = (
            await archive_http.get(f"/archive/v1/incidents/{INCIDENT}/verify", headers=admin)
        ).json()
    logged = await archive.db[projections.LOG].count_documents(
        {"_id": {"$in": [str(e.event_id) for e, _ in sent]}}
    )

    reasons = [
        (forged, "bad signature: the event is not signed with intake's key"),
        (unsigned, "unsigned event: no yuqing-signature header"),
        (
            misplaced,
            "wrong topic: DeadlineMissed belongs on notification.events, not intake.events",
        ),
        (by_grading, "wrong producer: intake.events carries only intake's events, not grading's"),
    ]
    print(f"injected onto {INCIDENT}'s intake topic: " + "; ".join(r for _, r in reasons))
    assert letters == {
        (consumer, str(event.event_id)): reason
        for event, reason in reasons
        for consumer in ("archive-consumer", "notification-consumer")
    }
    # Nothing changed: the incident is open in the archive, its duty still owed, nothing of
    # the four events logged, and the chain holds.
    assert (after["status"], after["event_count"]) == ("open", before["event_count"])
    assert after == before
    assert [(o["obligation_id"], o["state"], o["closed_reason"]) for o in duties_after] == [
        (o["obligation_id"], "open", None) for o in duties_before
    ]
    assert logged == 0
    assert (verified["ok"], verified["length"], verified["failures"]) == (
        True,
        before["event_count"],
        [],
    )


async def test_verify_names_events_written_into_the_store_with_their_hash_recomputed(
    settings: Settings, archive: ServiceRunner[ArchiveParts]
) -> None:
    analyst = bearer(settings, "analyst-zhao", "county", "analyst")
    await feed(settings, opened(INCIDENT), graded(INCIDENT, 2))
    async with client(archive) as http:

        async def ingested() -> bool:
            return (await archive_view(http, analyst)).get("event_count") == 2

        await wait_for(ingested)
        intact = (
            await http.get(f"/archive/v1/incidents/{INCIDENT}/verify", headers=analyst)
        ).json()
        # The export carries each event's producer and signature: an auditor holding the
        # bus secret checks them outside the system.
        exported = await http.get(
            "/archive/v1/events", params={"incident_id": INCIDENT, "after": 0}, headers=analyst
        )
        lines = [json.loads(line) for line in exported.text.splitlines()]
        keys = bus_keys(settings)

        # Someone with the database's password appends two resolutions at the chain's end,
        # each hash computed as the archive computes it: one with a signature made with a
        # key that is not the system's, one with no signature at all.
        db = archive.db
        written = []
        for signer in (ATTACKER, None):
            head = await db[projections.CHAINS].find_one({"_id": INCIDENT})
            assert head is not None
            last = await db[projections.LOG].find_one(sort=[("seq", -1)])
            assert last is not None
            event = resolved(INCIDENT).model_copy(update={"recorded_at": utcnow()})
            envelope = event.model_dump(mode="json")
            digest = link_hash(head["head"], envelope)
            signature = (
                signer.sign(envelope, topic=INTAKE_TOPIC, producer="intake") if signer else None
            )
            await db[projections.LOG].insert_one(
                {
                    "_id": str(event.event_id),
                    "seq": last["seq"] + 1,
                    "incident_id": INCIDENT,
                    "position": head["length"] + 1,
                    "prev_hash": head["head"],
                    "hash": digest,
                    "envelope": envelope,
                    "producer": "intake",
                    "signature": signature,
                    "event_type": event.event_type,
                    "topic": event.topic,
                    "unit_id": event.unit_id,
                    "stream_id": event.stream_id,
                    "stream_version": event.stream_version,
                    "occurred_at": event.occurred_at,
                    "ingested_at": utcnow(),
                }
            )
            await db[projections.CHAINS].update_one(
                {"_id": INCIDENT}, {"$set": {"length": head["length"] + 1, "head": digest}}
            )
            written.append(str(event.event_id))

        verified = (
            await http.get(f"/archive/v1/incidents/{INCIDENT}/verify", headers=analyst)
        ).json()
        # A rebuild from the log folds neither: the incident stays open, and the replay
        # names what it left out.
        job = await archive.parts.views.run_replay(
            (await archive.parts.views.start_replay("analyst-zhao")).job_id, batch_size=10
        )
        rebuilt = await archive_view(http, analyst)

    print(f"injected: {len(written)} resolutions written into the log, hashes recomputed")
    assert job.state == "completed"
    assert sorted(job.not_folded) == sorted(written)
    assert rebuilt["status"] == "open"
    assert rebuilt["event_count"] == 2
    assert (intact["ok"], intact["length"], intact["failures"]) == (True, 2, [])
    assert sorted((line["producer"], line["envelope"]["event_type"]) for line in lines) == [
        ("grading", "IncidentGraded"),
        ("intake", "IncidentOpened"),
    ]
    for line in lines:
        topic = f"{line['producer']}.events"
        assert keys.signature_holds(
            line["signature"], line["envelope"], topic=topic, producer=line["producer"]
        )
    assert (verified["ok"], verified["length"]) == (False, 4)
    failures = [(f["position"], f["event_id"]) for f in verified["failures"]]
    assert failures == [(3, written[0]), (4, written[1])]
    assert verified["broken"] == verified["failures"][0]
    assert "signature does not hold" in verified["failures"][0]["reason"]
    assert "not signed with intake's key" in verified["failures"][0]["reason"]
    assert "no producer signature" in verified["failures"][1]["reason"]
