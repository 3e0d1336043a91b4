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
- `cases`: the case library, one entry per archived incident, written with its view.
- `read_models`: the pointer naming the collections the API reads (`incidents`, `cases` at
  first) and, while a replay runs, the fresh ones it is building; `replay_jobs` its progress.

Replay folds the whole log into fresh collections while the API keeps reading the old ones.
Meanwhile every refresh writes to both, so an event ingested during the replay is not lost
when the pointer moves; the replay's own bulk writes never replace a view folded from more
of the log than it saw (`last_seq`), so the two writers cannot step back each other's work.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING, ReplaceOne, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.archive.cases import case_record
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
CASES = "cases"
READ_MODELS = "read_models"
REPLAY_JOBS = "replay_jobs"
_LOG_SEQ = "log"
_POINTER = "current"
_DUPLICATE_KEY = 11000


class ReadModels(BaseModel):
    """Names of one set of read-model collections."""

    incidents: str = VIEWS
    cases: str = CASES


class ReplayJob(BaseModel):
    job_id: str
    state: Literal["running", "completed", "failed"]
    processed: int = 0  # incidents folded so far
    total: int = 0  # incidents in the log when the replay started
    started_at: datetime
    finished_at: datetime | None = None
    collections: ReadModels
    requested_by: str
    error: str | None = None


class ReplayRunning(Exception):
    """Only one replay at a time: a second would race the first for the pointer."""


async def ensure_indexes(db: AsyncDatabase[Document]) -> None:
    await db[READ_MODELS].update_one(
        {"_id": _POINTER},
        {"$setOnInsert": {**ReadModels().model_dump(), "building": None}},
        upsert=True,
    )
    log = db[LOG]
    await log.create_index([("seq", ASCENDING)], unique=True, name="ingest_seq_unique")
    await log.create_index(
        [("incident_id", ASCENDING), ("position", ASCENDING)],
        unique=True,
        name="chain_position_unique",
    )
    await log.create_index([("occurred_at", ASCENDING)])
    await ensure_read_model_indexes(db, await current_models(db))


async def ensure_read_model_indexes(db: AsyncDatabase[Document], models: ReadModels) -> None:
    for name, fields in (
        (models.incidents, ("unit_ids", "level", "category", "status", "filed_by", "due")),
        (models.cases, ("unit_ids", "level", "category", "opened_at")),
    ):
        collection = db[name]
        await collection.create_index(
            [("sort_at", DESCENDING), ("_id", DESCENDING)], name="list_order"
        )
        for field in fields:
            await collection.create_index([(field, ASCENDING)])


async def current_models(
    db: AsyncDatabase[Document], session: AsyncClientSession | None = None
) -> ReadModels:
    """The collections the API reads now."""
    pointer = await db[READ_MODELS].find_one({"_id": _POINTER}, session=session)
    return ReadModels.model_validate(pointer) if pointer else ReadModels()


async def _written_models(
    db: AsyncDatabase[Document], session: AsyncClientSession | None
) -> list[ReadModels]:
    """Where a refresh writes: the current collections and those a replay is building."""
    pointer = await db[READ_MODELS].find_one({"_id": _POINTER}, session=session)
    if pointer is None:
        return [ReadModels()]
    models = [ReadModels.model_validate(pointer)]
    if pointer.get("building"):
        models.append(ReadModels.model_validate(pointer["building"]))
    return models


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


def _case_document(view: IncidentView, last_seq: int) -> Document | None:
    case = case_record(view)
    if case is None:
        return None
    return {
        "_id": case.case_id,
        "case": case.model_dump(mode="json"),
        "incident_id": view.incident_id,
        "unit_ids": case.unit_ids,
        "level": int(case.level) if case.level is not None else None,
        "category": case.category.value if case.category is not None else None,
        "opened_at": case.opened_at,
        # What a text search looks through: the title and the review's summary.
        "text": "\n".join(
            [case.title or "", case.review.cause, case.review.handling, case.review.lessons]
        ),
        "sort_at": case.archived_at,
        "last_seq": last_seq,
    }


