"""The archive's MongoDB side: the global log with its per-incident hash chains, and the
incident views folded from it.

Collections of the archive database:
- `log`: every consumed event once (`_id` = event_id), the envelope as received under
  `envelope`, a global ingest `seq`, and its `position`, `prev_hash` and `hash` in its
  incident's chain; a few envelope fields are copied beside it for querying. Its producer
  and signature beside it; an event logged before signing began has neither, but the
  archive's seal (`archive_seal`, made when signing began) instead.
- `chains`: one head per incident (`length`, `head` hash), so a deleted tail is noticed.
- `incidents`: the current view of each incident, refolded from the log on every event of
  that incident, with the list's filter, sort and visibility fields beside it. Disposable:
  a replay makes it again from the log.
- `cases`: the case library, one entry per archived incident, written with its view.
- `read_models`: the pointer naming the collections the API reads (`incidents`, `cases` at
  first) and, while a replay runs, the fresh ones it is building; `replay_jobs` its progress.
  Beside it the signing mark (`signing`): where signed logging began, sealed.

Replay folds the whole log into fresh collections while the API keeps reading the old ones.
Meanwhile every refresh writes to both, so an event ingested during the replay is not lost
when the pointer moves; the replay's own writes never replace a view folded from more
of the log than it saw (`last_seq`), so the two writers cannot step back each other's work.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.archive.domain import (
    GENESIS,
    SEAL_CONTEXT,
    ChainLink,
    ChainReport,
    IncidentView,
    Logged,
    fold,
    incident_summary,
    link_hash,
    seal_form,
    signature_problem,
    unmet_deadlines,
    verify_chain,
)
from services.archive.domain.cases import CaseRecord, case_record
from services.archive.listing import ListWindows, aware, flat_query
from shared.clock import Clock, utcnow
from shared.errors import Conflict
from shared.events import Envelope
from shared.handlers import Delivery
from shared.signing import BusKeys, canonical_json
from shared.store import COUNTERS, ConcurrencyConflict, Document, UnitOfWork
from shared.visibility import IncidentScope

LOG = "log"
CHAINS = "chains"
VIEWS = "incidents"
CASES = "cases"
# What the incident list reads: each view's document without the view itself (see
# `_row`). Not named `incidents…`: the console's change feed watches the views.
ROWS = "incident_rows"
READ_MODELS = "read_models"
REPLAY_JOBS = "replay_jobs"
# Events that claimed a stream position the log already holds under another event_id.
PRODUCER_FAULTS = "producer_faults"

logger = structlog.get_logger("yuqing.archive")
_LOG_SEQ = "log"
_POINTER = "current"
# Where signed logging began: {from_seq, sealed, seal}, the archive's seal over the first
# two (sealed: how many unsigned events logged before it the archive sealed then).
_SIGNING = "signing"
# A log document's field holding the archive's seal of an event logged before signing
# began (chain.seal_form): the only unsigned events verify passes and the fold takes.
SEAL = "archive_seal"
_SEAL_BATCH = 500
# How long a read trusts the pointer it last read: a replay's swap is seen within this, or
# at once by the reads that then find nothing where the old collections were.
_POINTER_TTL_SECONDS = 1.0
_DUPLICATE_KEY = 11000


class ReadModels(BaseModel):
    """Names of one set of read-model collections."""

    incidents: str = VIEWS
    cases: str = CASES
    incident_rows: str = ROWS


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
    # Logged events left out of the fold: their producer's signature does not hold.
    not_folded: list[str] = []


class ExportedEvent(BaseModel):
    """One line of the export: a stored event with its place in the log and its chain."""

    seq: int
    position: int
    prev_hash: str
    hash: str
    ingested_at: datetime
    envelope: dict[str, Any]  # the envelope exactly as stored and hashed
    # Who published it and their signature over it (shared/signing.py), as recorded.
    producer: str | None = None
    signature: str | None = None


class ReplayRunning(Conflict):
    """Only one replay at a time: a second would race the first for the pointer."""

    code = "replay_running"


@dataclass(frozen=True)
class StoredIncident:
    """An incident's current view and who may see it."""

    scope: IncidentScope
    view: IncidentView


@dataclass(frozen=True)
class StoredCase:
    scope: IncidentScope
    case: CaseRecord


def _scope(incident_id: str, doc: Document) -> IncidentScope:
    return IncidentScope(
        incident_id, tuple(doc.get("unit_ids") or ()), tuple(doc.get("filed_by") or ())
    )


