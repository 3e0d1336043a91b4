"""The archive's MongoDB side: the global log with its per-incident hash chains, and the
incident views folded from it.

Collections of the archive database:
- `log`: every consumed event once (`_id` = event_id), the envelope as received under
  `envelope`, a global ingest `seq`, and its `position`, `prev_hash` and `hash` in its
  incident's chain; a few envelope fields are copied beside it for querying.
- `chains`: one head per incident (`length`, `head` hash), so a deleted tail is noticed.
- `incidents`: the current view of each incident, refolded from the log on every event of
  that incident, with the list's filter and sort fields beside it. Disposable: `rebuild`
  makes it again from the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.archive.domain import (
    GENESIS,
    ChainLink,
    ChainReport,
    IncidentView,
    Logged,
    fold,
    incident_summary,
    link_hash,
    unmet_deadlines,
    verify_chain,
)
from shared.events import Envelope, utcnow
from shared.store import COUNTERS, ConcurrencyConflict, Document

LOG = "log"
CHAINS = "chains"
VIEWS = "incidents"
_LOG_SEQ = "log"


async def ensure_indexes(db: AsyncDatabase[Document]) -> None:
    log = db[LOG]
    await log.create_index([("seq", ASCENDING)], unique=True, name="ingest_seq_unique")
    await log.create_index(
        [("incident_id", ASCENDING), ("position", ASCENDING)],
        unique=True,
        name="chain_position_unique",
    )
    await log.create_index([("occurred_at", ASCENDING)])
    views = db[VIEWS]
    await views.create_index([("sort_at", DESCENDING), ("_id", DESCENDING)], name="list_order")
    for field in ("unit_ids", "level", "category", "status", "filed_by", "due"):
        await views.create_index([(field, ASCENDING)])


async def append_to_log(
    db: AsyncDatabase[Document], event: Envelope, session: AsyncClientSession | None
) -> bool:
    """Store the event at the end of its incident's chain; False if it is stored already."""
    event_id = str(event.event_id)
    if await db[LOG].find_one({"_id": event_id}, {"_id": 1}, session=session):
        return False
    counter = await db[COUNTERS].find_one_and_update(
        {"_id": _LOG_SEQ},
        {"$inc": {"value": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        session=session,
    )
    assert counter is not None
    head = await db[CHAINS].find_one({"_id": event.incident_id}, session=session)
    length = int(head["length"]) if head else 0
    prev = str(head["head"]) if head else GENESIS
    envelope = event.model_dump(mode="json")
    digest = link_hash(prev, envelope)
    document: Document = {
        "_id": event_id,
        "seq": int(counter["value"]),
        "incident_id": event.incident_id,
        "position": length + 1,
        "prev_hash": prev,
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
    try:
        await db[LOG].insert_one(document, session=session)
        # Guarded on the length read above: a concurrent writer makes this a conflict
        # (retried by the consumer) instead of a fork in the chain.
        await db[CHAINS].update_one(
            {"_id": event.incident_id, "length": length},
            {"$set": {"length": length + 1, "head": digest}},
            upsert=True,
            session=session,
        )
    except DuplicateKeyError as exc:
        raise ConcurrencyConflict(f"chain-{event.incident_id}", length) from exc
    return True


async def load_log(
    db: AsyncDatabase[Document], incident_id: str, session: AsyncClientSession | None = None
) -> list[Logged]:
    cursor = db[LOG].find({"incident_id": incident_id}, sort=[("seq", ASCENDING)], session=session)
    return [
        Logged(seq=int(doc["seq"]), event=Envelope.model_validate(doc["envelope"]))
        async for doc in cursor
    ]


def _view_document(view: IncidentView, records: Sequence[Logged]) -> Document:
    deadlines = unmet_deadlines(view)
    first_seen = min(r.event.occurred_at for r in records)
    return {
        "_id": view.incident_id,
        "view": view.model_dump(mode="json"),
        "summary": incident_summary(view).model_dump(mode="json"),
        "unit_ids": view.unit_ids,
        "level": int(view.level) if view.level is not None else None,
        "category": view.category.value if view.category is not None else None,
        "status": view.status,
        "title": view.title or "",
        "opened_at": view.opened_at,
        # Until its opening arrives an incident is listed by when it was first heard of.
        "sort_at": view.opened_at or first_seen,
        "filed_by": sorted({r.filed_by for r in view.reports}),
        "due": min(deadlines) if deadlines else None,
        "last_seq": max(r.seq for r in records),
    }


async def refresh_view(
    db: AsyncDatabase[Document],
    incident_id: str,
    session: AsyncClientSession | None = None,
    collection: str = VIEWS,
) -> IncidentView:
    records = await load_log(db, incident_id, session)
    view = fold(incident_id, records)
    await db[collection].replace_one(
        {"_id": incident_id}, _view_document(view, records), upsert=True, session=session
    )
    return view


async def rebuild(db: AsyncDatabase[Document], collection: str = VIEWS) -> int:
    """Refold every incident of the log into `collection`; the number of incidents."""
    incident_ids = await db[LOG].distinct("incident_id")
    for incident_id in incident_ids:
        await refresh_view(db, str(incident_id), collection=collection)
    return len(incident_ids)


async def find_view(
    db: AsyncDatabase[Document], incident_id: str, scope: Document
) -> Document | None:
    return await db[VIEWS].find_one({"_id": incident_id, **scope})


async def list_views(
    db: AsyncDatabase[Document],
    conditions: Sequence[Document],
    limit: int,
    after: tuple[datetime, str] | None,
) -> tuple[list[Document], tuple[datetime, str] | None]:
    """One page, newest first; the key of its last row when more follow."""
    clauses = list(conditions)
    if after is not None:
        sort_at, incident_id = after
        clauses.append(
            {
                "$or": [
                    {"sort_at": {"$lt": sort_at}},
                    {"sort_at": sort_at, "_id": {"$lt": incident_id}},
                ]
            }
        )
    query: Document = {"$and": clauses} if clauses else {}
    cursor = db[VIEWS].find(
        query,
        {"summary": 1, "sort_at": 1},
        sort=[("sort_at", DESCENDING), ("_id", DESCENDING)],
        limit=limit + 1,
    )
    rows = [doc async for doc in cursor]
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], (last["sort_at"], str(last["_id"]))


async def verify(db: AsyncDatabase[Document], incident_id: str) -> ChainReport:
    head = await db[CHAINS].find_one({"_id": incident_id})
    cursor = db[LOG].find({"incident_id": incident_id}, sort=[("position", ASCENDING)])
    links: list[ChainLink] = []
    async for doc in cursor:
        envelope: Any = doc.get("envelope")
        links.append(
            ChainLink(
                position=int(doc.get("position", 0)),
                event_id=str(doc["_id"]),
                envelope=envelope if isinstance(envelope, dict) else {},
                prev_hash=str(doc.get("prev_hash", "")),
                hash=str(doc.get("hash", "")),
            )
        )
    return verify_chain(incident_id, links, int(head["length"]) if head else 0)


async def export(
    db: AsyncDatabase[Document], conditions: Sequence[Document], after: int
) -> AsyncIterator[Document]:
    """Stored events in ingest order from just past `after`, read in batches as they are sent."""
    query: Document = {"$and": [{"seq": {"$gt": after}}, *conditions]}
    cursor = db[LOG].find(query, sort=[("seq", ASCENDING)], batch_size=500)
    async for doc in cursor:
        yield {
            "seq": doc["seq"],
            "position": doc["position"],
            "prev_hash": doc["prev_hash"],
            "hash": doc["hash"],
            "ingested_at": doc["ingested_at"].isoformat(),
            "envelope": doc["envelope"],
        }
