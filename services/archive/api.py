"""HTTP routes of the archive, under /archive/v1.

Who sees what: every authenticated role may read the archive, limited to the incidents of
the units it sees (its unit and the units below it; admin and analyst see all). A principal
whose only role is `partner` sees only incidents holding a report it filed. An incident
outside a principal's sight answers 404, exactly like one that does not exist, so the
archive does not reveal which incidents other units have.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, tzinfo
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase

from services.archive import projections
from services.archive.domain import (
    ChainReport,
    IncidentSummary,
    IncidentView,
    Status,
    TimelineEntry,
    fold,
    timeline,
)
from shared.auth import CurrentPrincipal, Directory, Principal, Role
from shared.errors import BadRequest, NotFound
from shared.events import Category, utcnow
from shared.store import Document

MAX_PAGE = 100


class IncidentPage(BaseModel):
    items: list[IncidentSummary]
    next_cursor: str | None  # pass as `cursor` for the next page; null on the last one


class Timeline(BaseModel):
    incident_id: str
    events: list[TimelineEntry]


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


def routes(db: AsyncDatabase[Document], directory: Directory, tz: tzinfo) -> APIRouter:
    router = APIRouter(tags=["archive"])

    def aware(moment: datetime) -> datetime:
        """A time given without an offset is the bureau's local time."""
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)

    def scope(principal: Principal) -> Document:
        if principal.roles == {Role.PARTNER}:
            return {"filed_by": principal.sub}
        visible = directory.visible_units(principal)
        return {} if visible is None else {"unit_ids": {"$in": sorted(visible)}}

    async def visible_view(principal: Principal, incident_id: str) -> Document:
        found = await projections.find_view(db, incident_id, scope(principal))
        if found is None:
            raise NotFound(f"no incident {incident_id} that you may see")
        return found

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
        conditions: list[Document] = []
        if visible := scope(principal):
            conditions.append(visible)
        if unit is not None:
            conditions.append({"unit_ids": unit})
        if level is not None:
            conditions.append({"level": level})
        if category is not None:
            conditions.append({"category": category.value})
        if status is not None:
            conditions.append({"status": status})
        if opened_from is not None:
            conditions.append({"opened_at": {"$gte": aware(opened_from)}})
        if opened_to is not None:
            conditions.append({"opened_at": {"$lt": aware(opened_to)}})
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
        rows, last = await projections.list_views(db, conditions, limit, after)
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

    return router