def _view_document(view: IncidentView, records: Sequence[Logged]) -> Document:
    deadlines = unmet_deadlines(view)
    first_seen = min(r.event.occurred_at for r in records)
    return {
        "_id": view.incident_id,
        "view": view.model_dump(mode="json"),
        "summary": incident_summary(view).model_dump(mode="json"),
        "unit_ids": view.unit_ids,
        "level": int(view.level) if view.level is not None else None,
        "category": str(view.category) if view.category is not None else None,
        "status": view.status.value,
        "title": view.title or "",
        "opened_at": view.opened_at,
        # Until its opening arrives an incident is listed by when it was first heard of.
        "sort_at": view.opened_at or first_seen,
        # Who referred it: a partner sees the incidents it filed a report of.
        "filed_by": view.filed_by,
        "due": min(deadlines) if deadlines else None,
        "last_seq": max(r.seq for r in records),
    }


def _row(document: Document) -> Document:
    """A view's document as the list reads it: everything but the view (about 0.6 of its
    4.5 KB). The embedded server decodes every document a list window holds before the
    limit, so the list reads these, not the views."""
    return {field: value for field, value in document.items() if field != "view"}


def _case_document(view: IncidentView, last_seq: int) -> Document | None:
    case = case_record(view)
    if case is None:
        return None
    return {
        "_id": case.case_id,
        "case": case.model_dump(mode="json"),
        "incident_id": view.incident_id,
        "unit_ids": case.unit_ids,
        "filed_by": view.filed_by,
        "level": int(case.level) if case.level is not None else None,
        "category": str(case.category) if case.category is not None else None,
        "opened_at": case.opened_at,
        # What a text search looks through: the title and the review's summary.
        "text": "\n".join(
            [case.title or "", case.review.cause, case.review.handling, case.review.lessons]
        ),
        "sort_at": case.archived_at,
        "last_seq": last_seq,
    }


def _model_writes(
    incident_id: str, records: Sequence[Logged], embedded_reports: int | None = None
) -> tuple[IncidentView, Document, Document | None]:
    view = fold(incident_id, records, embedded_reports=embedded_reports)
    document = _view_document(view, records)
    case = _case_document(view, document["last_seq"])
    # Whether a case was written beside it: a refresh then knows if there is one to remove.
    document["case_id"] = case["_id"] if case is not None else None
    return view, document, case


def _seal_form(doc: Document) -> bytes | None:
    return seal_form(
        seq=doc.get("seq"),
        incident_id=doc.get("incident_id"),
        position=doc.get("position"),
        prev_hash=doc.get("prev_hash"),
        envelope=doc.get("envelope"),
    )


def _mark_form(mark: Document) -> bytes:
    return b"archive-signing-start:" + canonical_json(mark)


def _logged(doc: Document) -> Logged:
    return Logged(seq=int(doc["seq"]), event=Envelope.model_validate(doc["envelope"]))


