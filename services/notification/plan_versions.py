"""The duty tables notification has run under, one per plan version, kept in its own
database, and the version each incident's duties are opened from.

Grading pins each incident to the plan version of its first grade and names that version in
every grade event (`IncidentGraded`, `IncidentEscalated`: `plan_id`, `plan_version`).
Notification opens an incident's duties, and their deadlines, from the duty table of the
version the event names, not from the plan in force: an incident graded under one version
keeps that version's duties when it is escalated or re-graded after the pack moved on and
the service restarted. A service never reads another's database, so notification keeps its
own snapshots (`duty_versions`): the table in force is stored the first time the service
starts under that version, and a version already stored with another table stops the start
(a plan whose duties change must change its `version` in plan.yaml).

Which version an incident is on (`duty_pins`) is written with the grade event that names
it, in the same unit of work as the duties it opens: a `GradeOverridden` (which names no
version) and a resolution open duties from the pin. A reopened incident moves to the
version in force, as grading moves it. The pin also keeps when the incident was resolved,
so a grade seen only after the resolution still opens the duties owed at closure. Each
`ObligationOpened` records the version whose table opened it; its next round (`every`)
and the duties waiting on it (`after`) open from that same table.

A grade event naming a version notification has never run under (grading restarted on a
new pack before notification did) is not dead-lettered: the duties are opened from the
plan in force, the event is logged as a warning and counted
(`yuqing_duty_plan_version_unknown_total`), and the duties opened record the version whose
table was used. A deadline is owed from the grade whatever the deployment order, and an
analyst replaying the log finds in each `ObligationOpened` the table it came from; a
dead-lettered grade would open nothing until someone replayed it by hand, with its
30-minute quick report already past. An event from before versions were recorded (no
version) is decided by the pin, or the plan in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter
from pymongo.asynchronous.database import AsyncDatabase

from shared.plan_rules import ObligationPolicy, PlanStamp
from shared.plan_snapshots import SnapshotStore, content_digest, snapshot_key
from shared.store import Document, UnitOfWork

log = structlog.get_logger("yuqing.notification")

DUTY_VERSIONS = "duty_versions"
DUTY_PINS = "duty_pins"

UNKNOWN_VERSION = Counter(
    "yuqing_duty_plan_version_unknown_total",
    "Grade events naming a plan version whose duties notification has not stored: their "
    "duties were opened from the plan in force",
    ["plan_id", "plan_version"],
)


def duties_of(policy: ObligationPolicy) -> ObligationPolicy:
    """The duty table alone (no delivery part), as a snapshot stores it."""
    data = policy.model_dump(mode="json", include=set(ObligationPolicy.model_fields))
    return ObligationPolicy.model_validate(data)


def duties_digest(duties: ObligationPolicy) -> str:
    """The table's content, hashed: what tells two tables under one version apart. Fields
    left at their defaults are left out, so a field added later changes no stored digest."""
    return content_digest(duties.model_dump(mode="json", exclude_defaults=True))


@dataclass(frozen=True)
class DutyTable:
    """One version of a plan's duties."""

    plan_id: str | None
    plan_version: str | None
    duties: ObligationPolicy

    @property
    def stamp(self) -> PlanStamp:
        return PlanStamp(self.plan_id, self.plan_version)

    @property
    def key(self) -> str:
        return snapshot_key(self.plan_id, self.plan_version)

    def document(self, recorded_at: datetime) -> Document:
        return {
            "_id": self.key,
            "plan_id": self.plan_id,
            "plan_version": self.plan_version,
            "duties": self.duties.model_dump(mode="json"),
            "duties_version": self.duties.version,
            "digest": duties_digest(self.duties),
            "recorded_at": recorded_at,
        }

    @classmethod
    def from_document(cls, doc: Document) -> DutyTable:
        duties = ObligationPolicy.model_validate(doc["duties"])
        return cls(doc["plan_id"], doc["plan_version"], duties)