def _model_writes(
    incident_id: str, records: Sequence[Logged]
) -> tuple[IncidentView, Document, Document | None]:
    view = fold(incident_id, records)
    document = _view_document(view, records)
    return view, document, _case_document(view, document["last_seq"])


async def refresh_view(
    db: AsyncDatabase[Document], incident_id: str, session: AsyncClientSession | None = None
) -> IncidentView:
    records = await load_log(db, incident_id, session)
    view, document, case = _model_writes(incident_id, records)
    for models in await _written_models(db, session):
        await db[models.incidents].replace_one(
            {"_id": incident_id}, document, upsert=True, session=session
        )
        if case is not None:
            await db[models.cases].replace_one(
                {"_id": case["_id"]}, case, upsert=True, session=session
            )
        else:  # reopened after archiving: no longer a case until reviewed again
            await db[models.cases].delete_many({"incident_id": incident_id}, session=session)
    return view


async def rebuild(db: AsyncDatabase[Document]) -> int:
    """Refold every incident of the log into the current collections; how many incidents."""
    incident_ids = await db[LOG].distinct("incident_id")
    for incident_id in incident_ids:
        await refresh_view(db, str(incident_id))
    return len(incident_ids)


# --------------------------------------------------------------------------- replay


async def start_replay(db: AsyncDatabase[Document], requested_by: str) -> ReplayJob:
    """Claim the pointer for a new set of collections; ReplayRunning if one is building."""
    job_id = uuid.uuid4().hex[:12]
    target = ReadModels(incidents=f"{VIEWS}_{job_id}", cases=f"{CASES}_{job_id}")
    # Made before they are named in the pointer, so that no refresh creates them inside its
    # transaction (which older MongoDB servers refuse).
    await ensure_read_model_indexes(db, target)
    claimed = await db[READ_MODELS].update_one(
        {"_id": _POINTER, "building": None},
        {"$set": {"building": target.model_dump(), "job_id": job_id}},
    )
    if claimed.modified_count != 1:
        await _drop(db, target)
        raise ReplayRunning("a replay is running already")
    job = ReplayJob(
        job_id=job_id,
        state="running",
        started_at=utcnow(),
        collections=target,
        requested_by=requested_by,
    )
    await db[REPLAY_JOBS].insert_one({"_id": job_id, **job.model_dump()})
    return job


async def replay_job(db: AsyncDatabase[Document], job_id: str) -> ReplayJob | None:
    found = await db[REPLAY_JOBS].find_one({"_id": job_id})
    return ReplayJob.model_validate(found) if found else None


