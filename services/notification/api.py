"""HTTP routes of the notification service, under /notifications/v1."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from services.notification.domain import ObligationState, seconds_left
from services.notification.projections import ObligationFilter
from shared.auth import CurrentPrincipal, Principal, Role
from shared.errors import BadRequest, Forbidden
from shared.events import Level
from shared.store import Document

if TYPE_CHECKING:
    from services.notification.main import NotificationService


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


class ObligationList(BaseModel):
    obligations: list[ObligationView]
    count: int
    as_of: datetime


class FulfilRequest(BaseModel):
    reference: str | None = Field(
        default=None, max_length=200, description="文号 or other reference of the report filed"
    )
    fulfilled_at: AwareDatetime | None = Field(
        default=None, description="when it was met, if earlier than now (e.g. the phone call)"
    )


class AckView(BaseModel):
    notification_id: str
    obligation_id: str
    recipient: str
    channel: str
    state: str
    acknowledged_at: datetime


def _spell(seconds: int) -> str:
    minutes = abs(seconds) // 60
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}天" if days else "", f"{hours}小时" if hours else "", f"{minutes}分钟"]
    return "".join(parts)


def _view(doc: Document, now: datetime) -> ObligationView:
    state = ObligationState(doc["state"])
    left = seconds_left(state, doc["deadline"], now)
    overdue = left is not None and left <= 0
    time_left = None
    if left is not None:
        time_left = ("已超时" if overdue else "剩余") + _spell(int(left))
    return ObligationView(
        **{k: v for k, v in doc.items() if k in ObligationView.model_fields},
        overdue=overdue,
        seconds_left=None if left is None else int(left),
        time_left=time_left,
    )


def _no_partners(principal: Principal) -> None:
    # A partner sees only what it referred; duties are the bureau's internal business.
    if principal.has(Role.PARTNER) and not principal.has(Role.ADMIN):
        raise Forbidden("合作单位无权查看内部报送义务")


def build_router(service: NotificationService) -> APIRouter:
    router = APIRouter(tags=["obligations"])

    @router.get("/obligations", response_model=ObligationList)
    async def list_obligations(
        principal: CurrentPrincipal,
        incident_id: str | None = None,
        unit: str | None = None,
        level: Level | None = None,
        state: ObligationState | None = None,
        overdue: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> ObligationList:
        """Duties, soonest deadline first, limited to the units the caller may see."""
        _no_partners(principal)
        visible = service.directory.visible_units(principal)
        if unit is not None and visible is not None and unit not in visible:
            raise Forbidden(f"无权查看单位 {unit} 的报送义务")
        now = service.clock()
        docs = await service.projections.find(
            ObligationFilter(incident_id, unit, level, state, overdue, visible), now, limit
        )
        views = [_view(d, now) for d in docs]
        return ObligationList(obligations=views, count=len(views), as_of=now)

    @router.post("/obligations/{obligation_id}/fulfil", response_model=ObligationView)
    async def fulfil(
        obligation_id: str, body: FulfilRequest, principal: CurrentPrincipal
    ) -> ObligationView:
        """Record who met a duty, when and with what; a second time is 409."""
        _no_partners(principal)
        now = service.clock()
        at = body.fulfilled_at or now
        if at > now:
            raise BadRequest("fulfilled_at 不能晚于当前时间", {"field": "fulfilled_at"})
        doc = await service.workflow.fulfil(
            obligation_id, principal, at=at, reference=body.reference
        )
        return _view(doc, service.clock())

    @router.post(
        "/notifications/{notification_id}/ack",
        tags=["notifications"],
        response_model=AckView,
    )
    async def acknowledge(notification_id: str, principal: CurrentPrincipal) -> AckView:
        """The recipient (or an admin) confirms a delivered notification was seen: the page
        stops re-notifying and escalating. A second acknowledgement is 409."""
        _no_partners(principal)
        await service.dispatcher.acknowledge(notification_id, principal, service.clock())
        doc = await service.dispatcher.get(notification_id)
        assert doc is not None
        fields = {k: v for k, v in doc.items() if k in AckView.model_fields}
        return AckView(notification_id=notification_id, **fields)

    return router
