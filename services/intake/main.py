"""The intake service: reports in, incidents opened, attached, resolved, dismissed, reopened."""

from __future__ import annotations

from fastapi import APIRouter

from services.intake.api import build_router
from services.intake.domain import IntakePolicy
from services.intake.handlers import IntakeCommands
from services.intake.projections import IntakeViews
from shared.events import INTAKE_TOPIC
from shared.policy import load_policy
from shared.service import Context, Service


class IntakeService(Service):
    name = "intake"
    prefix = "/intake/v1"
    title = "yuqing intake"
    description = (
        "Reports (舆情件) filed by monitors, staff and partner agencies become incidents "
        "(舆情事件): a report about a matter already open is attached to it. Publishes "
        f"`{INTAKE_TOPIC}`."
    )

    views: IntakeViews
    commands: IntakeCommands

    def __init__(self, ctx: Context) -> None:
        self.policy = load_policy(ctx.settings.intake_policy_path, IntakePolicy)
        super().__init__(ctx)

    def routes(self) -> APIRouter:
        # The base class builds the app from its own __init__, once the store exists.
        self.views = IntakeViews(self.store.db)
        self.commands = IntakeCommands(self.store, self.views, self.policy)
        return build_router(self.commands, self.views, self.directory)

    async def setup(self) -> None:
        await self.views.ensure_indexes()
