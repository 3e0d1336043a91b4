"""What the statement service does: commands and upstream events in, its events out.

Each change loads the statement's stream in a transaction, decides with the domain,
appends at the expected version (a concurrent decision on the same statement gets 409)
and rewrites the statement's view in the same transaction. A decision sees the incident
and its official line (口径), folded from the streams of its published statements.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pymongo.asynchronous.client_session import AsyncClientSession

from services.statement.domain import (
    ApprovalPolicy,
    OfficialLine,
    Statement,
    draft,
    official_line,
    stream_id,
)
from services.statement.projections import StatementProjections
from shared.auth import Directory, Principal, Role
from shared.errors import Forbidden, NotFound
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
from shared.incident_context import IncidentSnapshot
from shared.store import Document, EventStore, UnitOfWork

WRITER_ROLES = (Role.SPOKESPERSON, Role.OFFICE, Role.PROPAGANDA, Role.DEPT_HEAD, Role.LEADER)
PUBLISHER_ROLES = (Role.SPOKESPERSON, Role.OFFICE, Role.PROPAGANDA, Role.LEADER)
CHAIN_RULE = Actor.rule("approval-policy")
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
        projections: StatementProjections,
        policy: ApprovalPolicy,
        directory: Directory,
    ) -> None:
        self.store = store
        self.projections = projections
        self.policy = policy
        self.directory = directory

    # upstream events --------------------------------------------------------------------

    async def on_upstream(self, event: Envelope, uow: UnitOfWork) -> None:
        change = await self.projections.incidents.apply(event, uow.session)
        grading = (IncidentGraded, IncidentEscalated, GradeOverridden)
        before = change.before.level if change.before else None
        after = change.after.level
        if not isinstance(event.payload, grading) or before is None or after is None:
            return
        if before == after:
            return
        reason = f"事件级别由{int(before)}级调整为{int(after)}级，按新级别审批"
        for statement_id in await self.projections.under_review(event.incident_id, uow.session):
            statement = await self._load(statement_id, uow)
            payload = statement.rechain(after, self.policy, change.after.unit_ids, reason)
            if payload is not None:
                await self._record(
                    uow,
                    statement,
                    event.caused(
                        payload,
                        stream_id=stream_id(statement_id),
                        stream_version=statement.stream_version + 1,
                        actor=CHAIN_RULE,
                    ),
                )

    # commands ---------------------------------------------------------------------------

    async def draft(
        self,
        incident_id: str,
        principal: Principal,
        *,
        kind: StatementKind,
        title: str,
        body: str,
        facts: tuple[Fact, ...],
        outlets: tuple[str, ...],
    ) -> Document:
        principal.require(*WRITER_ROLES)
        statement_id = uuid.uuid4().hex

        async def work(uow: UnitOfWork) -> None:
            incident = await self._incident(incident_id, uow, principal)
            payload = draft(
                statement_id,
                kind=kind,
                title=title,
                body=body,
                facts=facts,
                outlets=outlets,
                by=principal.sub,
            )
            event = self._envelope(payload, incident, statement_id, 1, principal)
            stored = await uow.append([event], expected_version=0)
            await self.projections.write(Statement.fold(stored), uow.session)

        await self.store.transaction(work)
        return await self.view(statement_id, principal)

    async def decide(
        self,
        statement_id: str,
        principal: Principal,
        decision: Decision,
        *,
        roles: tuple[Role, ...] = (),
    ) -> Document:
        """Load, check who may act, let the domain decide, record it."""
        if roles:
            principal.require(*roles)

        async def work(uow: UnitOfWork) -> None:
            statement = await self._load(statement_id, uow)
            incident = await self._incident(statement.incident_id, uow, principal)
            official = await self._official_line(incident.incident_id, uow.load, uow.session)
            payload = decision(statement, Situation(incident, official))
            event = self._envelope(
                payload, incident, statement_id, statement.stream_version + 1, principal
            )
            await self._record(uow, statement, event)

        await self.store.transaction(work)
        return await self.view(statement_id, principal)

    # reads ------------------------------------------------------------------------------

    async def view(self, statement_id: str, principal: Principal) -> Document:
        doc = await self.projections.get(statement_id)
        if doc is None:
            raise NotFound(f"没有编号为 {statement_id} 的稿件")
        await self._may_read(doc["incident_id"], principal)
        return doc

    async def statement(self, statement_id: str, principal: Principal) -> Statement:
        """The statement folded from its stream, for reads the view does not hold."""
        await self.view(statement_id, principal)
        events = await self.store.load(stream_id(statement_id))
        return Statement.fold(events)

    async def incident_statements(self, incident_id: str, principal: Principal) -> list[Document]:
        await self._may_read(incident_id, principal)
        return await self.projections.of_incident(incident_id)

    async def official_line(self, incident_id: str, principal: Principal) -> OfficialLine:
        await self._may_read(incident_id, principal)
        official = await self._official_line(incident_id, self.store.load)
        if official is None:
            raise NotFound("该事件尚无已发布的口径", {"incident_id": incident_id})
        return official

    # ------------------------------------------------------------------------------------

    async def _may_read(self, incident_id: str, principal: Principal) -> None:
        incident = await self.projections.incidents.get(incident_id)
        if incident is None:
            raise NotFound(f"尚未收到事件 {incident_id}")
        if principal.has(Role.PARTNER) or not self.directory.can_act_for(
            principal, incident.unit_ids
        ):
            raise Forbidden("无权查看其他单位的稿件")

    async def _official_line(
        self, incident_id: str, load: Loader, session: AsyncClientSession | None = None
    ) -> OfficialLine | None:
        ids = await self.projections.published(incident_id, session)
        return official_line([Statement.fold(await load(stream_id(i))) for i in ids])

    async def _incident(
        self, incident_id: str, uow: UnitOfWork, principal: Principal
    ) -> IncidentSnapshot:
        incident = await self.projections.incidents.get(incident_id, session=uow.session)
        if incident is None:
            raise NotFound(f"尚未收到事件 {incident_id}")
        if not self.directory.can_act_for(principal, incident.unit_ids):
            raise Forbidden("无权处理其他单位的事件稿件")
        return incident

    async def _load(self, statement_id: str, uow: UnitOfWork) -> Statement:
        events = await uow.load(stream_id(statement_id))
        if not events:
            raise NotFound(f"没有编号为 {statement_id} 的稿件")
        return Statement.fold(events)

    def _envelope(
        self,
        payload: EventPayload,
        incident: IncidentSnapshot,
        statement_id: str,
        version: int,
        principal: Principal,
    ) -> Envelope:
        return Envelope.new(
            payload,
            incident_id=incident.incident_id,
            stream_id=stream_id(statement_id),
            stream_version=version,
            actor=principal.actor,
            unit_id=incident.unit_ids[0] if incident.unit_ids else None,
        )

    async def _record(self, uow: UnitOfWork, statement: Statement, event: Envelope) -> None:
        (stored,) = await uow.append([event], expected_version=statement.stream_version)
        await self.projections.write(statement.apply(stored), uow.session)
