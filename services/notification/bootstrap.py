"""The notification service, assembled: reporting obligations, their deadlines, delivery.

`build(deps)` is the one place its parts are made and wired; tests call it with fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import structlog
from pymongo.errors import PyMongoError

from services.notification.api import build_router
from services.notification.delivery import NotificationPolicy, Templates
from services.notification.dispatch import TEMPLATE_REASONS, Dispatcher
from services.notification.domain import (
    Ledger,
    Notification,
    notification_stream,
    stream_id,
)
from services.notification.facts import DutyFacts
from services.notification.handlers import ObligationWorkflow
from services.notification.plan_versions import DutyTable, DutyVersions, duties_of
from services.notification.projections import NotificationProjections
from shared.directory import Directory
from shared.events import (
    SUBSCRIPTIONS,
    Actor,
    GradeOverridden,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentGradeProposed,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    LeaderInstructionRecorded,
    ReportReceived,
    StatementDrafted,
    StatementPublished,
)
from shared.handlers import HandlerMap
from shared.metrics import NOTIFICATIONS_UNREACHABLE, OBLIGATIONS_OWED
from shared.plan import Plan, load_plan
from shared.plan_rules import ObligationPolicy
from shared.policy import PolicyError, load_policy
from shared.repository import Repository
from shared.service import Dependencies, ServiceParts
from shared.settings import CONFIG_DIR

log = structlog.get_logger("yuqing.notification")

NAME = "notification"
SHIPPED_TEMPLATES = CONFIG_DIR / "templates" / "notification"

# How many overdue duties (or due deliveries) one pass of a loop takes before looking again.
BATCH = 100


@dataclass(kw_only=True)
class NotificationParts(ServiceParts):
    policy: NotificationPolicy
    projections: NotificationProjections
    versions: DutyVersions
    workflow: ObligationWorkflow
    dispatcher: Dispatcher
    templates: Templates


def build(deps: Dependencies) -> NotificationParts:
    settings, store = deps.settings, deps.store
    actor = Actor.system(NAME)
    run = deps.command_runner()

    # Policies are checked before anything connects, so a bad file stops the start.
    policy = load_policy(settings.obligations_policy_path, NotificationPolicy)
    # The plan pack (YUQING_PLAN): every duty at one of its levels, its roles held by someone.
    plan = load_plan(
        settings.plan, settings.policy_paths, deps.directory, pack_wins=False, checks={"duties"}
    )
    check_duty_actions(settings.obligations_policy_path, policy, plan, deps.directory)
    try:
        tz = ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PolicyError(f"YUQING_TIMEZONE {settings.timezone!r} is unknown") from exc
    # Template paths are relative to the policy file, so a deployment ships both together.
    template_dir = settings.obligations_policy_path.parent / (
        policy.delivery.templates or SHIPPED_TEMPLATES
    )
    templates = Templates(template_dir, tz, deps.catalogue)
    try:
        templates.check(TEMPLATE_REASONS)
    except jinja2.TemplateError as exc:
        raise PolicyError(f"notification templates in {template_dir}: {exc!r}") from exc
    for name, channel in policy.delivery.channels.items():
        if not channel.enabled:
            log.warning("channel not configured: disabled", channel=name)
    # Each of the plan's levels shows 0 from the start, so the first person a page cannot
    # reach is an increase an alert sees.
    for level in plan.manifest.ranks:
        NOTIFICATIONS_UNREACHABLE.labels(str(int(level)))

    projections = NotificationProjections(store.db)
    dispatcher = Dispatcher(
        db=store.db,
        notifications=Repository(notification_stream, Notification.evolve),
        run=run,
        projections=projections,
        policy=policy.delivery,
        templates=templates,
        directory=deps.directory,
        catalogue=deps.catalogue,
        base_url=settings.base_url,
        clock=deps.clock,
        actor=actor,
    )
    # With every save of an incident's duties: its read model, then who is to be told.
    obligations = Repository(
        stream_id, Ledger.evolve, [projections.on_obligation_event, dispatcher.on_recorded]
    )
    # The duty table of the version in force, stored at start beside those of the versions
    # before it: each incident's duties open from the version its grade events name.
    versions = DutyVersions(store.db, DutyTable(plan.id, plan.version, duties_of(policy)))

    async def record_version() -> None:
        await versions.record_current(deps.clock())

    workflow = ObligationWorkflow(
        obligations=obligations,
        projections=projections,
        versions=versions,
        tz=tz,
        run=run,
        catalogue=deps.catalogue,
        actor=actor,
        facts=DutyFacts(store.db),
    )

    handlers = (
        HandlerMap()
        .on(IncidentOpened, workflow.on_described)
        .on(ReportReceived, workflow.on_described)
        .on(IncidentGraded, workflow.on_graded)
        .on(IncidentEscalated, workflow.on_regraded)
        .on(GradeOverridden, workflow.on_regraded)
        .on(IncidentGradeProposed, workflow.on_proposed)
        .on(LeaderInstructionRecorded, workflow.on_instructed)
        .on(IncidentResolved, workflow.on_resolved)
        .on(IncidentDismissed, workflow.on_dismissed)
        .on(IncidentReopened, workflow.on_reopened)
        .on(StatementDrafted, workflow.on_statement_drafted)
        .on(StatementPublished, workflow.on_statement_published)
    )

    async def guarded(what: str, one_pass: Callable[[datetime, int], Awaitable[object]]) -> None:
        try:
            await one_pass(deps.clock(), BATCH)
        except PyMongoError as exc:
            log.warning(f"{what} failed", error=str(exc))
        except Exception:
            # A loop must outlive any one bad pass, or every later deadline goes silent.
            log.exception(f"{what} failed")

    async def deliver() -> None:
        """Deliveries live in the database: the consumer only queues them, this loop sends,
        retries and escalates them, and picks up after a restart where it left off."""
        while True:
            await guarded("delivery pass", dispatcher.run_once)
            await asyncio.sleep(settings.delivery_poll_seconds)

    async def watch_deadlines() -> None:
        """Deadlines live in the database, not in timers: a pass after a restart records
        every deadline that passed while the service was down."""
        while True:
            await guarded("deadline watch pass", workflow.record_missed)
            await asyncio.sleep(settings.deadline_poll_seconds)

    counted_at: datetime | None = None

    async def owed_duties() -> None:
        nonlocal counted_at
        now = deps.clock()
        since = now - counted_at if counted_at is not None else None
        if since is not None and timedelta(0) <= since < timedelta(
            seconds=settings.owed_count_seconds
        ):
            return  # the gauge keeps the last count: each reads every duty still owed
        counted_at = now
        counts = await projections.owed_by_level(now)
        for level in plan.manifest.ranks:  # the plan's levels, however many it has
            for overdue in (False, True):
                OBLIGATIONS_OWED.labels(str(int(level)), str(overdue).lower()).set(
                    counts.get((int(level), overdue), 0)
                )

    return NotificationParts(
        name=NAME,
        prefix="/notifications/v1",
        title="yuqing notification",
        description=(
            "Reporting obligations (报送/处置义务) opened by grading (or its proposal, a "
            "leader's instruction, the resolution, a body's decision), with deadlines counted "
            "from it or from the first report; met by a person's filing or by publishing a "
            "statement; recipients routed by a report's source; durable deadline watch "
            "recording each miss once; fulfilment records; "
            "delivery over e-mail, signed webhooks, SMS and group robots, with retries, "
            "acknowledgement and escalation of unacknowledged pages."
        ),
        store=store,
        router=build_router(
            workflow,
            projections,
            dispatcher,
            deps.visibility,
            deps.clock,
            max_page_size=deps.settings.max_page_size,
        ),
        handlers=handlers,
        consumes=SUBSCRIPTIONS["notification"],
        setup=[projections.ensure_indexes, dispatcher.ensure_indexes, record_version],
        background=[watch_deadlines, deliver],
        gauges=[owed_duties],
        policy=policy,
        projections=projections,
        versions=versions,
        workflow=workflow,
        dispatcher=dispatcher,
        templates=templates,
    )


def check_duty_actions(
    path: object, policy: ObligationPolicy, plan: Plan, directory: Directory
) -> None:
    """What the duty file names beyond its duties, checked against the plan and the
    directory: each `met_by` statement kind is one of the plan's, each `decided_by` role
    held by someone, each route's recipient a unit of the directory where someone holds the
    role. PolicyError naming the file, the entry and the field."""
    problems: list[str] = []
    kinds = {str(k) for k in plan.manifest.statement_kinds}
    for place, rule in policy.entries():
        if rule.decided_by is not None and not directory.people_with(rule.decided_by):
            problems.append(
                f"{place} ({rule.kind}).decided_by: nobody in the directory holds the role "
                f"{rule.decided_by.value!r}"
            )
        if rule.met_by is not None and str(rule.met_by.statement_published) not in kinds:
            problems.append(
                f"{place} ({rule.kind}).met_by.statement_published: "
                f"{str(rule.met_by.statement_published)!r} is not a statement kind of plan "
                f"{plan.id!r} ({', '.join(sorted(kinds))})"
            )
    for n, route in enumerate(policy.routing):
        for m, r in enumerate(route.recipients):
            entry = f"routing.{n} ({route.id}).recipients.{m}"
            if directory.unit(r.unit) is None:
                problems.append(f"{entry}.unit: {r.unit!r} is not a unit of the directory")
            elif not directory.people_with(r.role, r.unit):
                problems.append(
                    f"{entry}.role: nobody in unit {r.unit!r} holds the role {r.role.value!r}"
                )
    if problems:
        raise PolicyError(f"policy file {path}: {'; '.join(problems)}")