async def _bulk_replace(
    db: AsyncDatabase[Document], collection: str, documents: Iterable[Document]
) -> None:
    """Upsert each document unless the stored one was folded from more of the log."""
    writes = [
        ReplaceOne({"_id": d["_id"], "last_seq": {"$lte": d["last_seq"]}}, d, upsert=True)
        for d in documents
    ]
    if not writes:
        return
    try:
        await db[collection].bulk_write(writes, ordered=False)
    except BulkWriteError as exc:
        # A duplicate _id means the filter missed a newer document a refresh wrote: keep it.
        if any(e.get("code") != _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise


async def run_replay(db: AsyncDatabase[Document], job_id: str, batch_size: int) -> ReplayJob:
    """Fold the log into the job's collections in batches, then point the API at them."""
    job = await replay_job(db, job_id)
    assert job is not None, f"replay job {job_id} was not started"
    target = job.collections
    try:
        incident_ids = sorted(str(i) for i in await db[LOG].distinct("incident_id"))
        await db[REPLAY_JOBS].update_one({"_id": job_id}, {"$set": {"total": len(incident_ids)}})
        for start in range(0, len(incident_ids), batch_size):
            batch = incident_ids[start : start + batch_size]
            logs: dict[str, list[Logged]] = {incident_id: [] for incident_id in batch}
            cursor = db[LOG].find({"incident_id": {"$in": batch}}, sort=[("seq", ASCENDING)])
            async for doc in cursor:
                logs[doc["incident_id"]].append(
                    Logged(seq=int(doc["seq"]), event=Envelope.model_validate(doc["envelope"]))
                )
            written = [_model_writes(i, records) for i, records in logs.items() if records]
            await _bulk_replace(db, target.incidents, (w[1] for w in written))
            # A case goes in only beside the view it came from: if a refresh has meanwhile
            # written a newer view, that refresh has also written (or removed) the case.
            stored = {
                doc["_id"]: doc["last_seq"]
                async for doc in db[target.incidents].find({"_id": {"$in": batch}}, {"last_seq": 1})
            }
            cases = (
                c for _, v, c in written if c is not None and stored[v["_id"]] == v["last_seq"]
            )
            await _bulk_replace(db, target.cases, cases)
            await db[REPLAY_JOBS].update_one({"_id": job_id}, {"$inc": {"processed": len(batch)}})
        old = await current_models(db)
        await db[READ_MODELS].update_one(
            {"_id": _POINTER},
            {"$set": {**target.model_dump(), "building": None, "job_id": None}},
        )
    except Exception as exc:
        await _abandon(db, job_id, target, f"{type(exc).__name__}: {exc}")
        raise
    await db[REPLAY_JOBS].update_one(
        {"_id": job_id}, {"$set": {"state": "completed", "finished_at": utcnow()}}
    )
    # The old collections are served no more once the pointer has moved.
    await _drop(db, old)
    finished = await replay_job(db, job_id)
    assert finished is not None
    return finished


async def _abandon(
    db: AsyncDatabase[Document], job_id: str, target: ReadModels, reason: str
) -> None:
    await db[READ_MODELS].update_one(
        {"_id": _POINTER, "job_id": job_id}, {"$set": {"building": None, "job_id": None}}
    )
    await db[REPLAY_JOBS].update_one(
        {"_id": job_id}, {"$set": {"state": "failed", "error": reason, "finished_at": utcnow()}}
    )
    await _drop(db, target)


async def _drop(db: AsyncDatabase[Document], models: ReadModels) -> None:
    await db.drop_collection(models.incidents)
    await db.drop_collection(models.cases)


async def abandon_interrupted_replays(db: AsyncDatabase[Document]) -> None:
    """A replay runs inside the archive process: one still `running` at start-up died with
    the process that ran it, and would otherwise block every later replay.
    """
    async for doc in db[REPLAY_JOBS].find({"state": "running"}):
        job = ReplayJob.model_validate(doc)
        await _abandon(db, job.job_id, job.collections, "interrupted: the archive restarted")


# --------------------------------------------------------------------------- reads


async def find_view(
    db: AsyncDatabase[Document], incident_id: str, scope: Document
) -> Document | None:
    models = await current_models(db)
    return await db[models.incidents].find_one({"_id": incident_id, **scope})


async def find_case(db: AsyncDatabase[Document], case_id: str, scope: Document) -> Document | None:
    models = await current_models(db)
    return await db[models.cases].find_one({"_id": case_id, **scope})


async def scan_views(
    db: AsyncDatabase[Document], conditions: Sequence[Document]
) -> AsyncIterator[IncidentView]:
    """Every view matching `conditions`, fetched from the server in batches."""
    models = await current_models(db)
    query: Document = {"$and": list(conditions)} if conditions else {}
    async for doc in db[models.incidents].find(query, {"view": 1}, batch_size=200):
        yield IncidentView.model_validate(doc["view"])


async def list_page(
    db: AsyncDatabase[Document],
    kind: Literal["incidents", "cases"],
    conditions: Sequence[Document],
    limit: int,
    after: tuple[datetime, str] | None,
) -> tuple[list[Document], tuple[datetime, str] | None]:
    """One page of incidents or cases, newest first; the key of its last row when more
    follow."""
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
    models = await current_models(db)
    cursor = db[getattr(models, kind)].find(
        query,
        {"summary": 1, "case": 1, "sort_at": 1},
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
