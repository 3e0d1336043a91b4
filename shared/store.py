"""The event store: a service's source of truth, in its own MongoDB database.

Events are appended, never updated, under a unique index on (stream_id, stream_version)
and another on event_id, so two writers at one version cannot both win. The stored event
doubles as the outbox entry: `published` stays false until the relay has put it on Kafka.
Several events are appended in one transaction, with the inbox mark of the message that
caused them and the projection updates, so nothing half-written is ever stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import pymongo
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, WriteConcern
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from shared.events import Envelope, utcnow
from shared.metrics import EVENTS_APPENDED

EVENTS = "events"
COUNTERS = "counters"
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
_STORE_FIELDS = frozenset({"_id", "seq", "published", "published_at"})


def document_to_event(doc: Document) -> Envelope:
    fields = {k: v for k, v in doc.items() if k not in _STORE_FIELDS}
    return Envelope.model_validate(fields)


@dataclass
class UnitOfWork:
    """One atomic change: events appended, an inbox mark, projection writes."""

    db: AsyncDatabase[Document]
    session: AsyncClientSession | None
    appended: list[Envelope] = field(default_factory=list)

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
        counter = await self.db[COUNTERS].find_one_and_update(
            {"_id": "events"},
            {"$inc": {"value": len(events)}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=self.session,
        )
        assert counter is not None
        first_seq = int(counter["value"]) - len(events) + 1
        now = utcnow()
        stamped = [e.model_copy(update={"recorded_at": now}) for e in events]
        docs = [event_to_document(e, first_seq + i) for i, e in enumerate(stamped)]
        try:
            await self.db[EVENTS].insert_many(docs, ordered=True, session=self.session)
        except (DuplicateKeyError, BulkWriteError) as exc:
            raise ConcurrencyConflict(stream_id, expected_version) from exc
        self.appended.extend(stamped)
        return stamped

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
    and tries again), and so does a transaction that ran out of its budget.
    """

    def __init__(self, client: AsyncMongoClient[Document], timeout: float | None = None) -> None:
        self.client = client
        self.timeout = timeout

    async def run(self, work: Callable[[AsyncClientSession | None], Awaitable[T]]) -> T:
        selection = self.client.options.server_selection_timeout

        async def attempt(session: AsyncClientSession) -> T:
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

        try:
            with pymongo.timeout(self.timeout):
                async with self.client.start_session() as session:
                    return await session.with_transaction(attempt, write_concern=DURABLE)
        except (ExecutionTimeout, WTimeoutError) as exc:
            raise NetworkTimeout(
                f"the database did not complete the transaction within {self.timeout}s: {exc}"
            ) from exc


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

    async def mark_published(self, events: Sequence[Envelope]) -> None:
        ids = [str(e.event_id) for e in events]
        await self.db[EVENTS].update_many(
            {"_id": {"$in": ids}}, {"$set": {"published": True, "published_at": utcnow()}}
        )

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

    async def ping(self) -> None:
        await self.db.command("ping")
