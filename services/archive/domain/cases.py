"""The post-event review: the figures a case is archived with, and the assessment (考评) of
who met their obligations on time, computed from folded incident views only.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, field_validator

from services.archive.domain.views import (
    AttachmentView,
    IncidentView,
    ObligationView,
    ReviewView,
)
from shared.events import Category, IncidentStatus, Level, ObligationState, StatementState

# What became of a duty, as notification recorded it: met on time, late (迟报), missed,
# closed, or still open (past its deadline or not: `overdue` says which).
Outcome = Literal["on_time", "late", "missed", "closed", "open"]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


def outcome(obligation: ObligationView) -> Outcome:
    """What notification recorded: a report filed late (迟报) is late, and a duty is missed
    only once notification recorded the miss."""
    match obligation.state:
        case ObligationState.FULFILLED:
            return "late" if obligation.late else "on_time"
        case ObligationState.MISSED:
            return "missed"
        case ObligationState.CLOSED:
            return "closed"
        case _:
            return "open"


def overdue(obligation: ObligationView, now: datetime) -> bool:
    """Still open although its deadline has passed: the deadline watch has not said so yet."""
    return obligation.state is ObligationState.OPEN and obligation.deadline <= now


class ObligationFigure(BaseModel):
    obligation_id: str
    kind: str
    title: str
    level: Level
    owner_role: str
    counted_from: datetime
    deadline: datetime
    fulfilled_at: datetime | None
    fulfilled_by: str | None
    outcome: Outcome
    overdue: bool = False  # open, and its deadline passed before the figures were taken
    seconds_to_fulfil: float | None


class StatementFigure(BaseModel):
    statement_id: str
    kind: str
    title: str
    state: StatementState
    submitted_at: datetime | None
    approved_at: datetime | None
    published_at: datetime | None
    # From the submission that was cleared to its final approval, and to its publication.
    clearance_seconds: float | None
    seconds_to_publication: float | None

    @field_validator("state", mode="before")
    @classmethod
    def _earlier_words(cls, value: object) -> object:
        # Cases archived before the shared vocabulary called a statement in review this.
        return StatementState.IN_REVIEW.value if value == "submitted" else value


class CaseFigures(BaseModel):
    first_report_at: datetime | None
    graded_at: datetime | None
    seconds_to_grade: float | None
    level: Level | None
    highest_level: Level | None
    category: Category | None
    report_count: int
    obligations: list[ObligationFigure]
    statements: list[StatementFigure]


def case_figures(view: IncidentView, now: datetime) -> CaseFigures:
    """Time from the first report to the grade, each obligation's outcome as of `now`, each
    statement's clearance: what the leading group reads in the review.
    """
    first_report_at = min((r.received_at for r in view.reports), default=view.opened_at)
    # A proposal awaiting its body (plan.yaml `grading`) was never the incident's level.
    levels = [g.level for g in view.grade_history if g.change != "proposed"]
    return CaseFigures(
        first_report_at=first_report_at,
        graded_at=view.graded_at,
        seconds_to_grade=_seconds(first_report_at, view.graded_at),
        level=view.level,
        highest_level=min(levels) if levels else None,  # level 1 is the most severe
        category=view.category,
        report_count=max(view.report_count, len(view.reports)),
        obligations=[
            ObligationFigure(
                obligation_id=o.obligation_id,
                kind=o.kind,
                title=o.title,
                level=o.level,
                owner_role=o.owner_role,
                counted_from=o.counted_from,
                deadline=o.deadline,
                fulfilled_at=o.fulfilled_at,
                fulfilled_by=o.fulfilled_by,
                outcome=outcome(o),
                overdue=overdue(o, now),
                seconds_to_fulfil=_seconds(o.counted_from, o.fulfilled_at),
            )
            for o in view.obligations
        ],
        statements=[
            StatementFigure(
                statement_id=s.statement_id,
                kind=str(s.kind),
                title=s.title,
                state=s.state,
                submitted_at=s.submitted_at,
                approved_at=s.approved_at,
                published_at=s.published_at,
                clearance_seconds=_seconds(s.submitted_at, s.approved_at),
                seconds_to_publication=_seconds(s.submitted_at, s.published_at),
            )
            for s in view.statements
        ],
    )


class CaseRecord(BaseModel):
    """One entry of the case library (案例库)."""

    case_id: str
    incident_id: str
    title: str | None
    unit_ids: list[str]
    level: Level | None
    category: Category | None
    opened_at: datetime | None
    resolved_at: datetime | None
    archived_at: datetime
    review: ReviewView
    figures: CaseFigures
    # The files kept with its reports (舆情件, replies, coverage), each with its logged sha256.
    attachments: list[AttachmentView] = []


def case_record(view: IncidentView) -> CaseRecord | None:
    """The case an archived view holds; None until it is archived (or after a reopening)."""
    if (
        view.status is not IncidentStatus.ARCHIVED
        or view.case_id is None
        or view.review is None
        or view.archived_at is None
    ):
        return None
    return CaseRecord(
        case_id=view.case_id,
        incident_id=view.incident_id,
        title=view.title,
        unit_ids=view.unit_ids,
        level=view.level,
        category=view.category,
        opened_at=view.opened_at,
        resolved_at=view.resolved_at,
        archived_at=view.archived_at,
        review=view.review,
        figures=CaseFigures.model_validate(view.case_figures or {}),
        attachments=view.attachments,
    )


# --------------------------------------------------------------------------- 考评


class OutcomeCounts(BaseModel):
    on_time: int = 0
    late: int = 0
    missed: int = 0
    open: int = 0
    closed: int = 0
    overdue: int = 0  # of the open ones, those past their deadline

    def add(self, obligation: ObligationView, now: datetime) -> None:
        result = outcome(obligation)
        setattr(self, result, getattr(self, result) + 1)
        self.overdue += overdue(obligation, now)


class RoleAccount(BaseModel):
    owner_role: str
    counts: OutcomeCounts


class UnitAccount(BaseModel):
    unit_id: str
    totals: OutcomeCounts
    by_role: list[RoleAccount]
    # Level -> median seconds from grading to the first obligation of that level met.
    median_first_report_seconds: dict[int, float]


class Accountability(BaseModel):
    period_from: datetime
    period_to: datetime
    units: list[UnitAccount]
    median_first_report_seconds: dict[int, float]


def _first_reports(view: IncidentView, start: datetime, end: datetime) -> dict[int, float]:
    """Per level, how long after the duties were counted from the first one was met."""
    by_level: dict[int, list[ObligationView]] = {}
    for o in view.obligations:
        if start <= o.counted_from < end:
            by_level.setdefault(int(o.level), []).append(o)
    found: dict[int, float] = {}
    for level, duties in by_level.items():
        met = [o.fulfilled_at for o in duties if o.fulfilled_at is not None]
        if met:
            found[level] = (min(met) - min(o.counted_from for o in duties)).total_seconds()
    return found


def _medians(samples: dict[int, list[float]]) -> dict[int, float]:
    return {level: statistics.median(values) for level, values in sorted(samples.items())}


def accountability(
    views: Iterable[IncidentView],
    start: datetime,
    end: datetime,
    units: set[str] | None,
    now: datetime,
) -> Accountability:
    """Obligations counted from within [start, end), per unit the incident concerns (only
    `units` when given) and per owner role, their outcomes as recorded (and which open ones
    are overdue at `now`); an incident of two units counts for both.
    """
    counts: dict[str, dict[str, OutcomeCounts]] = {}
    unit_samples: dict[str, dict[int, list[float]]] = {}
    all_samples: dict[int, list[float]] = {}
    for view in views:
        concerned = [u for u in view.unit_ids if units is None or u in units]
        if not concerned:
            continue
        in_period = [o for o in view.obligations if start <= o.counted_from < end]
        if not in_period:
            continue
        firsts = _first_reports(view, start, end)
        for level, seconds in firsts.items():
            all_samples.setdefault(level, []).append(seconds)
        for unit in concerned:
            roles = counts.setdefault(unit, {})
            for o in in_period:
                roles.setdefault(o.owner_role, OutcomeCounts()).add(o, now)
            for level, seconds in firsts.items():
                unit_samples.setdefault(unit, {}).setdefault(level, []).append(seconds)
    rows = []
    for unit in sorted(counts):
        totals = OutcomeCounts()
        for role_counts in counts[unit].values():
            for field in OutcomeCounts.model_fields:
                setattr(totals, field, getattr(totals, field) + getattr(role_counts, field))
        rows.append(
            UnitAccount(
                unit_id=unit,
                totals=totals,
                by_role=[
                    RoleAccount(owner_role=role, counts=c)
                    for role, c in sorted(counts[unit].items())
                ],
                median_first_report_seconds=_medians(unit_samples.get(unit, {})),
            )
        )
    return Accountability(
        period_from=start,
        period_to=end,
        units=rows,
        median_first_report_seconds=_medians(all_samples),
    )
