"""A service's own picture of the incidents it works on, built from intake and grading events.

Services never read each other's databases, so each that needs an incident's title, units,
level or status keeps this read model in its own database, written in the same
transaction as whatever the service does about the event. Events of the two topics can
arrive in either order (grading may be seen before intake), so every update is an upsert
that touches only the fields its event knows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from shared.events import (
    Category,
    Envelope,
    GradeOverridden,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    IncidentStatus,
    Level,
    ReportReceived,
)
from shared.store import Document
from shared.visibility import IncidentScope

INCIDENTS = "incidents"


class IncidentSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    incident_id: str
    title: str | None = None
    unit_ids: tuple[str, ...] = ()
    level: Level | None = None
    category: Category | None = None
    status: IncidentStatus = IncidentStatus.OPEN
    graded_at: datetime | None = None
    filed_by: tuple[str, ...] = ()

    @property
    def closed(self) -> bool:
        return self.status is not IncidentStatus.OPEN

    @property
    def scope(self) -> IncidentScope:
        return IncidentScope(self.incident_id, self.unit_ids, self.filed_by)


class IncidentChange(BaseModel):
    """An incident before and after one upstream event, so a service can react to the step."""

    model_config = ConfigDict(frozen=True)

    before: IncidentSnapshot | None
    after: IncidentSnapshot

    @property
    def more_severe(self) -> bool:
        """Level 1 is the most severe, so a smaller number is a step up."""
        after = self.after.level
        before = self.before.level if self.before else None
        return after is not None and (before is None or after < before)


Change = dict[str, Any]


def _opened(event: Envelope, p: IncidentOpened) -> Change:
    return {"$set": {"title": p.title}, "$addToSet": {"unit_ids": {"$each": list(p.unit_ids)}}}


def _report(event: Envelope, p: ReportReceived) -> Change:
    # A report may name further units, and its filer may see the incident it referred.
    return {
        "$addToSet": {"unit_ids": {"$each": list(p.unit_ids)}, "filed_by": p.filed_by},
    }


def _status(status: IncidentStatus) -> Callable[[Envelope, Any], Change]:
    def change(event: Envelope, _: Any) -> Change:
        return {"$set": {"status": status.value}}

    return change


def _graded(event: Envelope, p: IncidentGraded) -> Change:
    at = event.occurred_at
    return {"$set": {"level": int(p.level), "category": str(p.category), "graded_at": at}}


def _regraded(event: Envelope, p: IncidentEscalated | GradeOverridden) -> Change:
    return {
        "$set": {
            "level": int(p.to_level),
            "category": str(p.category),
            "graded_at": event.occurred_at,
        }
    }


# Each upstream event type and the update it makes to the incident's snapshot.
CHANGES: dict[type[Any], Callable[[Envelope, Any], Change]] = {
    IncidentOpened: _opened,
    ReportReceived: _report,
    IncidentResolved: _status(IncidentStatus.RESOLVED),
    IncidentDismissed: _status(IncidentStatus.DISMISSED),
    IncidentReopened: _status(IncidentStatus.OPEN),
    IncidentGraded: _graded,
    IncidentEscalated: _regraded,
    GradeOverridden: _regraded,
}
UPSTREAM_TYPES = tuple(CHANGES)


class IncidentContext:
    """The incidents read model in one service's database."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection = db[INCIDENTS]

    async def apply(self, event: Envelope, session: AsyncClientSession | None) -> IncidentChange:
        change = CHANGES.get(type(event.payload))
        if change is None:
            raise ValueError(f"{event.event_type} does not describe an incident")
        update = change(event, event.payload)
        before = await self.get(event.incident_id, session=session)
        if "status" not in update.get("$set", {}):
            update["$setOnInsert"] = {"status": IncidentStatus.OPEN.value}
        await self.collection.update_one(
            {"_id": event.incident_id}, update, upsert=True, session=session
        )
        after = await self.get(event.incident_id, session=session)
        assert after is not None
        return IncidentChange(before=before, after=after)

    async def get(
        self, incident_id: str, session: AsyncClientSession | None = None
    ) -> IncidentSnapshot | None:
        doc = await self.collection.find_one({"_id": incident_id}, session=session)
        if doc is None:
            return None
        fields = {k: v for k, v in doc.items() if k in IncidentSnapshot.model_fields}
        return IncidentSnapshot(**{**fields, "incident_id": incident_id})
