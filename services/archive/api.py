"""HTTP routes of the archive, under /archive/v1.

Who sees what: every authenticated role may read the archive, limited to the incidents of
the units it sees (its unit and the units below it; admin and analyst see all). A principal
whose only role is `partner` sees only incidents holding a report it filed. An incident
outside a principal's sight answers 404, exactly like one that does not exist, so the
archive does not reveal which incidents other units have.

Writes: the review of a resolved incident (leader, office), which the archive records as
events in its own store; they come back through Kafka into the log like every other event,
so the view turns `archived` and the case appears only from the log. Replay (admin).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, tzinfo
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Header, Query, status
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from pymongo.asynchronous.database import AsyncDatabase

from services.archive import projections
from services.archive.cases import Accountability, CaseFigures, CaseRecord, accountability
from services.archive.domain import (
    ChainReport,
    IncidentSummary,
    IncidentView,
    Status,
    TimelineEntry,
    causal_order,
    fold,
    timeline,
)
from services.archive.report import CaseReport
from services.archive.review import ReviewDecision, review_events, review_stream
from shared.auth import CurrentPrincipal, Directory, Principal, Role
from shared.errors import BadRequest, Conflict, Forbidden, NotFound
from shared.events import Category, utcnow
from shared.store import Document, EventStore

log = structlog.get_logger("yuqing.archive")

MAX_PAGE = 100


class IncidentPage(BaseModel):
    items: list[IncidentSummary]
    next_cursor: str | None  # pass as `cursor` for the next page; null on the last one


class Timeline(BaseModel):
    incident_id: str
    events: list[TimelineEntry]


class ReviewRequest(BaseModel):
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


def _encode_cursor(key: tuple[datetime, str]) -> str:
    raw = json.dumps([key[0].isoformat(), key[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        sort_at, incident_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(sort_at), str(incident_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadRequest(
            "cursor is not one this API returned", {"field": "cursor", "reason": str(exc)}
        ) from None


def routes(
    store: EventStore,
    directory: Directory,
    tz: tzinfo,
    report: CaseReport,
    replay_batch_size: int,
) -> APIRouter:
    router = APIRouter(tags=["archive"])
    db: AsyncDatabase[Document] = store.db
    # Replays run beside the request that started them; held here so they are not collected.
    replays: set[asyncio.Task[projections.ReplayJob]] = set()

    def aware(moment: datetime) -> datetime:
        """A time given without an offset is the bureau's local time."""
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)

    def scope(principal: Principal) -> Document:
        # Any partner role limits the view, whatever else the token carries (as in the
        # other services); only admin lifts it.
        if principal.has(Role.PARTNER) and not principal.has(Role.ADMIN):
            return {"filed_by": principal.sub}
        visible = directory.visible_units(principal)
        return {} if visible is None else {"unit_ids": {"$in": sorted(visible)}}

    async def visible_view(principal: Principal, incident_id: str) -> Document:
        found = await projections.find_view(db, incident_id, scope(principal))
        if found is None:
            raise NotFound(f"no incident {incident_id} that you may see")
        return found

    def common_filters(
        principal: Principal,
        unit: str | None,
        level: int | None,
        category: Category | None,
        opened_from: datetime | None,
        opened_to: datetime | None,
    ) -> list[Document]:
        conditions: list[Document] = []
        if visible := scope(principal):
            conditions.append(visible)
        if unit is not None:
            conditions.append({"unit_ids": unit})
        if level is not None:
            conditions.append({"level": level})
        if category is not None:
            conditions.append({"category": category.value})
        if opened_from is not None:
            conditions.append({"opened_at": {"$gte": aware(opened_from)}})
        if opened_to is not None:
            conditions.append({"opened_at": {"$lt": aware(opened_to)}})
        return conditions

    @router.get("/incidents", response_model=IncidentPage, summary="List incidents")
    async def list_incidents(
        principal: CurrentPrincipal,
        unit: Annotated[str | None, Query(description="incidents concerning this unit")] = None,
        level: Annotated[int | None, Query(ge=1, le=3)] = None,
        category: Category | None = None,
        status: Status | None = None,
        opened_from: Annotated[datetime | None, Query(description="opened at or after")] = None,
        opened_to: Annotated[datetime | None, Query(description="opened before")] = None,
        q: Annotated[str | None, Query(max_length=100, description="text in the title")] = None,
        overdue: Annotated[
            bool | None, Query(description="with an obligation past its deadline and not met")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
        cursor: str | None = None,
    ) -> IncidentPage:
        conditions = common_filters(principal, unit, level, category, opened_from, opened_to)
        if status is not None:
            conditions.append({"status": status})
        if q:
            conditions.append({"title": {"$regex": re.escape(q), "$options": "i"}})
        if overdue is not None:
            now = utcnow()
            conditions.append(
                {"due": {"$lt": now}}
                if overdue
                else {"$or": [{"due": None}, {"due": {"$gte": now}}]}
            )
        after = _decode_cursor(cursor) if cursor else None
        rows, last = await projections.list_page(db, "incidents", conditions, limit, after)
        return IncidentPage(
            items=[IncidentSummary.model_validate(row["summary"]) for row in rows],
            next_cursor=_encode_cursor(last) if last else None,
        )

    @router.get("/incidents/{incident_id}", response_model=IncidentView, summary="One incident")
    async def get_incident(
        incident_id: str,
        principal: CurrentPrincipal,
        as_of: Annotated[
            datetime | None,
            Query(description="fold only what had happened by this time (ISO 8601)"),
        ] = None,
    ) -> IncidentView:
        found = await visible_view(principal, incident_id)
        if as_of is None:
            return IncidentView.model_validate(found["view"])
        view = fold(incident_id, await projections.load_log(db, incident_id), aware(as_of))
        if view.event_count == 0:
            raise NotFound(f"nothing had happened in incident {incident_id} by {as_of}")
        return view

    @router.get(
        "/incidents/{incident_id}/timeline",
        response_model=Timeline,
        summary="Every event of an incident in causal order, each with a Chinese line",
    )
    async def get_timeline(
        incident_id: str,
        principal: CurrentPrincipal,
        event_type: Annotated[list[str] | None, Query(description="only these event types")] = None,
    ) -> Timeline:
        await visible_view(principal, incident_id)
        records = await projections.load_log(db, incident_id)
        return Timeline(incident_id=incident_id, events=timeline(records, tz, event_type or ()))

    @router.get(
        "/incidents/{incident_id}/verify",
        response_model=ChainReport,
        summary="Recompute the incident's hash chain and name the first broken link",
    )
    async def verify_incident(incident_id: str, principal: CurrentPrincipal) -> ChainReport:
        await visible_view(principal, incident_id)
        return await projections.verify(db, incident_id)

    @router.get(
        "/events",
        response_class=StreamingResponse,
        summary="Export the stored events as NDJSON (admin, analyst), resumable by seq",
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    async def export_events(
        principal: CurrentPrincipal,
        after: Annotated[int, Query(ge=0, description="resume after this seq")] = 0,
        incident_id: str | None = None,
        unit: Annotated[str | None, Query(description="events recorded for this unit")] = None,
        event_type: Annotated[list[str] | None, Query()] = None,
        since: Annotated[datetime | None, Query(description="occurred at or after")] = None,
        until: Annotated[datetime | None, Query(description="occurred before")] = None,
    ) -> StreamingResponse:
        principal.require(Role.ANALYST)
        conditions: list[Document] = []
        if incident_id is not None:
            conditions.append({"incident_id": incident_id})
        if unit is not None:
            conditions.append({"unit_id": unit})
        if event_type:
            conditions.append({"event_type": {"$in": event_type}})
        if since is not None:
            conditions.append({"occurred_at": {"$gte": aware(since)}})
        if until is not None:
            conditions.append({"occurred_at": {"$lt": aware(until)}})

        async def lines() -> AsyncIterator[bytes]:
            async for row in projections.export(db, conditions, after):
                yield json.dumps(row, ensure_ascii=False).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.post(
        "/incidents/{incident_id}/review",
        response_model=ReviewAccepted,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Record the review (总结评估) of a resolved incident and archive it as a case",
    )
    async def review(
        incident_id: str, body: ReviewRequest, principal: CurrentPrincipal
    ) -> ReviewAccepted:
        principal.require(Role.LEADER, Role.OFFICE)
        await visible_view(principal, incident_id)
        records = await projections.load_log(db, incident_id)
        # Judged on the log itself, not the view, so a review cannot follow a stale status.
        view = fold(incident_id, records)
        if view.status != "resolved":
            raise Conflict(
                f"incident {incident_id} is {view.status}; only a resolved incident is reviewed",
                {"status": view.status},
            )
        stream = await store.load(review_stream(incident_id))
        decision = ReviewDecision(
            cause=body.cause,
            handling=body.handling,
            lessons=body.lessons,
            actor=principal.actor,
            at=utcnow(),
        )
        decided = review_events(view, causal_order(records), stream, decision)
        if decided is None:
            raise Conflict(f"incident {incident_id} was reviewed after its last resolution")
        # A concurrent review of the same resolution loses here: 409 from the version check.
        await store.append(decided.events, expected_version=len(stream))
        return ReviewAccepted(
            incident_id=incident_id, case_id=decided.case_id, figures=decided.figures
        )

    @router.get("/cases", response_model=CasePage, summary="Search the case library (案例库)")
    async def list_cases(
        principal: CurrentPrincipal,
        unit: Annotated[str | None, Query(description="cases concerning this unit")] = None,
        level: Annotated[int | None, Query(ge=1, le=3)] = None,
        category: Category | None = None,
        opened_from: Annotated[datetime | None, Query(description="opened at or after")] = None,
        opened_to: Annotated[datetime | None, Query(description="opened before")] = None,
        q: Annotated[
            str | None, Query(max_length=100, description="text in the title or the review")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
        cursor: str | None = None,
    ) -> CasePage:
        conditions = common_filters(principal, unit, level, category, opened_from, opened_to)
        if q:
            conditions.append({"text": {"$regex": re.escape(q), "$options": "i"}})
        after = _decode_cursor(cursor) if cursor else None
        rows, last = await projections.list_page(db, "cases", conditions, limit, after)
        return CasePage(
            items=[CaseRecord.model_validate(row["case"]) for row in rows],
            next_cursor=_encode_cursor(last) if last else None,
        )

    async def visible_case(principal: Principal, case_id: str) -> CaseRecord:
        found = await projections.find_case(db, case_id, scope(principal))
        if found is None:
            raise NotFound(f"no case {case_id} that you may see")
        return CaseRecord.model_validate(found["case"])

    @router.get("/cases/{case_id}", response_model=CaseRecord, summary="One case")
    async def get_case(case_id: str, principal: CurrentPrincipal) -> CaseRecord:
        return await visible_case(principal, case_id)

    @router.get(
        "/cases/{case_id}/report",
        response_class=PlainTextResponse,
        response_model=None,
        summary="The review as a document in Chinese: Markdown, or HTML (?format=html)",
        responses={200: {"content": {"text/markdown": {}, "text/html": {}}}},
    )
    async def case_report(
        case_id: str,
        principal: CurrentPrincipal,
        format: Annotated[Literal["markdown", "html"] | None, Query()] = None,
        accept: Annotated[str, Header()] = "",
    ) -> Response:
        case = await visible_case(principal, case_id)
        if format == "html" or (format is None and "text/html" in accept):
            return HTMLResponse(report.html(case))
        return PlainTextResponse(report.markdown(case), media_type="text/markdown; charset=utf-8")

    @router.get(
        "/accountability",
        response_model=Accountability,
        summary="考评: obligations met on time, late (迟报) and missed, per unit and role",
    )
    async def get_accountability(
        principal: CurrentPrincipal,
        period_from: Annotated[datetime, Query(alias="from")],
        period_to: Annotated[datetime, Query(alias="to")],
        unit: str | None = None,
    ) -> Accountability:
        principal.require(Role.LEADER, Role.OFFICE, Role.ANALYST)
        start, end = aware(period_from), aware(period_to)
        if end <= start:
            raise BadRequest("`to` must be after `from`", {"field": "to"})
        visible = directory.visible_units(principal)
        if unit is not None and visible is not None and unit not in visible:
            raise Forbidden(f"unit {unit} is outside the units you may assess")
        units = {unit} if unit is not None else visible
        conditions: list[Document] = [{"sort_at": {"$lt": end}}]
        if units is not None:
            conditions.append({"unit_ids": {"$in": sorted(units)}})
        views = [view async for view in projections.scan_views(db, conditions)]
        return accountability(views, start, end, units, utcnow())

    @router.post(
        "/replay",
        response_model=projections.ReplayJob,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Rebuild the read models from the log into fresh collections (admin)",
    )
    async def replay(principal: CurrentPrincipal) -> projections.ReplayJob:
        principal.require(Role.ADMIN)
        try:
            job = await projections.start_replay(db, principal.sub)
        except projections.ReplayRunning as exc:
            raise Conflict(str(exc)) from None
        task = asyncio.create_task(
            projections.run_replay(db, job.job_id, replay_batch_size),
            name=f"archive-replay-{job.job_id}",
        )
        replays.add(task)
        task.add_done_callback(finished)
        return job

    def finished(task: asyncio.Task[projections.ReplayJob]) -> None:
        replays.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("replay failed", task=task.get_name(), error=str(error))

    @router.get(
        "/replay/{job_id}",
        response_model=projections.ReplayJob,
        summary="Progress of a replay (admin)",
    )
    async def replay_progress(job_id: str, principal: CurrentPrincipal) -> projections.ReplayJob:
        principal.require(Role.ADMIN)
        job = await projections.replay_job(db, job_id)
        if job is None:
            raise NotFound(f"no replay job {job_id}")
        return job

    return router
