"""HTTP routes of the archive, under /archive/v1.

Who sees what is the one visibility policy (`shared.visibility`): lists, searches, exports
and the assessment filter with its scope; every route with an id resolves the incident's
scope first, and an incident outside the caller's sight answers exactly like one that does
not exist. The archive's records of an incident (its obligations, statements,
notifications and review) are the bureau's internal records: they need full sight. A
partner's client sees of an incident it referred only `partner_view` (the view, also
`as_of`, its own reports by page, its rows of the list: `ReferredIncident`); the timeline,
the chain check, the review, cases, the case report, the assessment and the export are
records, and answer it the 404 of an unknown id (or, for lists, nothing).

Limits: a page is at most `YUQING_MAX_PAGE_SIZE` rows and an export of every incident at
most `YUQING_EXPORT_MAX_WINDOW_DAYS` long (the last such window unless `since` is given);
either beyond answers 422 naming the parameter, as does an assessment or accountability
period longer than `YUQING_ASSESSMENT_MAX_DAYS` (naming `from`). The view embeds the first
`YUQING_ARCHIVE_EMBEDDED_REPORTS` reports and counts them all.

Writes: the review of a resolved incident (leader, office), which the archive records as
events in its own store; they come back through Kafka into the log like every other event,
so the view turns `archived` and the case appears only from the log. Replay (admin or
analyst: it rebuilds read models from the log and changes no fact).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Header, Query, status
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.archive.alerts import register_alerts
from services.archive.assessment_api import period_views
from services.archive.cases_export import register_case_exports
from services.archive.domain import (
    ChainReport,
    IncidentSummary,
    IncidentView,
    ReferredIncidentView,
    ReportView,
    TimelineEntry,
    fold,
    partner_summary,
    partner_view,
    timeline,
)
from services.archive.domain.cases import (
    Accountability,
    CaseFigures,
    CaseRecord,
    accountability,
)
from services.archive.handlers import ReviewCommands, ReviewText
from services.archive.projections import (
    ArchiveViews,
    ExportedEvent,
    ReplayJob,
    StoredCase,
    StoredIncident,
)
from services.archive.report import CaseReport
from shared.auth import CurrentCaller
from shared.catalogue import Catalogue
from shared.clock import Clock
from shared.errors import Forbidden, Invalid, NotFound
from shared.events import MAX_LEVELS, Category, IncidentStatus
from shared.identity import Caller, Role
from shared.paging import decode_cursor, encode_cursor, page_size
from shared.store import Document
from shared.visibility import ReferredIncident, Sight, Visibility, hidden

log = structlog.get_logger("yuqing.archive")

# What the archive holds of an incident is the bureau's record: a partner sees none of it.
RECORDS = Sight.FULL
# The list filters on what a partner does not see (units, title, duties, opening time).
PARTNER_REFUSED_FILTERS = ("unit", "q", "overdue", "opened_from", "opened_to")

# The whole record, or what a partner sees of an incident it referred: told apart by `sight`.
AnyIncidentView = Annotated[IncidentView | ReferredIncidentView, Field(discriminator="sight")]
AnySummary = Annotated[IncidentSummary | ReferredIncident, Field(discriminator="sight")]


@dataclass(frozen=True)
class ArchiveLimits:
    embedded_reports: int = 50  # reports kept in the incident view; the rest by page
    max_page_size: int = 100  # the largest `limit` of a paged list
    export_max_window: timedelta = timedelta(days=31)  # the longest window of one export
    # the longest period of an assessment or accountability (`from`..`to`)
    assessment_max_period: timedelta = timedelta(days=366)


class IncidentPage(BaseModel):
    items: list[AnySummary]
    next_cursor: str | None  # pass as `cursor` for the next page; null on the last one


class ReportPage(BaseModel):
    incident_id: str
    total: int  # every report of the incident the caller sees (a partner: its own)
    items: list[ReportView]  # oldest first, by when intake received them
    next_cursor: str | None


class Timeline(BaseModel):
    incident_id: str
    events: list[TimelineEntry]


class ReviewRequest(BaseModel):
    # An unknown field is a 422 naming it.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "cause": "家长在微博发帖反映食堂饭菜变质，配图引发转发。",
                    "handling": "学校当日回应，送检样品，次日公布检测结果。",
                    "lessons": "食堂留样和公开机制需完善，首报应在30分钟内完成。",
                }
            ]
        },
    )

    cause: str = Field(min_length=1, max_length=10000, description="事件起因")
    handling: str = Field(min_length=1, max_length=10000, description="处置经过")
    lessons: str = Field(min_length=1, max_length=10000, description="经验教训")


class ReviewAccepted(BaseModel):
    incident_id: str
    case_id: str
    figures: CaseFigures


class CasePage(BaseModel):
    items: list[CaseRecord]
    next_cursor: str | None


def build_router(
    views: ArchiveViews,
    reviews: ReviewCommands,
    visibility: Visibility,
    catalogue: Catalogue,
    report: CaseReport,
    tz: tzinfo,
    clock: Clock,
    replay_batch_size: int,
    limits: ArchiveLimits | None = None,
) -> APIRouter:
    limits = limits or ArchiveLimits()
    max_page = limits.max_page_size
    router = APIRouter(tags=["archive"])
    people = {p.id: p.name for p in visibility.directory.people}
    unit_names = {u.id: u.name for u in visibility.directory.units}
    # Replays run beside the request that started them; held here so they are not collected.
    replays: set[asyncio.Task[ReplayJob]] = set()

    def aware(moment: datetime) -> datetime:
        """A time given without an offset is the bureau's local time."""
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)

    async def visible_incident(
        caller: Caller, incident_id: str, at_least: Sight = RECORDS
    ) -> tuple[StoredIncident, Sight]:
        found = await views.incident(incident_id)
        sight = visibility.require(
            caller, found.scope if found else None, "incident", incident_id, at_least=at_least
        )
        assert found is not None
        return found, sight

    def export_window(
        since: datetime | None, until: datetime | None, incident_id: str | None
    ) -> tuple[datetime | None, datetime | None]:
        """The export's [since, until): at most the configured window. An export of every
        incident without `since` covers the last such window; one of a single incident
        without `since` is its whole log."""
        window = limits.export_max_window
        if since is not None and until is not None and until <= since:
            raise Invalid("until", "must be after since", "export_window")
        if since is None and incident_id is not None:
            return since, until
        end = until or clock()
        start = since or end - window
        if end - start > window:
            days = window / timedelta(days=1)
            raise Invalid(
                "since",
                f"the window is longer than {days:g} days (YUQING_EXPORT_MAX_WINDOW_DAYS): "
                "export it in shorter windows",
                "export_window",
            )
        return start, until

    async def visible_case(caller: Caller, case_id: str) -> StoredCase:
        found = await views.case(case_id)
        scope = found.scope if found else None
        visibility.require(caller, scope, "case", case_id, at_least=RECORDS)
        assert found is not None
        return found

    def common_filters(
        caller: Caller,
        unit: str | None,
        level: int | None,
        category: Category | None,
        opened_from: datetime | None,
        opened_to: datetime | None,
        at_least: Sight = Sight.REFERRED,
    ) -> list[Document]:
        conditions: list[Document] = []
        if visible := visibility.scope_filter(caller, at_least=at_least):
            conditions.append(visible)
        if unit is not None:
            conditions.append({"unit_ids": unit})
        # Levels and categories are the plan's: its catalogue names each one it has.
        if level is not None and level not in catalogue.levels:
            raise Invalid("level", f"level {level} is not one of the plan's levels", "plan_level")
        if category is not None and category not in catalogue.categories:
            raise Invalid(
                "category", f"category {category!r} is not one of the plan's", "plan_category"
            )
        if level is not None:
            conditions.append({"level": level})
        if category is not None:
            conditions.append({"category": str(category)})
        if opened_from is not None:
            conditions.append({"opened_at": {"$gte": aware(opened_from)}})
        if opened_to is not None:
            conditions.append({"opened_at": {"$lt": aware(opened_to)}})
        return conditions

    @router.get("/incidents", response_model=IncidentPage, summary="List incidents")
    async def list_incidents(
        caller: CurrentCaller,
        unit: Annotated[str | None, Query(description="incidents concerning this unit")] = None,
        level: Annotated[int | None, Query(ge=1, le=MAX_LEVELS)] = None,
        category: Category | None = None,
        status: IncidentStatus | None = None,
        opened_from: Annotated[datetime | None, Query(description="opened at or after")] = None,
        opened_to: Annotated[datetime | None, Query(description="opened before")] = None,
        q: Annotated[str | None, Query(max_length=100, description="text in the title")] = None,
        overdue: Annotated[
            bool | None, Query(description="with an obligation past its deadline and not met")
        ] = None,
        limit: Annotated[int, Query(ge=1, description="at most YUQING_MAX_PAGE_SIZE")] = 20,
        cursor: str | None = None,
    ) -> IncidentPage:
        """Newest first. A partner gets its referred incidents as `ReferredIncident` rows
        and may filter them by level, category and status only (422 naming the rest)."""
        page_size(limit, max_page)
        if caller.is_partner:
            asked = dict(
                zip(
                    PARTNER_REFUSED_FILTERS, (unit, q, overdue, opened_from, opened_to), strict=True
                )
            )
            for name, value in asked.items():
                if value is not None:
                    raise Invalid(name, "not a filter of what a partner sees", "partner_filter")
        conditions = common_filters(caller, unit, level, category, opened_from, opened_to)
        if status is not None:
            conditions.append({"status": status.value})
        if q:
            conditions.append({"title": {"$regex": re.escape(q), "$options": "i"}})
        if overdue is not None:
            now = clock()
            # Not overdue: no deadline unmet (`due` null) or none past yet; one field, so
            # the query stays flat (see services/archive/listing.py).
            conditions.append({"due": {"$lt": now}} if overdue else {"due": {"$not": {"$lt": now}}})
        after = decode_cursor(cursor) if cursor else None
        rows, last = await views.list_page("incidents", conditions, limit, after)
        summaries = [IncidentSummary.model_validate(row["summary"]) for row in rows]
        return IncidentPage(
            items=[partner_summary(s) for s in summaries] if caller.is_partner else summaries,
            next_cursor=encode_cursor(last) if last else None,
        )

    @router.get(
        "/incidents/{incident_id}",
        response_model=AnyIncidentView,
        summary="One incident (a partner: what it may see of one it referred)",
    )
    async def get_incident(
        incident_id: str,
        caller: CurrentCaller,
        as_of: Annotated[
            datetime | None,
            Query(description="fold only what had happened by this time (ISO 8601)"),
        ] = None,
    ) -> IncidentView | ReferredIncidentView:
        found, sight = await visible_incident(caller, incident_id, Sight.REFERRED)
        view = found.view
        if as_of is not None:
            records = await views.load_log(incident_id)
            view = fold(incident_id, records, aware(as_of), limits.embedded_reports)
            if view.event_count == 0:
                raise NotFound(f"nothing had happened in incident {incident_id} by {as_of}")
        return partner_view(view, caller.id) if sight is Sight.REFERRED else view

    @router.get(
        "/incidents/{incident_id}/reports",
        response_model=ReportPage,
        summary="Every report of an incident by page, oldest first (a partner: its own)",
    )
    async def list_reports(
        incident_id: str,
        caller: CurrentCaller,
        limit: Annotated[int, Query(ge=1, description="at most YUQING_MAX_PAGE_SIZE")] = 50,
        cursor: str | None = None,
    ) -> ReportPage:
        page_size(limit, max_page)
        _, sight = await visible_incident(caller, incident_id, Sight.REFERRED)
        after = decode_cursor(cursor) if cursor else None
        full = fold(incident_id, await views.load_log(incident_id))
        seen = partner_view(full, caller.id).reports if sight is Sight.REFERRED else full.reports
        ordered = sorted(seen, key=lambda r: (r.received_at, r.report_id))
        rest = [r for r in ordered if after is None or (r.received_at, r.report_id) > after]
        items = rest[:limit]
        more = len(rest) > limit
        return ReportPage(
            incident_id=incident_id,
            total=len(ordered),
            items=items,
            next_cursor=(
                encode_cursor((items[-1].received_at, items[-1].report_id)) if more else None
            ),
        )

    @router.get(
        "/incidents/{incident_id}/timeline",
        response_model=Timeline,
        summary="Every event of an incident in causal order, each with a Chinese line",
    )
    async def get_timeline(
        incident_id: str,
        caller: CurrentCaller,
        event_type: Annotated[list[str] | None, Query(description="only these event types")] = None,
    ) -> Timeline:
        await visible_incident(caller, incident_id)
        records = await views.load_log(incident_id)
        return Timeline(
            incident_id=incident_id,
            events=timeline(records, tz, catalogue, event_type or (), people, unit_names),
        )

    @router.get(
        "/incidents/{incident_id}/verify",
        response_model=ChainReport,
        summary="Recompute the incident's hash chain and name the first broken link",
    )
    async def verify_incident(incident_id: str, caller: CurrentCaller) -> ChainReport:
        await visible_incident(caller, incident_id)
        return await views.verify(incident_id)

    @router.get(
        "/events",
        response_class=StreamingResponse,
        summary="Export the stored events as NDJSON (admin, analyst), resumable by seq",
        responses={
            200: {
                "model": ExportedEvent,
                "description": "One ExportedEvent per line (NDJSON)",
                "content": {
                    "application/x-ndjson": {
                        "schema": {"$ref": "#/components/schemas/ExportedEvent"}
                    }
                },
            }
        },
    )
    async def export_events(
        caller: CurrentCaller,
        after: Annotated[int, Query(ge=0, description="resume after this seq")] = 0,
        incident_id: str | None = None,
        unit: Annotated[str | None, Query(description="events recorded for this unit")] = None,
        event_type: Annotated[list[str] | None, Query()] = None,
        since: Annotated[datetime | None, Query(description="occurred at or after")] = None,
        until: Annotated[datetime | None, Query(description="occurred before")] = None,
    ) -> StreamingResponse:
        caller.require(Role.ANALYST)
        # The log is the bureau's record, scoped by each event's unit: a partner's filter
        # matches nothing, whatever other roles its token carries.
        since, until = export_window(
            aware(since) if since else None, aware(until) if until else None, incident_id
        )
        # The narrowest first: one incident, then the window (see `ArchiveViews.export`).
        conditions: list[Document] = []
        if incident_id is not None:
            conditions.append({"incident_id": incident_id})
        if since is not None:
            conditions.append({"occurred_at": {"$gte": since}})
        if until is not None:
            conditions.append({"occurred_at": {"$lt": until}})
        if visible := visibility.scope_filter(caller, units_field="unit_id", at_least=RECORDS):
            conditions.append(visible)
        if unit is not None:
            conditions.append({"unit_id": unit})
        if event_type:
            conditions.append({"event_type": {"$in": event_type}})

        async def lines() -> AsyncIterator[bytes]:
            async for row in views.export(conditions, after):
                yield row.model_dump_json().encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.post(
        "/incidents/{incident_id}/review",
        response_model=ReviewAccepted,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Record the review (总结评估) of a resolved incident and archive it as a case",
    )
    async def review(
        incident_id: str, body: ReviewRequest, caller: CurrentCaller
    ) -> ReviewAccepted:
        await visible_incident(caller, incident_id)
        caller.require(Role.LEADER, Role.OFFICE)
        decided = await reviews.review(
            caller, incident_id, ReviewText(body.cause, body.handling, body.lessons)
        )
        return ReviewAccepted(
            incident_id=incident_id, case_id=decided.case_id, figures=decided.figures
        )

    @router.get("/cases", response_model=CasePage, summary="Search the case library (案例库)")
    async def list_cases(
        caller: CurrentCaller,
        unit: Annotated[str | None, Query(description="cases concerning this unit")] = None,
        level: Annotated[int | None, Query(ge=1, le=MAX_LEVELS)] = None,
        category: Category | None = None,
        opened_from: Annotated[datetime | None, Query(description="opened at or after")] = None,
        opened_to: Annotated[datetime | None, Query(description="opened before")] = None,
        q: Annotated[
            str | None, Query(max_length=100, description="text in the title or the review")
        ] = None,
        limit: Annotated[int, Query(ge=1, description="at most YUQING_MAX_PAGE_SIZE")] = 20,
        cursor: str | None = None,
    ) -> CasePage:
        page_size(limit, max_page)
        # The case library is the bureau's record: a partner's search finds nothing.
        conditions = common_filters(
            caller, unit, level, category, opened_from, opened_to, at_least=RECORDS
        )
        if q:
            conditions.append({"text": {"$regex": re.escape(q), "$options": "i"}})
        after = decode_cursor(cursor) if cursor else None
        rows, last = await views.list_page("cases", conditions, limit, after)
        return CasePage(
            items=[CaseRecord.model_validate(row["case"]) for row in rows],
            next_cursor=encode_cursor(last) if last else None,
        )

    # Before `/cases/{case_id}`, which would take `export` for a case id.
    register_case_exports(router, views, common_filters, catalogue, visibility.directory, tz, clock)
    register_alerts(router, views, visibility, clock, tz, max_page)

    @router.get("/cases/{case_id}", response_model=CaseRecord, summary="One case")
    async def get_case(case_id: str, caller: CurrentCaller) -> CaseRecord:
        return (await visible_case(caller, case_id)).case

    @router.get(
        "/cases/{case_id}/report",
        response_class=PlainTextResponse,
        response_model=None,
        summary="The review as a document in Chinese: Markdown, or HTML (?format=html)",
        responses={200: {"content": {"text/markdown": {}, "text/html": {}}}},
    )
    async def case_report(
        case_id: str,
        caller: CurrentCaller,
        format: Annotated[Literal["markdown", "html"] | None, Query()] = None,
        accept: Annotated[str, Header()] = "",
    ) -> Response:
        case = (await visible_case(caller, case_id)).case
        stored = await views.incident(case.incident_id)  # its first reports, for the list
        reports = stored.view.reports if stored is not None else []
        if format == "html" or (format is None and "text/html" in accept):
            return HTMLResponse(report.html(case, reports))
        markdown = report.markdown(case, reports)
        return PlainTextResponse(markdown, media_type="text/markdown; charset=utf-8")

    @router.get(
        "/accountability",
        response_model=Accountability,
        summary="考评: obligations met on time, late (迟报) and missed, per unit and role",
    )
    async def get_accountability(
        caller: CurrentCaller,
        period_from: Annotated[datetime, Query(alias="from")],
        period_to: Annotated[datetime, Query(alias="to")],
        unit: str | None = None,
    ) -> Accountability:
        start, end = aware(period_from), aware(period_to)
        read = await period_views(
            views, visibility, caller, start, end, unit, limits.assessment_max_period
        )
        return accountability(read.views, start, end, read.units, clock())

    @router.post(
        "/replay",
        response_model=ReplayJob,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Rebuild the read models from the log into fresh collections (admin, analyst)",
    )
    async def replay(caller: CurrentCaller) -> ReplayJob:
        caller.require(Role.ADMIN, Role.ANALYST)
        if caller.is_partner:  # an admin role beside partner makes no administrator
            raise Forbidden("a partner's client may not rebuild the archive")
        job = await views.start_replay(caller.id)  # ReplayRunning (409) while one builds
        task = asyncio.create_task(
            views.run_replay(job.job_id, replay_batch_size), name=f"archive-replay-{job.job_id}"
        )
        replays.add(task)
        task.add_done_callback(finished)
        return job

    def finished(task: asyncio.Task[ReplayJob]) -> None:
        replays.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("replay failed", task=task.get_name(), error=str(error))

    @router.get(
        "/replay/{job_id}",
        response_model=ReplayJob,
        summary="Progress of a replay (admin, analyst)",
    )
    async def replay_progress(job_id: str, caller: CurrentCaller) -> ReplayJob:
        caller.require(Role.ADMIN, Role.ANALYST)
        job = await views.replay_job(job_id)
        if job is None or caller.is_partner:
            raise hidden("replay job", job_id)
        return job

    return router
