"""The event store: a service's source of truth, in its own MongoDB database.

Events are appended, never updated, under a unique index on (stream_id, stream_version)
and another on event_id, so two writers at one version cannot both win. The stored event
doubles as the outbox entry: `published` stays false until the relay has put it on Kafka.
The relay sends in `seq` order. A `seq` is time-ordered (microseconds) and, per incident,
strictly increasing in commit order: each append moves its incident's `outbox_order`
document in its transaction, so two transactions of one incident collide there and the
later one takes a later `seq`, while appends to different incidents never meet (there is
no shared counter). Events of one incident, which share a Kafka key, so reach the relay
in the order they were committed; one incident's later event is never visible while an
earlier one is still uncommitted.
Several events are appended in one transaction, with the inbox mark of the message that
caused them and the projection updates, so nothing half-written is ever stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import pymongo
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne, WriteConcern
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from shared.errors import StillConflicting
from shared.events import Envelope, event_types, utcnow
from shared.metrics import EVENTS_APPENDED

EVENTS = "events"
COUNTERS = "counters"
# Per incident: the last `seq` given to one of its events (see the module's docstring).
OUTBOX_ORDER = "outbox_order"
INBOX = "inbox"
LEASES = "leases"

Document = dict[str, Any]
T = TypeVar("T")


class DecideAgain(Exception):
    """What was read to decide changed before the decision was stored: decide again."""


class ConcurrencyConflict(DecideAgain):
    """Another writer appended to the stream first: reload and decide again."""

    def __init__(self, stream_id: str, expected_version: int) -> None:
        super().__init__(
            f"stream {stream_id} moved past version {expected_version}; reload and retry"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version


class InboxRace(DecideAgain):
    """Another consumer marked the same event processed first: retry, and it is a duplicate."""


def event_to_document(event: Envelope, seq: int) -> Document:
    doc = event.model_dump(mode="json")
    doc["_id"] = doc["event_id"]
    doc["seq"] = seq
    doc["published"] = False
    return doc


# What the store keeps beside the envelope: its position and the outbox's bookkeeping.
_STORE_FIELDS = frozenset({"_id", "seq", "published", "published_at", "placed"})


@dataclass(frozen=True)
class Processed:
    """What every consumer group of `topic` (a base name) had committed per partition, in
    the broker's life `epoch`: each offset below `below[partition]` was processed by all."""

    topic: str
    epoch: int
    below: dict[int, int]
    seen_at: datetime  # when the groups were asked: what was sent after it goes again


@dataclass(frozen=True)
class Placement:
    """Where the broker put a sent event: the relay's epoch (the broker's life it was sent
    in), the partition and the offset. Kept with the event, so that after a wipe only what
    some consumer had not yet processed is sent again."""

    epoch: int
    partition: int
    offset: int

    def as_document(self) -> Document:
        return {"epoch": self.epoch, "partition": self.partition, "offset": self.offset}


def document_to_event(doc: Document) -> Envelope:
    fields = {k: v for k, v in doc.items() if k not in _STORE_FIELDS}
    return Envelope.model_validate(fields)


