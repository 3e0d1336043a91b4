"""HTTP routes of the notification service, under /notifications/v1.

Obligations and notifications are the bureau's internal records: a route with an id asks
the one visibility policy for full sight of the incident first (a partner, another unit
and an unknown id all get the same 404), then the roles, then the record. The list shows
only what the caller sees: a partner sees none of the bureau's duties (an empty list, as
for any caller with nothing in sight), and a filter outside the caller's sight finds
nothing rather than answering 403, so the list cannot be used to probe. The list pages
by a keyset cursor (`next_cursor`), at most `YUQING_MAX_PAGE_SIZE` duties a page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.notification.dispatch import Dispatcher
from services.notification.domain import seconds_left
from services.notification.handlers import ObligationWorkflow
from services.notification.projections import (
    NotificationProjections,
    ObligationFilter,
    ObligationRow,
)
from shared.auth import CurrentCaller
from shared.clock import Clock
from shared.events import Level, ObligationState
from shared.paging import decode_cursor, encode_cursor, page_size
from shared.visibility import Sight, Visibility


class ObligationView(BaseModel):
    obligation_id: str
    incident_id: str
    unit_ids: list[str]
    kind: str
    title: str
    level: Level
    owner_role: str
    recipients: list[str]
    counted_from: datetime
    deadline: datetime
    state: ObligationState
    overdue: bool
    seconds_left: int | None = Field(description="negative once overdue; null once settled")
    time_left: str | None = Field(description="the same, as staff read it")
    missed: bool
    fulfilled_by: str | None
    fulfilled_at: datetime | None
    reference: str | None
    late: bool
    closed_reason: str | None
    plan_id: str | None = Field(default=None, description="the plan whose duty table opened it")
    plan_version: str | None = Field(
        default=None, description="that plan's version (the incident's, from its grade)"
    )


class ObligationList(BaseModel):
    obligations: list[ObligationView] = Field(description="this page, soonest deadline first")
    count: int = Field(
        description="every duty the filters match that the caller sees, on all pages "
        "(not only this one)"
    )
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next page; null on the last one"
    )
    as_of: datetime


class FulfilRequest(BaseModel):
    # An unknown field is a 422 naming it.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"reference": "县教舆〔2026〕12号", "fulfilled_at": "2026-11-21T08:40:00+08:00"}
            ]
        },
    )

    reference: str | None = Field(
        default=None, max_length=200, description="文号 or other reference of the report filed"
    )
    fulfilled_at: AwareDatetime | None = Field(
        default=None, description="when it was met, if earlier than now (e.g. the phone call)"
    )


class DecisionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "county_report_decided",
                    "decision": "yes",
                    "reason": "领导小组研究决定报县网信办",
                }
            ]
        },
    )

    kind: str = Field(
        min_length=1, max_length=64, description="the duty decided on (`opens_on: decided`)"
    )
    decision: Literal["yes", "no"] = Field(description="yes: the duty is owed; no: it is not")
    reason: str = Field(min_length=1, max_length=2000, description="why, as the body decided")


class DecisionView(BaseModel):
    incident_id: str
    kind: str
    decision: Literal["yes", "no"]
    reason: str
    decided_by: str
    obligation_id: str | None = Field(description="the duty a yes opened; null for a no")


class AckView(BaseModel):
    notification_id: str
    obligation_id: str
    recipient: str
    channel: str
    state: str
    acknowledged_at: datetime


class NotificationView(BaseModel):
    """One message as it was sent, with what it asked: what the console's acknowledgement
    page shows (the recipient's address is not shown)."""

    notification_id: str
    incident_id: str
    obligation_id: str
    recipient: str
    channel: str
    reason: str
    state: str
    incident_title: str
    units: list[str]
    level: Level
    obligation_title: str
    deadline: datetime
    subject: str | None
    text: str | None
    sent_at: datetime | None
    acknowledged_at: datetime | None


def _spell(seconds: int) -> str:
    minutes = abs(seconds) // 60
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}天" if days else "", f"{hours}小时" if hours else "", f"{minutes}分钟"]
    return "".join(parts)


def _view(row: ObligationRow, now: datetime) -> ObligationView:
    left = seconds_left(row.state, row.deadline, now)
    overdue = left is not None and left <= 0
    time_left = None
    if left is not None:
        time_left = ("已超时" if overdue else "剩余") + _spell(int(left))
    return ObligationView(
        **row.model_dump(include=set(ObligationView.model_fields)),
        overdue=overdue,
        seconds_left=None if left is None else int(left),
        time_left=time_left,
    )


