"""The grading service, assembled: grades incidents by the rulebook, escalates them as
they grow, and takes the leading group's override."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from services.grading.api import build_router
from services.grading.domain import (
    Grade,
    Rulebook,
    RulebookError,
    evolve,
    grade_stream,
    parse_rulebook,
)
from services.grading.handlers import GradingCommands, GradingHandlers
from services.grading.projections import GradingViews
from shared.events import (
    GRADING_TOPIC,
    INTAKE_TOPIC,
    NOTIFICATION_TOPIC,
    DeadlineMissed,
    IncidentDismissed,
    IncidentReopened,
    ReportReceived,
)
from shared.handlers import HandlerMap
from shared.repository import Repository
from shared.service import Dependencies, ServiceParts

DESCRIPTION = (
    "Grades each incident (研判、分级) by the bureau's rulebook on its first report, "
    "escalates it when new reports or missed deadlines raise it, and takes the leading "
    f"group's override. Consumes `{INTAKE_TOPIC}` and `{NOTIFICATION_TOPIC}`; publishes "
    f"`{GRADING_TOPIC}`."
)


def load_rulebook(path: Path) -> Rulebook:
    """The rulebook file, validated; RulebookError names the file and the bad entry."""
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise RulebookError(f"rulebook {path} cannot be read: {exc}") from exc
    return parse_rulebook(data, str(path))


@dataclass(kw_only=True)
class GradingParts(ServiceParts):
    rulebook: Rulebook
    views: GradingViews
    grades: Repository[Grade]
    commands: GradingCommands


def build(deps: Dependencies) -> GradingParts:
    # A malformed rulebook stops the service here, before it consumes anything.
    rulebook = load_rulebook(deps.settings.rulebook_path)

    views = GradingViews(deps.store.db)
    grades = Repository(grade_stream, evolve, projectors=[views.apply])

    reactions = GradingHandlers(rulebook, grades, views, deps.clock)
    handlers = (
        HandlerMap()
        .on(ReportReceived, reactions.report_received)
        .on(IncidentDismissed, reactions.dismissed)
        .on(IncidentReopened, reactions.reopened)
        .on(DeadlineMissed, reactions.deadline_missed)
    )

    commands = GradingCommands(deps.command_runner(), grades, views, deps.clock)
    router = build_router(commands, views, deps.visibility, rulebook)

    return GradingParts(
        name="grading",
        prefix="/grading/v1",
        title="yuqing grading",
        description=DESCRIPTION,
        store=deps.store,
        router=router,
        handlers=handlers,
        consumes=(INTAKE_TOPIC, NOTIFICATION_TOPIC),
        rulebook=rulebook,
        views=views,
        grades=grades,
        commands=commands,
    )
