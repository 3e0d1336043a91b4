"""Intake's commands: each loads the incident through the repository, lets the domain
decide, and saves the resulting events with the read-model writes in one transaction.

Two writers deciding on one incident, or racing to open one for one URL, collide on a
unique index (`ConcurrencyConflict`, `UrlClaimLost`); the `CommandRunner` has the loser
decide again against what the winner stored. Near-identical texts under different URLs
have no index to collide on; they still meet because every append bumps the store's one
sequence document in the same transaction, so two filings at once conflict and the loser
is run again against the winner's report (the service test
`..._filed_at_once_make_one_incident` holds us to it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from services.intake.domain import (
    MATCH_SAME_URL,
    MATCH_SIMILAR_TEXT,
    Incident,
    IntakePolicy,
    Routing,
    TextMatch,
    best_text_match,
    new_incident_id,
    place_report,
    report_text,
    route_report,
)
from services.intake.projections import IntakeViews
from shared.clock import Clock
from shared.errors import Conflict, Forbidden
from shared.events import EventPayload, ReportReceived
from shared.identity import Caller
from shared.repository import Cause, CommandRunner, Repository
from shared.store import DecideAgain, UnitOfWork
from shared.visibility import Visibility, hidden, scope_of


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key, scoped to its caller, and what the request carried."""

    scope_key: str
    fingerprint: str


@dataclass(frozen=True)
class SubmitAnswer:
    report_id: str
    incident_id: str
    new_incident: bool
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "incident_id": self.incident_id,
            "new_incident": self.new_incident,
        }


class _IdempotencyRace(DecideAgain):
    """A request with the same key committed while this one was deciding: deciding again
    finds its answer and gives it."""


class IntakeCommands:
    def __init__(
        self,
        incidents: Repository[Incident],
        views: IntakeViews,
        policy: IntakePolicy,
        run: CommandRunner,
        visibility: Visibility,
        clock: Clock,
    ) -> None:
        self.incidents = incidents
        self.views = views
        self.policy = policy
        self.run = run
        self.visibility = visibility
        self.clock = clock

    async def submit(
        self, report: ReportReceived, caller: Caller, idempotency: Idempotency | None
    ) -> SubmitAnswer:
        async def work(uow: UnitOfWork) -> SubmitAnswer:
            if idempotency is not None:
                found = await self.views.remembered(idempotency.scope_key, uow.session)
                if found is not None:
                    return _replay(found, idempotency)
            now = self.clock()
            # Claims are per unit, so a URL only leads to an incident about one of the
            # report's own units; the first unit with a claim decides.
            claims = await self.views.claims(report.normalized_url, report.unit_ids, uow.session)
            claimed = next((claims[u] for u in report.unit_ids if u in claims), None)
            match, score, belongs_to = MATCH_SAME_URL, None, claimed
            if claimed is None:
                similar = await self._similar(report, now, uow)
                if similar is not None:
                    match, score, belongs_to = (
                        MATCH_SIMILAR_TEXT,
                        similar.score,
                        similar.incident_id,
                    )
            existing = await self.incidents.get(uow, belongs_to) if belongs_to else None
            routing = route_report(existing, now, self.policy)
            current = None if routing is Routing.OPEN_NEW else existing
            incident_id = current.incident_id if current is not None else new_incident_id()
            await self.incidents.save(
                uow,
                incident_id,
                current,
                place_report(routing, report, match, score),
                Cause(caller.actor, incident_id, report.unit_ids[0], occurred_at=now),
            )
            for unit_id in report.unit_ids:
                previous = claims.get(unit_id)
                if routing is Routing.OPEN_NEW or previous is None:
                    # A URL first seen on a look-alike, or about a unit the incident did
                    # not cover yet, now leads straight to its incident for that unit.
                    await self.views.claim(
                        report.normalized_url, unit_id, incident_id, previous, uow.session
                    )
            answer = SubmitAnswer(report.report_id, incident_id, routing is Routing.OPEN_NEW)
            if idempotency is not None:
                try:
                    await self.views.remember(
                        idempotency.scope_key, idempotency.fingerprint, answer.body(), uow.session
                    )
                except DuplicateKeyError:
                    raise _IdempotencyRace(idempotency.scope_key) from None
            return answer

        return await self.run(work)

    async def _similar(
        self, report: ReportReceived, now: datetime, uow: UnitOfWork
    ) -> TextMatch | None:
        matching = self.policy.similar_text
        text = report_text(report)
        candidates = await self.views.text_candidates(
            report.unit_ids, now - matching.window, matching.max_compared, uow.session, text
        )
        return best_text_match(text, candidates, matching)

    async def transition(
        self,
        incident_id: str,
        decide: Callable[[Incident], list[EventPayload]],
        caller: Caller,
    ) -> Incident:
        """Resolve, dismiss or reopen, for a caller who may see the incident and holds a
        lifecycle role: `decide` raises IllegalTransition when the status does not allow it.
        Only a caller acting for every unit of the incident may change it."""

        async def work(uow: UnitOfWork) -> Incident:
            incident = await self.incidents.get(uow, incident_id)
            if incident is None:
                raise hidden("incident", incident_id)
            if not self.visibility.may_act_on(caller, scope_of(incident_id, incident.unit_ids, ())):
                raise Forbidden(
                    f"{caller.id} may not act for every unit of incident {incident_id}",
                    {"unit_ids": list(incident.unit_ids)},
                )
            saved = await self.incidents.save(
                uow,
                incident_id,
                incident,
                decide(incident),
                Cause(caller.actor, incident_id, incident.unit_ids[0], occurred_at=self.clock()),
            )
            assert saved is not None, "a transition always decides an event"
            return saved.aggregate

        return await self.run(work)


def _replay(found: dict[str, Any], idempotency: Idempotency) -> SubmitAnswer:
    if found["fingerprint"] != idempotency.fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used for a different report",
            {"idempotency_key": idempotency.scope_key.split(":", 1)[1]},
        )
    answer = found["answer"]
    return SubmitAnswer(
        report_id=answer["report_id"],
        incident_id=answer["incident_id"],
        new_incident=answer["new_incident"],
        replayed=True,
    )
