"""The rows of the incident list: enough to pick an incident, not the whole record."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from services.archive.domain.views import IncidentView
from shared.events import Category, IncidentStatus, Level, ObligationState, StatementState

UNMET = (ObligationState.OPEN, ObligationState.MISSED)


class IncidentSummary(BaseModel):
    """One row of the incident list."""

    incident_id: str
    status: IncidentStatus
    level: Level | None
    category: Category | None
    unit_ids: list[str]
    title: str | None
    opened_at: datetime | None
    updated_at: datetime | None
    report_count: int
    obligations_open: int
    obligations_missed: int  # those notification recorded as missed
    next_deadline: datetime | None  # the earliest deadline of an obligation still not met
    statements_published: int
    complete: bool


def unmet_deadlines(view: IncidentView) -> list[datetime]:
    return [o.deadline for o in view.obligations if o.state in UNMET]


def incident_summary(view: IncidentView) -> IncidentSummary:
    deadlines = unmet_deadlines(view)
    return IncidentSummary(
        incident_id=view.incident_id,
        status=view.status,
        level=view.level,
        category=view.category,
        unit_ids=view.unit_ids,
        title=view.title,
        opened_at=view.opened_at,
        updated_at=view.updated_at,
        report_count=len(view.reports),
        obligations_open=sum(o.state is ObligationState.OPEN for o in view.obligations),
        obligations_missed=sum(o.state is ObligationState.MISSED for o in view.obligations),
        next_deadline=min(deadlines) if deadlines else None,
        statements_published=sum(s.state is StatementState.PUBLISHED for s in view.statements),
        complete=view.complete,
    )
