"""The grading service, assembled: grades incidents by the rulebook, escalates them as
they grow, and takes the leading group's override."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from services.grading.api import PlanParts, build_router
from services.grading.domain import (
    Grade,
    Rulebook,
    RulebookError,
    evolve,
    grade_stream,
    parse_rulebook,
)
from services.grading.handlers import GradingCommands, GradingHandlers
from services.grading.plan_versions import PlanVersion, PlanVersions
from services.grading.projections import GradingViews
from services.grading.whatif import check_rulebook
from shared.errors import Invalid, NotFound
from shared.events import (
    GRADING_TOPIC,
    INTAKE_TOPIC,
    NOTIFICATION_TOPIC,
    SUBSCRIPTIONS,
    DeadlineMissed,
    DutyDecided,
    IncidentDismissed,
    IncidentReopened,
    IncidentResolved,
    ObligationFulfilled,
    ObligationOpened,
    ReportClaimsConfirmed,
    ReportReceived,
)
from shared.handlers import HandlerMap
from shared.plan import MANIFEST, Plan, PlanError, load_plan
from shared.repository import Repository
from shared.service import Dependencies, ServiceParts
from shared.settings import PLAN_FIELDS, Settings

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
    plans: PlanParts
    versions: PlanVersions
    views: GradingViews
    grades: Repository[Grade]
    commands: GradingCommands


class UnknownPlan(NotFound):
    code = "unknown_plan"


def _checked(plan: Plan, rulebook: Rulebook) -> Plan:
    problems = check_rulebook(plan, rulebook)
    if problems:
        raise PlanError("; ".join(problems))
    return plan


def plan_parts(deps: Dependencies, rulebook: Rulebook) -> PlanParts:
    """The plan in force (YUQING_PLAN), checked against the directory and the rulebook: a
    malformed pack stops the start naming file and entry. A candidate for a what-if is a
    pack under YUQING_PLANS_DIR, by name only; what it does not hold is the shipped file."""
    settings = deps.settings
    try:
        tz = ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PlanError(f"YUQING_TIMEZONE {settings.timezone!r} is not a time zone") from exc
    plan = _checked(
        load_plan(settings.plan, settings.policy_paths, deps.directory, pack_wins=False),
        rulebook,
    )
    shipped = {name: Settings.model_fields[field].default for name, field in PLAN_FIELDS.items()}

    def candidate(name: str) -> tuple[Plan, Rulebook]:
        pack = settings.plans_dir / name
        if not (pack / MANIFEST).is_file():
            raise UnknownPlan(f"no plan pack {name!r}", {"plan": name})
        try:
            found = load_plan(pack, shipped, deps.directory)
            candidate_rulebook = load_rulebook(found.paths["rulebook"])
            return _checked(found, candidate_rulebook), candidate_rulebook
        except (PlanError, RulebookError) as exc:
            raise Invalid("plan", str(exc), "invalid_plan") from None

    units = {unit.id: unit.name for unit in deps.directory.units}
    return PlanParts(
        plan=plan, rulebook=rulebook, candidate=candidate, tz=tz, clock=deps.clock, units=units
    )


def build(deps: Dependencies) -> GradingParts:
    # A malformed rulebook or plan stops the service here, before it consumes anything.
    rulebook = load_rulebook(deps.settings.rulebook_path)
    plans = plan_parts(deps, rulebook)
    # The version in force is stored before anything is consumed; incidents graded under an
    # earlier version stay on it (services/grading/plan_versions.py).
    versions = PlanVersions(deps.store.db, PlanVersion.of(plans.plan, rulebook))

    async def record_plan_version() -> None:
        await versions.record_current(plans.plan.manifest.name, deps.clock())

    views = GradingViews(deps.store.db)
    grades = Repository(grade_stream, evolve, projectors=[views.apply])

    reactions = GradingHandlers(versions, grades, views, deps.clock)
    handlers = (
        HandlerMap()
        .on(ReportReceived, reactions.report_received)
        .on(ReportClaimsConfirmed, reactions.claims_confirmed)
        .on(IncidentDismissed, reactions.dismissed)
        .on(IncidentReopened, reactions.reopened)
        .on(IncidentResolved, reactions.resolved)
        .on(DeadlineMissed, reactions.deadline_missed)
        .on(ObligationOpened, reactions.duty_opened)
        .on(ObligationFulfilled, reactions.duty_fulfilled)
        .on(DutyDecided, reactions.duty_decided)
    )

    commands = GradingCommands(deps.command_runner(), grades, views, deps.clock)
    router = build_router(commands, views, deps.visibility, rulebook, plans)

    return GradingParts(
        name="grading",
        prefix="/grading/v1",
        title="yuqing grading",
        description=DESCRIPTION,
        store=deps.store,
        router=router,
        handlers=handlers,
        consumes=SUBSCRIPTIONS["grading"],
        setup=[views.ensure_indexes, record_plan_version],
        rulebook=rulebook,
        plans=plans,
        versions=versions,
        views=views,
        grades=grades,
        commands=commands,
    )
