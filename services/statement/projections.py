"""The statement service's read models: incidents (shared shape) and statement views.

Written in the transaction of the events they reflect (the repository runs `write` as
its projector). The views are pydantic models so that what is stored, what the API
returns and what its OpenAPI describes are one shape; their `state` and `missing` are
the domain's, never derived here.
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.statement.domain import (
    ApprovalRules,
    OfficialLine,
    Statement,
    StepProgress,
    Version,
    VersionDiff,
    diff_versions,
)
from shared.events import (
    ApprovalStep,
    Envelope,
    Fact,
    FactChangeAcknowledgement,
    FactConflict,
    StatementKind,
    StatementState,
)
from shared.incident_context import IncidentContext
from shared.paging import Key
from shared.paging import after as keyset_after
from shared.store import Document, UnitOfWork
from shared.visibility import IncidentScope

STATEMENTS = "statements"


class _View(BaseModel):
    # Enum values stored as plain strings, so the database holds what the API shows.
    model_config = ConfigDict(use_enum_values=True)


class StepView(_View):
    role: str
    unit_id: str | None
    name: str  # as staff read it, e.g. 部门分管领导（school-a）


class ChainStepView(StepView):
    approved_by: str | None
    approved_at: datetime | None
    comment: str | None
    fact_changes_acknowledged: FactChangeAcknowledgement | None = None


class VersionView(_View):
    version: int
    title: str
    body: str
    facts: list[Fact]
    outlets: list[str]
    author: str
    at: datetime


class ApprovalView(StepView):
    version: int
    approver: str
    comment: str
    at: datetime
    counts: bool  # false once the version or the chain it filled has moved on
    fact_changes_acknowledged: FactChangeAcknowledgement | None = None


class RejectionView(StepView):
    version: int
    approver: str
    comment: str
    at: datetime


class WithdrawalView(_View):
    version: int
    withdrawn_by: str
    reason: str
    at: datetime


class SubmissionView(_View):
    version: int
    level: int
    chain: list[StepView]
    reason: str
    at: datetime
    fact_conflicts: list[FactConflict]


class PublicationView(_View):
    version: int
    outlet: str
    url: str
    published_by: str
    at: datetime


class FactChangeView(_View):
    label: str
    before: str
    after: str


class FactsDiffView(_View):
    added: list[Fact]
    removed: list[Fact]
    changed: list[FactChangeView]


class VersionDiffView(_View):
    from_version: int
    to_version: int
    title: str  # unified diff; empty when unchanged
    body: str
    facts: FactsDiffView

    @classmethod
    def of(cls, diff: VersionDiff) -> VersionDiffView:
        facts = diff.facts
        return cls(
            from_version=diff.from_version,
            to_version=diff.to_version,
            title=diff.title,
            body=diff.body,
            facts=FactsDiffView(
                added=list(facts.added),
                removed=list(facts.removed),
                changed=[
                    FactChangeView(label=c.label, before=c.before, after=c.after)
                    for c in facts.changed
                ],
            ),
        )


class StatementSummary(_View):
    statement_id: str
    incident_id: str
    kind: StatementKind
    state: StatementState
    current_version: int
    author: str
    title: str
    level: int | None
    drafted_at: datetime


class StatementView(StatementSummary):
    """Every version, the chain of the current one with who approved which step and when,
    what is missing, figures contradicting the published line, and the full record."""

    fact_conflicts: list[FactConflict]
    versions: list[VersionView]
    chain: list[ChainStepView]
    missing: list[StepView]
    approvals: list[ApprovalView]
    rejections: list[RejectionView]
    withdrawals: list[WithdrawalView]
    submissions: list[SubmissionView]
    publications: list[PublicationView]
    diffs: list[VersionDiffView]  # each version against the one before it


class OfficialFigureView(_View):
    label: str
    value: str
    statement_id: str
    version: int
    published_at: datetime


class OfficialLineView(_View):
    """The incident's current official line (口径): its latest publication, who cleared
    it, and every figure as last published."""

    incident_id: str
    statement_id: str
    kind: StatementKind
    version: int
    title: str
    body: str
    facts: list[Fact]
    outlet: str
    url: str
    published_by: str
    published_at: datetime
    cleared_by: list[ChainStepView]
    figures: list[OfficialFigureView]


# --------------------------------------------------------------------------- building


def _step(step: ApprovalStep, rules: ApprovalRules) -> StepView:
    return StepView(role=step.role, unit_id=step.unit_id, name=rules.describe(step))


def _chain(progress: list[StepProgress], rules: ApprovalRules) -> list[ChainStepView]:
    return [
        ChainStepView(
            **_step(p.step, rules).model_dump(),
            approved_by=p.approval.approver if p.approval else None,
            approved_at=p.approval.at if p.approval else None,
            comment=p.approval.comment if p.approval else None,
            fact_changes_acknowledged=p.approval.acknowledgement if p.approval else None,
        )
        for p in progress
    ]


def _version(v: Version) -> VersionView:
    return VersionView(
        version=v.version,
        title=v.title,
        body=v.body,
        facts=list(v.facts),
        outlets=list(v.outlets),
        author=v.author,
        at=v.at,
    )


def statement_view(statement: Statement, rules: ApprovalRules) -> StatementView:
    current = statement.current
    submission = statement.submission
    progress = statement.progress()
    counted = [p.approval for p in progress if p.approval is not None]
    versions = statement.versions
    return StatementView(
        statement_id=statement.statement_id,
        incident_id=statement.incident_id,
        kind=statement.kind,
        state=statement.state,
        current_version=current.version,
        author=current.author,
        title=current.title,
        level=int(submission.level) if submission else None,
        drafted_at=versions[0].at,
        fact_conflicts=list(submission.fact_conflicts) if submission else [],
        versions=[_version(v) for v in versions],
        chain=_chain(progress, rules),
        missing=[_step(p.step, rules) for p in progress if p.approval is None],
        approvals=[
            ApprovalView(
                **_step(a.step, rules).model_dump(),
                version=a.version,
                approver=a.approver,
                comment=a.comment,
                at=a.at,
                counts=a in counted,
                fact_changes_acknowledged=a.acknowledgement,
            )
            for a in statement.approvals
        ],
        rejections=[
            RejectionView(
                **_step(r.step, rules).model_dump(),
                version=r.version,
                approver=r.approver,
                comment=r.comment,
                at=r.at,
            )
            for r in statement.rejections
        ],
        withdrawals=[
            WithdrawalView(version=w.version, withdrawn_by=w.withdrawn_by, reason=w.reason, at=w.at)
            for w in statement.withdrawals
        ],
        submissions=[
            SubmissionView(
                version=s.version,
                level=int(s.level),
                chain=[_step(step, rules) for step in s.chain],
                reason=s.reason,
                at=s.at,
                fact_conflicts=list(s.fact_conflicts),
            )
            for s in statement.submissions
        ],
        publications=[
            PublicationView(
                version=p.version, outlet=p.outlet, url=p.url, published_by=p.published_by, at=p.at
            )
            for p in statement.publications
        ],
        diffs=[VersionDiffView.of(diff_versions(old, new)) for old, new in pairwise(versions)],
    )


def official_line_view(official: OfficialLine, rules: ApprovalRules) -> OfficialLineView:
    statement, publication, version = official.statement, official.publication, official.version
    return OfficialLineView(
        incident_id=statement.incident_id,
        statement_id=statement.statement_id,
        kind=statement.kind,
        version=version.version,
        title=version.title,
        body=version.body,
        facts=list(version.facts),
        outlet=publication.outlet,
        url=publication.url,
        published_by=publication.published_by,
        published_at=publication.at,
        cleared_by=_chain(official.cleared_by(), rules),
        figures=[
            OfficialFigureView(
                label=f.fact.label,
                value=f.fact.value,
                statement_id=f.statement_id,
                version=f.version,
                published_at=f.at,
            )
            for f in official.figures
        ],
    )


# --------------------------------------------------------------------------- storing


class StatementProjections:
    def __init__(self, db: AsyncDatabase[Document], rules: ApprovalRules) -> None:
        self.incidents = IncidentContext(db)
        self.statements = db[STATEMENTS]
        self.rules = rules

    async def ensure_indexes(self) -> None:
        await self.statements.create_index([("incident_id", ASCENDING), ("state", ASCENDING)])

    async def write(self, event: Envelope, uow: UnitOfWork) -> None:
        """The projector: the view of the statement as its stream stands after `event`
        (read in the unit of work that appends it)."""
        statement = Statement.fold(await uow.load(event.stream_id))
        view = statement_view(statement, self.rules)
        await self.statements.replace_one(
            {"_id": statement.statement_id},
            {"_id": statement.statement_id, **view.model_dump()},
            upsert=True,
            session=uow.session,
        )

    async def get(self, statement_id: str) -> StatementView | None:
        doc = await self.statements.find_one({"_id": statement_id})
        return StatementView.model_validate(doc) if doc is not None else None

    async def of_incident(self, incident_id: str) -> list[StatementSummary]:
        cursor = self.statements.find({"incident_id": incident_id}).sort("drafted_at", ASCENDING)
        return [StatementSummary.model_validate(doc) async for doc in cursor]

    async def awaiting(
        self, roles: list[str], limit: int, after: Key | None = None
    ) -> list[StatementView]:
        """Statements whose next open step one of `roles` fills (the inbox's candidates:
        the caller's unit, authorship and sight are checked by the route), oldest first
        (then by id), after the key (drafted_at, statement id) given."""
        states = [s.value for s in (StatementState.IN_REVIEW, StatementState.APPROVED)]
        states.append(StatementState.PUBLISHED.value)  # a published one being cleared again
        query: Document = {"state": {"$in": states}, "missing.0.role": {"$in": roles}}
        if after is not None:
            query = {"$and": [query, keyset_after(after, "drafted_at")]}
        cursor = self.statements.find(
            query, sort=[("drafted_at", ASCENDING), ("_id", ASCENDING)], limit=limit
        )
        return [StatementView.model_validate(doc) async for doc in cursor]

    async def written_by(
        self, person_id: str, limit: int, after: Key | None = None
    ) -> list[StatementView]:
        """Statements any version of which `person_id` wrote, newest first (then by id,
        descending), after the key (drafted_at, statement id) given."""
        query: Document = {"versions.author": person_id}
        if after is not None:
            query = {"$and": [query, keyset_after(after, "drafted_at", descending=True)]}
        cursor = self.statements.find(
            query, sort=[("drafted_at", DESCENDING), ("_id", DESCENDING)], limit=limit
        )
        return [StatementView.model_validate(doc) async for doc in cursor]

    async def incident_scope(self, incident_id: str) -> IncidentScope | None:
        """Whom the incident concerns, as visibility decides on it; None if unheard of."""
        incident = await self.incidents.get(incident_id)
        return incident.scope if incident is not None else None

    async def statement_scope(self, statement_id: str) -> IncidentScope | None:
        """The scope of the incident a statement is about; None for an unknown statement."""
        doc = await self.statements.find_one({"_id": statement_id}, projection={"incident_id": 1})
        return await self.incident_scope(doc["incident_id"]) if doc is not None else None

    async def published(
        self, incident_id: str, session: AsyncClientSession | None = None
    ) -> list[str]:
        """Statements of an incident with at least one publication: its official line."""
        cursor = self.statements.find(
            {"incident_id": incident_id, "publications.0": {"$exists": True}},
            projection={"_id": 1},
            session=session,
        )
        return [doc["_id"] async for doc in cursor]

    async def under_review(self, incident_id: str, session: AsyncClientSession | None) -> list[str]:
        """Statements of an incident whose chain follows its level: not yet out."""
        states = [StatementState.IN_REVIEW.value, StatementState.APPROVED.value]
        cursor = self.statements.find(
            {"incident_id": incident_id, "state": {"$in": states}},
            projection={"_id": 1},
            session=session,
        )
        return [doc["_id"] async for doc in cursor]
