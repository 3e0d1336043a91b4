"""The rows of the incident list: enough to pick an incident, not the whole record; and
`partner_summary`, the row a partner gets of an incident it referred."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from services.archive.domain.views import IncidentView
from shared.events import Category, IncidentStatus, Level, ObligationState, StatementState
from shared.visibility import ReferredIncident

UNMET = (ObligationState.OPEN, ObligationState.MISSED)


class IncidentSummary(BaseModel):
    """One row of the incident list."""

    sight: Literal["full"] = "full"  # a partner's rows are `ReferredIncident`
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
    resolved_at: datetime | None = None
    dismissed_at: datetime | None = None
    archived_at: datetime | None = None


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
        # Views folded before reports were counted hold them all.
        report_count=max(view.report_count, len(view.reports)),
        obligations_open=sum(o.state is ObligationState.OPEN for o in view.obligations),
        obligations_missed=sum(o.state is ObligationState.MISSED for o in view.obligations),
        next_deadline=min(deadlines) if deadlines else None,
        statements_published=sum(s.state is StatementState.PUBLISHED for s in view.statements),
        complete=view.complete,
        resolved_at=view.resolved_at,
        dismissed_at=view.dismissed_at,
        archived_at=view.archived_at,
    )


def partner_summary(summary: IncidentSummary) -> ReferredIncident:
    """The row a partner sees of an incident it referred: the fields `ReferredIncident`
    allows, and nothing of the bureau's counts, units, title or deadlines."""
    return ReferredIncident(
        incident_id=summary.incident_id,
        status=summary.status,
        level=summary.level,
        category=summary.category,
        resolved_at=summary.resolved_at,
        dismissed_at=summary.dismissed_at,
        archived_at=summary.archived_at,
    )
