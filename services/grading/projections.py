"""Grading's read models, written in the transaction of the events behind them.

- `facts`: per incident, what grading learnt from intake: its units, who filed for it,
  whether it was dismissed, and how many reports it has; each report (as ReportFacts) is a
  document of `report_facts`, in arrival order (`order`), so an incident of any number of
  reports never outgrows a MongoDB document. Grading decides on them; they can be rebuilt
  by replaying the intake topic.
- `grades`: per incident, the current grade and its history, for people to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.grading.domain import ReportFacts
from services.grading.whatif import (
    GradeStep,
    RecordedDecision,
    RecordedDuty,
    RecordedIncident,
    RecordedInstruction,
)
from shared.events import (
    Actor,
    Category,
    DutyDecided,
    Envelope,
    FiredRule,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    IncidentGradeProposed,
    LeaderInstructionRecorded,
    Level,
    MediaTier,
    ObligationFulfilled,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
)
from shared.plan_rules import PlanStamp
from shared.store import Document, UnitOfWork, update_before
from shared.visibility import IncidentScope, scope_of

FACTS = "facts"
REPORT_FACTS = "report_facts"
GRADES = "grades"
# The duties notification opened on each incident and when each was met: what a what-if
# (services/grading/whatif.py) compares a candidate plan's deadlines with.
DUTIES = "duties"


@dataclass(frozen=True)
class IncidentFacts:
    incident_id: str
    reports: tuple[ReportFacts, ...]
    unit_ids: tuple[str, ...]
    dismissed: bool
    # The plan version the incident is pinned to (plan_versions.py); None before a pin.
    pin: PlanStamp | None = None
    # Resolved and not reopened: a report attached during its watch (善后跟踪, `attach`)
    # is counted, and changes the grade of a closed matter no more than of a dismissed one.
    resolved: bool = False
    # The reports filed while it was dismissed or resolved: they count once it is reopened.
    held: tuple[str, ...] = ()

    @property
    def closed(self) -> bool:
        return self.dismissed or self.resolved


class GradeHistoryEntry(BaseModel):
    """One step of an incident's grade: graded, escalated or overridden, and why."""

    event_type: str
    event_id: str
    at: datetime
    actor: Actor
    level: Level
    from_level: Level | None = None
    category: Category
    reason: str | None = None
    rules_fired: tuple[FiredRule, ...] = ()


class InstructionView(BaseModel):
    """A leader's instruction (批示; `signed`: 签批) on the incident."""

    instruction_id: str
    text: str
    signed: bool
    instructed_by: str
    at: datetime


class GradeView(BaseModel):
    """An incident's current grade, the rules behind it and how it came to be."""

    incident_id: str
    level: Level
    category: Category
    rules_fired: tuple[FiredRule, ...]
    rulebook_version: str
    plan_id: str | None = None
    plan_version: str | None = None
    sensitive_topics: tuple[str, ...] = ()
    unit_ids: tuple[str, ...] = ()
    dismissed: bool = False
    graded_at: datetime
    updated_at: datetime
    version: int
    history: tuple[GradeHistoryEntry, ...]
    # Under a plan whose grade a body confirms: the level above is proposed until a person
    # with `confirm_role` confirms it; `confirmed_by` who did.
    proposed: bool = False
    confirm_role: str | None = None
    confirmed_by: str | None = None
    instructions: tuple[InstructionView, ...] = ()


def _facts_doc(report: ReportFacts) -> Document:
    return {
        "report_id": report.report_id,
        "source_name": report.source_name,
        "media_tier": report.media_tier.value,
        "normalized_url": report.normalized_url,
        "reach": report.reach.model_dump(),
        "text": report.text,
        "claims_unconfirmed": report.claims_unconfirmed,
        "source_type": report.source_type.value if report.source_type else None,
        "published_at": report.published_at,
        "observed_at": report.observed_at,
    }


def _report_key(incident_id: str, report_id: str) -> str:
    return f"{incident_id}/{report_id}"


def _count_memo(incident_id: str) -> str:
    return f"grading.report_count:{incident_id}"


