"""An archive upgraded with its log: what it logged before it recorded signatures is sealed
by the archive when signing begins (a seal made with a key derived from the bus secret) and
still folded, its hash chain still checked; an unsigned event written into the store after
(whatever its seq) holds no seal, is named by verify and folded nowhere."""

from __future__ import annotations

from typing import Any

from services.archive.domain import GENESIS, link_hash
from services.archive.projections import CHAINS, LOG, READ_MODELS, SEAL, ArchiveViews
from shared.signing import BusKeys
from tests.fakes.mongo import FakeMongo

KEYS = BusKeys(b"a-bus-secret-that-is-long-enough-for-hmac-sha256")
INCIDENT = "inc-old"


def envelope(n: int) -> dict[str, Any]:
    return {"event_id": f"e{n}", "event_type": "ReportReceived", "payload": {"n": n}}


def chain(*seqs: int, incident: str = INCIDENT, **fields: Any) -> list[dict[str, Any]]:
    """Log documents as the archive stored them before signing: no signature fields."""
    docs, prev = [], GENESIS
    for position, seq in enumerate(seqs, start=1):
        env = envelope(seq)
        digest = link_hash(prev, env)
        docs.append(
            {
                "_id": f"e{seq}",
                "seq": seq,
                "incident_id": incident,
                "position": position,
                "prev_hash": prev,
                "hash": digest,
                "envelope": env,
                **fields,
            }
        )
        prev = digest
    return docs


async def upgraded(*docs: dict[str, Any]) -> tuple[Any, ArchiveViews]:
    db: Any = FakeMongo().database("fake_archive")
    for doc in docs:
        await log(db, doc)
    views = ArchiveViews(db, keys=KEYS)
    await views.mark_signing_start()
    return db, views


async def log(db: Any, doc: dict[str, Any]) -> None:
    """Store the document at its chain's end, the head moved as the archive moves it."""
    await db[LOG].insert_one(doc)
    head = {"length": doc["position"], "head": doc["hash"]}
    await db[CHAINS].update_one({"_id": doc["incident_id"]}, {"$set": head}, upsert=True)


async def stored(db: Any, event_id: str) -> dict[str, Any]:
    found = await db[LOG].find_one({"_id": event_id})
    assert found is not None
    return dict(found)


def forged_after(docs: list[dict[str, Any]], seq: int, **fields: Any) -> dict[str, Any]:
    """An unsigned event appended to the chain's end, its hash recomputed as the archive
    computes it: what someone with the database's password can write."""
    last = docs[-1]
    env = {"event_id": "forged", "event_type": "IncidentResolved", "payload": {"reason": "伪造"}}
    return {
        "_id": "forged",
        "seq": seq,
        "incident_id": last["incident_id"],
        "position": last["position"] + 1,
        "prev_hash": last["hash"],
        "hash": link_hash(last["hash"], env),
        "envelope": env,
        **fields,
    }


async def test_events_logged_before_signing_are_sealed_once_and_stay_trusted() -> None:
    old = chain(1, 2, 3)
    db, views = await upgraded(*old)
    sealed = [await stored(db, d["_id"]) for d in old]
    marker = await db[READ_MODELS].find_one({"_id": "signing"})

    await views.mark_signing_start()  # every later start keeps the first mark
    again = await db[READ_MODELS].find_one({"_id": "signing"})
    report = await views.verify(INCIDENT)

    assert all(isinstance(d[SEAL], str) for d in sealed)
    assert all(views.signed(d) and views.before_signing(d) for d in sealed)
    assert (marker["from_seq"], marker["sealed"]) == (4, 3)
    assert again == marker
    assert (report.ok, report.length, report.unsigned_before_signing) == (True, 3, 3)


async def test_an_unsigned_event_written_after_signing_began_is_named_whatever_its_seq() -> None:
    old = chain(1, 2, 3)
    for seq in (-1, 0, 2, 4, 99):
        db, views = await upgraded(*old)
        forged = forged_after(old, seq)
        if seq == 2:  # a seq inside the sealed range: the stored event at 2 rewritten
            rewritten = {**forged["envelope"], "event_id": "e2"}
            forged = {**forged, "_id": "e2", "envelope": rewritten, "position": 2}
            forged["prev_hash"] = old[0]["hash"]
            forged["hash"] = link_hash(old[0]["hash"], rewritten)
            await db[LOG].delete_one({"_id": "e2"})
            await db[LOG].insert_one(forged)
        else:
            await log(db, forged)
        report = await views.verify(INCIDENT)

        assert not views.signed(await stored(db, forged["_id"])), seq
        reasons = [f.reason for f in report.failures]
        assert any(r.startswith("unsigned event written after signing began") for r in reasons), (
            seq,
            reasons,
        )


async def test_a_seal_holds_for_its_own_event_only() -> None:
    old = chain(1, 2)
    db, views = await upgraded(*old)
    first = await stored(db, "e1")
    # The seal of a stored event copied onto a forgery, or the sealed event altered.
    copied = {**forged_after(old, 5), SEAL: first[SEAL]}
    altered = {**first, "envelope": {**first["envelope"], "payload": {"n": 100}}}
    moved = {**first, "seq": 7}

    for doc in (copied, altered, moved):
        assert not views.before_signing(doc)
        assert not views.signed(doc)
    await log(db, copied)
    [failure] = (await views.verify(INCIDENT)).failures
    assert failure.event_id == "forged"
    assert "archive's seal" in failure.reason
    assert "does not hold" in failure.reason


async def test_a_fresh_archive_seals_nothing_and_trusts_no_unsigned_event() -> None:
    db, views = await upgraded()
    forged = forged_after(chain(1), 1)

    assert (await db[READ_MODELS].find_one({"_id": "signing"}))["sealed"] == 0
    assert not views.signed(forged)
    # Written with an empty signature field, as a delivery without headers would be.
    assert not views.signed({**chain(1)[0], "signature": None, "producer": "intake"})


async def test_a_mark_removed_or_altered_seals_no_event_written_after_signing_began() -> None:
    old = chain(1, 2)
    signed = chain(3, incident="inc-new", producer="intake", signature="sha256=00")
    db, views = await upgraded(*old, *signed)
    for forged_seq in (-1, 0, 9):
        await db[LOG].delete_many({"_id": "forged"})
        await log(db, forged_after(old, forged_seq))
        for change in (
            {"$set": {"from_seq": 100, "sealed": 9}},  # moved on, its seal left
            {"$set": {"from_seq": 100}, "$unset": {"seal": ""}},  # as an older archive's
        ):
            await db[READ_MODELS].update_one({"_id": "signing"}, change)
            await views.mark_signing_start()  # the next start
            assert not views.signed(await stored(db, "forged")), (forged_seq, change)
        await db[READ_MODELS].delete_many({"_id": "signing"})
        await views.mark_signing_start()
        assert not views.signed(await stored(db, "forged")), forged_seq
        assert views.signed(await stored(db, "e2"))


async def test_an_archive_marked_by_an_older_version_seals_what_it_logged_before_the_mark() -> None:
    # The version before seals recorded only where signing began: {from_seq}.
    old = chain(1, 2)
    db: Any = FakeMongo().database("fake_archive")
    for doc in (*old, forged_after(old, -1)):
        await log(db, doc)
    await db[READ_MODELS].insert_one({"_id": "signing", "from_seq": 3})
    views = ArchiveViews(db, keys=KEYS)

    await views.mark_signing_start()

    assert views.signed(await stored(db, "e1"))
    assert views.signed(await stored(db, "e2"))
    assert not views.signed(await stored(db, "forged"))
