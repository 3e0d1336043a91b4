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

import bson
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
from shared.store import Document, update_before
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
    change: Change = {"$set": {"level": int(p.level), "category": str(p.category), "graded_at": at}}
    if p.unit_ids:  # the grade may come before intake's IncidentOpened (another topic)
        change["$addToSet"] = {"unit_ids": {"$each": list(p.unit_ids)}}
    return change


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

    async def apply(
        self,
        event: Envelope,
        session: AsyncClientSession | None,
        memo: dict[str, Any] | None = None,
    ) -> IncidentChange:
        """The document as it was is read (once a unit of work: a batch's next event about
        the incident takes it as this one left it), and the snapshot after the update is
        the same update applied to that copy (its operators are few and plain)."""
        change = CHANGES.get(type(event.payload))
        if change is None:
            raise ValueError(f"{event.event_type} does not describe an incident")
        update = change(event, event.payload)
        if "status" not in update.get("$set", {}):
            update["$setOnInsert"] = {"status": IncidentStatus.OPEN.value}
        stored_key = _stored_key(event.incident_id)
        if memo is not None and stored_key in memo:
            doc = memo[stored_key]
            await self.collection.update_one(
                {"_id": event.incident_id}, update, upsert=True, session=session
            )
        else:
            doc = await update_before(
                self.collection, event.incident_id, update, session=session, upsert=True
            )
        before = _snapshot(event.incident_id, doc) if doc is not None else None
        # Through BSON as the server would keep it (milliseconds, the client's time zones).
        options = self.collection.codec_options
        stored = bson.decode(bson.encode(updated(doc, update), codec_options=options), options)
        after = _snapshot(event.incident_id, stored)
        if memo is not None:
            memo[_memo_key(event.incident_id)] = after
            memo[stored_key] = stored
        return IncidentChange(before=before, after=after)

    async def get(
        self,
        incident_id: str,
        session: AsyncClientSession | None = None,
        memo: dict[str, Any] | None = None,
    ) -> IncidentSnapshot | None:
        """The snapshot; `memo` (a unit of work's) holds what this transaction applied."""
        if memo is not None and (known := memo.get(_memo_key(incident_id))) is not None:
            return known  # type: ignore[no-any-return]
        doc = await self.collection.find_one({"_id": incident_id}, session=session)
        found = _snapshot(incident_id, doc) if doc is not None else None
        if memo is not None and found is not None:
            memo[_memo_key(incident_id)] = found
        return found


def _memo_key(incident_id: str) -> str:
    return f"{INCIDENTS}:{incident_id}"


def _stored_key(incident_id: str) -> str:
    return f"{INCIDENTS}:stored:{incident_id}"


def _snapshot(incident_id: str, doc: Document) -> IncidentSnapshot:
    fields = {k: v for k, v in doc.items() if k in IncidentSnapshot.model_fields}
    return IncidentSnapshot(**{**fields, "incident_id": incident_id})


def updated(doc: Document | None, update: Change) -> Document:
    """`doc` (None: not there, so inserted) after `update`, as the server applies it: the
    operators the changes above use, `$set`, `$setOnInsert` and `$addToSet` (with `$each`)."""
    after: Document = dict(doc) if doc is not None else {}
    if doc is None:
        after.update(update.get("$setOnInsert", {}))
    after.update(update.get("$set", {}))
    for name, added in update.get("$addToSet", {}).items():
        values = list(after.get(name) or [])
        for value in added["$each"] if isinstance(added, dict) else [added]:
            if value not in values:
                values.append(value)
        after[name] = values
    return after