def _facts_of(doc: Document) -> ReportFacts:
    return ReportFacts(
        report_id=doc["report_id"],
        source_name=doc["source_name"],
        media_tier=MediaTier(doc["media_tier"]),
        normalized_url=doc["normalized_url"],
        reach=Reach.model_validate(doc["reach"]),
        text=doc["text"],
        claims_unconfirmed=bool(doc.get("claims_unconfirmed", False)),
        source_type=SourceType(doc["source_type"]) if doc.get("source_type") else None,
        published_at=_aware(doc.get("published_at")),
        observed_at=_aware(doc.get("observed_at")),
    )


def _aware(value: object) -> datetime | None:
    # MongoDB gives back naive UTC unless the client is told otherwise.
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _rules(rules: Sequence[FiredRule]) -> list[Document]:
    return [{"rule_id": r.rule_id, "reason": r.reason} for r in rules]


class GradingViews:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db

    # ------------------------------------------------------------------ facts

    async def ensure_indexes(self) -> None:
        await self.db[REPORT_FACTS].create_index([("incident_id", ASCENDING), ("order", ASCENDING)])
        await self._move_embedded_reports()

    async def _move_embedded_reports(self) -> None:
        """Facts stored before reports had documents of their own embed them all: give each
        its document, in the order it was embedded, and count them."""
        cursor = self.db[FACTS].find({"reports": {"$exists": True}}, {"reports": 1})
        async for doc in cursor:
            embedded: list[Document] = doc.get("reports") or []
            for order, report in enumerate(embedded, start=1):
                await self.db[REPORT_FACTS].replace_one(
                    {"_id": _report_key(doc["_id"], report["report_id"])},
                    {**report, "incident_id": doc["_id"], "order": order},
                    upsert=True,
                )
            await self.db[FACTS].update_one(
                {"_id": doc["_id"]},
                {"$set": {"report_count": len(embedded)}, "$unset": {"reports": ""}},
            )

    async def _reports(
        self, incident_id: str, session: AsyncClientSession | None = None
    ) -> tuple[ReportFacts, ...]:
        cursor = self.db[REPORT_FACTS].find(
            {"incident_id": incident_id}, sort=[("order", ASCENDING)], session=session
        )
        return tuple([_facts_of(doc) async for doc in cursor])

    async def facts(self, incident_id: str, uow: UnitOfWork) -> IncidentFacts:
        doc = await self.db[FACTS].find_one({"_id": incident_id}, session=uow.session) or {}
        # The count only add_report moves: its next report's `order`, without reading again.
        uow.memo[_count_memo(incident_id)] = int(doc.get("report_count", 0))
        return IncidentFacts(
            incident_id=incident_id,
            reports=await self._reports(incident_id, uow.session),
            unit_ids=tuple(doc.get("unit_ids", [])),
            dismissed=bool(doc.get("dismissed", False)),
            resolved=bool(doc.get("resolved", False)),
            held=tuple(doc.get("held", [])),
            pin=(
                PlanStamp(doc.get("plan_id"), doc["plan_version"])
                if "plan_version" in doc
                else None
            ),
        )

    async def add_report(
        self, incident_id: str, report: ReportReceived, uow: UnitOfWork, *, held: bool = False
    ) -> None:
        update: Document = {
            "$inc": {"report_count": 1},
            **({"$push": {"held": report.report_id}} if held else {}),
            "$addToSet": {
                "unit_ids": {"$each": list(report.unit_ids)},
                "filed_by": report.filed_by,
            },
        }
        # The count this transaction read already (`facts`): a writer that moved it since
        # makes this write conflict, as update_before's own read would.
        count = uow.memo.pop(_count_memo(incident_id), None)
        if count is None:
            before = await update_before(
                self.db[FACTS], incident_id, update, session=uow.session, upsert=True
            )
            count = int((before or {}).get("report_count", 0))
        else:
            await self.db[FACTS].update_one(
                {"_id": incident_id}, update, upsert=True, session=uow.session
            )
        await self.db[REPORT_FACTS].insert_one(
            {
                "_id": _report_key(incident_id, report.report_id),
                **_facts_doc(ReportFacts.of(report)),
                "incident_id": incident_id,
                "order": count + 1,
            },
            session=uow.session,
        )
        await self.db[GRADES].update_one(
            {"_id": incident_id},
            {
                "$addToSet": {
                    "unit_ids": {"$each": list(report.unit_ids)},
                    "filed_by": report.filed_by,
                }
            },
            session=uow.session,
        )

    async def confirm_claims(
        self, incident_id: str, confirmed: ReportFacts, uow: UnitOfWork
    ) -> None:
        """A report's partner claims, as the office confirmed them, now count."""
        await self.db[REPORT_FACTS].update_one(
            {"_id": _report_key(incident_id, confirmed.report_id)},
            {"$set": _facts_doc(confirmed)},
            session=uow.session,
        )

    async def set_dismissed(self, incident_id: str, dismissed: bool, uow: UnitOfWork) -> None:
        await self.db[FACTS].update_one(
            {"_id": incident_id},
            {"$set": {"dismissed": dismissed}},
            upsert=True,
            session=uow.session,
        )
        await self.db[GRADES].update_one(
            {"_id": incident_id}, {"$set": {"dismissed": dismissed}}, session=uow.session
        )

    async def set_resolved(
        self, incident_id: str, resolved: bool, uow: UnitOfWork, *, at: datetime | None = None
    ) -> None:
        # Each resolution's time is kept (`resolutions`): a what-if counts from it.
        update: Document = {"$set": {"resolved": resolved}}
        if at is not None:
            update["$push"] = {"resolutions": at}
        await self.db[FACTS].update_one(
            {"_id": incident_id}, update, upsert=True, session=uow.session
        )

    async def duty_decided(self, event: Envelope, decided: DutyDecided, uow: UnitOfWork) -> None:
        """Whether a duty `opens_on: decided` was owed, and when: what a what-if reads."""
        decision = {"kind": decided.kind, "decision": decided.decision, "at": event.occurred_at}
        await self.db[FACTS].update_one(
            {"_id": event.incident_id},
            {"$push": {"decisions": decision}},
            upsert=True,
            session=uow.session,
        )

    async def reopen(self, incident_id: str, uow: UnitOfWork) -> None:
        """Open again: neither dismissed nor resolved, and the held reports counted."""
        await self.db[FACTS].update_one(
            {"_id": incident_id},
            {"$set": {"dismissed": False, "resolved": False, "held": []}},
            upsert=True,
            session=uow.session,
        )
        await self.db[GRADES].update_one(
            {"_id": incident_id}, {"$set": {"dismissed": False}}, session=uow.session
        )

    async def scope(self, incident_id: str) -> IncidentScope | None:
        """Whose incident it is, for visibility: every incident grading knows has facts."""
        doc = await self.db[FACTS].find_one({"_id": incident_id})
        if doc is None:
            return None
        return scope_of(incident_id, doc.get("unit_ids", []), doc.get("filed_by", []))

    # ------------------------------------------------------------------ grades

    async def apply(self, event: Envelope, uow: UnitOfWork) -> None:
        """The grade stream's projector, run by the repository as each event is saved."""
        entry: Document = {
            "event_type": event.event_type,
            "event_id": str(event.event_id),
            "at": event.occurred_at,
            "actor": event.actor.model_dump(),
        }
        current: Document = {"version": event.stream_version, "updated_at": event.occurred_at}
        match event.payload:
            case LeaderInstructionRecorded() as given:
                instruction = {
                    "instruction_id": given.instruction_id,
                    "text": given.text,
                    "signed": given.signed,
                    "instructed_by": given.instructed_by,
                    "at": event.occurred_at,
                }
                await self.db[GRADES].update_one(
                    {"_id": event.incident_id},
                    {"$set": current, "$push": {"instructions": instruction}},
                    session=uow.session,
                )
                return
            case IncidentGraded() | IncidentGradeProposed() as graded:
                facts = await self.db[FACTS].find_one(
                    {"_id": event.incident_id}, session=uow.session
                )
                facts = facts or {}
                entry.update(
                    level=int(graded.level), reason=None, rules_fired=_rules(graded.rules_fired)
                )
                current.update(
                    incident_id=event.incident_id,
                    graded_at=event.occurred_at,
                    rulebook_version=graded.rulebook_version,
                    plan_id=graded.plan_id,
                    plan_version=graded.plan_version,
                    rules_fired=_rules(graded.rules_fired),
                    sensitive_topics=list(graded.sensitive_topics),
                    unit_ids=facts.get("unit_ids", []),
                    filed_by=facts.get("filed_by", []),
                    dismissed=bool(facts.get("dismissed", False)),
                )
                if isinstance(graded, IncidentGradeProposed):
                    current.update(proposed=True, confirm_role=graded.confirm_role)
                else:
                    current.update(proposed=False, confirmed_by=graded.confirmed_by)
                    entry.update(reason=graded.confirmation_reason)
                category = graded.category
            case IncidentEscalated() as escalated:
                entry.update(
                    from_level=int(escalated.from_level),
                    level=int(escalated.to_level),
                    reason=escalated.reason,
                    rules_fired=_rules(escalated.rules_fired),
                )
                current.update(
                    rulebook_version=escalated.rulebook_version,
                    plan_id=escalated.plan_id,
                    plan_version=escalated.plan_version,
                )
                category = escalated.category
            case GradeOverridden() as overridden:
                entry.update(
                    from_level=int(overridden.from_level),
                    level=int(overridden.to_level),
                    reason=overridden.reason,
                )
                category = overridden.category
            case _:
                return
        entry["category"] = str(category)
        current.update(level=entry["level"], category=str(category))
        await self.db[GRADES].update_one(
            {"_id": event.incident_id},
            {"$set": current, "$push": {"history": entry}},
            upsert=True,
            session=uow.session,
        )

    async def grade(self, incident_id: str) -> GradeView | None:
        doc = await self.db[GRADES].find_one({"_id": incident_id})
        if doc is None:
            return None
        return GradeView.model_validate(
            {k: v for k, v in doc.items() if k in GradeView.model_fields}
        )

    # ------------------------------------------------------------------ duties

    async def duty_opened(self, event: Envelope, opened: ObligationOpened, uow: UnitOfWork) -> None:
        await self.db[DUTIES].update_one(
            {"_id": opened.obligation_id},
            {
                "$set": {
                    "incident_id": event.incident_id,
                    "kind": opened.kind,
                    "level": int(opened.level),
                    "counted_from": opened.counted_from,
                    "deadline": opened.deadline,
                }
            },
            upsert=True,
            session=uow.session,
        )

    async def duty_fulfilled(
        self, event: Envelope, fulfilled: ObligationFulfilled, uow: UnitOfWork
    ) -> None:
        await self.db[DUTIES].update_one(
            {"_id": fulfilled.obligation_id},
            {"$set": {"incident_id": event.incident_id, "fulfilled_at": fulfilled.fulfilled_at}},
            upsert=True,
            session=uow.session,
        )

    async def recorded_since(
        self, since: datetime, limit: int
    ) -> list[tuple[IncidentScope, RecordedIncident]]:
        """Incidents graded at or after `since`, oldest first, as grading recorded them
        (reports, grade history, duties and when they were met): what a what-if replays.
        Only reads."""
        found: list[tuple[IncidentScope, RecordedIncident]] = []
        cursor = self.db[GRADES].find({"graded_at": {"$gte": since}}, sort=[("graded_at", 1)])
        async for doc in cursor.limit(limit):
            incident_id = doc["_id"]
            facts = await self.db[FACTS].find_one({"_id": incident_id}) or {}
            duties = self.db[DUTIES].find({"incident_id": incident_id, "kind": {"$exists": True}})
            recorded = RecordedIncident(
                incident_id=incident_id,
                graded_at=doc["graded_at"],
                level=int(doc["level"]),
                category=Category(doc["category"]),
                plan_id=doc.get("plan_id"),
                plan_version=doc.get("plan_version"),
                history=tuple(
                    GradeStep(at=step["at"], level=int(step["level"]), event=step["event_type"])
                    for step in doc.get("history", [])
                ),
                instructions=tuple(
                    RecordedInstruction(at=given["at"], signed=bool(given["signed"]))
                    for given in doc.get("instructions", [])
                ),
                resolved_at=min(facts.get("resolutions", []), default=None),
                decisions=tuple(
                    RecordedDecision(kind=d["kind"], decision=bool(d["decision"]), at=d["at"])
                    for d in facts.get("decisions", [])
                ),
                reports=await self._reports(incident_id),
                duties=tuple(
                    [
                        RecordedDuty(
                            kind=d["kind"],
                            deadline=d["deadline"],
                            fulfilled_at=d.get("fulfilled_at"),
                        )
                        async for d in duties
                    ]
                ),
            )
            scope = scope_of(incident_id, facts.get("unit_ids", []), facts.get("filed_by", []))
            found.append((scope, recorded))
        return found
