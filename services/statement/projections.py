"""The statement service's read models: incidents (shared shape) and statement views.

Written in the transaction of the events they reflect; rebuildable from the log.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.statement.domain import ApprovalPolicy, Statement, StatementState
from shared.events import ApprovalStep
from shared.incident_context import IncidentContext
from shared.store import Document

STATEMENTS = "statements"


def _step(step: ApprovalStep, policy: ApprovalPolicy) -> dict[str, Any]:
    return {"role": step.role, "unit_id": step.unit_id, "name": policy.describe(step)}


def statement_view(statement: Statement, policy: ApprovalPolicy) -> Document:
    """What a person reads: every version, the chain of the current one with who approved
    which step and when, what is missing, and the full record of decisions."""
    current = statement.current
    submission = statement.submission
    progress = statement.progress()
    counted = [p.approval for p in progress if p.approval is not None]
    return {
        "_id": statement.statement_id,
        "statement_id": statement.statement_id,
        "incident_id": statement.incident_id,
        "kind": statement.kind.value,
        "state": statement.state.value,
        "current_version": current.version,
        "author": current.author,
        "title": current.title,
        "level": int(submission.level) if submission else None,
        "versions": [
            {
                "version": v.version,
                "title": v.title,
                "body": v.body,
                "facts": [f.model_dump() for f in v.facts],
                "outlets": list(v.outlets),
                "author": v.author,
                "at": v.at,
            }
            for v in statement.versions
        ],
        "chain": [
            {
                **_step(p.step, policy),
                "approved_by": p.approval.approver if p.approval else None,
                "approved_at": p.approval.at if p.approval else None,
                "comment": p.approval.comment if p.approval else None,
            }
            for p in progress
        ],
        "missing": [_step(p.step, policy) for p in progress if p.approval is None],
        "approvals": [
            {
                "version": a.version,
                **_step(a.step, policy),
                "approver": a.approver,
                "comment": a.comment,
                "at": a.at,
                "counts": a in counted,
            }
            for a in statement.approvals
        ],
        "rejections": [
            {
                "version": r.version,
                **_step(r.step, policy),
                "approver": r.approver,
                "comment": r.comment,
                "at": r.at,
            }
            for r in statement.rejections
        ],
        "submissions": [
            {
                "version": s.version,
                "level": int(s.level),
                "chain": [_step(step, policy) for step in s.chain],
                "reason": s.reason,
                "at": s.at,
            }
            for s in statement.submissions
        ],
        "publications": [
            {
                "version": p.version,
                "outlet": p.outlet,
                "url": p.url,
                "published_by": p.published_by,
                "at": p.at,
            }
            for p in statement.publications
        ],
    }


class StatementProjections:
    def __init__(self, db: AsyncDatabase[Document], policy: ApprovalPolicy) -> None:
        self.incidents = IncidentContext(db)
        self.statements = db[STATEMENTS]
        self.policy = policy

    async def ensure_indexes(self) -> None:
        await self.statements.create_index([("incident_id", ASCENDING), ("state", ASCENDING)])

    async def write(self, statement: Statement, session: AsyncClientSession) -> None:
        await self.statements.replace_one(
            {"_id": statement.statement_id},
            statement_view(statement, self.policy),
            upsert=True,
            session=session,
        )

    async def get(self, statement_id: str) -> Document | None:
        return await self.statements.find_one({"_id": statement_id})

    async def under_review(self, incident_id: str, session: AsyncClientSession) -> list[str]:
        """Statements of an incident whose chain follows its level: not yet out."""
        states = [StatementState.IN_REVIEW.value, StatementState.APPROVED.value]
        cursor = self.statements.find(
            {"incident_id": incident_id, "state": {"$in": states}},
            projection={"_id": 1},
            session=session,
        )
        return [doc["_id"] async for doc in cursor]
