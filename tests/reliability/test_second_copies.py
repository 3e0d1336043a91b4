"""A producer fault: one stored event relayed twice under two event_ids (the same stream
position). The archive keeps the first, records the second as a producer fault, and
counts nothing twice. Fast: the archive on the in-memory fakes."""

from __future__ import annotations

import uuid

import pytest

from services.archive.bootstrap import build
from services.archive.projections import LOG, PRODUCER_FAULTS
from tests.fakes.harness import fake_service
from tests.unit.test_archive_service import NOW, Story

pytestmark = pytest.mark.asyncio


async def test_a_second_copy_of_a_stream_position_is_a_producer_fault_not_a_second_report() -> None:
    story = Story("inc-twice", "school-a").opened()
    received = story.events[0]
    assert received.event_type == "ReportReceived"
    copy = received.model_copy(update={"event_id": uuid.uuid4()})

    async with fake_service("archive", build, clock=lambda: NOW) as archive:
        await archive.consume(*story.events)
        admin = archive.token("admin", "county", "admin")
        async with archive.http() as api:
            before = (await api.get("/archive/v1/incidents/inc-twice", headers=admin)).json()
            await archive.consume(copy)
            await archive.consume(copy)  # and that copy redelivered
            await archive.consume(received)  # an exact duplicate, as ever
            after = (await api.get("/archive/v1/incidents/inc-twice", headers=admin)).json()
            verified = (
                await api.get("/archive/v1/incidents/inc-twice/verify", headers=admin)
            ).json()
        logged = await archive.db[LOG].count_documents({"incident_id": "inc-twice"})
        faults = [doc async for doc in archive.db[PRODUCER_FAULTS].find({})]
        dead = archive.dead_letters

    print(
        f"injected: {received.event_type} at {received.stream_id} v{received.stream_version} "
        f"again under event_id {copy.event_id} (twice), and the original once more"
    )
    print(f"checked: {logged} events logged, {len(after['reports'])} report, faults {len(faults)}")
    assert logged == len(story.events)
    assert after == before
    assert len(after["reports"]) == 1
    assert (verified["ok"], verified["length"]) == (True, len(story.events)), verified
    assert [(f["_id"], f["kept_event_id"]) for f in faults] == [
        (str(copy.event_id), str(received.event_id))
    ]
    assert (faults[0]["stream_id"], faults[0]["stream_version"]) == (
        received.stream_id,
        received.stream_version,
    )
    assert dead == []
