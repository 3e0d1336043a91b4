"""The archive, assembled: the one place its parts are built and wired together.

`build(deps)` makes, from the dependencies it is given (tests give fakes): the read models
over the archive's database, the repository of its own review stream, the review commands
run by the command runner, the case report (its template loaded here, so a bad file stops
the start), the handler map recording every event type of every topic, and the router.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from services.archive.api import ArchiveLimits, build_router
from services.archive.assessment_api import AssessmentCommands, load_rules, register_assessment
from services.archive.audit import Audit, register_audit
from services.archive.domain import assessment
from services.archive.domain.review import ReviewLog, evolve, review_stream
from services.archive.handlers import Recorder, ReviewCommands
from services.archive.projections import ArchiveViews
from services.archive.report import CaseReport
from shared.bus import bus_keys
from shared.events import SUBSCRIPTIONS, event_types
from shared.handlers import HandlerMap
from shared.repository import Repository
from shared.service import Dependencies, ServiceParts


@dataclass(kw_only=True)
class ArchiveParts(ServiceParts):
    views: ArchiveViews
    reviews: ReviewCommands
    report: CaseReport


def build(deps: Dependencies) -> ArchiveParts:
    settings = deps.settings
    tz = ZoneInfo(settings.timezone)
    views = ArchiveViews(
        deps.store.db, deps.clock, settings.archive_embedded_reports, keys=bus_keys(settings)
    )
    reviews = ReviewCommands(
        views,
        Repository[ReviewLog](review_stream, evolve),
        deps.command_runner(),
        deps.clock,
    )
    report = CaseReport(
        settings.archive_report_template,
        deps.directory,
        deps.catalogue,
        tz,
        base_url=settings.base_url,
    )
    recorder = Recorder(views)
    handlers = (
        HandlerMap()
        .on_each(tuple(event_types().values()), recorder.record)
        .on_batch(recorder.record_all)
    )
    router = build_router(
        views,
        reviews,
        deps.visibility,
        deps.catalogue,
        report,
        tz,
        deps.clock,
        settings.archive_replay_batch_size,
        limits=ArchiveLimits(
            embedded_reports=settings.archive_embedded_reports,
            max_page_size=settings.max_page_size,
            export_max_window=timedelta(days=settings.export_max_window_days),
            assessment_max_period=timedelta(days=settings.assessment_max_days),
        ),
    )
    register_audit(router, deps.store.db, settings.archive_audit_seconds)
    findings = AssessmentCommands(
        views,
        Repository[assessment.AssessmentLog](assessment.assessment_stream, assessment.evolve),
        deps.command_runner(),
        deps.clock,
    )
    register_assessment(
        router,
        views,
        findings,
        deps.visibility,
        deps.catalogue,
        load_rules(settings.plan, settings.assessment_policy_path),
        tz,
        deps.clock,
        timedelta(days=settings.assessment_max_days),
    )
    return ArchiveParts(
        name="archive",
        prefix="/archive/v1",
        title="yuqing archive",
        description=(
            "Every event of every topic, hash-chained per incident; the incident list, the "
            "incident view (also as it stood at any past time), the timeline and chain checks; "
            "the review of resolved incidents, the case library, the assessment (考评) and "
            "replay."
        ),
        store=deps.store,
        router=router,
        handlers=handlers,
        consumes=SUBSCRIPTIONS["archive"],
        setup=[views.ensure_indexes, views.mark_signing_start, views.abandon_interrupted_replays],
        background=[Audit(views, deps.store, settings, deps.clock).loop],
        views=views,
        reviews=reviews,
        report=report,
    )
