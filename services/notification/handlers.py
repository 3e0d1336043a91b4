"""What the notification service does: upstream events and commands in, its events out.

Every change loads the incident's obligations stream in the transaction, decides with the
domain, appends at the expected version and rewrites the read model, so a duty is opened,
met or missed once, even when two deciders (a consumer, a request, the deadline watch)
race or the service restarts half-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog

from services.notification.dispatch import Dispatcher
from services.notification.domain import Ledger, ObligationPolicy, stream_id
from services.notification.projections import NotificationProjections
from shared.auth import Directory, Principal, Role
from shared.errors import Forbidden, NotFound
from shared.events import (
    Actor,
    Envelope,
    EventPayload,
    GradeOverridden,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
)
from shared.incident_context import IncidentSnapshot
from shared.store import ConcurrencyConflict, Document, EventStore, UnitOfWork

log = structlog.get_logger("yuqing.notification")

DEADLINE_WATCH = Actor.rule("deadline-watch")


class ObligationWorkflow:
    def __init__(
        self,
        service: str,
        store: EventStore,
        projections: NotificationProjections,
        policy: ObligationPolicy,
        tz: ZoneInfo,
        directory: Directory,
        dispatcher: Dispatcher,
    ) -> None:
        self.dispatcher = dispatcher
        self.actor = Actor.system(service)
        self.store = store
        self.projections = projections
        self.policy = policy
        self.tz = tz
        self.directory = directory

    # upstream events --------------------------------------------------------------------

    async def on_upstream(self, event: Envelope, uow: UnitOfWork) -> None:
        change = await self.projections.incidents.apply(event, uow.session)
        incident = change.after
        p = event.payload
        if isinstance(p, IncidentOpened):
            await self.projections.set_units(event.incident_id, incident.unit_ids, uow.session)
            return
        ledger = Ledger.fold(event.incident_id, await uow.load(stream_id(event.incident_id)))
        payloads: Sequence[EventPayload] = ()
        if isinstance(p, IncidentGraded | IncidentEscalated | GradeOverridden):
            if incident.closed:
                return  # a late grading of an incident already ended owes nothing
            level = p.level if isinstance(p, IncidentGraded) else p.to_level
            upwards = isinstance(p, IncidentGraded) or p.to_level < p.from_level
            payloads = ledger.open_for_grade(
                self.policy,
                level=level,
                category=p.category,
                graded_at=event.occurred_at,
                tz=self.tz,
                include_level_duties=upwards,
            )
        elif isinstance(p, IncidentResolved):
            payloads = ledger.close_owed(f"事件已办结：{p.reason}")
        elif isinstance(p, IncidentDismissed):
            payloads = ledger.close_owed(f"事件已排除：{p.reason}")
        elif isinstance(p, IncidentReopened):
            # Grading does not regrade a reopened incident, so its standing grade decides.
            payloads = ledger.open_for_reopen(
                self.policy,
                level=incident.level,
                category=incident.category,
                reopened_at=event.occurred_at,
                tz=self.tz,
            )
        envelopes = [
            event.caused(
                payload,
                stream_id=stream_id(ledger.incident_id),
                stream_version=ledger.version + i,
                actor=self.actor,
                unit_id=_first(incident),
            )
            for i, payload in enumerate(payloads, start=1)
        ]
        await self._record(uow, ledger, envelopes, incident)

    # commands ---------------------------------------------------------------------------

    async def fulfil(
        self,
        obligation_id: str,
        principal: Principal,
        *,
        at: datetime,
        reference: str | None,
    ) -> Document:
        found = await self.projections.get(obligation_id)
        if found is None:
            raise NotFound(f"没有编号为 {obligation_id} 的报送义务")
        incident_id: str = found["incident_id"]

        async def work(uow: UnitOfWork) -> None:
            incident = await self._incident(incident_id, uow)
            ledger = Ledger.fold(incident_id, await uow.load(stream_id(incident_id)))
            obligation = ledger.get(obligation_id)
            if not self.directory.can_act_for(principal, incident.unit_ids):
                raise Forbidden("无权处理其他单位的报送义务")
            if not principal.has(Role.ADMIN, Role.LEADER, Role(obligation.owner_role)):
                raise Forbidden(
                    f"报送“{obligation.title}”需要角色 {obligation.owner_role} 或领导小组成员"
                )
            payload = ledger.fulfil(obligation_id, by=principal.sub, at=at, reference=reference)
            event = Envelope.new(
                payload,
                incident_id=incident_id,
                stream_id=stream_id(incident_id),
                stream_version=ledger.version + 1,
                actor=principal.actor,
                correlation_id=obligation.correlation_id,
                causation_id=obligation.opened_event_id,
                unit_id=_first(incident),
                occurred_at=at,
            )
            events = self._with_next_round(ledger, event, obligation_id, incident)
            await self._record(uow, ledger, events, incident)

        await self.store.transaction(work)
        updated = await self.projections.get(obligation_id)
        assert updated is not None
        return updated

    # durable deadlines ------------------------------------------------------------------

    async def record_missed(self, now: datetime, batch: int) -> int:
        """Record every open duty past its deadline as missed, each exactly once.

        The check and the append share a transaction at the stream's expected version, so
        a second watcher (another replica, or this one after a restart) finds it recorded.
        """
        recorded = 0
        for incident_id, obligation_id in await self.projections.past_deadline(now, batch):
            try:
                if await self._record_missed_once(incident_id, obligation_id, now):
                    recorded += 1
                    log.warning(
                        "deadline missed", incident_id=incident_id, obligation_id=obligation_id
                    )
            except ConcurrencyConflict:
                continue  # someone else changed this incident's duties: the next pass decides
        return recorded

    async def _record_missed_once(
        self, incident_id: str, obligation_id: str, now: datetime
    ) -> bool:
        async def work(uow: UnitOfWork) -> bool:
            incident = await self._incident(incident_id, uow)
            ledger = Ledger.fold(incident_id, await uow.load(stream_id(incident_id)))
            missed = ledger.missed_by(obligation_id, now)
            if missed is None:
                return False
            obligation = ledger.get(obligation_id)
            event = Envelope.new(
                missed,
                incident_id=incident_id,
                stream_id=stream_id(incident_id),
                stream_version=ledger.version + 1,
                actor=DEADLINE_WATCH,
                correlation_id=obligation.correlation_id,
                causation_id=obligation.opened_event_id,
                unit_id=_first(incident),
                # When it happened in the world: the moment the deadline passed, even if the
                # service was down then and notices only now.
                occurred_at=obligation.deadline,
            )
            events = self._with_next_round(ledger, event, obligation_id, incident)
            await self._record(uow, ledger, events, incident)
            return True

        return await self.store.transaction(work)

    # ------------------------------------------------------------------------------------

    def _with_next_round(
        self, ledger: Ledger, settled: Envelope, obligation_id: str, incident: IncidentSnapshot
    ) -> list[Envelope]:
        """A recurring duty met or missed opens its next round in the same change, while
        the incident is open; resolving it closes the round then owed, ending the series."""
        following = ledger.apply(settled).next_round(obligation_id, self.policy)
        if following is None or incident.closed:
            return [settled]
        opened = settled.caused(
            following,
            stream_id=settled.stream_id,
            stream_version=settled.stream_version + 1,
            actor=self.actor,
        )
        return [settled, opened]

    async def _incident(self, incident_id: str, uow: UnitOfWork) -> IncidentSnapshot:
        found = await self.projections.incidents.get(incident_id, session=uow.session)
        return found or IncidentSnapshot(incident_id=incident_id)

    async def _record(
        self,
        uow: UnitOfWork,
        ledger: Ledger,
        events: list[Envelope],
        incident: IncidentSnapshot,
    ) -> None:
        if not events:
            return
        stored = await uow.append(events, expected_version=ledger.version)
        for event in stored:
            ledger = ledger.apply(event)
        await self.projections.write_ledger(ledger, incident.unit_ids, uow.session)
        # Who is told is decided with the fact, so a page is started once and never lost.
        await self.dispatcher.on_recorded(stored, ledger, incident, uow.session)


def _first(incident: IncidentSnapshot) -> str | None:
    return incident.unit_ids[0] if incident.unit_ids else None
