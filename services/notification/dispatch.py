"""Durable delivery: pages and deliveries kept in the service's database, worked by a loop.

A duty opened or missed starts a *page*: its recipients are told on their preferred
channel; if nobody acknowledges within the window they are told again, then the next
step of the escalation chain is. Each message is a *delivery*, a row with its attempts and
next attempt time, so a restart loses none.

Guarantee to the outside world: at-least-once. A delivery is claimed with a lease before
sending and marked sent after; a crash between the two sends it again once the lease runs
out. Webhook receivers drop repeats by the notification id header; an e-mail may arrive
twice. The record (NotificationSent, NotificationFailed) is exactly once: the event and the
row's new state share a transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import jinja2
import structlog
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.notification.channels import DeliveryError, Outgoing, send
from services.notification.delivery import (
    DeliveryPolicy,
    Message,
    PageMove,
    Reason,
    Templates,
    next_move,
    page_steps,
)
from services.notification.domain import Ledger
from shared.auth import Directory, Person, Principal, Role
from shared.errors import Conflict, Forbidden, NotFound
from shared.events import (
    Actor,
    DeadlineMissed,
    Envelope,
    EventPayload,
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
)
from shared.incident_context import IncidentContext, IncidentSnapshot
from shared.store import ConcurrencyConflict, Document, EventStore, UnitOfWork

log = structlog.get_logger("yuqing.notification")

PAGES = "pages"
DELIVERIES = "deliveries"

PENDING, SENT, FAILED, ACKNOWLEDGED = "pending", "sent", "failed", "acknowledged"
PAGE_OPEN, PAGE_ACKED, PAGE_CLOSED, PAGE_EXHAUSTED = "open", "acknowledged", "closed", "exhausted"

Clock = Callable[[], datetime]

TEMPLATE_REASONS: tuple[Reason, ...] = ("opened", "missed", "renotify", "escalated", "failed")


def notification_stream(notification_id: str) -> str:
    # A stream per notification: its record never contends with the incident's duties.
    return f"notification-{notification_id}"


class Dispatcher:
    def __init__(
        self,
        service: str,
        store: EventStore,
        db: AsyncDatabase[Document],
        policy: DeliveryPolicy,
        templates: Templates,
        directory: Directory,
        base_url: str,
        clock: Clock,
    ) -> None:
        self.clock = clock
        self.actor = Actor.system(service)
        self.store = store
        self.pages = db[PAGES]
        self.incidents = IncidentContext(db)
        self.deliveries = db[DELIVERIES]
        self.policy = policy
        self.templates = templates
        self.directory = directory
        self.base_url = base_url.rstrip("/")
        # A claimed delivery is someone else's to retry once every channel would have timed out.
        timeouts = [c.timeout for c in policy.channels.values()] or [timedelta(seconds=1)]
        self.lease = 2 * max(timeouts)

    async def ensure_indexes(self) -> None:
        await self.deliveries.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)])
        await self.deliveries.create_index([("page_id", ASCENDING)])
        await self.pages.create_index([("state", ASCENDING), ("ack_due_at", ASCENDING)])
        await self.pages.create_index([("obligation_id", ASCENDING)])

    # pages, started in the transaction of the event that calls for them ---------------

    async def on_recorded(
        self,
        events: Sequence[Envelope],
        ledger: Ledger,
        incident: IncidentSnapshot,
        session: AsyncClientSession,
    ) -> None:
        now = self.clock()
        for event in events:
            p = event.payload
            if isinstance(p, ObligationOpened):
                roles = p.recipients
            elif isinstance(p, DeadlineMissed):
                roles = p.alerted_roles
            elif isinstance(p, ObligationFulfilled | ObligationClosed):
                # The duty is settled: nobody needs chasing about it any more.
                await self.pages.update_many(
                    {"obligation_id": p.obligation_id, "state": PAGE_OPEN},
                    {"$set": {"state": PAGE_CLOSED}},
                    session=session,
                )
                continue
            else:
                continue
            reason: Reason = "opened" if isinstance(p, ObligationOpened) else "missed"
            obligation = ledger.get(p.obligation_id)
            page: Document = {
                "_id": str(event.event_id),
                "incident_id": event.incident_id,
                "unit_id": event.unit_id,
                "obligation_id": p.obligation_id,
                "kind": p.kind,
                "correlation_id": str(event.correlation_id),
                "steps": page_steps(
                    self.directory, roles, self.policy.escalation_roles, incident.unit_ids
                ),
                "step": 0,
                "renotified": 0,
                "state": PAGE_OPEN,
                "ack_due_at": now + self.policy.ack_window,
                "context": {
                    "reason": reason,
                    "incident_title": incident.title or event.incident_id,
                    "units": [self._unit_name(u) for u in incident.unit_ids],
                    "level": int(obligation.level),
                    "obligation_title": obligation.title,
                    "deadline": obligation.deadline,
                },
            }
            await self.pages.insert_one(page, session=session)
            await self._page_step(page, reason, now, session)

    def _unit_name(self, unit_id: str) -> str:
        unit = self.directory.unit(unit_id)
        return unit.name if unit else unit_id

    async def _page_step(
        self, page: Document, reason: Reason, now: datetime, session: AsyncClientSession
    ) -> None:
        steps: list[list[str]] = page["steps"]
        if page["step"] >= len(steps):
            log.warning("nobody to page", page_id=page["_id"], kind=page["kind"])
            return
        for person_id in steps[page["step"]]:
            person = self._person(person_id)
            channels = self.policy.channels_for(page["kind"], person.contacts if person else {})
            if person is None or not channels:
                log.warning("no channel reaches this person", person=person_id, kind=page["kind"])
                continue
            # The preferred channel first; the fallback catches it if that one fails for good.
            await self._enqueue(
                page, reason, person_id, channels[0], person.contacts[channels[0]], now, session
            )

    async def _enqueue(
        self,
        page: Document,
        reason: Reason,
        recipient: str,
        channel: str,
        address: str,
        now: datetime,
        session: AsyncClientSession,
        extra: dict[str, Any] | None = None,
    ) -> None:
        await self.deliveries.insert_one(
            {
                "_id": uuid.uuid4().hex,
                "page_id": page["_id"],
                "incident_id": page["incident_id"],
                "unit_id": page["unit_id"],
                "obligation_id": page["obligation_id"],
                "correlation_id": page["correlation_id"],
                "reason": reason,
                "context": {**page["context"], **(extra or {})},
                "recipient": recipient,
                "channel": channel,
                "address": address,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "lease_until": now,
                "last_error": None,
                "created_at": now,
            },
            session=session,
        )

    async def _message(self, doc: Document) -> Message:
        """Rendered at sending, with what the service knows of the incident by then: its
        grading can arrive before its title and units do."""
        context = {
            **doc["context"],
            "recipient": self._person_name(doc["recipient"]),
            "incident_url": self.incident_url(doc["incident_id"]),
            "ack_url": self.ack_url(doc["_id"]),
        }
        incident = await self.incidents.get(doc["incident_id"])
        if incident is not None and incident.title:
            context["incident_title"] = incident.title
        if incident is not None and incident.unit_ids:
            context["units"] = [self._unit_name(u) for u in incident.unit_ids]
        try:
            return self.templates.render(doc["reason"], **context)
        except jinja2.TemplateError:
            # A deployment's broken template must not silence the duty: send the bare facts.
            log.exception("template failed; sending the bare facts", template=doc["reason"])
            return Message(
                subject=context["obligation_title"],
                body=f"{context['incident_url']}\n{context['ack_url']}",
            )

    def _person(self, person_id: str) -> Person | None:
        return next((p for p in self.directory.people if p.id == person_id), None)

    def _person_name(self, person_id: str) -> str:
        person = self._person(person_id)
        return person.name if person else person_id

    def incident_url(self, incident_id: str) -> str:
        return f"{self.base_url}/archive/v1/incidents/{incident_id}"

    def ack_url(self, notification_id: str) -> str:
        return f"{self.base_url}/notifications/v1/notifications/{notification_id}/ack"

    # the loop ---------------------------------------------------------------------------

    async def run_once(self, now: datetime, batch: int) -> None:
        """One pass: send what is due (concurrently, so one slow receiver delays no other),
        then move on the pages nobody acknowledged in time."""
        claimed = []
        for _ in range(batch):
            doc = await self.deliveries.find_one_and_update(
                {"state": PENDING, "next_attempt_at": {"$lte": now}, "lease_until": {"$lte": now}},
                {"$set": {"lease_until": now + self.lease}},
                sort=[("next_attempt_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(doc)
        await asyncio.gather(*(self._attempt(doc, now) for doc in claimed))
        async for page in self.pages.find(
            {"state": PAGE_OPEN, "ack_due_at": {"$lte": now}}, limit=batch
        ):
            await self._advance(page["_id"], now)

    async def _attempt(self, doc: Document, now: datetime) -> None:
        channel = self.policy.channels.get(doc["channel"])
        message = await self._message(doc)
        out = Outgoing(
            notification_id=doc["_id"],
            incident_id=doc["incident_id"],
            obligation_id=doc["obligation_id"],
            recipient=doc["recipient"],
            address=doc["address"],
            message=message,
            incident_url=self.incident_url(doc["incident_id"]),
            ack_url=self.ack_url(doc["_id"]),
        )
        attempts = doc["attempts"] + 1
        try:
            if channel is None or not channel.enabled:
                # The policy changed since this was queued: retrying cannot help.
                raise DeliveryError(f"channel {doc['channel']} is not configured")
            await send(channel, out, now)
        except Exception as exc:
            # Whatever went wrong counts as a failed attempt, so the retry cap still holds.
            reason = str(exc) if isinstance(exc, DeliveryError) else repr(exc)
            await self._failed(doc, attempts, reason, now)
            return
        sent = NotificationSent(
            notification_id=doc["_id"],
            obligation_id=doc["obligation_id"],
            channel=doc["channel"],
            recipient=doc["recipient"],
            attempt=attempts,
        )

        async def work(uow: UnitOfWork) -> None:
            await self._append(uow, doc, sent, 0)
            await self.deliveries.update_one(
                {"_id": doc["_id"]},
                {
                    "$set": {
                        "state": SENT,
                        "attempts": attempts,
                        "sent_at": now,
                        "subject": message.subject,
                        "body": message.body,
                    }
                },
                session=uow.session,
            )

        await self.store.transaction(work)
        log.info("notification sent", notification_id=doc["_id"], channel=doc["channel"])

    async def _failed(self, doc: Document, attempts: int, reason: str, now: datetime) -> None:
        log.warning(
            "delivery attempt failed",
            notification_id=doc["_id"],
            channel=doc["channel"],
            attempt=attempts,
            error=reason,
        )
        if not self.policy.retry.exhausted(attempts):
            await self.deliveries.update_one(
                {"_id": doc["_id"]},
                {
                    "$set": {
                        "attempts": attempts,
                        "last_error": reason,
                        "next_attempt_at": now + self.policy.retry.backoff(attempts),
                        "lease_until": now,
                    }
                },
            )
            return
        failed = NotificationFailed(
            notification_id=doc["_id"],
            obligation_id=doc["obligation_id"],
            channel=doc["channel"],
            recipient=doc["recipient"],
            attempts=attempts,
            reason=reason,
        )

        async def work(uow: UnitOfWork) -> None:
            await self._append(uow, doc, failed, 0)
            await self.deliveries.update_one(
                {"_id": doc["_id"]},
                {"$set": {"state": FAILED, "attempts": attempts, "last_error": reason}},
                session=uow.session,
            )
            await self._alert_fallback(doc, reason, now, uow.session)

        await self.store.transaction(work)

    async def _alert_fallback(
        self, doc: Document, reason: str, now: datetime, session: AsyncClientSession
    ) -> None:
        fallback, address = self.policy.fallback, self.policy.fallback_address
        # A failed fallback alert is not alerted again: that would loop on a dead channel.
        if fallback is None or address is None or doc["reason"] == "failed":
            return
        if not self.policy.channels[fallback].enabled:
            log.error(
                "delivery failed and the fallback channel is not configured", channel=fallback
            )
            return
        page = await self.pages.find_one({"_id": doc["page_id"]}, session=session)
        assert page is not None
        extra = {
            "failed_recipient": self._person_name(doc["recipient"]),
            "failed_channel": doc["channel"],
            "error": reason,
        }
        await self._enqueue(page, "failed", "fallback", fallback, address, now, session, extra)

    async def _append(
        self, uow: UnitOfWork, doc: Document, payload: EventPayload, expected: int
    ) -> None:
        event = Envelope.new(
            payload,
            incident_id=doc["incident_id"],
            stream_id=notification_stream(doc["_id"]),
            stream_version=expected + 1,
            actor=self.actor,
            correlation_id=uuid.UUID(doc["correlation_id"]),
            causation_id=uuid.UUID(doc["page_id"]),
            unit_id=doc["unit_id"],
        )
        await uow.append([event], expected_version=expected)

    async def _advance(self, page_id: str, now: datetime) -> None:
        async def work(uow: UnitOfWork) -> None:
            page = await self.pages.find_one({"_id": page_id}, session=uow.session)
            if page is None or page["state"] != PAGE_OPEN or page["ack_due_at"] > now:
                return  # acknowledged, settled or moved on by someone else meanwhile
            move = next_move(
                page["step"], page["renotified"], len(page["steps"]), self.policy.renotify
            )
            change: dict[str, Any] = {"ack_due_at": now + self.policy.ack_window}
            if move is PageMove.RENOTIFY:
                change["renotified"] = page["renotified"] + 1
            elif move is PageMove.ESCALATE:
                change.update(step=page["step"] + 1, renotified=0)
            else:
                change["state"] = PAGE_EXHAUSTED
            await self.pages.update_one({"_id": page_id}, {"$set": change}, session=uow.session)
            if move is PageMove.EXHAUSTED:
                log.error("page exhausted: nobody acknowledged", page_id=page_id)
                return
            reason: Reason = "renotify" if move is PageMove.RENOTIFY else "escalated"
            await self._page_step({**page, **change}, reason, now, uow.session)

        await self.store.transaction(work)

    # acknowledgement --------------------------------------------------------------------

    async def acknowledge(self, notification_id: str, principal: Principal, now: datetime) -> None:
        doc = await self.deliveries.find_one({"_id": notification_id})
        if doc is None:
            raise NotFound(f"没有编号为 {notification_id} 的通知")
        if principal.sub != doc["recipient"] and not principal.has(Role.ADMIN):
            raise Forbidden("只有通知的接收人（或管理员）可以确认")
        if doc["state"] == ACKNOWLEDGED:
            raise Conflict("该通知已确认", {"notification_id": notification_id})
        if doc["state"] != SENT:
            details = {"notification_id": notification_id, "state": doc["state"]}
            raise Conflict("该通知尚未送达，不能确认", details)
        acked = NotificationAcknowledged(
            notification_id=notification_id,
            obligation_id=doc["obligation_id"],
            acknowledged_by=principal.sub,
        )

        async def work(uow: UnitOfWork) -> None:
            await self._append(uow, doc, acked, 1)  # after its NotificationSent
            await self.deliveries.update_one(
                {"_id": notification_id},
                {"$set": {"state": ACKNOWLEDGED, "acknowledged_at": now}},
                session=uow.session,
            )
            await self.pages.update_one(
                {"_id": doc["page_id"], "state": PAGE_OPEN},
                {"$set": {"state": PAGE_ACKED, "acknowledged_by": principal.sub}},
                session=uow.session,
            )

        try:
            await self.store.transaction(work)
        except ConcurrencyConflict:
            raise Conflict("该通知已确认", {"notification_id": notification_id}) from None

    async def get(self, notification_id: str) -> Document | None:
        return await self.deliveries.find_one({"_id": notification_id})
