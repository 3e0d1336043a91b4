"""The archive's audit finds an event its log lost after the consumer committed past it,
and records it: on the real broker and database.

The failure it stands for: a database that lost an acknowledged transaction (a crash
before it synced) after the consumer had committed its Kafka offset. Nothing delivers the
event again; the view would say the incident is complete without it. Here the archive
records an incident's opening and grading; an audit runs (it notes what the group has
committed); then the grading's transaction is undone by hand (its log record, its inbox
mark, the chain's head, the view folded without it), as the crash would leave it. The
next audit reads the topics up to what the group had committed at the one before, finds
the grading missing from the log and records it: the view is graded again, the chain
checks, the event is logged once, and the audit's record names it. (The loop runs the
same pass every YUQING_ARCHIVE_AUDIT_SECONDS; here the passes are run by the test.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from services.archive import projections
from services.archive.audit import AUDIT, Audit
from services.archive.bootstrap import ArchiveParts
from services.archive.bootstrap import build as build_archive
from shared.bus import consumer_name, ensure_topics
from shared.clock import utcnow
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from shared.store import INBOX, UnitOfWork
from tests.service.upstream_events import bearer, client, feed, graded, opened, wait_for

pytestmark = pytest.mark.asyncio

INCIDENT = "inc-audited"


@pytest.fixture
async def archive(settings: Settings) -> AsyncIterator[ServiceRunner[ArchiveParts]]:
    audited = settings.model_copy(update={"archive_audit_seconds": 3600})
    await ensure_topics(audited)
    runner = ServiceRunner.connect("archive", build_archive, Context.from_settings(audited))
    await runner.start()
    yield runner
    await runner.stop()


async def view(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    r = await http.get(f"/archive/v1/incidents/{INCIDENT}", headers=headers)
    return r.json() if r.status_code == 200 else {}


def healed_on(topic: str) -> float:
    value = REGISTRY.get_sample_value("yuqing_archive_healed_events_total", {"topic": topic})
    return value or 0.0


async def test_an_event_lost_after_the_offset_was_committed_is_found_and_recorded(
    settings: Settings, archive: ServiceRunner[ArchiveParts]
) -> None:
    admin = bearer(settings, "admin", "county", "admin")
    first, grade = opened(INCIDENT), graded(INCIDENT, 2)
    grading_topic = settings.topic(grade.topic)
    healed_before = healed_on(grading_topic)
    db = archive.db
    async with client(archive) as http:
        await feed(settings, first)  # the opening first: the grading is the chain's last link

        async def opened_logged() -> bool:
            return bool(await view(http, admin))

        await wait_for(opened_logged, within=60)
        await feed(settings, grade)
        audit = Audit(archive.parts.views, archive.store, archive.settings, utcnow)

        async def both_logged_and_committed() -> bool:
            # Recorded, and the group's offsets past both (as the audit notes them).
            if (await view(http, admin)).get("level") != 2:
                return False
            clean = await audit.run_once()
            assert clean.healed == [], "nothing is missing yet"
            noted = await db[AUDIT].find_one({"_id": "marks"}) or {}
            return sum(sum(p.values()) for p in noted.get("stops", {}).values()) >= 2

        await wait_for(both_logged_and_committed, within=60)

        # The grading's transaction undone, as a crash of the database would leave it.
        lost = str(grade.event_id)
        kept = await db[projections.LOG].find_one({"_id": str(first.event_id)})
        assert kept is not None

        async def undo(uow: UnitOfWork) -> None:
            await db[projections.LOG].delete_one({"_id": lost}, session=uow.session)
            await db[INBOX].delete_one(
                {"_id": f"{consumer_name('archive')}:{lost}"}, session=uow.session
            )
            await db[projections.CHAINS].update_one(
                {"_id": INCIDENT},
                {"$set": {"length": 1, "head": kept["hash"]}},
                session=uow.session,
            )
            await archive.parts.views.refresh(uow, INCIDENT)

        await archive.store.transaction(undo)
        assert (await view(http, admin)).get("level") is None

        found = await audit.run_once()
        assert found.healed == [f"{grade.event_type} {lost}"]
        assert (await view(http, admin)).get("level") == 2
        verified = (
            await http.get(f"/archive/v1/incidents/{INCIDENT}/verify", headers=admin)
        ).json()
        # What the audit found is shown to an administrator, never to a monitor.
        shown = await http.get("/archive/v1/audit", headers=admin)
        monitor = bearer(settings, "monitor-chen", "school-a", "monitor")
        refused = await http.get("/archive/v1/audit", headers=monitor)

    assert await db[projections.LOG].count_documents({"_id": lost}) == 1
    assert await db[projections.LOG].count_documents({"incident_id": INCIDENT}) == 2
    assert verified["ok"] is True, verified
    assert healed_on(grading_topic) == healed_before + 1
    noted = await db[AUDIT].find_one({"_id": "marks"})
    assert noted is not None
    assert noted["last"]["healed"] == found.healed
    assert shown.status_code == 200, shown.text
    assert shown.json()["last"]["healed"] == found.healed
    assert shown.json()["healed_total"] == 1
    assert shown.json()["checked_up_to"][grading_topic], shown.json()
    assert refused.status_code == 403, refused.text
    again = await Audit(archive.parts.views, archive.store, archive.settings, utcnow).run_once()
    assert again.healed == []
    print(f"injected: {grade.event_type} {lost} undone after its offset was committed")
    print(f"checked: the next audit read {found.read} records and recorded it, once")
