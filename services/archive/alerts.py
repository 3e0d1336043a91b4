"""The dashboard's list of what went wrong lately: escalations (升级) and missed deadlines
(超时未报), newest first, each with its incident, the level change, when and why.

`GET /archive/v1/alerts` reads them from the incident views the archive already holds
(each view's grade history and obligations): the views of every incident the archive's
log has an event of since `since` (an escalation or a miss is itself such an event, so an
incident opened long before and escalated, missed or closed since is found), as the caller
may see them (`shared.visibility`, the bureau's records: a partner's client gets an empty
list). An escalation of an incident closed since is still listed: it happened.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.archive.domain import IncidentView
from services.archive.projections import LOG, ArchiveViews
from shared.auth import CurrentCaller
from shared.errors import Invalid
from shared.events import FiredRule, IncidentStatus, Level
from shared.store import Document
from shared.visibility import Sight, Visibility

DEFAULT_WINDOW = timedelta(hours=24)
LONGEST_WINDOW = timedelta(days=31)


class MissedDuty(BaseModel):
    obligation_id: str
    kind: str
    title: str
    level: Level
    owner_role: str
    deadline: datetime
    fulfilled_at: datetime | None = None  # filed after the miss (迟报), when it was


class Alert(BaseModel):
    kind: Literal["escalated", "missed"]
    at: datetime  # when grading escalated it, or when notification recorded the miss
    incident_id: str
    title: str | None
    unit_ids: list[str]
    status: IncidentStatus
    level_now: Level | None  # the incident's level as it stands
    # An escalation: from and to; a miss: the level of the missed duty (to_level).
    from_level: Level | None = None
    to_level: Level | None = None
    reason: str | None = None  # why grading escalated it (or why a leader raised it)
    rules_fired: list[FiredRule] = Field(default_factory=list)
    raised_by: str | None = None  # the person who raised the grade by hand; None: the rules
    duty: MissedDuty | None = None


class Alerts(BaseModel):
    since: datetime
    items: list[Alert]  # newest first
    more: bool  # more happened since `since` than `limit` shows


def alerts_of(view: IncidentView, since: datetime) -> list[Alert]:
    """The escalations and misses of one incident at or after `since`."""
    common = {
        "incident_id": view.incident_id,
        "title": view.title,
        "unit_ids": view.unit_ids,
        "status": view.status,
        "level_now": view.level,
    }
    found: list[Alert] = []
    for change in view.grade_history:
        raised = (
            change.change == "overridden"
            and change.from_level is not None
            and change.level < change.from_level  # level 1 is the most severe
        )
        if change.at >= since and (change.change == "escalated" or raised):
            found.append(
                Alert(
                    kind="escalated",
                    at=change.at,
                    from_level=change.from_level,
                    to_level=change.level,
                    reason=change.reason,
                    rules_fired=change.rules_fired,
                    raised_by=change.actor.id if raised else None,
                    **common,
                )
            )
    for duty in view.obligations:
        if duty.missed_at is not None and duty.missed_at >= since:
            found.append(
                Alert(
                    kind="missed",
                    at=duty.missed_at,
                    to_level=duty.level,
                    duty=MissedDuty(
                        obligation_id=duty.obligation_id,
                        kind=duty.kind,
                        title=duty.title,
                        level=duty.level,
                        owner_role=duty.owner_role,
                        deadline=duty.deadline,
                        fulfilled_at=duty.fulfilled_at,
                    ),
                    **common,
                )
            )
    return found


async def incidents_touched_since(views: ArchiveViews, start: datetime) -> list[str]:
    """The incidents the log holds an event of that occurred at or after `start` (the
    log's `occurred_at` index): every escalation and miss since then is one of those
    events, whatever the incident's status or opening time."""
    found: dict[str, None] = {}
    cursor = views.db[LOG].find(
        {"occurred_at": {"$gte": start}}, {"incident_id": 1, "_id": 0}, batch_size=1000
    )
    async for doc in cursor:
        found[str(doc["incident_id"])] = None
    return list(found)


def register_alerts(
    router: APIRouter,
    views: ArchiveViews,
    visibility: Visibility,
    clock: Callable[[], datetime],
    tz: tzinfo,
    max_page: int,
) -> None:
    @router.get(
        "/alerts",
        response_model=Alerts,
        summary="Recent escalations (升级) and missed deadlines (超时未报), newest first",
    )
    async def recent_alerts(
        caller: CurrentCaller,
        since: Annotated[
            datetime | None,
            Query(description="at or after (default: the last 24 hours; at most 31 days back)"),
        ] = None,
        limit: Annotated[int, Query(ge=1, description="at most YUQING_MAX_PAGE_SIZE")] = 20,
    ) -> Alerts:
        if limit > max_page:
            raise Invalid("limit", f"at most {max_page} (YUQING_MAX_PAGE_SIZE)", "less_than_equal")
        now = clock()
        start = now - DEFAULT_WINDOW if since is None else since
        start = start if start.tzinfo is not None else start.replace(tzinfo=tz)
        if now - start > LONGEST_WINDOW:
            raise Invalid("since", "at most 31 days back", "alerts_window")
        # The duties and the reasons are the bureau's records: a partner's filter is empty.
        scope = visibility.scope_filter(caller, at_least=Sight.FULL)
        touched = await incidents_touched_since(views, start)
        found: list[Alert] = []
        if touched:
            conditions: list[Document] = [{"_id": {"$in": touched}}, scope]
            async for view in views.scan_views([c for c in conditions if c]):
                found.extend(alerts_of(view, start))
        found.sort(key=lambda a: (a.at, a.incident_id), reverse=True)
        return Alerts(since=start, items=found[:limit], more=len(found) > limit)
