"""A service's own picture of the incidents it works on, built from intake and grading events.

Services never read each other's databases, so each that needs an incident's title, units,
level or status keeps this read model in its own database, written in the same
transaction as whatever the service does about the event. Events of the two topics can
arrive in either order (grading may be seen before intake), so every update is an upsert
that touches only the fields its event knows.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
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
    Level,
)
from shared.store import Document

INCIDENTS = "incidents"

UPSTREAM_EVENT_TYPES = tuple(
    cls.EVENT_TYPE
    for cls in (
        IncidentOpened,
        IncidentResolved,
        IncidentDismissed,
        IncidentReopened,
        IncidentGraded,
        IncidentEscalated,
        GradeOverridden,
    )
)


class IncidentStatus(str, Enum):
    OPEN = "open"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"


class IncidentSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    incident_id: str
    title: str | None = None
    unit_ids: tuple[str, ...] = ()
    level: Level | None = None
    category: Category | None = None
    status: IncidentStatus = IncidentStatus.OPEN
    graded_at: datetime | None = None

    @property
    def closed(self) -> bool:
        return self.status is not IncidentStatus.OPEN


class IncidentChange(BaseModel):
    """An incident before and after one upstream event, so a service can react to the step."""

    model_config = ConfigDict(frozen=True)

    before: IncidentSnapshot | None
    after: IncidentSnapshot

    @property
    def level_changed(self) -> bool:
        return self.before is None or self.before.level != self.after.level

    @property
    def more_severe(self) -> bool:
        """Level 1 is the most severe, so a smaller number is a step up."""
        after = self.after.level
        before = self.before.level if self.before else None
        return after is not None and (before is None or after < before)


def _changes(event: Envelope) -> dict[str, Any]:
    payload = event.payload
    match payload:
        case IncidentOpened():
            return {"title": payload.title, "unit_ids": list(payload.unit_ids)}
        case IncidentResolved():
            return {"status": IncidentStatus.RESOLVED.value}
        case IncidentDismissed():
            return {"status": IncidentStatus.DISMISSED.value}
        case IncidentReopened():
            return {"status": IncidentStatus.OPEN.value}
        case IncidentGraded():
            return {
                "level": int(payload.level),
                "category": payload.category.value,
                "graded_at": event.occurred_at,
            }
        case IncidentEscalated() | GradeOverridden():
            return {
                "level": int(payload.to_level),
                "category": payload.category.value,
                "graded_at": event.occurred_at,
            }
    raise ValueError(f"{event.event_type} does not describe an incident")


class IncidentContext:
    """The incidents read model in one service's database."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection = db[INCIDENTS]

    async def apply(self, event: Envelope, session: AsyncClientSession) -> IncidentChange:
        changes = _changes(event)
        before = await self.get(event.incident_id, session=session)
        update: dict[str, Any] = {"$set": changes}
        if "status" not in changes:
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
        fields = {k: v for k, v in doc.items() if k != "_id"}
        return IncidentSnapshot(incident_id=incident_id, **fields)
