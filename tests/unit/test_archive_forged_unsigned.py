"""An event written straight into the archive's store without any signature field, its
hash recomputed and the chain's head moved (the probe of issue 11, p12c.py): `verify` names
it, whatever its seq, and a replay leaves it out, on a fresh archive and on one upgraded
with a log from before signing (whose own unsigned events stay trusted: the archive sealed
them when signing began)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from services.archive.bootstrap import build
from services.archive.domain import link_hash
from services.archive.projections import CHAINS, LOG, READ_MODELS
from tests.fakes.harness import FakeService, fake_service
from tests.fakes.mongo import FakeMongo
from tests.unit.test_archive_service import Story

pytestmark = pytest.mark.asyncio

INCIDENT = "inc-p12c"


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.01)


async def forge(archive: FakeService, seq: int) -> str:
    """p12c.py: an IncidentResolved after the chain's last event, no producer or signature
    keys at all, its hash over the head, the head and length moved."""
    db = archive.db
    head = await db[CHAINS].find_one({"_id": INCIDENT})
    last = await db[LOG].find_one({"incident_id": INCIDENT}, sort=[("position", -1)])
    assert head is not None
    assert last is not None
    now = datetime.now(UTC)
    stamp = now.isoformat().replace("+00:00", "Z")
    envelope = dict(last["envelope"])
    envelope.update(
        event_id=str(uuid.uuid4()),
        event_type="IncidentResolved",
        stream_version=last["envelope"]["stream_version"] + 1,
        occurred_at=stamp,
        recorded_at=stamp,
        actor={"type": "person", "id": "office-li", "unit_id": "county"},
        payload={"reason": "库内伪造（无签名字段）"},
        schema_version=1,
    )
    digest = link_hash(head["head"], envelope)
    await db[LOG].insert_one(
        {
            "_id": envelope["event_id"],
            "seq": seq,
            "incident_id": INCIDENT,
            "position": head["length"] + 1,
            "prev_hash": head["head"],
            "hash": digest,
            "envelope": envelope,
            "event_type": "IncidentResolved",
            "topic": "intake.events",
            "unit_id": envelope["unit_id"],
            "stream_id": envelope["stream_id"],
            "stream_version": envelope["stream_version"],
            "occurred_at": now,
            "ingested_at": now,
        }
    )
    await db[CHAINS].update_one(
        {"_id": INCIDENT}, {"$set": {"length": head["length"] + 1, "head": digest}}
    )
    return str(envelope["event_id"])


async def replayed(api: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Any]:
    started = await api.post("/archive/v1/replay", json={}, headers=admin)
    assert started.status_code == 202, started.text
    url = f"/archive/v1/replay/{started.json()['job_id']}"

    async def done() -> bool:
        return bool((await api.get(url, headers=admin)).json()["state"] != "running")

    await until(done)
    job: dict[str, Any] = (await api.get(url, headers=admin)).json()
    return job


async def checked(archive: FakeService, forged: list[str], trusted: int, events: int) -> None:
    """verify names each forgery as unsigned, the replay folds none of them."""
    admin = archive.token("admin", "county", "admin")
    async with archive.http() as api:
        report = (await api.get(f"/archive/v1/incidents/{INCIDENT}/verify", headers=admin)).json()
        job = await replayed(api, admin)
        view = (await api.get(f"/archive/v1/incidents/{INCIDENT}", headers=admin)).json()

    assert report["ok"] is False
    assert report["unsigned_before_signing"] == trusted
    named = {f["event_id"]: f["reason"] for f in report["failures"]}
    assert set(named) == set(forged)
    assert all(r.startswith("unsigned event written after signing began") for r in named.values())
    assert (job["state"], sorted(job["not_folded"])) == ("completed", sorted(forged))
    assert view["status"] == "open"
    assert view["event_count"] == events


@pytest.mark.parametrize("seq", [-1, 0])
async def test_the_p12c_forgery_is_named_by_verify_and_not_folded_on_a_fresh_archive(
    seq: int,
) -> None:
    async with fake_service("archive", build) as archive:
        await archive.consume(*Story(INCIDENT, "school-a").opened().events)

        forged = await forge(archive, seq)

        await checked(
            archive, [forged], trusted=0, events=await archive.db[LOG].count_documents({}) - 1
        )


async def test_on_an_upgraded_archive_forgeries_are_named_and_its_old_events_kept() -> None:
    mongo = FakeMongo()
    async with fake_service("archive", build, mongo=mongo) as before:
        await before.consume(*Story(INCIDENT, "school-a").opened().events)
        # As an archive logged before it recorded signatures: no signature fields, no mark.
        await before.db[LOG].update_many({}, {"$unset": {"producer": "", "signature": ""}})
        await before.db[READ_MODELS].delete_many({"_id": "signing"})
        logged = await before.db[LOG].count_documents({})

    # The upgrade: the next start seals what the log holds unsigned.
    async with fake_service("archive", build, mongo=mongo) as archive:
        marker = await archive.db[READ_MODELS].find_one({"_id": "signing"})
        assert marker is not None
        assert (marker["from_seq"], marker["sealed"]) == (logged + 1, logged)
        # A seq inside the sealed range: the last sealed event removed, the forgery put at
        # its seq and its place in the chain; then two more at seqs below every real one.
        victim = await archive.db[LOG].find_one({"incident_id": INCIDENT}, sort=[("seq", -1)])
        assert victim is not None
        await archive.db[LOG].delete_one({"_id": victim["_id"]})
        await archive.db[CHAINS].update_one(
            {"_id": INCIDENT},
            {"$set": {"length": victim["position"] - 1, "head": victim["prev_hash"]}},
        )
        forged = [await forge(archive, seq) for seq in (int(victim["seq"]), -1, 0)]

        await checked(archive, forged, trusted=logged - 1, events=logged - 1)
