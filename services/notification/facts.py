"""What notification keeps of an incident's reports and statements to decide its duties by,
in its own database (a service never reads another's):

- `duty_facts`, per incident: its first report's publication and observation (a duty's
  `counted_from: published | observed`) and the sources of its reports (routing, seed 003
  第十七条). The grade events carry the first report (`first_report`: its source and
  instants), so a grade seen before intake's report (the topics are read side by side)
  still counts from it and is routed by it; the first report intake's topic gives (one
  incident's events stay in order on a topic) fills them for a grade that does not say (a
  confirmation, an event of before).
- `duty_statements`: the kind of each statement drafted (StatementDrafted), since
  `StatementPublished` names only the statement: a duty `met_by: {statement_published:
  <kind>}` is met when a statement of that kind is published.

Written in the unit of work of the event that tells them, as everything the consumer does.
"""

from __future__ import annotations

from datetime import UTC, datetime

import bson
from pymongo.asynchronous.database import AsyncDatabase

from shared.events import ReportOrigin, ReportReceived, StatementDrafted
from shared.plan_rules import Instants, ReportSource
from shared.store import Document, UnitOfWork

DUTY_FACTS = "duty_facts"
DUTY_STATEMENTS = "duty_statements"


class DutyFacts:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.facts = db[DUTY_FACTS]
        self.statements = db[DUTY_STATEMENTS]

    async def learn_report(self, incident_id: str, p: ReportReceived, uow: UnitOfWork) -> None:
        await self._learn(
            incident_id, p.source_type.value, p.source_name, p.published_at, p.observed_at, uow
        )

    async def learn_origin(
        self, incident_id: str, origin: ReportOrigin | None, uow: UnitOfWork
    ) -> None:
        """The first report as a grade event names it (nothing when it names none)."""
        if origin is None:
            return
        await self._learn(
            incident_id,
            origin.source_type.value,
            origin.source_name,
            origin.published_at,
            origin.observed_at,
            uow,
        )

    async def _learn(
        self,
        incident_id: str,
        source_type: str,
        source_name: str,
        published: datetime,
        observed: datetime,
        uow: UnitOfWork,
    ) -> None:
        """Adds the source and keeps the first report's instants as first told (a later
        report's are not its): read once, written only with what is new, since an incident's
        every report and grade tells it again."""
        source = {"source_type": source_type, "source_name": source_name}
        doc = await self._facts(incident_id, uow)
        if doc is None:
            first = {"first_published_at": published, "first_observed_at": observed}
            await self.facts.update_one(
                {"_id": incident_id},
                {"$setOnInsert": first, "$addToSet": {"sources": source}},
                upsert=True,
                session=uow.session,
            )
            stored = {"_id": incident_id, **first, "sources": [source]}
            uow.memo[_memo_key(incident_id)] = self._as_stored(stored)
            return
        change: Document = {}
        known = dict(doc)
        for field, value in (("first_published_at", published), ("first_observed_at", observed)):
            if doc.get(field) is None:
                change.setdefault("$set", {})[field] = value
                known[field] = value
        if source not in doc.get("sources", []):
            change["$addToSet"] = {"sources": source}
            known["sources"] = [*doc.get("sources", []), source]
        if change:
            await self.facts.update_one({"_id": incident_id}, change, session=uow.session)
            uow.memo[_memo_key(incident_id)] = self._as_stored(known)

    def _as_stored(self, doc: Document) -> Document:
        """Through BSON as the server keeps it (milliseconds), as a later read would see it."""
        options = self.facts.codec_options
        stored: Document = bson.decode(bson.encode(doc, codec_options=options), options)
        return stored

    async def _facts(self, incident_id: str, uow: UnitOfWork) -> Document | None:
        """The incident's facts, read once a unit of work (a grade asks three times): the
        writes above keep the copy as they leave the stored document."""
        key = _memo_key(incident_id)
        if key not in uow.memo:
            uow.memo[key] = await self.facts.find_one({"_id": incident_id}, session=uow.session)
        doc: Document | None = uow.memo[key]
        return doc

    async def first_report(self, incident_id: str, uow: UnitOfWork) -> Instants | None:
        """The first report's instants as known (`at` is unused: the caller's event's)."""
        doc = await self._facts(incident_id, uow)
        if doc is None:
            return None
        epoch = datetime.min.replace(tzinfo=UTC)
        return Instants(
            epoch, _aware(doc.get("first_published_at")), _aware(doc.get("first_observed_at"))
        )

    async def sources(self, incident_id: str, uow: UnitOfWork) -> list[ReportSource]:
        doc = await self._facts(incident_id, uow)
        found = doc.get("sources", []) if doc is not None else []
        return [ReportSource(s["source_type"], s["source_name"]) for s in found]

    async def learn_statement(
        self, event_incident: str, p: StatementDrafted, uow: UnitOfWork
    ) -> None:
        await self.statements.update_one(
            {"_id": p.statement_id},
            {"$set": {"incident_id": event_incident, "kind": str(p.kind)}},
            upsert=True,
            session=uow.session,
        )

    async def statement_kind(self, statement_id: str, uow: UnitOfWork) -> str | None:
        doc = await self.statements.find_one({"_id": statement_id}, session=uow.session)
        kind = doc.get("kind") if doc is not None else None
        return kind if isinstance(kind, str) else None


def _memo_key(incident_id: str) -> str:
    return f"{DUTY_FACTS}:{incident_id}"


def _aware(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
