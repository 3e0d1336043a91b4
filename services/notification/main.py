"""The notification service: reporting obligations, their deadlines, and (later) deliveries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from fastapi import APIRouter
from pymongo.errors import PyMongoError

from services.notification.api import build_router
from services.notification.domain import ObligationPolicy
from services.notification.handlers import ObligationWorkflow
from services.notification.projections import NotificationProjections
from shared.bus import Handler
from shared.events import GRADING_TOPIC, INTAKE_TOPIC, Envelope, utcnow
from shared.incident_context import UPSTREAM_EVENT_TYPES
from shared.policy import PolicyError, load_policy
from shared.service import Context, Service
from shared.store import UnitOfWork

log = structlog.get_logger("yuqing.notification")

Clock = Callable[[], datetime]


class NotificationService(Service):
    name = "notification"
    prefix = "/notifications/v1"
    title = "yuqing notification"
    description = (
        "Reporting obligations (报送/处置义务) opened by grading, with deadlines counted from "
        "it; durable deadline watch recording each miss once; fulfilment records."
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
        self.clock = clock
        super().__init__(ctx)
        self.projections = NotificationProjections(self.db)
        self.workflow = ObligationWorkflow(
            self.name, self.store, self.projections, self.policy, self.tz, self.directory
        )

    def routes(self) -> APIRouter:
        return build_router(self)

    def handlers(self) -> Mapping[str, Handler]:
        return dict.fromkeys(UPSTREAM_EVENT_TYPES, self._on_upstream)

    async def _on_upstream(self, event: Envelope, uow: UnitOfWork) -> None:
        await self.workflow.on_upstream(event, uow)

    async def setup(self) -> None:
        await self.projections.ensure_indexes()

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [self.watch_deadlines]

    async def watch_deadlines(self) -> None:
        """Deadlines live in the database, not in timers: a pass after a restart records
        every deadline that passed while the service was down."""
        while True:
            try:
                await self.workflow.record_missed(self.clock(), self.deadline_batch)
            except PyMongoError as exc:
                log.warning("deadline watch pass failed", error=str(exc))
            except Exception:
                # The watch must outlive any one bad pass, or every later deadline goes silent.
                log.exception("deadline watch pass failed")
            await asyncio.sleep(self.settings.deadline_poll_seconds)
