"""The notification service's read models: incidents (shared shape) and obligations.

Written in the transaction of the events they reflect; rebuildable from the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.notification.domain import OWED_STATES, Ledger, Obligation, ObligationState
from shared.events import Level
from shared.incident_context import IncidentContext
from shared.store import Document

OBLIGATIONS = "obligations"


@dataclass(frozen=True)
class ObligationFilter:
    incident_id: str | None = None
    unit: str | None = None
    level: Level | None = None
    state: ObligationState | None = None
    overdue: bool | None = None
    visible_units: set[str] | None = None  # None: every unit


def _document(incident_id: str, unit_ids: tuple[str, ...], o: Obligation) -> Document:
    return {
        "_id": o.obligation_id,
        "obligation_id": o.obligation_id,
        "incident_id": incident_id,
        "unit_ids": list(unit_ids),
        "kind": o.kind,
        "title": o.title,
        "level": int(o.level),
        "owner_role": o.owner_role,
        "recipients": list(o.recipients),
        "alert_roles": list(o.alert_roles),
        "counted_from": o.counted_from,
        "deadline": o.deadline,
        "state": o.state.value,
        "missed": o.missed,
        "fulfilled_by": o.fulfilled_by,
        "fulfilled_at": o.fulfilled_at,
        "reference": o.reference,
        "late": o.late,
        "closed_reason": o.closed_reason,
    }


class NotificationProjections:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.incidents = IncidentContext(db)
        self.obligations = db[OBLIGATIONS]

    async def ensure_indexes(self) -> None:
        await self.obligations.create_index([("state", ASCENDING), ("deadline", ASCENDING)])
        await self.obligations.create_index([("incident_id", ASCENDING)])
        await self.obligations.create_index([("unit_ids", ASCENDING)])

    async def write_ledger(
        self, ledger: Ledger, unit_ids: tuple[str, ...], session: AsyncClientSession
    ) -> None:
        for obligation in ledger.obligations.values():
            await self.obligations.replace_one(
                {"_id": obligation.obligation_id},
                _document(ledger.incident_id, unit_ids, obligation),
                upsert=True,
                session=session,
            )

    async def set_units(
        self, incident_id: str, unit_ids: tuple[str, ...], session: AsyncClientSession
    ) -> None:
        """Grading may be seen before intake: obligations learn their units when it arrives."""
        await self.obligations.update_many(
            {"incident_id": incident_id}, {"$set": {"unit_ids": list(unit_ids)}}, session=session
        )

    async def get(self, obligation_id: str) -> Document | None:
        return await self.obligations.find_one({"_id": obligation_id})

    async def past_deadline(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(incident_id, obligation_id) of open duties whose deadline has passed."""
        cursor = self.obligations.find(
            {"state": ObligationState.OPEN.value, "deadline": {"$lte": now}},
            sort=[("deadline", ASCENDING)],
            limit=limit,
        )
        return [(doc["incident_id"], doc["obligation_id"]) async for doc in cursor]

    async def find(self, f: ObligationFilter, now: datetime, limit: int) -> list[Document]:
        clauses: list[dict[str, Any]] = []
        if f.incident_id is not None:
            clauses.append({"incident_id": f.incident_id})
        if f.unit is not None:
            clauses.append({"unit_ids": f.unit})
        if f.visible_units is not None:
            clauses.append({"unit_ids": {"$in": sorted(f.visible_units)}})
        if f.level is not None:
            clauses.append({"level": int(f.level)})
        if f.state is not None:
            clauses.append({"state": f.state.value})
        owed = sorted(s.value for s in OWED_STATES)
        if f.overdue is True:
            clauses.append({"state": {"$in": owed}, "deadline": {"$lte": now}})
        elif f.overdue is False:
            clauses.append({"$or": [{"state": {"$nin": owed}}, {"deadline": {"$gt": now}}]})
        query: dict[str, Any] = {"$and": clauses} if clauses else {}
        cursor = self.obligations.find(
            query, sort=[("deadline", ASCENDING), ("_id", ASCENDING)], limit=limit
        )
        return [doc async for doc in cursor]
