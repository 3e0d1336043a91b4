"""What the statement service does: commands and upstream events in, its events out.

Every command runs in a unit of work of the `CommandRunner`: the repository loads the
statement from its stream, the domain decides, and the repository saves what was decided
after the version it loaded (rewriting the statement's view in the same transaction). A
decision that lost the race to another writer is decided again on what that writer left.
Reactions to grading do the same inside the consumer's unit of work. A decision sees the
incident and its official line (口径), folded from the streams of its published statements.

Who may see the incident, and so act on it, is decided by the routes before anything here
runs (`shared.visibility`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pymongo.asynchronous.client_session import AsyncClientSession

from services.statement.domain import (
    ApprovalRules,
    NoOfficialLine,
    OfficialLine,
    Statement,
    draft,
    official_line,
    stream_id,
)
from services.statement.projections import StatementProjections, StatementView, statement_view
from shared.clock import Clock
from shared.events import (
    Actor,
    Envelope,
    EventPayload,
    Fact,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    StatementKind,
)
from shared.identity import Caller, Role
from shared.incident_context import IncidentSnapshot
from shared.repository import Cause, CommandRunner, Repository
from shared.store import EventStore, UnitOfWork
from shared.visibility import hidden

WRITER_ROLES = (Role.SPOKESPERSON, Role.OFFICE, Role.PROPAGANDA, Role.DEPT_HEAD, Role.LEADER)
PUBLISHER_ROLES = (Role.SPOKESPERSON, Role.OFFICE, Role.PROPAGANDA, Role.LEADER)
CHAIN_RULE = Actor.rule("approval-policy")
# The upstream events that move an incident's level, and so the chain of its statements.
GRADE_TYPES = (IncidentGraded, IncidentEscalated, GradeOverridden)
Loader = Callable[[str], Awaitable[list[Envelope]]]


@dataclass(frozen=True)
class Situation:
    """What a decision on a statement sees besides the statement."""

    incident: IncidentSnapshot
    official: OfficialLine | None


Decision = Callable[[Statement, Situation], EventPayload]


class StatementWorkflow:
    def __init__(
        self,
        store: EventStore,
        repository: Repository[Statement],
        projections: StatementProjections,
        rules: ApprovalRules,
        run: CommandRunner,
        clock: Clock,
    ) -> None:
        self.store = store
        self.repository = repository
        self.projections = projections
        self.rules = rules
        self.run = run
        self.clock = clock

    # upstream events --------------------------------------------------------------------

    async def on_incident(self, event: Envelope, _: EventPayload, uow: UnitOfWork) -> None:
        """An intake event: the incident's title, units, filers or status."""
        await self.projections.incidents.apply(event, uow.session, uow.memo)

    async def on_grade(
        self,
        event: Envelope,
        _: IncidentGraded | IncidentEscalated | GradeOverridden,
        uow: UnitOfWork,
    ) -> None:
        """A grade: when the level moves, statements in review, cleared, or already out
        take the new level's chain, keeping the approvals that still fit it (a published
        one goes out again only once that chain is filled)."""
        change = await self.projections.incidents.apply(event, uow.session, uow.memo)
        before = change.before.level if change.before else None
        after = change.after.level
        if before is None or after is None or before == after:
            return
        reason = f"事件级别由{int(before)}级调整为{int(after)}级，按新级别审批"
        cause = Cause.of(event, CHAIN_RULE, occurred_at=self.clock())
        following = await self.projections.under_review(event.incident_id, uow.session)
        published = await self.projections.published(event.incident_id, uow.session)
        for statement_id in dict.fromkeys([*following, *published]):
            statement = await self.repository.get(uow, statement_id)
            assert statement is not None, f"a view without a stream: {statement_id}"
            rechained = statement.rechain(after, self.rules, change.after.unit_ids, reason)
            if rechained is not None:
                await self.repository.save(uow, statement_id, statement, [rechained], cause)

    # commands ---------------------------------------------------------------------------

    async def draft(
        self,
        incident_id: str,
        caller: Caller,
        *,
        kind: StatementKind,
        title: str,
        body: str,
        facts: tuple[Fact, ...],
        outlets: tuple[str, ...],
    ) -> StatementView:
        self.rules.check_kind(kind)  # the plan's statement kinds
        statement_id = uuid.uuid4().hex
        payload = draft(
            statement_id,
            kind=kind,
            title=title,
            body=body,
            facts=facts,
            outlets=outlets,
            by=caller.id,
        )

        async def work(uow: UnitOfWork) -> StatementView:
            incident = await self._incident(incident_id, uow)
            return await self._save(uow, statement_id, None, payload, incident, caller)

        return await self.run(work)

    async def decide(self, statement_id: str, caller: Caller, decision: Decision) -> StatementView:
        """Load, let the domain decide on what it sees now, save."""

        async def work(uow: UnitOfWork) -> StatementView:
            statement = await self.repository.get(uow, statement_id)
            if statement is None:
                raise hidden("statement", statement_id)
            incident = await self._incident(statement.incident_id, uow)
            official = await self._official_line(incident.incident_id, uow.load, uow.session)
            payload = decision(statement, Situation(incident, official))
            return await self._save(uow, statement_id, statement, payload, incident, caller)

        return await self.run(work)

    # reads ------------------------------------------------------------------------------

    async def statement(self, statement_id: str) -> Statement | None:
        """The statement folded from its stream, for reads the view does not hold."""
        events = await self.store.load(stream_id(statement_id))
        return self.repository.fold(events)

    async def official_line(self, incident_id: str) -> OfficialLine:
        official = await self._official_line(incident_id, self.store.load)
        if official is None:
            raise NoOfficialLine("该事件尚无已发布的口径", {"incident_id": incident_id})
        return official

    # ------------------------------------------------------------------------------------

    async def _official_line(
        self, incident_id: str, load: Loader, session: AsyncClientSession | None = None
    ) -> OfficialLine | None:
        ids = await self.projections.published(incident_id, session)
        return official_line([Statement.fold(await load(stream_id(i))) for i in ids])

    async def _incident(self, incident_id: str, uow: UnitOfWork) -> IncidentSnapshot:
        incident = await self.projections.incidents.get(
            incident_id, session=uow.session, memo=uow.memo
        )
        if incident is None:
            raise hidden("incident", incident_id)
        return incident

    async def _save(
        self,
        uow: UnitOfWork,
        statement_id: str,
        current: Statement | None,
        payload: EventPayload,
        incident: IncidentSnapshot,
        caller: Caller,
    ) -> StatementView:
        cause = Cause(
            actor=caller.actor,
            incident_id=incident.incident_id,
            unit_id=incident.unit_ids[0] if incident.unit_ids else None,
            occurred_at=self.clock(),
        )
        saved = await self.repository.save(uow, statement_id, current, [payload], cause)
        assert saved is not None, "one decision was given to save"
        return statement_view(saved.aggregate, self.rules)
