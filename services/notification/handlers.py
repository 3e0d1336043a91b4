"""What the notification service does about upstream events, and its obligation commands.

Every change goes through the obligations repository: load the incident's ledger, decide
with the domain, save what was decided (the repository numbers it after the version it was
loaded at and runs the read model and the dispatcher in the same transaction), so a duty
is opened, met or missed once, even when two deciders (a consumer, a request, the deadline
watch) race or the service restarts half-way. Reactions run in the consumer's unit of
work; commands and the deadline watch in the command runner, which decides again after a
lost race.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog

from services.notification.domain import (
    DecisionRefused,
    Ledger,
    NotDecider,
    NotObligationOwner,
    Obligation,
)
from services.notification.facts import DutyFacts
from services.notification.plan_versions import DutyTable, DutyVersions
from services.notification.projections import NotificationProjections
from shared.catalogue import Catalogue
from shared.errors import Invalid, StillConflicting
from shared.events import (
    Actor,
    Category,
    DeadlineMissed,
    Envelope,
    EventPayload,
    GradeOverridden,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentGradeProposed,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    IncidentStatus,
    LeaderInstructionRecorded,
    Level,
    ObligationFulfilled,
    ObligationOpened,
    ReportReceived,
    StatementDrafted,
    StatementPublished,
)
from shared.identity import Caller, Role
from shared.incident_context import IncidentSnapshot
from shared.plan_rules import OPENS_ON_INSTRUCTION, OPENS_ON_PROPOSAL
from shared.repository import Cause, CommandRunner, Repository
from shared.store import UnitOfWork

log = structlog.get_logger("yuqing.notification")

DEADLINE_WATCH = Actor.rule("deadline-watch")


class ObligationWorkflow:
    def __init__(
        self,
        *,
        obligations: Repository[Ledger],
        projections: NotificationProjections,
        versions: DutyVersions,
        tz: ZoneInfo,
        run: CommandRunner,
        catalogue: Catalogue,
        actor: Actor,
        facts: DutyFacts,
    ) -> None:
        self.obligations = obligations
        # The first report's instants and the reports' sources (facts.py).
        self.facts = facts
        self.projections = projections
        # The duty table of each plan version (plan_versions.py): an incident's duties
        # open from the version its grade events name, not from the plan in force.
        self.versions = versions
        self.tz = tz
        self.run = run
        self.catalogue = catalogue
        self.actor = actor

    # upstream events --------------------------------------------------------------------

    async def on_described(
        self, event: Envelope, p: IncidentOpened | ReportReceived, uow: UnitOfWork
    ) -> None:
        """Intake tells what the incident is about and which units it concerns, and a
        report when it was published and observed and where it came from."""
        await self._learn(event, uow)
        if isinstance(p, ReportReceived):
            await self.facts.learn_report(event.incident_id, p, uow)

    async def on_graded(self, event: Envelope, p: IncidentGraded, uow: UnitOfWork) -> None:
        incident = await self._learn(event, uow)
        await self.facts.learn_origin(event.incident_id, p.first_report, uow)
        table = await self.versions.for_grade(event.incident_id, p.plan_id, p.plan_version, uow)
        await self._open_for_grade(event, incident, table, p.level, p.category, True, uow)

    async def on_proposed(self, event: Envelope, p: IncidentGradeProposed, uow: UnitOfWork) -> None:
        """A grade proposed to the body the plan names opens the duties owed on the
        proposal (`opens_on: proposed`), counted from it; the rest wait for the grade."""
        await self.facts.learn_origin(event.incident_id, p.first_report, uow)
        table = await self.versions.for_grade(event.incident_id, p.plan_id, p.plan_version, uow)
        await self._open_on(event, table, OPENS_ON_PROPOSAL, p.level, p.category, uow)

    async def on_instructed(
        self, event: Envelope, p: LeaderInstructionRecorded, uow: UnitOfWork
    ) -> None:
        """A leader's signed instruction (签批) opens the duties owed on it (`opens_on:
        instructed`), counted from it, from the pinned version; an unsigned one opens
        nothing (the incident stays under watch, seed 003 第十七条)."""
        if not p.signed:
            return
        table = await self.versions.pinned(event.incident_id, uow)
        await self._open_on(event, table, OPENS_ON_INSTRUCTION, p.level, p.category, uow)

    async def _open_on(
        self,
        event: Envelope,
        table: DutyTable,
        opens_on: str,
        level: Level,
        category: Category,
        uow: UnitOfWork,
    ) -> None:
        incident = await self._incident(uow, event.incident_id)
        if incident.closed:
            return  # an incident already ended owes nothing more on these
        ledger = await self._ledger(uow, event.incident_id)
        opened = ledger.open_on(
            table.duties,
            opens_on,
            level=level,
            category=category,
            at=event.occurred_at,
            tz=self.tz,
            stamp=table.stamp,
            first_report=await self.facts.first_report(event.incident_id, uow),
        )
        await self._react(event, incident, ledger, opened, uow, table)

    async def on_regraded(
        self, event: Envelope, p: IncidentEscalated | GradeOverridden, uow: UnitOfWork
    ) -> None:
        incident = await self._learn(event, uow)
        if isinstance(p, IncidentEscalated):
            table = await self.versions.for_grade(event.incident_id, p.plan_id, p.plan_version, uow)
        else:  # an override names no version: the incident's pin decides
            table = await self.versions.pinned(event.incident_id, uow)
        upwards = p.to_level < p.from_level  # level 1 is the most severe
        await self._open_for_grade(event, incident, table, p.to_level, p.category, upwards, uow)

    async def on_resolved(self, event: Envelope, p: IncidentResolved, uow: UnitOfWork) -> None:
        """Resolving closes what is owed, then opens the duties owed at closure (`opens_on:
        resolved`, 处置结果上报), counted from the resolution, from the pinned version."""
        incident = await self._learn(event, uow)
        ledger = await self._ledger(uow, event.incident_id)
        await self.versions.mark_resolved(event.incident_id, event.occurred_at, uow)
        table = await self.versions.pinned(event.incident_id, uow)
        closure = table.duties.closure_kinds()
        payloads: list[EventPayload] = [*ledger.close_owed(f"事件已办结：{p.reason}", keep=closure)]
        payloads += ledger.open_at_closure(
            table.duties,
            level=incident.level,
            category=incident.category,
            resolved_at=event.occurred_at,
            tz=self.tz,
            stamp=table.stamp,
        )
        await self._react(event, incident, ledger, payloads, uow, table)

    async def on_dismissed(self, event: Envelope, p: IncidentDismissed, uow: UnitOfWork) -> None:
        # Not an incident after all: nothing is owed at closure either.
        incident = await self._learn(event, uow)
        ledger = await self._ledger(uow, event.incident_id)
        closed = ledger.close_owed(f"事件已排除：{p.reason}")
        await self._react(event, incident, ledger, closed, uow)

    async def on_reopened(self, event: Envelope, _: IncidentReopened, uow: UnitOfWork) -> None:
        incident = await self._learn(event, uow)
        ledger = await self._ledger(uow, event.incident_id)
        # What its resolution opened and is still open waits for the next resolution.
        before = await self.versions.pinned(event.incident_id, uow)
        payloads: list[EventPayload] = [
            *ledger.close_at_reopen(before.duties, "事件重新处置：办结后重新报送")
        ]
        # A reopened incident moves to the version in force, as grading moves it.
        table = self.versions.current
        await self.versions.pin(event.incident_id, table.plan_id, table.plan_version, uow)
        await self.versions.mark_resolved(event.incident_id, None, uow)
        # Grading does not regrade a reopened incident, so its standing grade decides.
        payloads += ledger.open_for_reopen(
            table.duties,
            level=incident.level,
            category=incident.category,
            reopened_at=event.occurred_at,
            tz=self.tz,
            stamp=table.stamp,
        )
        await self._react(event, incident, ledger, payloads, uow, table)

    async def _learn(self, event: Envelope, uow: UnitOfWork) -> IncidentSnapshot:
        change = await self.projections.incidents.apply(event, uow.session, uow.memo)
        before = change.before.unit_ids if change.before else ()
        if change.after.unit_ids != before:
            await self.projections.set_units(event.incident_id, change.after.unit_ids, uow.session)
        return change.after

    async def _open_for_grade(
        self,
        event: Envelope,
        incident: IncidentSnapshot,
        table: DutyTable,
        level: Level,
        category: Category,
        upwards: bool,
        uow: UnitOfWork,
    ) -> None:
        ledger = await self._ledger(uow, event.incident_id)
        if incident.closed:
            # A late grading of an incident already ended owes nothing while it was open,
            # but a resolved one owes what is due at closure, counted from its resolution.
            resolved_at = await self.versions.resolved_at(event.incident_id, uow)
            if incident.status is not IncidentStatus.RESOLVED or resolved_at is None:
                return
            late = ledger.open_at_closure(
                table.duties,
                level=level,
                category=category,
                resolved_at=resolved_at,
                tz=self.tz,
                stamp=table.stamp,
            )
            await self._react(event, incident, ledger, late, uow, table)
            return
        opened = ledger.open_for_grade(
            table.duties,
            level=level,
            category=category,
            graded_at=event.occurred_at,
            tz=self.tz,
            include_level_duties=upwards,
            stamp=table.stamp,
            first_report=await self.facts.first_report(event.incident_id, uow),
        )
        await self._react(event, incident, ledger, opened, uow, table)

    async def _react(
        self,
        event: Envelope,
        incident: IncidentSnapshot,
        ledger: Ledger,
        payloads: Sequence[EventPayload],
        uow: UnitOfWork,
        table: DutyTable | None = None,
    ) -> None:
        cause = Cause(
            actor=self.actor,
            incident_id=event.incident_id,
            unit_id=_first(incident),
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
        )
        if table is not None:
            payloads = await self._routed(event.incident_id, table, payloads, uow)
        await self.obligations.save(uow, event.incident_id, ledger, payloads, cause)

    async def _routed(
        self,
        incident_id: str,
        table: DutyTable,
        payloads: Sequence[EventPayload],
        uow: UnitOfWork,
    ) -> list[EventPayload]:
        """The duties opened, with the recipients the table's routes add for the sources of
        the incident's reports (`role@unit`, seed 003 第十七条)."""
        if not table.duties.routing or not any(isinstance(p, ObligationOpened) for p in payloads):
            return list(payloads)
        sources = await self.facts.sources(incident_id, uow)
        routed: list[EventPayload] = []
        for p in payloads:
            if isinstance(p, ObligationOpened):
                extra = table.duties.routed(p.kind, sources)
                added = tuple(r for r in extra if r not in p.recipients)
                if added:
                    p = p.model_copy(update={"recipients": (*p.recipients, *added)})
            routed.append(p)
        return routed

    # statements -------------------------------------------------------------------------

    async def on_statement_drafted(
        self, event: Envelope, p: StatementDrafted, uow: UnitOfWork
    ) -> None:
        """A statement's kind, kept for when it is published (StatementPublished names only
        the statement)."""
        await self.facts.learn_statement(event.incident_id, p, uow)

    async def on_statement_published(
        self, event: Envelope, p: StatementPublished, uow: UnitOfWork
    ) -> None:
        """Publishing a statement meets every duty still owed whose `met_by` names its kind
        (an online reply meets 网上答复), each recorded as met by it, at its publication,
        as if filed then by who published it; a duty waiting on it opens as when a person
        files it. A person may still file such a duty by hand before."""
        kind = await self.facts.statement_kind(p.statement_id, uow)
        if kind is None:
            log.warning("statement published whose kind is not known", statement_id=p.statement_id)
            return
        ledger = await self._ledger(uow, event.incident_id)
        met_by: dict[str, str | None] = {}
        for o in ledger.obligations.values():
            table = await self.versions.of_stamp(o.stamp)
            met_by[o.obligation_id] = table.duties.met_by_statement(o.kind)

        def meets(o: Obligation) -> str | None:
            return met_by.get(o.obligation_id)

        incident = await self._incident(uow, event.incident_id)
        for obligation_id in ledger.met_by_publication(kind, event.occurred_at, meets):
            ledger = await self._ledger(uow, event.incident_id)
            settled = ledger.fulfil(
                obligation_id,
                by=p.published_by,
                at=event.occurred_at,
                reference=p.url,
                statement_id=p.statement_id,
            )
            cause = Cause(
                actor=self.actor,
                incident_id=event.incident_id,
                unit_id=_first(incident),
                correlation_id=event.correlation_id,
                causation_id=event.event_id,
                occurred_at=event.occurred_at,
            )
            await self._settle(uow, ledger, settled, cause, incident)

    # commands ---------------------------------------------------------------------------

    async def fulfil(
        self,
        caller: Caller,
        incident_id: str,
        obligation_id: str,
        *,
        at: datetime | None,
        reference: str | None,
        now: datetime,
    ) -> None:
        """Record who met a duty, when and with what. The caller's sight of the incident
        is checked before this is asked; here: the role, then the record."""
        when = at or now

        async def work(uow: UnitOfWork) -> None:
            ledger = await self._ledger(uow, incident_id)
            obligation = ledger.get(obligation_id)
            if not obligation.may_be_filed_by(caller.roles):
                owner = self.catalogue.role(obligation.owner_role)
                leader = self.catalogue.role(Role.LEADER)
                raise NotObligationOwner(
                    f"报送“{obligation.title}”需要{owner}或{leader}的角色",
                    {"obligation_id": obligation_id, "roles": [obligation.owner_role, "leader"]},
                )
            if when > now:
                raise Invalid(
                    "fulfilled_at",
                    "later than now",
                    "in_the_future",
                    message="fulfilled_at 不能晚于当前时间",
                )
            settled = ledger.fulfil(obligation_id, by=caller.id, at=when, reference=reference)
            incident = await self._incident(uow, incident_id)
            cause = Cause(
                actor=caller.actor,
                incident_id=incident_id,
                unit_id=_first(incident),
                correlation_id=obligation.correlation_id,
                causation_id=obligation.opened_event_id,
                occurred_at=when,
            )
            await self._settle(uow, ledger, settled, cause, incident)

        await self.run(work)

    async def decide(
        self,
        caller: Caller,
        incident_id: str,
        *,
        kind: str,
        decision: bool,
        reason: str,
        now: datetime,
    ) -> str | None:
        """Record the decision on a duty `opens_on: decided` (its `decided_by` role, or an
        admin): yes opens it, counted from now, from the incident's pinned version; no opens
        nothing. The caller's sight of the incident is checked before this is asked. The
        duty opened, if any."""

        async def work(uow: UnitOfWork) -> str | None:
            incident = await self._incident(uow, incident_id)
            if incident.level is None:
                raise DecisionRefused("事件尚未定级，不能决定其义务", {"incident_id": incident_id})
            if incident.closed:
                raise DecisionRefused("事件已结束，不能再决定其义务", {"incident_id": incident_id})
            table = await self.versions.pinned(incident_id, uow)
            rule = table.duties.decided_rule(kind, incident.level, incident.category)
            decider = rule.decided_by if rule is not None else None
            if rule is not None and decider is not None and not caller.has(Role.ADMIN, decider):
                raise NotDecider(
                    f"决定“{rule.title}”需要{self.catalogue.role(decider)}的角色",
                    {"kind": kind, "roles": [decider.value]},
                )
            ledger = await self._ledger(uow, incident_id)
            decided = ledger.decide(
                table.duties,
                kind=kind,
                decision=decision,
                reason=reason,
                by=caller.id,
                level=incident.level,
                category=incident.category,
            )
            cause = Cause(
                actor=caller.actor,
                incident_id=incident_id,
                unit_id=_first(incident),
                occurred_at=now,
            )
            saved = await self.obligations.save(uow, incident_id, ledger, [decided], cause)
            assert saved is not None
            (event,) = saved.events
            opened = saved.aggregate.open_decided(
                decided, table.duties, category=incident.category, at=now, tz=self.tz,
                stamp=table.stamp,
            )  # fmt: skip
            if not opened:
                return None
            then = Cause(
                actor=self.actor,
                incident_id=incident_id,
                unit_id=event.unit_id,
                correlation_id=event.correlation_id,
                causation_id=event.event_id,
                occurred_at=now,
            )
            routed = await self._routed(incident_id, table, opened, uow)
            await self.obligations.save(uow, incident_id, saved.aggregate, routed, then)
            return opened[0].obligation_id

        found: str | None = await self.run(work)
        return found

    # durable deadlines ------------------------------------------------------------------

    async def record_missed(self, now: datetime, batch: int) -> int:
        """Record every open duty past its deadline as missed, each exactly once.

        The check and the save share a transaction at the stream's version, so a second
        watcher (another replica, or this one after a restart) finds it recorded; one that
        lost the race decides again.
        """
        recorded = 0
        for incident_id, obligation_id in await self.projections.past_deadline(now, batch):

            async def work(uow: UnitOfWork, i: str = incident_id, o: str = obligation_id) -> bool:
                return await self._miss(uow, i, o, now)

            try:
                if await self.run(work):
                    recorded += 1
                    log.warning(
                        "deadline missed", incident_id=incident_id, obligation_id=obligation_id
                    )
            except StillConflicting:
                log.warning(
                    "deadline watch kept losing races; the next pass decides again",
                    incident_id=incident_id,
                    obligation_id=obligation_id,
                )
        return recorded

    async def _miss(
        self, uow: UnitOfWork, incident_id: str, obligation_id: str, now: datetime
    ) -> bool:
        ledger = await self._ledger(uow, incident_id)
        missed = ledger.missed_by(obligation_id, now)
        if missed is None:
            return False
        obligation = ledger.get(obligation_id)
        incident = await self._incident(uow, incident_id)
        cause = Cause(
            actor=DEADLINE_WATCH,
            incident_id=incident_id,
            unit_id=_first(incident),
            correlation_id=obligation.correlation_id,
            causation_id=obligation.opened_event_id,
            # When it happened in the world: the moment the deadline passed, even if the
            # service was down then and notices only now.
            occurred_at=obligation.deadline,
        )
        await self._settle(uow, ledger, missed, cause, incident)
        return True

    # ------------------------------------------------------------------------------------

    async def _settle(
        self,
        uow: UnitOfWork,
        ledger: Ledger,
        settled: ObligationFulfilled | DeadlineMissed,
        cause: Cause,
        incident: IncidentSnapshot,
    ) -> None:
        """A duty met or missed; a recurring one opens its next round in the same change,
        and a met one the duties waiting on it (`after`), while the incident is open
        (resolving it closes the round then owed, ending the series). Both come from the
        duty table the settled duty was opened from. What opens is the service's doing,
        caused by the settling event."""
        incident_id = ledger.incident_id
        saved = await self.obligations.save(uow, incident_id, ledger, [settled], cause)
        assert saved is not None
        (event,) = saved.events
        after = saved.aggregate
        table = await self.versions.of_stamp(after.get(settled.obligation_id).stamp)
        next_round = after.next_round(settled.obligation_id, table.duties)
        following: list[EventPayload] = [] if next_round is None else [next_round]
        if isinstance(settled, ObligationFulfilled):
            following += after.open_after(settled.obligation_id, table.duties, self.tz)
        if not following or incident.closed:
            return
        then = Cause(
            actor=self.actor,
            incident_id=incident_id,
            unit_id=event.unit_id,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
        )
        following = await self._routed(incident_id, table, following, uow)
        await self.obligations.save(uow, incident_id, saved.aggregate, following, then)

    async def _ledger(self, uow: UnitOfWork, incident_id: str) -> Ledger:
        return await self.obligations.get(uow, incident_id) or Ledger(incident_id)

    async def _incident(self, uow: UnitOfWork, incident_id: str) -> IncidentSnapshot:
        found = await self.projections.incidents.get(
            incident_id, session=uow.session, memo=uow.memo
        )
        return found or IncidentSnapshot(incident_id=incident_id)


def _first(incident: IncidentSnapshot) -> str | None:
    return incident.unit_ids[0] if incident.unit_ids else None
