"""Durable delivery: pages and deliveries kept in the service's database, worked by a loop.

A duty opened or missed starts a *page*: its recipients are told on their preferred
channel; if nobody acknowledges within the window they are told again, then the next
step of the escalation chain is. Each message is a *delivery*, a row with its attempts and
next attempt time, so a restart loses none. A person no channel reaches (no contact on a
channel the duty's kind allows and the deployment configured) gets a delivery on no
channel: recorded NotificationFailed (channel "none", 0 attempts) with why, once a page,
and counted in yuqing_notifications_unreachable_total.

Guarantee to the outside world: at-least-once. A delivery is claimed with a lease before
sending and marked sent after; a crash between the two sends it again once the lease runs
out. Webhook receivers drop repeats by the notification id header; an e-mail may arrive
twice. The record is exactly once: each notification has a stream of its own
(`notification-{id}`: NotificationSent or NotificationFailed, then NotificationAcknowledged),
saved through the repository in one transaction with the row's new state, and a resend
after a lost lease finds its outcome on record and records nothing again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import jinja2
import structlog
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from services.notification.channels import DeliveryError, Outgoing, send
from services.notification.delivery import (
    NOBODY_TO_PAGE,
    DeliveryPolicy,
    Message,
    PageMove,
    Reason,
    Templates,
    next_move,
    page_steps,
    unreachable_reason,
)
from services.notification.domain import Notification, NotRecipient, Outcome
from services.notification.projections import NotificationProjections
from shared.catalogue import Catalogue
from shared.clock import Clock
from shared.directory import Directory, Person
from shared.events import (
    NO_CHANNEL,
    Actor,
    DeadlineMissed,
    Envelope,
    EventPayload,
    NotificationFailed,
    NotificationSent,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
)
from shared.identity import Caller, Role
from shared.incident_context import IncidentSnapshot
from shared.metrics import ACKNOWLEDGE_SECONDS, DELIVERIES_FAILED, NOTIFICATIONS_UNREACHABLE
from shared.repository import Cause, CommandRunner, Repository
from shared.store import Document, UnitOfWork
from shared.visibility import hidden

log = structlog.get_logger("yuqing.notification")

PAGES = "pages"
DELIVERIES = "deliveries"

PENDING, SENT, FAILED, ACKNOWLEDGED = "pending", "sent", "failed", "acknowledged"
PAGE_OPEN, PAGE_ACKED, PAGE_CLOSED, PAGE_EXHAUSTED = "open", "acknowledged", "closed", "exhausted"

TEMPLATE_REASONS: tuple[Reason, ...] = ("opened", "missed", "renotify", "escalated", "failed")

Reaction = Callable[[Envelope, Any, UnitOfWork], Awaitable[None]]


class Dispatcher:
    def __init__(
        self,
        *,
        db: AsyncDatabase[Document],
        notifications: Repository[Notification],
        run: CommandRunner,
        projections: NotificationProjections,
        policy: DeliveryPolicy,
        templates: Templates,
        directory: Directory,
        catalogue: Catalogue,
        base_url: str,
        clock: Clock,
        actor: Actor,
    ) -> None:
        self.notifications = notifications
        self.run = run
        self.projections = projections
        self.pages = db[PAGES]
        self.deliveries = db[DELIVERIES]
        self.policy = policy
        self.templates = templates
        self.directory = directory
        self.catalogue = catalogue
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.actor = actor
        # A claimed delivery is someone else's to retry once every channel would have timed out.
        timeouts = [c.timeout for c in policy.channels.values()] or [timedelta(seconds=1)]
        self.lease = 2 * max(timeouts)
        # What each recorded fact of a duty does to its pages.
        self._reactions: dict[type[EventPayload], Reaction] = {
            ObligationOpened: self._page_opened,
            DeadlineMissed: self._page_missed,
            ObligationFulfilled: self._settled,
            ObligationClosed: self._settled,
        }

    async def ensure_indexes(self) -> None:
        await self.deliveries.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)])
        await self.deliveries.create_index([("page_id", ASCENDING)])
        await self.pages.create_index([("state", ASCENDING), ("ack_due_at", ASCENDING)])
        await self.pages.create_index([("obligation_id", ASCENDING)])

    # pages, started in the transaction of the event that calls for them ---------------

    async def on_recorded(self, event: Envelope, uow: UnitOfWork) -> None:
        """Run with every save of an incident's obligations: who is told is decided with the
        fact, in its transaction, so a page is started once and never lost."""
        react = self._reactions.get(type(event.payload))
        if react is not None:
            await react(event, event.payload, uow)

    async def _page_opened(self, event: Envelope, p: ObligationOpened, uow: UnitOfWork) -> None:
        await self._start_page(event, p.obligation_id, p.kind, p.recipients, "opened", uow)

    async def _page_missed(self, event: Envelope, p: DeadlineMissed, uow: UnitOfWork) -> None:
        await self._start_page(event, p.obligation_id, p.kind, p.alerted_roles, "missed", uow)

    async def _settled(
        self, event: Envelope, p: ObligationFulfilled | ObligationClosed, uow: UnitOfWork
    ) -> None:
        # The duty is settled: nobody needs chasing about it any more.
        await self.pages.update_many(
            {"obligation_id": p.obligation_id, "state": PAGE_OPEN},
            {"$set": {"state": PAGE_CLOSED}},
            session=uow.session,
        )

    async def _start_page(
        self,
        event: Envelope,
        obligation_id: str,
        kind: str,
        roles: tuple[str, ...],
        reason: Reason,
        uow: UnitOfWork,
    ) -> None:
        now = self.clock()
        # The obligations row was written by the projector that runs before this one.
        obligation = await self.projections.obligation(
            obligation_id, session=uow.session, memo=uow.memo
        )
        assert obligation is not None, f"obligation {obligation_id} is not projected"
        incident = await self.projections.incidents.get(
            event.incident_id, session=uow.session, memo=uow.memo
        )
        incident = incident or IncidentSnapshot(incident_id=event.incident_id)
        page: Document = {
            "_id": str(event.event_id),
            "incident_id": event.incident_id,
            "unit_id": event.unit_id,
            "obligation_id": obligation_id,
            "kind": kind,
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
                "units": [self.directory.unit_name(u) for u in incident.unit_ids],
                "level": int(obligation.level),
                "obligation_title": obligation.title,
                "deadline": obligation.deadline,
            },
        }
        await self.pages.insert_one(page, session=uow.session)
        await self._page_step(page, reason, now, uow.session)

    async def _page_step(
        self, page: Document, reason: Reason, now: datetime, session: AsyncClientSession | None
    ) -> None:
        steps: list[list[str]] = page["steps"]
        if not steps:
            # On record like a person no channel reaches (no recipient): a duty nobody is
            # told of is what the office must see, not a line in a log.
            log.warning("nobody to page", page_id=page["_id"], kind=page["kind"])
            await self._unreachable(page, reason, "", None, now, session)
            return
        for person_id in steps[page["step"]]:
            person = self.directory.person(person_id)
            channels = self.policy.channels_for(page["kind"], person.contacts if person else {})
            if person is None or not channels:
                await self._unreachable(page, reason, person_id, person, now, session)
                continue
            # The preferred channel first; the fallback catches it if that one fails for good.
            await self._enqueue(
                page, reason, person_id, channels[0], person.contacts[channels[0]], now, session
            )

    async def _unreachable(
        self,
        page: Document,
        reason: Reason,
        person_id: str,
        person: Person | None,
        now: datetime,
        session: AsyncClientSession | None,
    ) -> None:
        """Nobody can tell this person: queued as a delivery on no channel, which the loop
        records (`_record_unreachable`) as NotificationFailed, once per person and page:
        sending the step again (renotify) finds it queued and queues nothing more."""
        queued = await self.deliveries.find_one(
            {"page_id": page["_id"], "recipient": person_id, "channel": NO_CHANNEL},
            session=session,
        )
        if queued is not None:
            return
        extra = {"unreachable": unreachable_reason(person) if person_id else NOBODY_TO_PAGE}
        await self._enqueue(page, reason, person_id, NO_CHANNEL, "", now, session, extra)

    async def _enqueue(
        self,
        page: Document,
        reason: Reason,
        recipient: str,
        channel: str,
        address: str,
        now: datetime,
        session: AsyncClientSession | None,
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
        incident = await self.projections.incidents.get(doc["incident_id"])
        if incident is not None and incident.title:
            context["incident_title"] = incident.title
        if incident is not None and incident.unit_ids:
            context["units"] = [self.directory.unit_name(u) for u in incident.unit_ids]
        try:
            return self.templates.render(doc["reason"], **context)
        except jinja2.TemplateError:
            # A deployment's broken template must not silence the duty: send the bare facts.
            log.exception("template failed; sending the bare facts", template=doc["reason"])
            return Message(
                subject=context["obligation_title"],
                body=f"{context['incident_url']}\n{context['ack_url']}",
            )

    def _person_name(self, person_id: str) -> str:
        person = self.directory.person(person_id)
        return person.name if person else person_id

    def channel_name(self, channel: str) -> str:
        """What staff call a configured channel: its own name in the catalogue, else its
        type's (a deployment's `ops` robot of type wecom is 企业微信)."""
        if channel in self.catalogue.channels:
            return self.catalogue.channel(channel)
        config = self.policy.channels.get(channel)
        return self.catalogue.channel(config.type.value) if config else channel

    # Links people open from a phone or a mail: console pages (served at `/` by the
    # gateway, after sign-in if needed), never an API route. Opening one changes nothing;
    # the acknowledgement page asks for a confirm, which POSTs to
    # /notifications/v1/notifications/{id}/ack with the session and its CSRF header.

    def incident_url(self, incident_id: str) -> str:
        return f"{self.base_url}/incidents/{quote(incident_id, safe='')}"

    def ack_url(self, notification_id: str) -> str:
        return f"{self.base_url}/ack/{quote(notification_id, safe='')}"

    # the loop ---------------------------------------------------------------------------

    async def run_once(self, now: datetime, batch: int) -> None:
        """One pass: send what is due (concurrently, so one slow receiver delays no other),
        then move on the pages nobody acknowledged in time."""
        claimed = []
        due = self.deliveries.find(
            {"state": PENDING, "next_attempt_at": {"$lte": now}},
            sort=[("next_attempt_at", ASCENDING)],
            limit=batch,
        )
        async for doc in due:
            # Claimed by moving its next attempt past the lease, if no other sender moved
            # it first (a sender that dies leaves it due again then). Not findAndModify,
            # which the embedded server serves by scanning every delivery ever queued.
            lease_until = now + self.lease
            taken = await self.deliveries.update_one(
                {"_id": doc["_id"], "state": PENDING, "next_attempt_at": doc["next_attempt_at"]},
                {"$set": {"next_attempt_at": lease_until}},
            )
            if taken.modified_count:
                claimed.append({**doc, "next_attempt_at": lease_until})
        # Sent side by side, recorded one at a time per incident: each record moves the
        # incident's event order, and two at once would conflict there and be done again.
        recording: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        await asyncio.gather(
            *(self._attempt(doc, now, recording[doc["incident_id"]]) for doc in claimed)
        )
        async for page in self.pages.find(
            {"state": PAGE_OPEN, "ack_due_at": {"$lte": now}}, limit=batch
        ):
            await self._advance(page["_id"], now)

    async def _attempt(self, doc: Document, now: datetime, recording: asyncio.Lock) -> None:
        if doc["channel"] == NO_CHANNEL:
            async with recording:
                await self._record_unreachable(doc)
            return
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
            async with recording:
                await self._failed(doc, attempts, reason, now)
            return
        sent = NotificationSent(
            notification_id=doc["_id"],
            obligation_id=doc["obligation_id"],
            channel=doc["channel"],
            recipient=doc["recipient"],
            attempt=attempts,
        )
        row = {
            "state": SENT,
            "attempts": attempts,
            "sent_at": now,
            "subject": message.subject,
            "body": message.body,
        }
        async with recording:
            recorded = await self.run(self._recorder(doc, sent, row))
        if recorded:
            log.info("notification sent", notification_id=doc["_id"], channel=doc["channel"])

    async def _record_unreachable(self, doc: Document) -> None:
        """Nothing to send: the person's NotificationFailed, counted once it is on record (a
        second sender after a lost lease finds it there and counts nothing)."""
        reason: str = doc["context"]["unreachable"]
        failed = NotificationFailed(
            notification_id=doc["_id"],
            obligation_id=doc["obligation_id"],
            channel=NO_CHANNEL,
            recipient=doc["recipient"],
            attempts=0,
            reason=reason,
        )
        row = {"state": FAILED, "last_error": reason}
        if await self.run(self._recorder(doc, failed, row)):
            NOTIFICATIONS_UNREACHABLE.labels(str(doc["context"]["level"])).inc()
            log.warning(
                "no channel reaches this person",
                notification_id=doc["_id"],
                obligation_id=doc["obligation_id"],
                person=doc["recipient"],
                reason=reason,
            )

    async def _failed(self, doc: Document, attempts: int, reason: str, now: datetime) -> None:
        DELIVERIES_FAILED.labels(doc["channel"]).inc()
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
        row = {"state": FAILED, "attempts": attempts, "last_error": reason}

        record = self._recorder(doc, failed, row)

        async def work(uow: UnitOfWork) -> None:
            if await record(uow):
                await self._alert_fallback(doc, reason, now, uow.session)

        await self.run(work)

    def _recorder(
        self, doc: Document, outcome: Outcome, row: dict[str, Any]
    ) -> Callable[[UnitOfWork], Awaitable[bool]]:
        """The unit of work that records a send's outcome (`_record`), tried again by the
        runner after a lost race. The first try takes the notification to have no record
        yet, as an outcome is recorded once, and does not read its stream; a sender that
        recorded it first (after a lost lease) makes the append conflict, and the next try
        reads the stream and records nothing."""
        tries = 0

        async def record(uow: UnitOfWork) -> bool:
            nonlocal tries
            tries += 1
            return await self._record(uow, doc, outcome, row, unread=tries == 1)

        return record

    async def _record(
        self,
        uow: UnitOfWork,
        doc: Document,
        outcome: Outcome,
        row: dict[str, Any],
        *,
        unread: bool = False,
    ) -> bool:
        """The outcome of a send on the notification's record and its delivery row; False
        when another sender (after a lost lease) had recorded it already. `unread`: taken
        to have no record yet, without reading it (see `_recorder`)."""
        stored = None if unread else await self.notifications.get(uow, doc["_id"])
        current = stored or Notification(doc["_id"])
        saved = await self.notifications.save(
            uow, doc["_id"], current, current.record(outcome), self._cause(doc, self.actor)
        )
        if saved is None:
            log.info("outcome already on record", notification_id=doc["_id"])
            return False
        await self.deliveries.update_one({"_id": doc["_id"]}, {"$set": row}, session=uow.session)
        return True

    def _cause(self, doc: Document, actor: Actor) -> Cause:
        return Cause(
            actor=actor,
            incident_id=doc["incident_id"],
            unit_id=doc["unit_id"],
            correlation_id=uuid.UUID(doc["correlation_id"]),
            causation_id=uuid.UUID(doc["page_id"]),
        )

    async def _alert_fallback(
        self, doc: Document, reason: str, now: datetime, session: AsyncClientSession | None
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
            "failed_channel": self.channel_name(doc["channel"]),
            "error": reason,
        }
        await self._enqueue(page, "failed", "fallback", fallback, address, now, session, extra)

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

        await self.run(work)

    # acknowledgement --------------------------------------------------------------------

    async def acknowledge(self, caller: Caller, notification_id: str, now: datetime) -> None:
        """The recipient (or an admin) saw it: the page stops re-notifying and escalating.
        The caller's sight of the incident is checked before this is asked."""

        async def work(uow: UnitOfWork) -> datetime | None:
            doc = await self.deliveries.find_one({"_id": notification_id}, session=uow.session)
            if doc is None:
                raise hidden("notification", notification_id)
            if caller.id != doc["recipient"] and not caller.has(Role.ADMIN):
                raise NotRecipient(
                    "只有通知的接收人（或管理员）可以确认",
                    {"notification_id": notification_id},
                )
            current = await self.notifications.get(uow, notification_id)
            current = current or Notification(notification_id)
            acked = current.acknowledge(caller.id)
            await self.notifications.save(
                uow, notification_id, current, [acked], self._cause(doc, caller.actor)
            )
            await self.deliveries.update_one(
                {"_id": notification_id},
                {"$set": {"state": ACKNOWLEDGED, "acknowledged_at": now}},
                session=uow.session,
            )
            await self.pages.update_one(
                {"_id": doc["page_id"], "state": PAGE_OPEN},
                {"$set": {"state": PAGE_ACKED, "acknowledged_by": caller.id}},
                session=uow.session,
            )
            return doc.get("sent_at") if doc.get("state") != ACKNOWLEDGED else None

        sent_at = await self.run(work)
        if isinstance(sent_at, datetime):
            sent_at = sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=UTC)
            ACKNOWLEDGE_SECONDS.observe(max((now - sent_at).total_seconds(), 0.0))

    async def delivery(self, notification_id: str) -> Document | None:
        return await self.deliveries.find_one({"_id": notification_id})
