"""The grading service: grades incidents by the rulebook, escalates them as they grow."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from fastapi import APIRouter

from services.grading.api import build_router
from services.grading.domain import Rulebook, RulebookError, parse_rulebook
from services.grading.handlers import GradingCommands, GradingHandlers
from services.grading.projections import GradingViews
from shared.bus import Handler
from shared.events import GRADING_TOPIC, INTAKE_TOPIC, NOTIFICATION_TOPIC
from shared.service import Context, Service


def load_rulebook(path: Path) -> Rulebook:
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise RulebookError(f"rulebook {path} cannot be read: {exc}") from exc
    return parse_rulebook(data, str(path))


class GradingService(Service):
    name = "grading"
    prefix = "/grading/v1"
    title = "yuqing grading"
    description = (
        "Grades each incident (研判、分级) by the bureau's rulebook on its first report, "
        "escalates it when new reports or missed deadlines raise it, and takes the leading "
        f"group's override. Consumes `{INTAKE_TOPIC}` and `{NOTIFICATION_TOPIC}`; publishes "
        f"`{GRADING_TOPIC}`."
    )
    consumes = (INTAKE_TOPIC, NOTIFICATION_TOPIC)

    views: GradingViews

    def __init__(self, ctx: Context) -> None:
        # A malformed rulebook must stop the service before it consumes anything.
        self.rulebook = load_rulebook(ctx.settings.rulebook_path)
        super().__init__(ctx)

    def handlers(self) -> Mapping[str, Handler]:
        # The base class asks for handlers from its own __init__, once the store exists.
        self.views = GradingViews(self.store.db)
        return GradingHandlers(self.rulebook, self.views).mapping()

    def routes(self) -> APIRouter:
        commands = GradingCommands(self.store, self.views)
        return build_router(commands, self.views, self.rulebook, self.directory)