@dataclass
class UnitOfWork:
    """One atomic change: events appended, an inbox mark, projection writes."""

    db: AsyncDatabase[Document]
    session: AsyncClientSession | None
    appended: list[Envelope] = field(default_factory=list)
    # Read models this transaction wrote, as it wrote them, by key: a later read in the same
    # transaction takes them from here instead of asking the server again.
    memo: dict[str, Any] = field(default_factory=dict)

    async def load(self, stream_id: str) -> list[Envelope]:
        cursor = self.db[EVENTS].find(
            {"stream_id": stream_id}, sort=[("stream_version", ASCENDING)], session=self.session
        )
        return [document_to_event(doc) async for doc in cursor]

    async def append(self, events: Sequence[Envelope], expected_version: int) -> list[Envelope]:
        """Append events that continue one stream from `expected_version`."""
        if not events:
            return []
        stream_id = events[0].stream_id
        for offset, event in enumerate(events, start=1):
            if event.stream_id != stream_id or event.stream_version != expected_version + offset:
                raise ValueError(
                    f"events must continue stream {stream_id} from version {expected_version}"
                )
        # Each incident's events take consecutive `seq`s, in stream order.
        seq_of: dict[int, int] = {}
        for incident_id, count in Counter(e.incident_id for e in events).items():
            first = await self._reserve(incident_id, count)
            mine = [i for i, e in enumerate(events) if e.incident_id == incident_id]
            seq_of.update({i: first + n for n, i in enumerate(mine)})
        now = utcnow()
        stamped = [e.model_copy(update={"recorded_at": now}) for e in events]
        docs = [event_to_document(e, seq_of[i]) for i, e in enumerate(stamped)]
        try:
            await self.db[EVENTS].insert_many(docs, ordered=True, session=self.session)
        except (DuplicateKeyError, BulkWriteError) as exc:
            raise ConcurrencyConflict(stream_id, expected_version) from exc
        self.appended.extend(stamped)
        return stamped

    async def _reserve(self, incident_id: str, count: int) -> int:
        """The first of `count` consecutive `seq`s for the incident's next events: from
        the clock, or just past the incident's last one when that is not behind it (a
        replica whose clock is behind, or the same microsecond)."""
        wanted = time.time_ns() // 1000
        order = self.db[OUTBOX_ORDER]
        # One write in the usual case, the clock past the incident's last seq: the last is
        # set to the last of the `count`, and the write says whether it was set.
        past = {"$lt": [{"$ifNull": ["$seq", 0]}, wanted]}
        moved = await order.update_one(
            {"_id": incident_id},
            [{"$set": {"seq": {"$cond": [past, wanted + count - 1, "$seq"]}}}],
            upsert=True,
            session=self.session,
        )
        if moved.upserted_id is not None or moved.modified_count:
            return wanted
        # Read, then written: in the transaction a writer that moved it in between makes
        # this one conflict, and the transaction is done again.
        before = await order.find_one({"_id": incident_id}, session=self.session)
        last = int(before["seq"]) if before is not None else 0
        first = max(wanted, last + 1)
        await order.update_one(
            {"_id": incident_id},
            {"$set": {"seq": first + count - 1}},
            upsert=True,
            session=self.session,
        )
        return first

    async def mark_processed(self, consumer: str, event_id: str) -> bool:
        """Remember a consumed event; False if this consumer had already processed it.

        Looked up before it is inserted: a write error aborts a MongoDB transaction, so a
        duplicate insert cannot be caught and carried on from. Two consumers racing on one
        event make the later insert fail with InboxRace, and the retry finds the mark.
        """
        key = f"{consumer}:{event_id}"
        if await self.db[INBOX].find_one({"_id": key}, session=self.session) is not None:
            return False
        try:
            await self.db[INBOX].insert_one({"_id": key, "at": utcnow()}, session=self.session)
        except DuplicateKeyError as exc:
            raise InboxRace(key) from exc
        return True

    async def processed_already(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        """Which of the events this consumer has processed already, in one read."""
        keys = [f"{consumer}:{event_id}" for event_id in event_ids]
        found = self.db[INBOX].find({"_id": {"$in": keys}}, {"_id": 1}, session=self.session)
        prefix = len(consumer) + 1
        return {str(doc["_id"])[prefix:] async for doc in found}

    async def mark_all_processed(
        self, consumer: str, event_ids: Sequence[str], *, unmarked: bool = False
    ) -> list[str]:
        """Remember several consumed events with one read and one write; returns the ids
        this consumer had not processed before (each once), in the order given. With
        `unmarked` the caller has just read that none of them is marked: no read again,
        and a racing replica's mark in between fails the write (InboxRace)."""
        keys = {event_id: f"{consumer}:{event_id}" for event_id in event_ids}
        known = set() if unmarked else await self.processed_already(consumer, list(keys))
        new = [event_id for event_id in keys if event_id not in known]
        if new:
            at = utcnow()
            try:
                await self.db[INBOX].insert_many(
                    [{"_id": keys[event_id], "at": at} for event_id in new],
                    ordered=True,
                    session=self.session,
                )
            except (DuplicateKeyError, BulkWriteError) as exc:
                raise InboxRace(", ".join(keys[e] for e in new)) from exc
        return new


async def update_before(
    collection: AsyncCollection[Document],
    key: Any,
    update: Document,
    *,
    session: AsyncClientSession | None,
    upsert: bool = False,
) -> Document | None:
    """The document `key` as it was before `update`, which is applied to it (inserted
    with `upsert`); None when it was not there. Run in a unit of work's transaction.

    A read and a write by `_id` rather than one findAndModify: the embedded SecantusDB
    (0.7) scans the whole collection to write every findAndModify that matches, 21 ms at
    4,000 documents against about 1 ms for these two, and more with every incident. In a
    transaction the two are as one: a writer that changed the document after the read
    makes the write conflict, and the transaction is done again."""
    before = await collection.find_one({"_id": key}, session=session)
    await collection.update_one({"_id": key}, update, upsert=upsert, session=session)
    return before


async def ensure_collection(db: AsyncDatabase[Document], name: str) -> None:
    """Create the collection now if it is missing: created by a transaction's first write,
    it would make every concurrent transaction writing to it conflict until that one
    commits (and older MongoDB servers refuse it)."""
    if name not in await db.list_collection_names():
        with contextlib.suppress(CollectionInvalid):
            await db.create_collection(name)


class Transactions(Protocol):
    """Runs `work` atomically, handing it the session its reads and writes must use."""

    async def run(self, work: Callable[[AsyncClientSession | None], Awaitable[T]]) -> T: ...


# A transaction is acknowledged once it is journaled (on a majority, in a replica set).
DURABLE = WriteConcern(w="majority", j=True)


class MongoTransactions:
    """Multi-document transactions of a MongoDB replica set, durable when acknowledged,
    retried on transient errors by the driver within `timeout` seconds in all.

    An unreachable database is not retried here (the driver would for 120 s): the caller
    hears of it at once, as a ConnectionFailure (503 for a request; a consumer backs off
    and tries again), and so does a transaction that ran out of its budget. One that ran
    out of it losing write conflicts to other transactions (filings onto one incident) is
    StillConflicting instead (409 for a request): the database is there, the record busy.
    """

    def __init__(self, client: AsyncMongoClient[Document], timeout: float | None = None) -> None:
        self.client = client
        self.timeout = timeout

    async def run(self, work: Callable[[AsyncClientSession | None], Awaitable[T]]) -> T:
        selection = self.client.options.server_selection_timeout
        conflicted = False  # whether the last attempt lost a write conflict

        async def attempt(session: AsyncClientSession) -> T:
            nonlocal conflicted
            conflicted = False
            try:
                if not self.client.topology_description.has_writable_server():
                    # Known to be away (or not met yet): wait for it as long as the client's
                    # server selection timeout, not the whole budget as the driver would.
                    with pymongo.timeout(selection):
                        await self.client.admin.command("ping")
                return await work(session)
            except ConnectionFailure as exc:
                if session.in_transaction:
                    # Abandoned here, briefly: the driver's own abort would retry against
                    # the unreachable server for all the budget left. Errors are ignored,
                    # as the driver ignores them; the server drops it by itself.
                    with pymongo.timeout(selection / 4):
                        await session.abort_transaction()
                if isinstance(exc, ServerSelectionTimeoutError):
                    # The same error without its TransientTransactionError label: the
                    # database is away, so it is not retried.
                    raise ServerSelectionTimeoutError(str(exc)) from exc
                raise  # a connection lost: retried, and the next attempt asks as above
            except OperationFailure as exc:
                # Retried by the driver (TransientTransactionError) within the budget.
                conflicted = exc.has_error_label("TransientTransactionError")
                raise

        async with self.client.start_session() as session:
            try:
                # The budget as an asyncio deadline, not the driver's (pymongo.timeout): an
                # abort inside a spent driver deadline is never sent, and the transaction
                # stays open on the server, holding what it wrote (an inbox mark, an
                # idempotency key) until the server reaps it, while every retry of the
                # same event waits behind it and runs out of its own budget in turn.
                async with asyncio.timeout(self.timeout):
                    return await session.with_transaction(attempt, write_concern=DURABLE)
            except (TimeoutError, ExecutionTimeout, WTimeoutError) as exc:
                if conflicted:
                    raise StillConflicting(
                        "the record kept changing while this was written; try again",
                        {"within_seconds": self.timeout},
                    ) from exc
                raise NetworkTimeout(
                    f"the database did not complete the transaction within {self.timeout}s"
                    f": {exc or 'the budget ran out'}"
                ) from exc
            finally:
                if session.in_transaction:
                    # Ended on the server with a deadline of its own (its errors ignored, as
                    # the driver ignores them).
                    with contextlib.suppress(PyMongoError), pymongo.timeout(selection):
                        await session.abort_transaction()


class EventStore:
    """A service's database handle: the event log, transactions, and the outbox signal."""

    def __init__(
        self, db: AsyncDatabase[Document], transactions: Transactions, service: str
    ) -> None:
        self.db = db
        self.transactions = transactions
        self.service = service
        self.appended_signal = asyncio.Event()

    @classmethod
    def on(
        cls,
        client: AsyncMongoClient[Document],
        database: str,
        service: str,
        transaction_timeout: float | None = None,
    ) -> EventStore:
        return cls(client[database], MongoTransactions(client, transaction_timeout), service)

    async def ensure_indexes(self) -> None:
        events = self.db[EVENTS]
        await events.create_index(
            [("stream_id", ASCENDING), ("stream_version", ASCENDING)],
            unique=True,
            name="stream_version_unique",
        )
        await events.create_index([("event_id", ASCENDING)], unique=True, name="event_id_unique")
        await events.create_index([("published", ASCENDING), ("seq", ASCENDING)], name="outbox")
        await events.create_index([("incident_id", ASCENDING), ("seq", ASCENDING)])
        await ensure_collection(self.db, OUTBOX_ORDER)

    async def transaction(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run `work` in one transaction."""

        async def run(session: AsyncClientSession | None) -> tuple[T, list[Envelope]]:
            uow = UnitOfWork(self.db, session)
            result = await work(uow)
            return result, uow.appended

        result, appended = await self.transactions.run(run)
        for event in appended:
            EVENTS_APPENDED.labels(self.service, event.event_type).inc()
        if appended:
            self.appended_signal.set()
        return result

    async def append(self, events: Sequence[Envelope], expected_version: int) -> list[Envelope]:
        async def work(uow: UnitOfWork) -> list[Envelope]:
            return await uow.append(events, expected_version)

        return await self.transaction(work)

    async def load(self, stream_id: str) -> list[Envelope]:
        cursor = self.db[EVENTS].find(
            {"stream_id": stream_id}, sort=[("stream_version", ASCENDING)]
        )
        return [document_to_event(doc) async for doc in cursor]

    async def unpublished(self, limit: int) -> list[Envelope]:
        cursor = self.db[EVENTS].find({"published": False}, sort=[("seq", ASCENDING)], limit=limit)
        return [document_to_event(doc) async for doc in cursor]

    async def count_unpublished(self) -> int:
        """The outbox's true backlog (the relay only ever sees one batch of it)."""
        return await self.db[EVENTS].count_documents({"published": False})

    async def placed_end_before(self, epoch: int, partition: int) -> int:
        """One past the highest offset the broker gave an event of this store on
        `partition` in the last of the relay's epochs (the broker's lives) before `epoch`
        that placed any there: how far a consumer of that life can have read there; 0 when
        none was placed there."""
        doc = await self.db[EVENTS].find_one(
            {"placed.epoch": {"$lt": epoch}, "placed.partition": partition},
            {"placed.epoch": 1, "placed.offset": 1},
            sort=[("placed.epoch", -1), ("placed.offset", -1)],
        )
        return int(doc["placed"]["offset"]) + 1 if doc else 0

    async def mark_published(
        self, events: Sequence[Envelope], placed: Sequence[Placement | None] | None = None
    ) -> None:
        """Mark `events` sent, each with where the broker put it (`placed`, in order)."""
        now = utcnow()
        if placed is None:
            ids = [str(e.event_id) for e in events]
            await self.db[EVENTS].update_many(
                {"_id": {"$in": ids}}, {"$set": {"published": True, "published_at": now}}
            )
            return
        changes: list[Any] = [
            UpdateOne(
                {"_id": str(event.event_id)},
                {
                    "$set": {
                        "published": True,
                        "published_at": now,
                        "placed": where.as_document() if where else None,
                    }
                },
            )
            for event, where in zip(events, placed, strict=True)
        ]
        await self.db[EVENTS].bulk_write(changes, ordered=False)

    async def hold_lease(self, name: str, owner: str, ttl: timedelta) -> bool:
        """Take or renew the lease `name` for `owner`; False while another owner holds it.

        Replicas of one service share its database, and some work (relaying the outbox in
        order) must be done by one of them at a time; a holder that dies loses the lease
        when it expires.
        """
        now = utcnow()
        try:
            held = await self.db[LEASES].find_one_and_update(
                {"_id": name, "$or": [{"owner": owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": owner, "expires_at": now + ttl}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # the lease exists, held by someone else
        return held is not None and held["owner"] == owner

    async def release_lease(self, name: str, owner: str) -> None:
        await self.db[LEASES].delete_one({"_id": name, "owner": owner})

    async def republish_all(self) -> None:
        """Queue every stored event for the relay again (a broker that lost its topics)."""
        await self.db[EVENTS].update_many({"published": True}, {"$set": {"published": False}})

    async def republish_unprocessed(self, processed: Sequence[Processed]) -> None:
        """Queue again every sent event except those every consumer of its topic had
        processed (an offset below all their groups' committed offsets, in the broker's
        life it was sent in); an event sent before placements were kept goes again."""
        topic_types: dict[str, list[str]] = {}
        for name, cls in event_types().items():
            topic_types.setdefault(cls.TOPIC, []).append(name)
        handled = [
            {
                "event_type": {"$in": topic_types[mark.topic]},
                "placed.epoch": mark.epoch,
                "placed.partition": partition,
                "placed.offset": {"$lt": below},
                "published_at": {"$lt": mark.seen_at},
            }
            for mark in processed
            if mark.topic in topic_types
            for partition, below in mark.below.items()
            if below > 0
        ]
        if not handled:
            await self.republish_all()
            return
        await self.db[EVENTS].update_many(
            {"published": True, "$nor": handled}, {"$set": {"published": False}}
        )

    async def ping(self) -> None:
        await self.db.command("ping")