def build_router(
    commands: ObligationWorkflow,
    views: NotificationProjections,
    dispatcher: Dispatcher,
    visibility: Visibility,
    clock: Clock,
    *,
    max_page_size: int,
) -> APIRouter:
    """`max_page_size`: the largest `limit` of the list, and its default
    (YUQING_MAX_PAGE_SIZE)."""
    router = APIRouter(tags=["obligations"])

    @router.get(
        "/obligations",
        response_model=ObligationList,
        responses={
            400: {"description": "a cursor this API did not give out"},
            422: {"description": "a limit above YUQING_MAX_PAGE_SIZE"},
        },
    )
    async def list_obligations(
        caller: CurrentCaller,
        incident_id: str | None = None,
        unit: str | None = None,
        level: Level | None = None,
        state: ObligationState | None = None,
        overdue: bool | None = None,
        limit: Annotated[
            int | None,
            Query(ge=1, description="at most YUQING_MAX_PAGE_SIZE, which is also the default"),
        ] = None,
        cursor: Annotated[
            str | None, Query(max_length=200, description="next_cursor of the page before")
        ] = None,
    ) -> ObligationList:
        """Duties, soonest deadline first (then by id), of the incidents the caller fully
        sees, by page: `count` is how many match on all pages."""
        size = page_size(limit, max_page_size)
        after = decode_cursor(cursor) if cursor else None
        now = clock()
        if caller.is_partner:
            return ObligationList(obligations=[], count=0, as_of=now)
        scope = visibility.scope_filter(caller)
        wanted = ObligationFilter(incident_id, unit, level, state, overdue, scope)
        rows, total = await views.find(wanted, now, size + 1, after)
        shown = rows[:size]
        last = shown[-1] if len(rows) > size else None
        return ObligationList(
            obligations=[_view(row, now) for row in shown],
            count=total,
            next_cursor=encode_cursor((last.deadline, last.obligation_id)) if last else None,
            as_of=now,
        )

    @router.post("/obligations/{obligation_id}/fulfil", response_model=ObligationView)
    async def fulfil(
        obligation_id: str, body: FulfilRequest, caller: CurrentCaller
    ) -> ObligationView:
        """Record who met a duty (its owner role, the leading group or an admin), when and
        with what; a second time is 409."""
        row = await views.obligation(obligation_id)
        scope = await views.scope(row.incident_id, row.unit_ids) if row else None
        visibility.require(caller, scope, "obligation", obligation_id, at_least=Sight.FULL)
        assert row is not None
        await commands.fulfil(
            caller,
            row.incident_id,
            obligation_id,
            at=body.fulfilled_at,
            reference=body.reference,
            now=clock(),
        )
        updated = await views.obligation(obligation_id)
        assert updated is not None
        return _view(updated, clock())

    @router.post(
        "/incidents/{incident_id}/decisions",
        response_model=DecisionView,
        status_code=201,
    )
    async def decide(
        incident_id: str, body: DecisionRequest, caller: CurrentCaller
    ) -> DecisionView:
        """Record the decision of the role a duty names (`decided_by`, or an admin) on a duty
        that opens as that body decides (`opens_on: decided`, seed 003 篇一 二（二） "as the
        group decides"): yes opens it, counted from now; no is recorded and opens nothing.
        A kind that is not such a duty of the incident's level and category is 422; an
        incident not graded or ended, or a yes to a duty already owed, is 409."""
        scope = await views.scope(incident_id)
        visibility.require(caller, scope, "incident", incident_id, at_least=Sight.FULL)
        opened = await commands.decide(
            caller,
            incident_id,
            kind=body.kind,
            decision=body.decision == "yes",
            reason=body.reason,
            now=clock(),
        )
        return DecisionView(
            incident_id=incident_id,
            kind=body.kind,
            decision=body.decision,
            reason=body.reason,
            decided_by=caller.id,
            obligation_id=opened,
        )

    @router.get(
        "/notifications/{notification_id}",
        tags=["notifications"],
        response_model=NotificationView,
    )
    async def notification(notification_id: str, caller: CurrentCaller) -> NotificationView:
        """A notification as sent (subject, text) and what it asks (the incident, level,
        duty and deadline), with its state: read by the page its acknowledgement link opens.
        Only for those who fully see the incident (others get 404); reading changes nothing."""
        found = await dispatcher.delivery(notification_id)
        units = (found["unit_id"],) if found and found["unit_id"] else ()
        scope = await views.scope(found["incident_id"], units) if found else None
        visibility.require(caller, scope, "notification", notification_id, at_least=Sight.FULL)
        assert found is not None
        context = found["context"]
        # The page may have started before the service knew the incident's title and units
        # (grading can arrive first): what it knows now, as the message sent later says.
        incident = await views.incidents.get(found["incident_id"])
        title = incident.title if incident and incident.title else context["incident_title"]
        unit_names: list[str] = context["units"]
        if incident and incident.unit_ids:
            unit_names = [dispatcher.directory.unit_name(u) for u in incident.unit_ids]
        return NotificationView(
            notification_id=notification_id,
            incident_id=found["incident_id"],
            obligation_id=found["obligation_id"],
            recipient=found["recipient"],
            channel=found["channel"],
            reason=found["reason"],
            state=found["state"],
            incident_title=title,
            units=unit_names,
            level=context["level"],
            obligation_title=context["obligation_title"],
            deadline=context["deadline"],
            subject=found.get("subject"),
            text=found.get("body"),
            sent_at=found.get("sent_at"),
            acknowledged_at=found.get("acknowledged_at"),
        )

    @router.post(
        "/notifications/{notification_id}/ack",
        tags=["notifications"],
        response_model=AckView,
    )
    async def acknowledge(notification_id: str, caller: CurrentCaller) -> AckView:
        """The recipient (or an admin) confirms a delivered notification was seen: the page
        stops re-notifying and escalating. A second acknowledgement is 409."""
        found = await dispatcher.delivery(notification_id)
        units = (found["unit_id"],) if found and found["unit_id"] else ()
        scope = await views.scope(found["incident_id"], units) if found else None
        visibility.require(caller, scope, "notification", notification_id, at_least=Sight.FULL)
        await dispatcher.acknowledge(caller, notification_id, clock())
        doc = await dispatcher.delivery(notification_id)
        assert doc is not None
        fields = {k: v for k, v in doc.items() if k in AckView.model_fields}
        return AckView(notification_id=notification_id, **fields)

    return router