class ArchiveViews:
    """The archive's database: the log it records, the views folded from it, the replay."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        clock: Clock = utcnow,
        embedded_reports: int | None = None,
        keys: BusKeys | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.keys = keys  # the producers' keys: verify checks each event's signature
        self.embedded_reports = embedded_reports  # reports kept in a stored view; None: all
        self._served: tuple[ReadModels, float] | None = None  # the pointer, when read
        self._windows = ListWindows(clock)  # how the lists read a page

    async def _served_models(self, *, fresh: bool = False) -> tuple[ReadModels, bool]:
        """The collections the API reads, from the pointer read within the last second
        unless `fresh`; and whether that came from the database just now."""
        now = time.monotonic()
        if not fresh and self._served is not None:
            models, read_at = self._served
            if now - read_at < _POINTER_TTL_SECONDS:
                return models, False
        models = await self.current_models()
        self._served = (models, now)
        return models, True

    # ------------------------------------------------------------------ set-up

    async def ensure_indexes(self) -> None:
        db = self.db
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
        # Not unique: a log stored before the check may hold a second copy already.
        await log.create_index(
            [("topic", ASCENDING), ("stream_id", ASCENDING), ("stream_version", ASCENDING)],
            name="stream_position",
        )
        current = await self.current_models()
        await self._ensure_read_model_indexes(current)
        await self._fill_rows(current)

    async def _fill_rows(self, models: ReadModels) -> None:
        """Views stored before the list had rows of its own get theirs (each unless a newer
        one is there), so that every view is listed."""
        views, rows = self.db[models.incidents], self.db[models.incident_rows]
        if await rows.count_documents({}) >= await views.count_documents({}):
            return
        batch: list[Document] = []
        async for doc in views.find({}, {"view": 0}, batch_size=500):
            batch.append(doc)
            if len(batch) == 500:
                await self._replace_older(models.incident_rows, batch)
                batch = []
        await self._replace_older(models.incident_rows, batch)

    async def _ensure_read_model_indexes(self, models: ReadModels) -> None:
        for name, fields in (
            # The views: a period's assessment (`sort_at`, units); the office's 谎报 finding
            # names a duty, not its incident.
            (models.incidents, ("unit_ids", "view.obligations.obligation_id")),
            (models.incident_rows, ("unit_ids", "level", "category", "status", "filed_by", "due")),
            (models.cases, ("unit_ids", "filed_by", "level", "category", "opened_at")),
        ):
            collection = self.db[name]
            await collection.create_index(
                [("sort_at", DESCENDING), ("_id", DESCENDING)], name="list_order"
            )
            for field in fields:
                await collection.create_index([(field, ASCENDING)])

    async def current_models(self, session: AsyncClientSession | None = None) -> ReadModels:
        """The collections the API reads now."""
        pointer = await self.db[READ_MODELS].find_one({"_id": _POINTER}, session=session)
        return ReadModels.model_validate(pointer) if pointer else ReadModels()

    async def _written_models(self, session: AsyncClientSession | None) -> list[ReadModels]:
        """Where a refresh writes: the current collections and those a replay is building."""
        pointer = await self.db[READ_MODELS].find_one({"_id": _POINTER}, session=session)
        if pointer is None:
            return [ReadModels()]
        models = [ReadModels.model_validate(pointer)]
        if pointer.get("building"):
            models.append(ReadModels.model_validate(pointer["building"]))
        return models

    # ------------------------------------------------------------------ recording

    async def append_to_log(
        self,
        uow: UnitOfWork,
        event: Envelope,
        loaded: list[Logged] | None = None,
        delivery: Delivery | None = None,
    ) -> bool:
        """Store the event at the end of its incident's chain, with the producer and the
        signature it was delivered with; False if it is stored already.

        `loaded`, the incident's log as read in this transaction, stands in for the lookup
        of the event_id (an event is logged under its own incident) and gets the new record.
        """
        db, session = uow.db, uow.session
        event_id = str(event.event_id)
        if loaded is not None:
            if any(str(r.event.event_id) == event_id for r in loaded):
                return False
        elif await db[LOG].find_one({"_id": event_id}, {"_id": 1}, session=session):
            return False
        if await self._second_copy(uow, event):
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
        document = self._log_document(event, int(counter["value"]), length, prev, delivery)
        digest = document["hash"]
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
        if loaded is not None:
            loaded.append(Logged(seq=document["seq"], event=event))
        return True

    def _log_document(
        self, event: Envelope, seq: int, length: int, prev: str, delivery: Delivery | None
    ) -> Document:
        """The log's record of an event: `length` links after `prev` in its chain."""
        envelope = event.model_dump(mode="json")
        return {
            "_id": str(event.event_id),
            "seq": seq,
            "incident_id": event.incident_id,
            "position": length + 1,
            "prev_hash": prev,
            "hash": link_hash(prev, envelope),
            "envelope": envelope,
            # Who published it and their signature over it (shared/signing.py): verify
            # checks it again, so an event written here without the producer's key is named.
            "producer": delivery.producer if delivery else None,
            "signature": delivery.signature if delivery else None,
            "event_type": event.event_type,
            "topic": event.topic,
            "unit_id": event.unit_id,
            "stream_id": event.stream_id,
            "stream_version": event.stream_version,
            "occurred_at": event.occurred_at,
            "ingested_at": self.clock(),
        }

    async def record_all(
        self, uow: UnitOfWork, batch: Sequence[tuple[Envelope, Delivery | None]]
    ) -> None:
        """Log several events and refold each incident they touch once: what
        `append_to_log` and `refresh` do event by event, in a dozen round trips for the
        whole batch. Events logged already are left out; a second copy of a stream
        position is recorded as a producer fault, as one by one."""
        db, session = uow.db, uow.session
        incidents = list(dict.fromkeys(event.incident_id for event, _ in batch))
        logs: dict[str, list[Logged]] = {incident: [] for incident in incidents}
        logged_ids: set[str] = set()
        cursor = db[LOG].find(
            {"incident_id": {"$in": incidents}}, sort=[("seq", ASCENDING)], session=session
        )
        async for doc in cursor:
            logged_ids.add(str(doc["_id"]))
            if self.signed(doc):
                logs[str(doc["incident_id"])].append(_logged(doc))
        positions: set[tuple[str, str, int]] = set()
        streams: dict[str, set[str]] = defaultdict(set)
        for event, _ in batch:
            streams[event.topic].add(event.stream_id)
        # A query per topic: one field matched and one listed, which the stream_position
        # index serves on every server (two lists scan the whole log on the embedded one).
        for topic, ids in streams.items():
            found = db[LOG].find(
                {"topic": topic, "stream_id": {"$in": sorted(ids)}},
                {"topic": 1, "stream_id": 1, "stream_version": 1},
                session=session,
            )
            async for doc in found:
                positions.add((doc["topic"], doc["stream_id"], int(doc["stream_version"])))
        todo: list[tuple[Envelope, Delivery | None]] = []
        for event, delivery in batch:
            position = (event.topic, event.stream_id, event.stream_version)
            if str(event.event_id) in logged_ids:
                continue
            if position in positions:
                await self._second_copy(uow, event)
                continue
            logged_ids.add(str(event.event_id))
            positions.add(position)
            todo.append((event, delivery))
        if not todo:
            return
        counter = await db[COUNTERS].find_one_and_update(
            {"_id": _LOG_SEQ},
            {"$inc": {"value": len(todo)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert counter is not None
        first_seq = int(counter["value"]) - len(todo) + 1
        heads = {
            str(doc["_id"]): (int(doc["length"]), str(doc["head"]))
            async for doc in db[CHAINS].find({"_id": {"$in": incidents}}, session=session)
        }
        before = dict(heads)
        documents = []
        for n, (event, delivery) in enumerate(todo):
            length, prev = heads.get(event.incident_id, (0, GENESIS))
            document = self._log_document(event, first_seq + n, length, prev, delivery)
            documents.append(document)
            heads[event.incident_id] = (length + 1, document["hash"])
            logs[event.incident_id].append(Logged(seq=document["seq"], event=event))
        moved = [incident for incident in incidents if heads.get(incident) != before.get(incident)]
        try:
            await db[LOG].insert_many(documents, ordered=True, session=session)
            # Each guarded on the length read above, as one by one.
            await db[CHAINS].bulk_write(
                [
                    UpdateOne(
                        {"_id": incident, "length": before.get(incident, (0, GENESIS))[0]},
                        {"$set": {"length": heads[incident][0], "head": heads[incident][1]}},
                        upsert=True,
                    )
                    for incident in moved
                ],
                ordered=True,
                session=session,
            )
        except (DuplicateKeyError, BulkWriteError) as exc:
            raise ConcurrencyConflict(
                f"chain-{moved[0]}", before.get(moved[0], (0, ""))[0]
            ) from exc
        await self._refresh_all(uow, {incident: logs[incident] for incident in moved})

    async def _refresh_all(self, uow: UnitOfWork, logs: dict[str, list[Logged]]) -> None:
        """`refresh` for several incidents, each from its log as this transaction holds it."""
        db, session = uow.db, uow.session
        writes = {
            incident: _model_writes(incident, records, self.embedded_reports)
            for incident, records in logs.items()
        }
        for models in await self._written_models(session):
            had_case = {
                str(doc["_id"]): doc.get("case_id", True) is not None
                async for doc in db[models.incidents].find(
                    {"_id": {"$in": list(writes)}}, {"case_id": 1}, session=session
                )
            }
            await db[models.incidents].bulk_write(
                [
                    ReplaceOne({"_id": incident}, document, upsert=True)
                    for incident, (_, document, _) in writes.items()
                ],
                session=session,
            )
            await db[models.incident_rows].bulk_write(
                [
                    ReplaceOne({"_id": incident}, _row(document), upsert=True)
                    for incident, (_, document, _) in writes.items()
                ],
                session=session,
            )
            cases = [case for _, _, case in writes.values() if case is not None]
            if cases:
                await db[models.cases].bulk_write(
                    [ReplaceOne({"_id": case["_id"]}, case, upsert=True) for case in cases],
                    session=session,
                )
            # Reopened after archiving: no longer a case until reviewed again.
            gone = [i for i, (_, _, case) in writes.items() if case is None and had_case.get(i)]
            if gone:
                await db[models.cases].delete_many({"incident_id": {"$in": gone}}, session=session)

    async def _second_copy(self, uow: UnitOfWork, event: Envelope) -> bool:
        """Whether the producer's stream position is logged already under another event_id:
        one stored event relayed as two (a producer fault), not a second fact. Recorded,
        not logged, so that nothing is counted twice."""
        position = {
            "topic": event.topic,
            "stream_id": event.stream_id,
            "stream_version": event.stream_version,
        }
        kept = await uow.db[LOG].find_one(position, {"_id": 1}, session=uow.session)
        if kept is None:
            return False
        logger.warning(
            "producer fault: a stream position arrived again under another event_id",
            **position,
            event_id=str(event.event_id),
            kept_event_id=kept["_id"],
        )
        await uow.db[PRODUCER_FAULTS].update_one(
            {"_id": str(event.event_id)},
            {
                "$setOnInsert": {
                    **position,
                    "fault": "stream position logged already under another event_id",
                    "incident_id": event.incident_id,
                    "event_type": event.event_type,
                    "kept_event_id": kept["_id"],
                    "envelope": event.model_dump(mode="json"),
                    "seen_at": self.clock(),
                }
            },
            upsert=True,
            session=uow.session,
        )
        return True

    async def load_log(self, incident_id: str, uow: UnitOfWork | None = None) -> list[Logged]:
        session = uow.session if uow is not None else None
        cursor = self.db[LOG].find(
            {"incident_id": incident_id}, sort=[("seq", ASCENDING)], session=session
        )
        return [_logged(doc) async for doc in cursor if self.signed(doc)]

    async def mark_signing_start(self) -> None:
        """Seal, once, the unsigned events this archive logged before it recorded
        signatures (an archive upgraded with its log keeps folding them, their hash chain
        still checked): each gets the archive's seal over it and its place (`SEAL`), made
        with a key derived from the bus secret, so that no event written into the store
        later passes for one of them. A fresh archive seals nothing.

        Sealed are the unsigned events of ingest seq 1 up to, not including, the first
        one logged with a signature field (and the log's end, and an earlier mark's
        `from_seq`): a mark that is missing or does not hold is made again on that bound,
        which a document written into the store cannot move (its seq would have to be
        one the log's unique index holds already, below every signed event's).
        """
        if self.keys is None:
            return
        markers = self.db[READ_MODELS]
        marker = await markers.find_one({"_id": _SIGNING})
        if marker is not None and self._mark_holds(marker):
            return
        log = self.db[LOG]
        bound = 1
        last = await log.find_one({}, {"seq": 1}, sort=[("seq", DESCENDING)])
        if last is not None:
            bound = int(last["seq"]) + 1
        signed = await log.find_one(
            {"signature": {"$exists": True}}, {"seq": 1}, sort=[("seq", ASCENDING)]
        )
        if signed is not None:
            bound = min(bound, int(signed["seq"]))
        if marker is not None:
            earlier = marker.get("from_seq")
            if isinstance(earlier, int) and not isinstance(earlier, bool):
                bound = min(bound, earlier)
            logger.warning(
                "the signing mark holds no archive seal: made again",
                from_seq=earlier,
                bound=bound,
            )
        sealed = await self._seal_unsigned(max(bound, 1))
        mark = {"from_seq": max(bound, 1), "sealed": sealed}
        await markers.replace_one(
            {"_id": _SIGNING},
            {**mark, "seal": self.keys.seal(_mark_form(mark), context=SEAL_CONTEXT)},
            upsert=True,
        )
        if sealed:
            logger.info("unsigned events logged before signing began sealed", sealed=sealed)

    def _mark_holds(self, marker: Document) -> bool:
        assert self.keys is not None
        seal = marker.get("seal")
        try:
            form = _mark_form({"from_seq": marker.get("from_seq"), "sealed": marker.get("sealed")})
        except (TypeError, ValueError):  # not JSON: altered
            return False
        return isinstance(seal, str) and self.keys.seal_holds(seal, form, context=SEAL_CONTEXT)

    async def _seal_unsigned(self, bound: int) -> int:
        """Seal every unsigned event of ingest seq 1 up to `bound` (not included)."""
        assert self.keys is not None
        if bound <= 1:
            return 0
        sealed, writes = 0, list[UpdateOne]()
        cursor = self.db[LOG].find(
            {"seq": {"$gte": 1, "$lt": bound}, "signature": {"$exists": False}},
            sort=[("seq", ASCENDING)],
        )
        async for doc in cursor:
            form = _seal_form(doc)
            if form is None:
                logger.error("a logged event is not JSON: left unsealed", event_id=doc["_id"])
                continue
            seal = self.keys.seal(form, context=SEAL_CONTEXT)
            writes.append(UpdateOne({"_id": doc["_id"], "seq": doc["seq"]}, {"$set": {SEAL: seal}}))
            sealed += 1
            if len(writes) >= _SEAL_BATCH:
                await self.db[LOG].bulk_write(writes, ordered=False)
                writes = []
        if writes:
            await self.db[LOG].bulk_write(writes, ordered=False)
        return sealed

    def before_signing(self, doc: Document) -> bool:
        """Whether the logged event is one this archive logged before it recorded
        signatures: sealed so by the archive when signing began, the seal holding for this
        very document (its envelope and its place)."""
        seal = doc.get(SEAL)
        if self.keys is None or not isinstance(seal, str):
            return False
        form = _seal_form(doc)
        return form is not None and self.keys.seal_holds(seal, form, context=SEAL_CONTEXT)

    def signed(self, doc: Document) -> bool:
        """Whether a logged event carries its producer's signature, or the archive's seal
        of an event logged before signing began: one written into the store by other means
        (its hash recomputed), signed or not, is named by verify and folded nowhere."""
        if self.keys is None or self.before_signing(doc):
            return True
        envelope = doc.get("envelope")
        problem = signature_problem(
            envelope if isinstance(envelope, dict) else {},
            doc.get("producer"),
            doc.get("signature"),
            self.keys,
            sealed=SEAL in doc,
        )
        if problem is not None:
            logger.warning("logged event not folded", event_id=str(doc.get("_id")), reason=problem)
        return problem is None

    async def refresh(
        self, uow: UnitOfWork, incident_id: str, records: Sequence[Logged] | None = None
    ) -> IncidentView:
        """Refold the incident from its log (`records`, when this transaction has read it
        already) into every read model being served or built."""
        session = uow.session
        if records is None:
            records = await self.load_log(incident_id, uow)
        view, document, case = _model_writes(incident_id, records, self.embedded_reports)
        db = uow.db
        for models in await self._written_models(session):
            # Read, then replaced, not one findOneAndReplace (see store.update_before).
            before = await db[models.incidents].find_one(
                {"_id": incident_id}, {"case_id": 1}, session=session
            )
            await db[models.incidents].replace_one(
                {"_id": incident_id}, document, upsert=True, session=session
            )
            await db[models.incident_rows].replace_one(
                {"_id": incident_id}, _row(document), upsert=True, session=session
            )
            if case is not None:
                await db[models.cases].replace_one(
                    {"_id": case["_id"]}, case, upsert=True, session=session
                )
            elif before is not None and before.get("case_id", True) is not None:
                # Reopened after archiving: no longer a case until reviewed again. (A view
                # written before `case_id` existed may have had one.)
                await db[models.cases].delete_many({"incident_id": incident_id}, session=session)
        return view

    # ------------------------------------------------------------------ reads

    async def incident(self, incident_id: str) -> StoredIncident | None:
        """One read, with the pointer as read within the last second (again when missing)."""
        models, fresh = await self._served_models()
        doc = await self.db[models.incidents].find_one({"_id": incident_id})
        if doc is None and not fresh:
            models_now, _ = await self._served_models(fresh=True)
            if models_now != models:
                doc = await self.db[models_now.incidents].find_one({"_id": incident_id})
        if doc is None:
            return None
        return StoredIncident(_scope(incident_id, doc), IncidentView.model_validate(doc["view"]))

    async def case(self, case_id: str) -> StoredCase | None:
        models = await self.current_models()
        doc = await self.db[models.cases].find_one({"_id": case_id})
        if doc is None:
            return None
        return StoredCase(
            _scope(str(doc["incident_id"]), doc), CaseRecord.model_validate(doc["case"])
        )

    async def scan_views(self, conditions: Sequence[Document]) -> AsyncIterator[IncidentView]:
        """Every view matching `conditions`, fetched from the server in batches."""
        models = await self.current_models()
        query = flat_query(conditions)
        async for doc in self.db[models.incidents].find(query, {"view": 1}, batch_size=200):
            yield IncidentView.model_validate(doc["view"])

    async def list_page(
        self,
        kind: Literal["incidents", "cases"],
        conditions: Sequence[Document],
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> tuple[list[Document], tuple[datetime, str] | None]:
        """One page of incidents or cases, newest first; the key of its last row when more
        follow.

        Keyset paging on (`sort_at`, `_id`), the `list_order` index, read in windows of
        `sort_at` going back in time (`_ListWindows`): each query is a flat filter whose
        first clause is a `sort_at` range (or, for the rest of a cursor's tie, its value),
        which the embedded server serves from the index; it uses no index for a clause
        inside `$and` or `$or`, and sorts every candidate before the limit, so an
        unbounded query costs the whole collection. Only the list's fields are returned.
        """
        filters = flat_query(conditions)
        listed = {"incidents": "incident_rows", "cases": "cases"}[kind]
        models, fresh = await self._served_models()
        rows = await self._windows.page(self.db[getattr(models, listed)], filters, limit, after)
        if not rows and not fresh:
            models_now, _ = await self._served_models(fresh=True)
            if models_now != models:
                collection = self.db[getattr(models_now, listed)]
                rows = await self._windows.page(collection, filters, limit, after)
        if len(rows) <= limit:
            return rows, None
        last = rows[limit - 1]
        return rows[:limit], (aware(last["sort_at"]), str(last["_id"]))

    async def verify(self, incident_id: str) -> ChainReport:
        head = await self.db[CHAINS].find_one({"_id": incident_id})
        cursor = self.db[LOG].find({"incident_id": incident_id}, sort=[("position", ASCENDING)])
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
                    producer=doc.get("producer"),
                    signature=doc.get("signature"),
                    before_signing=self.before_signing(doc),
                    sealed=SEAL in doc,
                )
            )
        return verify_chain(incident_id, links, int(head["length"]) if head else 0, self.keys)

    async def export(
        self, conditions: Sequence[Document], after: int
    ) -> AsyncIterator[ExportedEvent]:
        """Stored events in ingest order from just past `after`, read in batches as sent.

        One flat filter (an `$and` is a collection scan on the embedded server, which
        looks up the first field it has an index for): a resumed export starts from its
        seq, a first one from the first of `conditions`, the narrowest given first."""
        resume = {"seq": {"$gt": after}}
        query = flat_query([resume, *conditions] if after else [*conditions, resume])
        cursor = self.db[LOG].find(query, sort=[("seq", ASCENDING)], batch_size=500)
        async for doc in cursor:
            yield ExportedEvent(
                seq=doc["seq"],
                position=doc["position"],
                prev_hash=doc["prev_hash"],
                hash=doc["hash"],
                ingested_at=doc["ingested_at"],
                envelope=doc["envelope"],
                producer=doc.get("producer"),
                signature=doc.get("signature"),
            )

    # ------------------------------------------------------------------ replay

    async def start_replay(self, requested_by: str) -> ReplayJob:
        """Claim the pointer for a new set of collections; ReplayRunning if one is building."""
        db = self.db
        job_id = uuid.uuid4().hex[:12]
        target = ReadModels(
            incidents=f"{VIEWS}_{job_id}",
            cases=f"{CASES}_{job_id}",
            incident_rows=f"{ROWS}_{job_id}",
        )
        # Made before they are named in the pointer, so that no refresh creates them inside
        # its transaction (which older MongoDB servers refuse).
        await self._ensure_read_model_indexes(target)
        claimed = await db[READ_MODELS].update_one(
            {"_id": _POINTER, "building": None},
            {"$set": {"building": target.model_dump(), "job_id": job_id}},
        )
        if claimed.modified_count != 1:
            await self._drop(target)
            raise ReplayRunning("a replay is running already")
        job = ReplayJob(
            job_id=job_id,
            state="running",
            started_at=self.clock(),
            collections=target,
            requested_by=requested_by,
        )
        await db[REPLAY_JOBS].insert_one({"_id": job_id, **job.model_dump()})
        return job

    async def replay_job(self, job_id: str) -> ReplayJob | None:
        found = await self.db[REPLAY_JOBS].find_one({"_id": job_id})
        return ReplayJob.model_validate(found) if found else None

    async def _replace_older(self, collection: str, documents: Iterable[Document]) -> None:
        """Upsert each document unless the stored one was folded from more of the log."""
        writes = [
            ReplaceOne({"_id": d["_id"], "last_seq": {"$lte": d["last_seq"]}}, d, upsert=True)
            for d in documents
        ]
        if not writes:
            return
        try:
            await self.db[collection].bulk_write(writes, ordered=False)
        except BulkWriteError as exc:
            # A duplicate _id: the filter missed a newer document a refresh wrote; keep it.
            if any(e.get("code") != _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise

    async def run_replay(self, job_id: str, batch_size: int) -> ReplayJob:
        """Fold the log into the job's collections in batches, then point the API at them."""
        db = self.db
        job = await self.replay_job(job_id)
        assert job is not None, f"replay job {job_id} was not started"
        target = job.collections
        unsigned: list[str] = []
        try:
            incident_ids = sorted(str(i) for i in await db[LOG].distinct("incident_id"))
            await db[REPLAY_JOBS].update_one(
                {"_id": job_id}, {"$set": {"total": len(incident_ids)}}
            )
            for start in range(0, len(incident_ids), batch_size):
                batch = incident_ids[start : start + batch_size]
                logs: dict[str, list[Logged]] = {incident_id: [] for incident_id in batch}
                cursor = db[LOG].find({"incident_id": {"$in": batch}}, sort=[("seq", ASCENDING)])
                async for doc in cursor:
                    if self.signed(doc):
                        logs[doc["incident_id"]].append(_logged(doc))
                    else:
                        unsigned.append(str(doc["_id"]))
                written = [
                    _model_writes(i, records, self.embedded_reports)
                    for i, records in logs.items()
                    if records
                ]
                await self._replace_older(target.incidents, (w[1] for w in written))
                await self._replace_older(target.incident_rows, (_row(w[1]) for w in written))
                # A case goes in only beside the view it came from: if a refresh has
                # meanwhile written a newer view, it has also written (or removed) the case.
                stored = {
                    doc["_id"]: doc["last_seq"]
                    async for doc in db[target.incidents].find(
                        {"_id": {"$in": batch}}, {"last_seq": 1}
                    )
                }
                cases = (
                    c for _, v, c in written if c is not None and stored[v["_id"]] == v["last_seq"]
                )
                await self._replace_older(target.cases, cases)
                await db[REPLAY_JOBS].update_one(
                    {"_id": job_id}, {"$inc": {"processed": len(batch)}}
                )
            old = await self.current_models()
            await db[READ_MODELS].update_one(
                {"_id": _POINTER},
                {"$set": {**target.model_dump(), "building": None, "job_id": None}},
            )
        except Exception as exc:
            await self._abandon(job_id, target, f"{type(exc).__name__}: {exc}")
            raise
        await db[REPLAY_JOBS].update_one(
            {"_id": job_id},
            {"$set": {"state": "completed", "finished_at": self.clock(), "not_folded": unsigned}},
        )
        # The old collections are served no more once the pointer has moved.
        self._served = None
        await self._drop(old)
        finished = await self.replay_job(job_id)
        assert finished is not None
        return finished

    async def _abandon(self, job_id: str, target: ReadModels, reason: str) -> None:
        await self.db[READ_MODELS].update_one(
            {"_id": _POINTER, "job_id": job_id}, {"$set": {"building": None, "job_id": None}}
        )
        await self.db[REPLAY_JOBS].update_one(
            {"_id": job_id},
            {"$set": {"state": "failed", "error": reason, "finished_at": self.clock()}},
        )
        await self._drop(target)

    async def _drop(self, models: ReadModels) -> None:
        await self.db.drop_collection(models.incidents)
        await self.db.drop_collection(models.cases)
        await self.db.drop_collection(models.incident_rows)

    async def abandon_interrupted_replays(self) -> None:
        """A replay runs inside the archive process: one still `running` at start-up died
        with the process that ran it, and would otherwise block every later replay.
        """
        async for doc in self.db[REPLAY_JOBS].find({"state": "running"}):
            job = ReplayJob.model_validate(doc)
            await self._abandon(job.job_id, job.collections, "interrupted: the archive restarted")
