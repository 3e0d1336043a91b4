"""The plan versions grading has graded under, kept in grading's own database, and the
version each incident is pinned to.

A snapshot holds what grading decides by: the plan's id and version (recorded in every
grade event) and its rulebook. The version in force is stored when the service starts, the
first time that version is in force; from then on an incident first graded under it is
decided under that snapshot while it stays open (re-grading on new reports, escalation on
a missed deadline or on confirmed claims), even after the pack has moved to another
version and the service restarted. A reopened incident, like a new one, moves to the
version in force. A version that is already stored with another rulebook stops the start:
a plan that changes must change its `version` in plan.yaml, or incidents pinned to the
old text would be decided by the new one.

The pin is kept on the incident's facts (`plan_id`, `plan_version`), written in the same
unit of work as the first grade or the reopening. An incident graded before pins were kept
is on the version its grade events record, when that version is stored; otherwise on the
version in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from services.grading.domain import Grade, Rulebook
from services.grading.projections import FACTS
from shared.plan import Plan
from shared.plan_rules import PlanStamp
from shared.plan_snapshots import SnapshotStore, content_digest, snapshot_key
from shared.store import Document, UnitOfWork

PLAN_VERSIONS = "plan_versions"


def rulebook_digest(rulebook: Rulebook, confirmed_by: str | None = None) -> str:
    """What grading decides by, hashed: what tells two texts under one version apart. The
    rulebook alone when the rulebook grades (the digest versions before a body's
    confirmation was kept), with the confirming role when a body confirms."""
    if confirmed_by is None:
        return content_digest(rulebook.model_dump(mode="json"))
    return content_digest(
        {"rulebook": rulebook.model_dump(mode="json"), "confirmed_by": confirmed_by}
    )


@dataclass(frozen=True)
class PlanVersion:
    """One version of a plan as grading decides by it."""

    plan_id: str | None
    plan_version: str | None
    rulebook: Rulebook
    # The role whose confirmation makes the rulebook's grade the incident's (plan.yaml
    # `grading.confirmed_by`); None: the rulebook grades.
    confirmed_by: str | None = None

    @property
    def stamp(self) -> PlanStamp:
        return PlanStamp(self.plan_id, self.plan_version)

    @property
    def key(self) -> str:
        return snapshot_key(self.plan_id, self.plan_version)

    @classmethod
    def of(cls, plan: Plan, rulebook: Rulebook) -> PlanVersion:
        role = plan.manifest.grading.confirmed_by
        return cls(plan.id, plan.version, rulebook, role.value if role is not None else None)

    def document(self, name: str, recorded_at: datetime) -> Document:
        return {
            "_id": self.key,
            "plan_id": self.plan_id,
            "plan_version": self.plan_version,
            "plan_name": name,
            "rulebook": self.rulebook.model_dump(mode="json"),
            "rulebook_version": self.rulebook.version,
            "digest": rulebook_digest(self.rulebook, self.confirmed_by),
            "confirmed_by": self.confirmed_by,
            "recorded_at": recorded_at,
        }

    @classmethod
    def from_document(cls, doc: Document) -> PlanVersion:
        return cls(
            doc["plan_id"],
            doc["plan_version"],
            Rulebook.model_validate(doc["rulebook"]),
            doc.get("confirmed_by"),
        )


class PlanVersions:
    """The stored snapshots and the pins. `current` is the version in force."""

    def __init__(self, db: AsyncDatabase[Document], current: PlanVersion) -> None:
        self.db = db
        self.current = current
        self._snapshots = SnapshotStore(db, PLAN_VERSIONS, current, PlanVersion.from_document)

    async def record_current(self, name: str, now: datetime) -> None:
        """Store the version in force unless it is stored already, as it is: PlanError when
        the same version is stored with another rulebook (the plan changed, its version
        did not)."""
        current = self.current
        await self._snapshots.record_current(
            current.document(name, now),
            lambda stored: (
                f"plan {current.plan_id!r} version {current.plan_version!r} was graded under "
                f"with another rulebook or confirming body (stored {stored.get('recorded_at')}, "
                f"rulebook version {stored.get('rulebook_version')!r}, confirmed by "
                f"{stored.get('confirmed_by')!r}): a plan that changes must change its "
                "`version` in plan.yaml, so that open incidents stay on the text they "
                "started with"
            ),
        )

    async def for_incident(self, pin: PlanStamp | None, grade: Grade | None) -> PlanVersion:
        """The version an incident is decided under: its pin (kept on its facts); for an
        incident graded before pins were kept, the version its grade events record; else
        the version in force."""
        if pin is not None:
            pinned = await self._snapshots.stored(pin.plan_id, pin.plan_version)
            if pinned is not None:
                return pinned
        if grade is not None and grade.plan.plan_version is not None:
            recorded = await self._snapshots.stored(grade.plan.plan_id, grade.plan.plan_version)
            if recorded is not None:
                return recorded
        return self.current

    async def pin(self, incident_id: str, version: PlanVersion, uow: UnitOfWork) -> None:
        """From now on the incident is decided under `version`."""
        await self.db[FACTS].update_one(
            {"_id": incident_id},
            {"$set": {"plan_id": version.plan_id, "plan_version": version.plan_version}},
            upsert=True,
            session=uow.session,
        )
