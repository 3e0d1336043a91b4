"""Grading's reactions to intake and notification events, and the leader's override.

Each consumed event is handled in the consumer's unit of work: the facts grading keeps,
the grade events it saves and the grade view all commit with the inbox mark. The
override is a command: the `CommandRunner` decides it again when another writer moved
the grade stream first.
"""

from __future__ import annotations

import uuid

from services.grading.domain import (
    Grade,
    ReportFacts,
    confirm,
    instruct,
    on_claims_confirmed,
    on_deadline_missed,
    on_reopened,
    on_report,
    override,
)
from services.grading.plan_versions import PlanVersions
from services.grading.projections import GradingViews
from shared.bus import Rejected
from shared.clock import Clock
from shared.events import (
    Actor,
    Category,
    DeadlineMissed,
    DutyDecided,
    Envelope,
    GradeOverridden,
    IncidentDismissed,
    IncidentGraded,
    IncidentGradeProposed,
    IncidentReopened,
    IncidentResolved,
    LeaderInstructionRecorded,
    Level,
    ObligationFulfilled,
    ObligationOpened,
    ReportClaimsConfirmed,
    ReportReceived,
)
from shared.repository import Cause, CommandRunner, Repository
from shared.store import UnitOfWork

RULEBOOK_ACTOR = Actor.rule("rulebook")


class GradingHandlers:
    def __init__(
        self,
        versions: PlanVersions,
        grades: Repository[Grade],
        views: GradingViews,
        clock: Clock,
    ) -> None:
        # Each incident is decided under the plan version it is pinned to (its first grade
        # or its reopening), not necessarily the one in force: services/grading/plan_versions.py.
        self.versions = versions
        self.grades = grades
        self.views = views
        self.clock = clock

    def _cause(self, event: Envelope) -> Cause:
        return Cause.of(event, RULEBOOK_ACTOR, occurred_at=self.clock())

    def _as_of(self, event: Envelope) -> Cause:
        """A decision that took effect when its cause happened, however late it is seen: an
        escalation for a deadline missed while the system was down dates from the deadline,
        and so do the new level's deadlines, counted from it."""
        return Cause.of(event, RULEBOOK_ACTOR, occurred_at=event.occurred_at)

    async def report_received(
        self, event: Envelope, report: ReportReceived, uow: UnitOfWork
    ) -> None:
        facts = await self.views.facts(event.incident_id, uow)
        if any(r.report_id == report.report_id for r in facts.reports):
            return  # the same report under another event id: already counted
        grade = await self.grades.get(uow, event.incident_id)
        plan = await self.versions.for_incident(facts.pin, grade)
        decision = on_report(
            plan.rulebook,
            grade,
            facts.reports,
            ReportFacts.of(report),
            facts.closed,
            plan.stamp,
            plan.confirmed_by,
        )
        if isinstance(decision, IncidentGraded | IncidentGradeProposed):
            units = sorted({*facts.unit_ids, *report.unit_ids})
            decision = decision.model_copy(update={"unit_ids": tuple(units)})
        await self.views.add_report(event.incident_id, report, uow, held=facts.closed)
        if grade is None and isinstance(decision, IncidentGraded | IncidentGradeProposed):
            await self.versions.pin(event.incident_id, plan, uow)
        decided = [decision] if decision is not None else []
        await self.grades.save(uow, event.incident_id, grade, decided, self._cause(event))

    async def claims_confirmed(
        self, event: Envelope, confirmation: ReportClaimsConfirmed, uow: UnitOfWork
    ) -> None:
        facts = await self.views.facts(event.incident_id, uow)
        claimed = next((r for r in facts.reports if r.report_id == confirmation.report_id), None)
        if claimed is None:
            # Intake confirms only a report it recorded on this incident, which comes first
            # on the same partition: the topics disagree, which someone must look at.
            raise Rejected(
                f"claims of {confirmation.report_id} confirmed on {event.incident_id}, "
                "where grading has no such report"
            )
        if not claimed.claims_unconfirmed:
            return  # the same confirmation under another event id: already counted
        grade = await self.grades.get(uow, event.incident_id)
        plan = await self.versions.for_incident(facts.pin, grade)
        decision = on_claims_confirmed(
            plan.rulebook,
            grade,
            facts.reports,
            confirmation,
            facts.closed,
            plan.stamp,
        )
        await self.views.confirm_claims(event.incident_id, claimed.confirmed(confirmation), uow)
        decided = [decision] if decision is not None else []
        await self.grades.save(uow, event.incident_id, grade, decided, self._cause(event))

    async def dismissed(self, event: Envelope, _: IncidentDismissed, uow: UnitOfWork) -> None:
        await self.views.set_dismissed(event.incident_id, True, uow)

    async def resolved(self, event: Envelope, _: IncidentResolved, uow: UnitOfWork) -> None:
        await self.views.set_resolved(event.incident_id, True, uow, at=event.occurred_at)

    async def duty_decided(self, event: Envelope, decided: DutyDecided, uow: UnitOfWork) -> None:
        await self.views.duty_decided(event, decided, uow)

    async def reopened(self, event: Envelope, _: IncidentReopened, uow: UnitOfWork) -> None:
        facts = await self.views.facts(event.incident_id, uow)
        await self.views.reopen(event.incident_id, uow)
        # A reopened incident starts again under the plan in force.
        plan = self.versions.current
        await self.versions.pin(event.incident_id, plan, uow)
        grade = await self.grades.get(uow, event.incident_id)
        held = set(facts.held)
        decision = on_reopened(
            plan.rulebook,
            grade,
            [r for r in facts.reports if r.report_id not in held],
            [r for r in facts.reports if r.report_id in held],
            plan.stamp,
        )
        if decision is not None:
            await self.grades.save(uow, event.incident_id, grade, [decision], self._cause(event))

    async def deadline_missed(
        self, event: Envelope, missed: DeadlineMissed, uow: UnitOfWork
    ) -> None:
        grade = await self.grades.get(uow, event.incident_id)
        if grade is None:
            # Duties are opened by a grade: a missed one on an incident grading never
            # graded means the topics disagree, which someone must look at.
            raise Rejected(f"a deadline was missed on {event.incident_id}, which was never graded")
        facts = await self.views.facts(event.incident_id, uow)
        plan = await self.versions.for_incident(facts.pin, grade)
        decision = on_deadline_missed(
            plan.rulebook, grade, missed.level, facts.dismissed, plan.stamp
        )
        decided = [decision] if decision is not None else []
        await self.grades.save(uow, event.incident_id, grade, decided, self._as_of(event))

    async def duty_opened(self, event: Envelope, opened: ObligationOpened, uow: UnitOfWork) -> None:
        await self.views.duty_opened(event, opened, uow)

    async def duty_fulfilled(
        self, event: Envelope, fulfilled: ObligationFulfilled, uow: UnitOfWork
    ) -> None:
        await self.views.duty_fulfilled(event, fulfilled, uow)


