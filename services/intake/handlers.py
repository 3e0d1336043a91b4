"""Intake's commands: each loads the incident inside a transaction, lets the domain decide,
and appends the resulting events together with the read-model writes.

Two writers deciding on one incident, or racing to open one for one URL, collide on a
unique index; the loser decides again against what the winner stored. Near-identical
texts under different URLs have no index to collide on; they still meet because every
append bumps the store's one sequence document in the same transaction, so two filings
at once conflict and the loser is run again against the winner's report (the service
test `..._filed_at_once_make_one_incident` holds us to it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from pymongo.errors import DuplicateKeyError

from services.intake.domain import (
    MATCH_SAME_URL,
    MATCH_SIMILAR_TEXT,
    Incident,
    IntakePolicy,
    Routing,
    TextMatch,
    best_text_match,
    incident_stream,
    new_incident_id,
    place_report,
    report_text,
    route_report,
)
from services.intake.projections import IntakeViews, UrlClaimLost
from shared.errors import Conflict, NotFound
from shared.events import Actor, Envelope, EventPayload, ReportReceived, utcnow
from shared.store import ConcurrencyConflict, EventStore, UnitOfWork

log = structlog.get_logger("yuqing.intake")

# Each retry re-reads what the competing writer stored, so a handful always suffices
# unless the stream is under a write storm, which then surfaces as 409.
_ATTEMPTS = 5


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key, scoped to its principal, and what the request carried."""

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


class _IdempotencyRace(Exception):
    """A request with the same key committed while this one was deciding."""


class IntakeCommands:
    def __init__(self, store: EventStore, views: IntakeViews, policy: IntakePolicy) -> None:
        self.store = store
        self.views = views
        self.policy = policy

    async def submit(
        self, report: ReportReceived, actor: Actor, idempotency: Idempotency | None
    ) -> SubmitAnswer:
        async def work(uow: UnitOfWork) -> SubmitAnswer:
            if idempotency is not None:
                found = await self.views.remembered(idempotency.scope_key, uow.session)
                if found is not None:
                    return _replay(found, idempotency)
            now = utcnow()
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
            existing = None
            if belongs_to is not None:
                existing = Incident.replay(await uow.load(incident_stream(belongs_to)))
            routing = route_report(existing, now, self.policy)
            if routing is Routing.OPEN_NEW or existing is None:
                incident_id, version = new_incident_id(), 0
            else:
                incident_id, version = existing.incident_id, existing.version
            payloads = place_report(routing, report, match, score)
            await self._append(uow, incident_id, version, payloads, actor, report.unit_ids[0])
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
                    raise _IdempotencyRace from None
            return answer

        for _ in range(_ATTEMPTS):
            try:
                return await self.store.transaction(work)
            except (ConcurrencyConflict, UrlClaimLost) as exc:
                log.info("report placement collided, deciding again", reason=str(exc))
            except _IdempotencyRace:
                assert idempotency is not None
                found = await self.views.remembered(idempotency.scope_key)
                if found is not None:
                    return _replay(found, idempotency)
        raise Conflict("the incident kept changing while the report was filed; retry")

    async def _similar(
        self, report: ReportReceived, now: datetime, uow: UnitOfWork
    ) -> TextMatch | None:
        matching = self.policy.similar_text
        candidates = await self.views.text_candidates(
            report.unit_ids, now - matching.window, matching.max_compared, uow.session
        )
        return best_text_match(report_text(report), candidates, matching)

    async def transition(
        self,
        incident_id: str,
        decide: Callable[[Incident], list[EventPayload]],
        actor: Actor,
        authorize: Callable[[Incident], None],
    ) -> Incident:
        """Resolve, dismiss or reopen: `decide` raises IllegalTransition when it may not."""

        async def work(uow: UnitOfWork) -> Incident:
            events = await uow.load(incident_stream(incident_id))
            incident = Incident.replay(events)
            if incident is None:
                raise NotFound(f"no incident {incident_id}")
            authorize(incident)
            stored = await self._append(
                uow, incident_id, incident.version, decide(incident), actor, incident.unit_ids[0]
            )
            after = Incident.replay([*events, *stored])
            assert after is not None
            return after

        for _ in range(_ATTEMPTS):
            try:
                return await self.store.transaction(work)
            except ConcurrencyConflict as exc:
                log.info("incident changed meanwhile, deciding again", reason=str(exc))
        raise Conflict(f"incident {incident_id} kept changing; retry")

    async def _append(
        self,
        uow: UnitOfWork,
        incident_id: str,
        version: int,
        payloads: list[EventPayload],
        actor: Actor,
        unit_id: str,
    ) -> list[Envelope]:
        correlation_id = uuid.uuid4()
        envelopes = [
            Envelope.new(
                payload,
                incident_id=incident_id,
                stream_id=incident_stream(incident_id),
                stream_version=version + offset,
                actor=actor,
                unit_id=unit_id,
                correlation_id=correlation_id,
            )
            for offset, payload in enumerate(payloads, start=1)
        ]
        stored = await uow.append(envelopes, expected_version=version)
        for event in stored:
            await self.views.apply(event, uow.session)
        return stored


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
