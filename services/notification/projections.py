"""The notification service's read models: incidents (the shared shape) and obligations.

The obligations rows are written by `on_obligation_event`, which the obligations
repository runs with every save, in the transaction of the events it reflects; they can
be rebuilt from the log.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import bson
from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.notification.domain import (
    OWED_STATES,
    Obligation,
    evolve_obligation,
    obligation_of,
)
from shared.events import DutyDecided, Envelope, Level, ObligationOpened, ObligationState
from shared.incident_context import IncidentContext
from shared.paging import Key
from shared.paging import after as keyset_after
from shared.store import Document, UnitOfWork
from shared.visibility import IncidentScope

OBLIGATIONS = "obligations"


class ObligationRow(BaseModel):
    """One duty as stored for the list: the obligation, its incident and that incident's
    units (what visibility filters on)."""

    model_config = ConfigDict(frozen=True)

    incident_id: str
    unit_ids: tuple[str, ...] = ()
    obligation_id: str
    kind: str
    title: str
    level: Level
    owner_role: str
    recipients: tuple[str, ...]
    alert_roles: tuple[str, ...]
    counted_from: datetime
    deadline: datetime
    opened_event_id: uuid.UUID
    correlation_id: uuid.UUID
    state: ObligationState
    missed: bool
    fulfilled_by: str | None
    fulfilled_at: datetime | None
    reference: str | None
    late: bool
    closed_reason: str | None
    plan_id: str | None = None
    plan_version: str | None = None

    @classmethod
    def of(cls, incident_id: str, unit_ids: tuple[str, ...], o: Obligation) -> ObligationRow:
        return cls(incident_id=incident_id, unit_ids=unit_ids, **asdict(o))

    @property
    def obligation(self) -> Obligation:
        fields = self.model_dump(exclude={"incident_id", "unit_ids"})
        return Obligation(**fields)

    def document(self) -> Document:
        doc = self.model_dump()
        doc.update(
            _id=self.obligation_id,
            level=int(self.level),
            state=self.state.value,
            recipients=list(self.recipients),
            alert_roles=list(self.alert_roles),
            unit_ids=list(self.unit_ids),
            opened_event_id=str(self.opened_event_id),
            correlation_id=str(self.correlation_id),
        )
        return doc

    @classmethod
    def from_document(cls, doc: Document) -> ObligationRow:
        return cls.model_validate({k: v for k, v in doc.items() if k != "_id"})


@dataclass(frozen=True)
class ObligationFilter:
    incident_id: str | None = None
    unit: str | None = None
    level: Level | None = None
    state: ObligationState | None = None
    overdue: bool | None = None
    scope: dict[str, Any] | None = None  # the caller's sight, as a query; None: everything


class NotificationProjections:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.incidents = IncidentContext(db)
        self.obligations = db[OBLIGATIONS]

    async def ensure_indexes(self) -> None:
        await self.obligations.create_index([("state", ASCENDING), ("deadline", ASCENDING)])
        await self.obligations.create_index([("incident_id", ASCENDING)])
        await self.obligations.create_index([("unit_ids", ASCENDING)])

    async def on_obligation_event(self, event: Envelope, uow: UnitOfWork) -> None:
        """The duty an event of the obligations stream names, as it stands after it (a
        decision names none: the duty it opens is its own event)."""
        if isinstance(event.payload, DutyDecided):
            return
        # A duty is opened by its own event: nothing stands before it to read.
        before = (
            None
            if isinstance(event.payload, ObligationOpened)
            else await self.obligation(obligation_of(event), session=uow.session, memo=uow.memo)
        )
        after = evolve_obligation(before.obligation if before else None, event)
        incident = await self.incidents.get(event.incident_id, session=uow.session, memo=uow.memo)
        units = incident.unit_ids if incident else before.unit_ids if before else ()
        row = ObligationRow.of(event.incident_id, units, after)
        await self.obligations.replace_one(
            {"_id": row.obligation_id}, row.document(), upsert=True, session=uow.session
        )
        # As a read would give it back (through BSON: milliseconds, the client's time zones).
        options = self.obligations.codec_options
        stored = bson.decode(bson.encode(row.document(), codec_options=options), options)
        uow.memo[_memo_key(row.obligation_id)] = ObligationRow.from_document(stored)

    async def set_units(
        self, incident_id: str, unit_ids: tuple[str, ...], session: AsyncClientSession | None
    ) -> None:
        """Grading may be seen before intake: obligations learn their units when it arrives."""
        await self.obligations.update_many(
            {"incident_id": incident_id}, {"$set": {"unit_ids": list(unit_ids)}}, session=session
        )

    async def obligation(
        self,
        obligation_id: str,
        session: AsyncClientSession | None = None,
        memo: dict[str, Any] | None = None,
    ) -> ObligationRow | None:
        """A duty's row; `memo` (a unit of work's) holds the rows this transaction wrote."""
        if memo is not None and (known := memo.get(_memo_key(obligation_id))) is not None:
            return known  # type: ignore[no-any-return]
        doc = await self.obligations.find_one({"_id": obligation_id}, session=session)
        return ObligationRow.from_document(doc) if doc is not None else None

    async def scope(self, incident_id: str, units: tuple[str, ...] = ()) -> IncidentScope:
        """What visibility decides on for an incident: its snapshot, or the units a row of
        it knows when the snapshot is missing."""
        incident = await self.incidents.get(incident_id)
        return incident.scope if incident is not None else IncidentScope(incident_id, units)

    async def past_deadline(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(incident_id, obligation_id) of open duties whose deadline has passed."""
        cursor = self.obligations.find(
            {"state": ObligationState.OPEN.value, "deadline": {"$lte": now}},
            sort=[("deadline", ASCENDING)],
            limit=limit,
        )
        return [(doc["incident_id"], doc["obligation_id"]) async for doc in cursor]

    async def owed_by_level(self, now: datetime) -> dict[tuple[int, bool], int]:
        """How many duties are still owed, by (level, deadline passed): the figures an
        operator's alert on an overdue duty reads. Owed duties are few, so they are
        counted here rather than by an aggregation every server may not run alike."""
        owed = sorted(s.value for s in OWED_STATES)
        counts: dict[tuple[int, bool], int] = {}
        cursor = self.obligations.find({"state": {"$in": owed}}, {"level": 1, "deadline": 1})
        async for doc in cursor:
            deadline = doc.get("deadline")
            if isinstance(deadline, datetime) and deadline.tzinfo is None:
                deadline = deadline.replace(tzinfo=UTC)
            key = (int(doc["level"]), isinstance(deadline, datetime) and deadline <= now)
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def find(
        self, f: ObligationFilter, now: datetime, limit: int, after: Key | None = None
    ) -> tuple[list[ObligationRow], int]:
        """Up to `limit` duties matching `f`, soonest deadline first (then by id), after the
        key (deadline, obligation id) of the last one a page showed; and how many match in
        all, on every page."""
        clauses = self._clauses(f, now)
        matching: dict[str, Any] = {"$and": clauses} if clauses else {}
        if after is not None:
            clauses = [*clauses, keyset_after(after, "deadline")]
        query: dict[str, Any] = {"$and": clauses} if clauses else {}
        cursor = self.obligations.find(
            query, sort=[("deadline", ASCENDING), ("_id", ASCENDING)], limit=limit
        )
        rows = [ObligationRow.from_document(doc) async for doc in cursor]
        total = await self.obligations.count_documents(matching)
        return rows, total

    @staticmethod
    def _clauses(f: ObligationFilter, now: datetime) -> list[dict[str, Any]]:
        clauses: list[dict[str, Any]] = []
        if f.scope:
            clauses.append(f.scope)
        if f.incident_id is not None:
            clauses.append({"incident_id": f.incident_id})
        if f.unit is not None:
            clauses.append({"unit_ids": f.unit})
        if f.level is not None:
            clauses.append({"level": int(f.level)})
        if f.state is not None:
            clauses.append({"state": f.state.value})
        owed = sorted(s.value for s in OWED_STATES)
        if f.overdue is True:
            clauses.append({"state": {"$in": owed}, "deadline": {"$lte": now}})
        elif f.overdue is False:
            clauses.append({"$or": [{"state": {"$nin": owed}}, {"deadline": {"$gt": now}}]})
        return clauses


def _memo_key(obligation_id: str) -> str:
    return f"{OBLIGATIONS}:{obligation_id}"
