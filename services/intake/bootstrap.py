"""Where the intake service is assembled: reports in, incidents opened, attached, resolved,
dismissed, reopened; files attached to reports (services/intake/attachments.py).

`build` reads the intake policy and the plan's watch after resolution (plan.yaml `watch:`;
a bad file stops the start, naming it and the field), builds the incident
repository over the store with the read models as its projector, the commands on the one
`CommandRunner`, and the router from the parts it uses. Intake consumes no topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.intake.api import build_router
from services.intake.attachments import (
    AttachmentCommands,
    AttachmentPolicy,
    AttachmentStore,
    AttachmentViews,
    GridFSAttachmentStore,
)
from services.intake.attachments_api import add_attachment_routes
from services.intake.domain import (
    Incident,
    IntakePolicy,
    WatchRule,
    evolve,
    incident_stream,
)
from services.intake.handlers import IntakeCommands
from services.intake.projections import IntakeViews
from shared.events import INTAKE_TOPIC
from shared.plan import PlanManifest, read_manifest
from shared.policy import load_policy
from shared.repository import Repository
from shared.service import Dependencies, ServiceParts


def plan_watch(manifest: PlanManifest) -> WatchRule | None:
    """The plan's watch after resolution (plan.yaml `watch:`), None without one: then the
    intake policy's reopen window applies."""
    if manifest.watch is None:
        return None
    return WatchRule(
        period=manifest.watch.period,
        on_report=manifest.watch.on_report,
        plan_id=manifest.id,
        plan_version=manifest.version,
    )


@dataclass(kw_only=True)
class IntakeParts(ServiceParts):
    policy: IntakePolicy
    watch: WatchRule | None
    views: IntakeViews
    commands: IntakeCommands
    attachments: AttachmentCommands


def build(deps: Dependencies, attachment_store: AttachmentStore | None = None) -> IntakeParts:
    """`attachment_store`: where attached files are kept; intake's own GridFS by default."""
    policy = load_policy(deps.settings.intake_policy_path, IntakePolicy)
    watch = plan_watch(read_manifest(deps.settings.plan))
    views = IntakeViews(deps.store.db, deps.settings.archive_embedded_reports)
    attachment_views = AttachmentViews(deps.store.db)
    incidents = Repository[Incident](
        incident_stream, evolve, projectors=[views.apply, attachment_views.apply]
    )
    visibility = deps.visibility
    commands = IntakeCommands(
        incidents, views, policy, deps.command_runner(), visibility, deps.clock
    )
    attachments = AttachmentCommands(
        incidents,
        views,
        attachment_views,
        attachment_store or GridFSAttachmentStore(deps.store.db),
        AttachmentPolicy.from_settings(deps.settings),
        deps.command_runner(),
        visibility,
        deps.clock,
    )
    router = build_router(
        commands,
        views,
        visibility,
        deps.directory,
        policy,
        deps.clock,
        watch,
        max_page_size=deps.settings.max_page_size,
    )
    add_attachment_routes(router, attachments, attachment_views)
    return IntakeParts(
        name="intake",
        prefix="/intake/v1",
        title="yuqing intake",
        description=(
            "Reports (舆情件) filed by monitors, staff and partner agencies become incidents "
            "(舆情事件): a report about a matter already open is attached to it. Publishes "
            f"`{INTAKE_TOPIC}`."
        ),
        store=deps.store,
        router=router,
        setup=[views.ensure_indexes, attachment_views.ensure_indexes],
        policy=policy,
        watch=watch,
        views=views,
        commands=commands,
        attachments=attachments,
    )