class GradingCommands:
    def __init__(
        self, run: CommandRunner, grades: Repository[Grade], views: GradingViews, clock: Clock
    ) -> None:
        self.run = run
        self.grades = grades
        self.views = views
        self.clock = clock

    async def override(
        self,
        incident_id: str,
        level: Level,
        category: Category | None,
        reason: str,
        actor: Actor,
        unit_id: str | None,
    ) -> GradeOverridden:
        """The leading group sets the level, up or down; raises OverrideRefused (409)."""

        async def work(uow: UnitOfWork) -> GradeOverridden:
            grade = await self.grades.get(uow, incident_id)
            facts = await self.views.facts(incident_id, uow)
            decided = override(grade, level, category, reason, facts.dismissed)
            cause = Cause(actor, incident_id, unit_id=unit_id, occurred_at=self.clock())
            await self.grades.save(uow, incident_id, grade, [decided], cause)
            return decided

        return await self.run(work)

    async def confirm(
        self,
        incident_id: str,
        level: Level | None,
        category: Category | None,
        reason: str | None,
        actor: Actor,
        unit_id: str | None,
    ) -> IncidentGraded:
        """The body the plan names confirms or changes the proposed grade; raises
        ConfirmRefused (409) or Invalid (422, `reason`)."""

        async def work(uow: UnitOfWork) -> IncidentGraded:
            grade = await self.grades.get(uow, incident_id)
            facts = await self.views.facts(incident_id, uow)
            decided = confirm(grade, level, category, reason, facts.dismissed, actor.id)
            cause = Cause(actor, incident_id, unit_id=unit_id, occurred_at=self.clock())
            await self.grades.save(uow, incident_id, grade, [decided], cause)
            return decided

        return await self.run(work)

    async def instruct(
        self, incident_id: str, text: str, signed: bool, actor: Actor, unit_id: str | None
    ) -> LeaderInstructionRecorded:
        """Record a leader's instruction (批示/签批); raises InstructionRefused (409)."""
        instruction_id = uuid.uuid4().hex

        async def work(uow: UnitOfWork) -> LeaderInstructionRecorded:
            grade = await self.grades.get(uow, incident_id)
            decided = instruct(grade, instruction_id, text, signed, actor.id)
            cause = Cause(actor, incident_id, unit_id=unit_id, occurred_at=self.clock())
            await self.grades.save(uow, incident_id, grade, [decided], cause)
            return decided

        return await self.run(work)
