"""What the archive shows of an incident: the view folded from its log (see `fold`).

The states are the owning services' words (`IncidentStatus`, `ObligationState`,
`StatementState`), as their events state them; the archive adds none of its own.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from shared.events import (
    Actor,
    ApprovalStep,
    Category,
    Fact,
    FiredRule,
    IncidentStatus,
    Level,
    MediaTier,
    ObligationState,
    Reach,
    SourceType,
    StatementKind,
    StatementState,
)


class ReportView(BaseModel):
    report_id: str
    source_type: SourceType
    source_name: str
    media_tier: MediaTier
    url: str
    title: str
    excerpt: str
    author: str | None
    published_at: datetime
    observed_at: datetime
    reach: Reach
    unit_ids: list[str]
    filed_by: str
    received_at: datetime
    match: str | None = None  # why intake attached it; None for the report that opened it


class GradeChange(BaseModel):
    change: Literal["graded", "escalated", "overridden"]
    level: Level
    from_level: Level | None = None
    category: Category
    reason: str | None = None
    rules_fired: list[FiredRule] = []
    rulebook_version: str | None = None
    actor: Actor
    at: datetime
    event_id: uuid.UUID


class NotificationView(BaseModel):
    notification_id: str
    channel: str
    recipient: str
    state: Literal["sent", "failed", "acknowledged"]
    attempts: int
    reason: str | None = None
    acknowledged_by: str | None = None
    updated_at: datetime


class ObligationView(BaseModel):
    obligation_id: str
    kind: str
    title: str
    level: Level
    owner_role: str
    recipients: list[str]
    counted_from: datetime
    deadline: datetime
    state: ObligationState = ObligationState.OPEN
    fulfilled_at: datetime | None = None
    fulfilled_by: str | None = None
    reference: str | None = None
    late: bool = False  # as notification recorded it when the report was filed (迟报)
    missed_at: datetime | None = None  # when notification recorded the deadline missed
    closed_at: datetime | None = None
    closed_reason: str | None = None
    notifications: list[NotificationView] = []


class ApprovalView(BaseModel):
    version: int
    role: str
    unit_id: str | None
    approver: str
    decision: Literal["approved", "rejected"]
    comment: str
    at: datetime


class PublicationView(BaseModel):
    version: int
    outlet: str
    url: str
    published_by: str
    at: datetime


class StatementView(BaseModel):
    statement_id: str
    kind: StatementKind
    state: StatementState = StatementState.DRAFT
    version: int
    title: str
    body: str
    facts: list[Fact] = []
    outlets: list[str] = []
    author: str
    drafted_at: datetime
    updated_at: datetime
    level: Level | None = None
    chain: list[ApprovalStep] = []
    # The steps of the chain no approval fills yet, as the statement service last said.
    missing: list[ApprovalStep] = []
    submitted_at: datetime | None = None
    approvals: list[ApprovalView] = []
    approved_at: datetime | None = None
    publications: list[PublicationView] = []
    published_at: datetime | None = None


class ReviewView(BaseModel):
    cause: str
    handling: str
    lessons: str
    reviewed_by: str
    reviewed_at: datetime


class Gap(BaseModel):
    """Versions of a stream the archive has not seen although a later one arrived."""

    stream_id: str
    missing_versions: list[int]


class IncidentView(BaseModel):
    incident_id: str
    status: IncidentStatus = IncidentStatus.OPEN
    status_reason: str | None = None
    level: Level | None = None
    category: Category | None = None
    sensitive_topics: list[str] = []
    unit_ids: list[str] = []
    title: str | None = None
    first_report_id: str | None = None
    reports: list[ReportView] = []
    grade_history: list[GradeChange] = []
    obligations: list[ObligationView] = []
    statements: list[StatementView] = []
    review: ReviewView | None = None
    case_id: str | None = None
    case_figures: dict[str, Any] | None = None
    opened_at: datetime | None = None
    graded_at: datetime | None = None
    resolved_at: datetime | None = None
    dismissed_at: datetime | None = None
    archived_at: datetime | None = None
    updated_at: datetime | None = None
    # False while the opening event is missing or some stream skipped a version.
    complete: bool = False
    gaps: list[Gap] = []
    event_count: int = 0
    as_of: datetime | None = None
