"""The statement service: drafts, versions, approval chains by level, publication."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter

from services.statement.api import build_router
from services.statement.domain import ApprovalPolicy
from services.statement.handlers import StatementWorkflow
from services.statement.projections import StatementProjections
from shared.bus import Handler
from shared.events import GRADING_TOPIC, INTAKE_TOPIC, Envelope
from shared.incident_context import UPSTREAM_EVENT_TYPES
from shared.policy import load_policy
from shared.service import Context, Service
from shared.store import UnitOfWork


class StatementService(Service):
    name = "statement"
    prefix = "/statements/v1"
    title = "yuqing statement"
    description = (
        "Statements (通稿/回复稿) with versions and approval chains that follow the incident's "
        "level; nothing is published before the current version is cleared."
    )
    consumes = (INTAKE_TOPIC, GRADING_TOPIC)

    def __init__(self, ctx: Context) -> None:
        # Checked before anything connects, so a bad policy file stops the start.
        self.policy = load_policy(ctx.settings.approval_policy_path, ApprovalPolicy)
        super().__init__(ctx)
        self.projections = StatementProjections(self.db, self.policy)
        self.workflow = StatementWorkflow(self.store, self.projections, self.policy, self.directory)

    def routes(self) -> APIRouter:
        return build_router(self)

    def handlers(self) -> Mapping[str, Handler]:
        return dict.fromkeys(UPSTREAM_EVENT_TYPES, self._on_upstream)

    async def _on_upstream(self, event: Envelope, uow: UnitOfWork) -> None:
        await self.workflow.on_upstream(event, uow)

    async def setup(self) -> None:
        await self.projections.ensure_indexes()
