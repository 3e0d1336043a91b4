"""Grading's read models, written in the transaction of the events behind them.

- `facts`: per incident, what grading learnt from intake: its reports (as ReportFacts),
  units, who filed them, and whether it was dismissed. Grading decides on it; it can be
  rebuilt by replaying the intake topic.
- `grades`: per incident, the current grade and its history, for people to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.grading.domain import ReportFacts
from shared.events import (
    Envelope,
    FiredRule,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    MediaTier,
    Reach,
    ReportReceived,
)
from shared.store import Document

FACTS = "facts"
GRADES = "grades"


@dataclass(frozen=True)
class IncidentFacts:
    incident_id: str
    reports: tuple[ReportFacts, ...]
    unit_ids: tuple[str, ...]
    dismissed: bool


def _facts_doc(report: ReportFacts) -> Document:
    return {
        "report_id": report.report_id,
        "source_name": report.source_name,
        "media_tier": report.media_tier.value,
        "normalized_url": report.normalized_url,
        "reach": report.reach.model_dump(),
        "text": report.text,
    }


def _facts_of(doc: Document) -> ReportFacts:
    return ReportFacts(
        report_id=doc["report_id"],
        source_name=doc["source_name"],
        media_tier=MediaTier(doc["media_tier"]),
        normalized_url=doc["normalized_url"],
        reach=Reach.model_validate(doc["reach"]),
        text=doc["text"],
    )


class GradingViews:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db

    # ------------------------------------------------------------------ facts

    async def facts(self, incident_id: str, session: AsyncClientSession) -> IncidentFacts:
        doc = await self.db[FACTS].find_one({"_id": incident_id}, session=session) or {}
        return IncidentFacts(
            incident_id=incident_id,
            reports=tuple(_facts_of(r) for r in doc.get("reports", [])),
            unit_ids=tuple(doc.get("unit_ids", [])),
            dismissed=bool(doc.get("dismissed", False)),
        )

    async def add_report(
        self, incident_id: str, report: ReportReceived, session: AsyncClientSession
    ) -> None:
        await self.db[FACTS].update_one(
            {"_id": incident_id},
            {
                "$push": {"reports": _facts_doc(ReportFacts.of(report))},
                "$addToSet": {
                    "unit_ids": {"$each": list(report.unit_ids)},
                    "filed_by": report.filed_by,
                },
            },
            upsert=True,
            session=session,
        )
        await self.db[GRADES].update_one(
            {"_id": incident_id},
            {
                "$addToSet": {
                    "unit_ids": {"$each": list(report.unit_ids)},
                    "filed_by": report.filed_by,
                }
            },
            session=session,
        )

    async def set_dismissed(
        self, incident_id: str, dismissed: bool, session: AsyncClientSession
    ) -> None:
        await self.db[FACTS].update_one(
            {"_id": incident_id}, {"$set": {"dismissed": dismissed}}, upsert=True, session=session
        )
        await self.db[GRADES].update_one(
            {"_id": incident_id}, {"$set": {"dismissed": dismissed}}, session=session
        )

    # ------------------------------------------------------------------ grades

    async def apply(self, event: Envelope, session: AsyncClientSession) -> None:
        payload = event.payload
        entry: Document = {
            "event_type": event.event_type,
            "event_id": str(event.event_id),
            "at": event.occurred_at,
            "actor": event.actor.model_dump(),
        }
        current: Document = {"version": event.stream_version, "updated_at": event.occurred_at}
        if isinstance(payload, IncidentGraded):
            facts = await self.db[FACTS].find_one({"_id": event.incident_id}, session=session)
            facts = facts or {}
            entry.update(level=int(payload.level), reason=None)
            current.update(
                incident_id=event.incident_id,
                graded_at=event.occurred_at,
                rulebook_version=payload.rulebook_version,
                rules_fired=_rules(payload.rules_fired),
                sensitive_topics=list(payload.sensitive_topics),
                unit_ids=facts.get("unit_ids", []),
                filed_by=facts.get("filed_by", []),
                dismissed=bool(facts.get("dismissed", False)),
            )
            entry.update(rules_fired=_rules(payload.rules_fired))
        elif isinstance(payload, IncidentEscalated):
            entry.update(
                from_level=int(payload.from_level),
                level=int(payload.to_level),
                reason=payload.reason,
                rules_fired=_rules(payload.rules_fired),
            )
            current.update(rulebook_version=payload.rulebook_version)
        elif isinstance(payload, GradeOverridden):
            entry.update(
                from_level=int(payload.from_level),
                level=int(payload.to_level),
                reason=payload.reason,
            )
        else:
            return
        entry["category"] = payload.category.value
        current.update(level=entry["level"], category=payload.category.value)
        await self.db[GRADES].update_one(
            {"_id": event.incident_id},
            {"$set": current, "$push": {"history": entry}},
            upsert=True,
            session=session,
        )

    async def grade(self, incident_id: str) -> Document | None:
        return await self.db[GRADES].find_one({"_id": incident_id})


def _rules(rules: Sequence[FiredRule]) -> list[Document]:
    return [{"rule_id": r.rule_id, "reason": r.reason} for r in rules]