class DutyVersions:
    """The stored duty tables and the incidents' pins. `current` is the table in force."""

    def __init__(self, db: AsyncDatabase[Document], current: DutyTable) -> None:
        self.db = db
        self.current = current
        self._tables = SnapshotStore(db, DUTY_VERSIONS, current, DutyTable.from_document)

    async def record_current(self, now: datetime) -> None:
        """Store the table in force unless it is stored already: PlanError when the same
        version is stored with other duties (the duties changed, the version did not)."""
        current = self.current
        await self._tables.record_current(
            current.document(now),
            lambda stored: (
                f"plan {current.plan_id!r} version {current.plan_version!r} opened duties "
                f"from another duty table (stored {stored.get('recorded_at')}, duties version "
                f"{stored.get('duties_version')!r}): a plan whose duties change must change "
                "its `version` in plan.yaml, so that open incidents keep the duties they "
                "started with"
            ),
        )

    async def table(
        self, plan_id: str | None, plan_version: str | None, **context: Any
    ) -> DutyTable:
        """The table of a version; the one in force for a version never stored (logged and
        counted) or none named."""
        if plan_version is None:
            return self.current
        found = await self._tables.stored(plan_id, plan_version)
        if found is not None:
            return found
        UNKNOWN_VERSION.labels(str(plan_id), plan_version).inc()
        log.warning(
            "grade names a plan version whose duties are not stored: duties opened from "
            "the plan in force",
            plan_id=plan_id,
            plan_version=plan_version,
            in_force=self.current.key,
            **context,
        )
        return self.current

    async def for_grade(
        self,
        incident_id: str,
        plan_id: str | None,
        plan_version: str | None,
        uow: UnitOfWork,
    ) -> DutyTable:
        """The table a grade event's duties open from: the version it names (pinned to the
        incident from now on), or, when it names none, the incident's pin."""
        if plan_version is None:
            return await self.pinned(incident_id, uow)
        await self.pin(incident_id, plan_id, plan_version, uow)
        return await self.table(plan_id, plan_version, incident_id=incident_id)

    async def pinned(self, incident_id: str, uow: UnitOfWork) -> DutyTable:
        """The table of the version the incident is pinned to; the one in force when it has
        no pin."""
        doc = await self.db[DUTY_PINS].find_one({"_id": incident_id}, session=uow.session)
        if doc is None or "plan_version" not in doc:
            return self.current
        return await self.table(doc.get("plan_id"), doc["plan_version"], incident_id=incident_id)

    async def pin(
        self, incident_id: str, plan_id: str | None, plan_version: str | None, uow: UnitOfWork
    ) -> None:
        await self.db[DUTY_PINS].update_one(
            {"_id": incident_id},
            {"$set": {"plan_id": plan_id, "plan_version": plan_version}},
            upsert=True,
            session=uow.session,
        )

    async def mark_resolved(
        self, incident_id: str, resolved_at: datetime | None, uow: UnitOfWork
    ) -> None:
        """When the incident was resolved (None: reopened), kept beside its pin: a grade
        seen only after the resolution (another topic) still opens the duties owed at
        closure, counted from it."""
        change = (
            {"$set": {"resolved_at": resolved_at}}
            if resolved_at is not None
            else {"$unset": {"resolved_at": ""}}
        )
        await self.db[DUTY_PINS].update_one(
            {"_id": incident_id}, change, upsert=True, session=uow.session
        )

    async def resolved_at(self, incident_id: str, uow: UnitOfWork) -> datetime | None:
        doc = await self.db[DUTY_PINS].find_one({"_id": incident_id}, session=uow.session)
        found = doc.get("resolved_at") if doc is not None else None
        if isinstance(found, datetime) and found.tzinfo is None:
            found = found.replace(tzinfo=UTC)
        return found if isinstance(found, datetime) else None

    async def of_stamp(self, stamp: PlanStamp) -> DutyTable:
        """The table a duty was opened from (its next round and the duties waiting on it
        open from it too); the one in force for a duty opened before versions were kept."""
        return await self.table(stamp.plan_id, stamp.plan_version)
