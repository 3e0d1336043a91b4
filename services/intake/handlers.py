"""Intake's commands: each loads the incident through the repository, lets the domain
decide, and saves the resulting events with the read-model writes in one transaction.

Two writers deciding on one incident, or racing to open one for one URL, collide on a
unique index (`ConcurrencyConflict`, `UrlClaimLost`); the `CommandRunner` has the loser
decide again against what the winner stored. Near-identical texts under different URLs
have no index to collide on: every filing bumps the text guards of its units and its
text's LSH bands (`IntakeViews.guard_text`) in its transaction, so two filings at once
that could match each other conflict and the loser is run again against the winner's
report (the service test `..._filed_at_once_make_one_incident` holds us to it), while
filings that could not match each other do not meet.
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
    partner_may_join,
    place_referral,
    place_report,
    report_text,
    route_report,
)
from services.intake.projections import IntakeViews
from shared.clock import Clock
from shared.errors import Conflict, Forbidden
from shared.events import EventPayload, MediaTier, Reach, ReportReceived
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
    referral: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "incident_id": self.incident_id,
            "new_incident": self.new_incident,
            "referral": self.referral,
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
            # First: a filing it could be compared with that is in flight makes this one
            # conflict here, at once, before it has decided anything.
            await self.views.guard_text(report.unit_ids, report_text(report), uow.session)
            # Claims are per unit, so a URL only leads to an incident about one of the
            # report's own units; the first unit with a claim decides. A partner's referral
            # is the partner's own: a report of the bureau's never joins one (nor does its
            # URL lead there), it finds the units' own incidents or opens one.
            claims = await self.views.claims(report.normalized_url, report.unit_ids, uow.session)
            passed_over: set[str] = set()
            if not caller.is_partner:
                passed_over = await self.views.referrals(claims.values(), uow.session)
            claimed = next(
                (
                    claims[u]
                    for u in report.unit_ids
                    if u in claims and claims[u] not in passed_over
                ),
                None,
            )
            match, score, belongs_to = MATCH_SAME_URL, None, claimed
            if claimed is None:
                similar = await self._similar(report, now, uow, caller.is_partner)
                if similar is not None:
                    match, score, belongs_to = (
                        MATCH_SIMILAR_TEXT,
                        similar.score,
                        similar.incident_id,
                    )
            existing = await self.incidents.get(uow, belongs_to) if belongs_to else None
            referral = caller.is_partner and not partner_may_join(
                existing, caller.id, report.unit_ids
            )
            if referral:
                # Never into what the partner cannot see: an incident of its own, linked to
                # every incident its URL or text matched, for the office to merge.
                matched = [claims[u] for u in report.unit_ids if u in claims]
                matched += [belongs_to] if belongs_to is not None else []
                routing, current = Routing.OPEN_NEW, None
                placed = place_referral(report, matched)
            else:
                routing = route_report(existing, now, self.policy)
                current = None if routing is Routing.OPEN_NEW else existing
                watch = existing.watch if existing is not None else None
                placed = place_report(routing, report, match, score, watch)
            incident_id = current.incident_id if current is not None else new_incident_id()
            await self.incidents.save(
                uow,
                incident_id,
                current,
                placed,
                Cause(caller.actor, incident_id, report.unit_ids[0], occurred_at=now),
            )
            for unit_id in report.unit_ids:
                previous = claims.get(unit_id)
                if (
                    previous is None
                    or previous in passed_over
                    or (routing is Routing.OPEN_NEW and not referral)
                ):
                    # A URL first seen on a look-alike, or about a unit the incident did
                    # not cover yet, or held by a partner's referral, now leads straight
                    # to its incident for that unit.
                    await self.views.claim(
                        report.normalized_url, unit_id, incident_id, previous, uow.session
                    )
            answer = SubmitAnswer(
                report.report_id, incident_id, routing is Routing.OPEN_NEW, referral=referral
            )
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
        self, report: ReportReceived, now: datetime, uow: UnitOfWork, by_partner: bool
    ) -> TextMatch | None:
        """The incident a report reads like, from a bounded set of recent reports (and of
        those of incidents under watch), never a partner's referral unless a partner files:
        a referral is its partner's own, and only its reports may join it."""
        matching = self.policy.similar_text
        text = report_text(report)
        candidates = await self.views.recent_look_alikes(
            report.unit_ids, text, now - matching.window, now, matching.max_compared, uow.session
        )
        # An incident under watch (善后跟踪) is compared with whenever its reports came.
        watched = await self.views.watched(report.unit_ids, now, uow.session)
        if watched:
            candidates += await self.views.look_alikes_of(
                watched, report.unit_ids, text, matching.max_compared, uow.session
            )
        if not by_partner:
            referrals = await self.views.referrals((c.incident_id for c in candidates), uow.session)
            candidates = [c for c in candidates if c.incident_id not in referrals]
        return best_text_match(text, candidates, matching)

    async def transition(
        self,
        incident_id: str,
        decide: Callable[[Incident, datetime], list[EventPayload]],
        caller: Caller,
    ) -> Incident:
        """Resolve, dismiss or reopen, for a caller who may see the incident and holds a
        lifecycle role: `decide` raises IllegalTransition when the status does not allow it.
        Only a caller acting for every unit of the incident may change it."""

        async def work(uow: UnitOfWork) -> Incident:
            incident = await self._acted_on(uow, incident_id, caller)
            now = self.clock()  # the change's instant: a watch counts from it too
            saved = await self.incidents.save(
                uow,
                incident_id,
                incident,
                decide(incident, now),
                Cause(caller.actor, incident_id, incident.unit_ids[0], occurred_at=now),
            )
            assert saved is not None, "a transition always decides an event"
            return saved.aggregate

        return await self.run(work)

    async def merge(
        self, referral_id: str, into_id: str, reason: str, caller: Caller
    ) -> tuple[Incident, Incident]:
        """The office merges a partner's referral into an incident it may act on: the
        referral's reports are recorded there and the referral is closed, in one
        transaction. Both incidents must be in the caller's sight (404 otherwise) and in
        its hands (403)."""

        async def work(uow: UnitOfWork) -> tuple[Incident, Incident]:
            referral = await self._acted_on(uow, referral_id, caller)
            into = await self._acted_on(uow, into_id, caller)
            closed, recorded = referral.merge(into, reason, caller.id)
            for report in recorded:
                if not isinstance(report, ReportReceived):
                    continue
                # Its URL now leads to the incident it was merged into, for that one's units.
                claims = await self.views.claims(report.normalized_url, into.unit_ids, uow.session)
                for unit_id, claimed in claims.items():
                    if claimed == referral_id:
                        await self.views.claim(
                            report.normalized_url, unit_id, into_id, referral_id, uow.session
                        )
            at = self.clock()
            saved_into = await self.incidents.save(
                uow,
                into_id,
                into,
                recorded,
                Cause(caller.actor, into_id, into.unit_ids[0], occurred_at=at),
            )
            saved_referral = await self.incidents.save(
                uow,
                referral_id,
                referral,
                closed,
                Cause(caller.actor, referral_id, referral.unit_ids[0], occurred_at=at),
            )
            assert saved_referral is not None, "a merge always closes the referral"
            return saved_referral.aggregate, saved_into.aggregate if saved_into else into

        return await self.run(work)

    async def confirm_claims(
        self,
        report_id: str,
        reason: str,
        caller: Caller,
        media_tier: MediaTier | None,
        reach: Reach | None,
    ) -> Incident:
        """The office confirms a partner's claimed media tier and reach, on the incident
        the report now belongs to; grading counts them from then on."""

        async def work(uow: UnitOfWork) -> Incident:
            found = await self.views.report(report_id, uow.session)
            if found is None or not self.visibility.can_see(caller, found.scope):
                raise hidden("report", report_id)
            incident = await self._acted_on(uow, found.incident_id, caller)
            saved = await self.incidents.save(
                uow,
                incident.incident_id,
                incident,
                incident.confirm_claims(report_id, reason, caller.id, media_tier, reach),
                Cause(
                    caller.actor,
                    incident.incident_id,
                    incident.unit_ids[0],
                    occurred_at=self.clock(),
                ),
            )
            assert saved is not None
            return saved.aggregate

        return await self.run(work)

    async def _acted_on(self, uow: UnitOfWork, incident_id: str, caller: Caller) -> Incident:
        """The incident, for a caller who sees it (404 otherwise) and acts for every unit
        it concerns (403 otherwise: never a partner)."""
        incident = await self.incidents.get(uow, incident_id)
        if incident is None:
            raise hidden("incident", incident_id)
        scope = scope_of(incident_id, incident.unit_ids, incident.filed_by)
        if not self.visibility.can_see(caller, scope):
            raise hidden("incident", incident_id)
        if not self.visibility.may_act_on(caller, scope):
            raise Forbidden(
                f"{caller.id} may not act for every unit of incident {incident_id}",
                {"unit_ids": list(incident.unit_ids)},
            )
        return incident


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
        referral=answer.get("referral", False),
    )
