"""The notification service: reporting obligations, their deadlines, and their delivery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import structlog
from fastapi import APIRouter
from pymongo.errors import PyMongoError

from services.notification.api import build_router
from services.notification.delivery import Templates
from services.notification.dispatch import TEMPLATE_REASONS, Dispatcher
from services.notification.domain import ObligationPolicy
from services.notification.handlers import ObligationWorkflow
from services.notification.projections import NotificationProjections
from shared.bus import Handler
from shared.events import GRADING_TOPIC, INTAKE_TOPIC, Envelope, utcnow
from shared.incident_context import UPSTREAM_EVENT_TYPES
from shared.policy import PolicyError, load_policy
from shared.service import Context, Service
from shared.settings import CONFIG_DIR
from shared.store import UnitOfWork

log = structlog.get_logger("yuqing.notification")

Clock = Callable[[], datetime]

SHIPPED_TEMPLATES = CONFIG_DIR / "templates" / "notification"


class NotificationService(Service):
    name = "notification"
    prefix = "/notifications/v1"
    title = "yuqing notification"
    description = (
        "Reporting obligations (报送/处置义务) opened by grading, with deadlines counted from "
        "it; durable deadline watch recording each miss once; fulfilment records; delivery "
        "over e-mail, signed webhooks, SMS and group robots, with retries, acknowledgement "
        "and escalation of unacknowledged pages."
    )
    consumes = (INTAKE_TOPIC, GRADING_TOPIC)

    # How many overdue duties one pass of the deadline watch records before looking again.
    deadline_batch = 100

    def __init__(self, ctx: Context, clock: Clock = utcnow) -> None:
        # Policies are checked before anything connects, so a bad file stops the start.
        self.policy = load_policy(ctx.settings.obligations_policy_path, ObligationPolicy)
        try:
            self.tz = ZoneInfo(ctx.settings.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise PolicyError(f"YUQING_TIMEZONE {ctx.settings.timezone!r} is unknown") from exc
        # Template paths are relative to the policy file, so a deployment ships both together.
        templates = ctx.settings.obligations_policy_path.parent / (
            self.policy.delivery.templates or SHIPPED_TEMPLATES
        )
        self.templates = Templates(templates, self.tz)
        try:
            self.templates.check(TEMPLATE_REASONS)
        except jinja2.TemplateError as exc:
            raise PolicyError(f"notification templates in {templates}: {exc!r}") from exc
        for name, channel in self.policy.delivery.channels.items():
            if not channel.enabled:
                log.warning("channel not configured: disabled", channel=name)
        self.clock = clock
        super().__init__(ctx)
        self.projections = NotificationProjections(self.db)
        self.dispatcher = Dispatcher(
            self.name,
            self.store,
            self.db,
            self.policy.delivery,
            self.templates,
            self.directory,
            self.settings.base_url,
            clock,
        )
        self.workflow = ObligationWorkflow(
            self.name,
            self.store,
            self.projections,
            self.policy,
            self.tz,
            self.directory,
            self.dispatcher,
        )

    def routes(self) -> APIRouter:
        return build_router(self)

    def handlers(self) -> Mapping[str, Handler]:
        return dict.fromkeys(UPSTREAM_EVENT_TYPES, self._on_upstream)

    async def _on_upstream(self, event: Envelope, uow: UnitOfWork) -> None:
        await self.workflow.on_upstream(event, uow)

    async def setup(self) -> None:
        await self.projections.ensure_indexes()
        await self.dispatcher.ensure_indexes()

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [self.watch_deadlines, self.deliver]

    async def deliver(self) -> None:
        """Deliveries live in the database: the consumer only queues them, this loop sends,
        retries and escalates them, and picks up after a restart where it left off."""
        while True:
            await self._guarded("delivery pass", self.dispatcher.run_once)
            await asyncio.sleep(self.settings.delivery_poll_seconds)

    async def watch_deadlines(self) -> None:
        """Deadlines live in the database, not in timers: a pass after a restart records
        every deadline that passed while the service was down."""
        while True:
            await self._guarded("deadline watch pass", self._record_missed)
            await asyncio.sleep(self.settings.deadline_poll_seconds)

    async def _record_missed(self, now: datetime, batch: int) -> None:
        await self.workflow.record_missed(now, batch)

    async def _guarded(
        self, what: str, one_pass: Callable[[datetime, int], Coroutine[Any, Any, None]]
    ) -> None:
        try:
            await one_pass(self.clock(), self.deadline_batch)
        except PyMongoError as exc:
            log.warning(f"{what} failed", error=str(exc))
        except Exception:
            # A loop must outlive any one bad pass, or every later deadline goes silent.
            log.exception(f"{what} failed")
