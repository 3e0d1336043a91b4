"""The archive's seal of what it logged before signing, against the real broker and
database: an archive whose log holds unsigned events (as one upgraded from before signing)
seals them at its next start and keeps folding them; an event then written straight into
the store with no signature field (the probe of issue 11, p12c.py), at a seq below every
real one, is named by `verify` and left out by a replay."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.archive import projections
from services.archive.bootstrap import ArchiveParts
from services.archive.bootstrap import build as build_archive
from services.archive.domain import link_hash
from shared.bus import ensure_topics
from shared.events import utcnow
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.service.upstream_events import bearer, client, feed, graded, opened, resolved, wait_for

pytestmark = pytest.mark.asyncio

INCIDENT = "inc-sealed"


async def started(settings: Settings) -> ServiceRunner[ArchiveParts]:
    runner = ServiceRunner.connect("archive", build_archive, Context.from_settings(settings))
    await runner.start()
    return runner


async def test_an_upgraded_archive_keeps_its_old_events_and_names_an_unsigned_forgery(
    settings: Settings,
) -> None:
    analyst = bearer(settings, "analyst-zhao", "county", "analyst")
    admin = bearer(settings, "admin", "county", "admin")
    await ensure_topics(settings)
    before = await started(settings)
    try:
        await feed(settings, opened(INCIDENT), graded(INCIDENT, 2))
        async with client(before) as http:

            async def ingested() -> bool:
                r = await http.get(f"/archive/v1/incidents/{INCIDENT}", headers=analyst)
                return r.status_code == 200 and r.json()["event_count"] == 2

            await wait_for(ingested)
        db = before.db
        # As an archive that logged these before it recorded signatures.
        await db[projections.LOG].update_many({}, {"$unset": {"producer": "", "signature": ""}})
        await db[projections.READ_MODELS].delete_many({"_id": "signing"})
    finally:
        await before.stop()

    archive = await started(settings)  # the upgrade
    try:
        db = archive.db
        marker = await db[projections.READ_MODELS].find_one({"_id": "signing"})
        head = await db[projections.CHAINS].find_one({"_id": INCIDENT})
        assert head is not None
        event = resolved(INCIDENT).model_copy(update={"recorded_at": utcnow()})
        envelope = json.loads(event.to_json())
        digest = link_hash(head["head"], envelope)
        await db[projections.LOG].insert_one(
            {
                "_id": str(event.event_id),
                "seq": -1,
                "incident_id": INCIDENT,
                "position": head["length"] + 1,
                "prev_hash": head["head"],
                "hash": digest,
                "envelope": envelope,
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
        async with client(archive) as http:
            report = (
                await http.get(f"/archive/v1/incidents/{INCIDENT}/verify", headers=analyst)
            ).json()
            started_job = await http.post("/archive/v1/replay", json={}, headers=admin)
            assert started_job.status_code == 202, started_job.text
            url = f"/archive/v1/replay/{started_job.json()['job_id']}"
            job: dict[str, Any] = {}

            async def replayed() -> bool:
                nonlocal job
                job = (await http.get(url, headers=admin)).json()
                return bool(job["state"] != "running")

            await wait_for(replayed)
            view = (await http.get(f"/archive/v1/incidents/{INCIDENT}", headers=analyst)).json()
    finally:
        await archive.stop()

    assert marker is not None
    assert (marker["from_seq"], marker["sealed"]) == (3, 2)
    assert (report["ok"], report["length"], report["unsigned_before_signing"]) == (False, 3, 2)
    [failure] = report["failures"]
    assert (failure["position"], failure["event_id"]) == (3, str(event.event_id))
    assert failure["reason"].startswith("unsigned event written after signing began")
    assert (job["state"], job["not_folded"]) == ("completed", [str(event.event_id)])
    assert (view["status"], view["event_count"]) == ("open", 2)
