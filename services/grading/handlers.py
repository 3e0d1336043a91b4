"""Grading's reactions to intake and notification events, and the leader's override.

Each consumed event is handled in the consumer's transaction: the facts grading keeps,
the grade events it appends and the grade view all commit with the inbox mark.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.grading.domain import (
    Grade,
    ReportFacts,
    Rulebook,
    grade_stream,
    on_deadline_missed,
    on_report,
    override,
)
from services.grading.projections import GradingViews
from shared.bus import Handler, Rejected
from shared.errors import Conflict
from shared.events import (
    Actor,
    Category,
    DeadlineMissed,
    Envelope,
    EventPayload,
    IncidentDismissed,
    IncidentReopened,
    Level,
    ReportReceived,
)
from shared.store import ConcurrencyConflict, EventStore, UnitOfWork

RULEBOOK_ACTOR = Actor.rule("rulebook")


async def _load_grade(incident_id: str, uow: UnitOfWork) -> tuple[Grade | None, int]:
    events = await uow.load(grade_stream(incident_id))
    return Grade.replay(events), events[-1].stream_version if events else 0


class GradingHandlers:
    def __init__(self, rulebook: Rulebook, views: GradingViews) -> None:
        self.rulebook = rulebook
        self.views = views

    def mapping(self) -> Mapping[str, Handler]:
        return {
            ReportReceived.EVENT_TYPE: self.report_received,
            IncidentDismissed.EVENT_TYPE: self.dismissed,
            IncidentReopened.EVENT_TYPE: self.reopened,
            DeadlineMissed.EVENT_TYPE: self.deadline_missed,
        }

    async def report_received(self, event: Envelope, uow: UnitOfWork) -> None:
        report = event.payload
        if not isinstance(report, ReportReceived):
            raise Rejected(f"{event.event_type} carries no report")
        facts = await self.views.facts(event.incident_id, uow.session)
        if any(r.report_id == report.report_id for r in facts.reports):
            return  # the same report under another event id: already counted
        grade, version = await _load_grade(event.incident_id, uow)
        decision = on_report(
            self.rulebook, grade, facts.reports, ReportFacts.of(report), facts.dismissed
        )
        await self.views.add_report(event.incident_id, report, uow.session)
        await self._emit(event, decision, version, uow)

    async def dismissed(self, event: Envelope, uow: UnitOfWork) -> None:
        await self.views.set_dismissed(event.incident_id, True, uow.session)

    async def reopened(self, event: Envelope, uow: UnitOfWork) -> None:
        await self.views.set_dismissed(event.incident_id, False, uow.session)

    async def deadline_missed(self, event: Envelope, uow: UnitOfWork) -> None:
        missed = event.payload
        if not isinstance(missed, DeadlineMissed):
            raise Rejected(f"{event.event_type} carries no missed deadline")
        grade, version = await _load_grade(event.incident_id, uow)
        if grade is None:
            raise Rejected(f"a deadline was missed on {event.incident_id}, which was never graded")
        facts = await self.views.facts(event.incident_id, uow.session)
        decision = on_deadline_missed(self.rulebook, grade, missed.level, facts.dismissed)
        await self._emit(event, decision, version, uow)

    async def _emit(
        self, cause: Envelope, payload: EventPayload | None, version: int, uow: UnitOfWork
    ) -> None:
        if payload is None:
            return
        event = cause.caused(
            payload,
            stream_id=grade_stream(cause.incident_id),
            stream_version=version + 1,
            actor=RULEBOOK_ACTOR,
        )
        for stored in await uow.append([event], expected_version=version):
            await self.views.apply(stored, uow.session)


# Each retry re-reads the grade stream, so a handful suffices unless it is under a storm.
_ATTEMPTS = 5


class GradingCommands:
    def __init__(self, store: EventStore, views: GradingViews) -> None:
        self.store = store
        self.views = views

    async def override(
        self,
        incident_id: str,
        level: Level,
        category: Category | None,
        reason: str,
        actor: Actor,
        unit_id: str | None,
    ) -> Envelope:
        """The leading group sets the level, up or down; raises OverrideRefused."""

        async def work(uow: UnitOfWork) -> Envelope:
            grade, version = await _load_grade(incident_id, uow)
            facts = await self.views.facts(incident_id, uow.session)
            event = Envelope.new(
                override(grade, level, category, reason, facts.dismissed),
                incident_id=incident_id,
                stream_id=grade_stream(incident_id),
                stream_version=version + 1,
                actor=actor,
                unit_id=unit_id,
            )
            (stored,) = await uow.append([event], expected_version=version)
            await self.views.apply(stored, uow.session)
            return stored

        for _ in range(_ATTEMPTS):
            try:
                return await self.store.transaction(work)
            except ConcurrencyConflict:
                continue
        raise Conflict(f"the grade of {incident_id} kept changing; retry")
