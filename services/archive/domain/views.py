"""What the archive shows of an incident: the view folded from its log (see `fold`), and
`partner_view`, the one projection of it to what a partner sees of an incident it
referred (`Sight.REFERRED`).

The states are the owning services' words (`IncidentStatus`, `ObligationState`,
`StatementState`), as their events state them; the archive adds none of its own.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

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
from shared.visibility import PublishedLine, ReferredIncident


class ClaimsConfirmationView(BaseModel):
    """The office's confirmation of a partner's claimed media tier and reach."""

    media_tier: MediaTier
    reach: Reach
    reason: str
    confirmed_by: str
    at: datetime


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
    # A partner's media tier and reach are claims until the office confirms them.
    claims_unconfirmed: bool = False
    claims_confirmed: ClaimsConfirmationView | None = None


class AttachmentView(BaseModel):
    """A file attached to one of the incident's reports, as the log recorded it (its
    `AttachmentAdded` event, `event_id`): the file downloaded from intake
    (`/intake/v1/attachments/{attachment_id}`) must have this sha256, and `verify` says
    whether the log itself is intact."""

    attachment_id: str
    report_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    added_by: str
    added_at: datetime
    event_id: str


class ReferralView(BaseModel):
    """The incident is a partner's referral: who referred it, what it matched, and where
    the office merged it."""

    referred_by: str
    matched_incident_ids: list[str] = []
    merged_into: str | None = None
    merged_at: datetime | None = None
    merged_by: str | None = None
    merge_reason: str | None = None


class WatchReportView(BaseModel):
    """A report that matched the incident during its watch after resolution."""

    report_id: str
    at: datetime
    reopened: bool  # it reopened the incident; else attached to it, the incident resolved


class WatchView(BaseModel):
    """The incident's latest watch after resolution (善后跟踪, plan.yaml `watch:`): from
    when until when, what a matching report does (`reopen`, `attach`), and the reports
    that came during it; `ended_at` when it ended early (reopened)."""

    started_at: datetime
    until: datetime
    on_report: str
    plan_id: str | None = None
    plan_version: str | None = None
    reports: list[WatchReportView] = []
    ended_at: datetime | None = None


class GradeChange(BaseModel):
    change: Literal["graded", "escalated", "overridden", "proposed"]
    level: Level
    from_level: Level | None = None
    category: Category
    reason: str | None = None
    rules_fired: list[FiredRule] = []
    rulebook_version: str | None = None
    # The plan (YUQING_PLAN) the grade was decided under; None before plans were recorded.
    plan_id: str | None = None
    plan_version: str | None = None
    # A grade its body confirmed (plan.yaml `grading`): who; a proposal, whose role confirms.
    confirmed_by: str | None = None
    confirm_role: str | None = None
    actor: Actor
    at: datetime
    event_id: uuid.UUID


class InstructionView(BaseModel):
    """A leader's instruction (批示; `signed`: 签批) on the incident."""

    instruction_id: str
    text: str
    signed: bool
    instructed_by: str
    at: datetime
    event_id: uuid.UUID


class DecisionView(BaseModel):
    """What the deciding body decided of a duty `opens_on: decided` ("as the group decides"):
    yes opened it, no opened nothing; both with the reason."""

    kind: str
    title: str
    decision: bool
    reason: str
    decided_by: str
    level: int
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


class UntrueMark(BaseModel):
    """The office's finding that a duty's fulfilment was untrue (谎报), with its reason."""

    fulfilled_by: str
    reason: str
    marked_by: str
    at: datetime
    event_id: uuid.UUID


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
    untrue: UntrueMark | None = None  # marked untrue by the office (谎报)
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
    # The text of the version as it went out (a later revision changes the statement's).
    title: str | None = None
    body: str | None = None


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


class FilingView(BaseModel):
    """One filer's first report of the incident: when the bureau had it from them, and
    from which unit (the person's own as the filing said; None when another filed it in
    their name, as the office merging a partner's referral).
    `known_at` is when it made the incident known: the receipt, or for a partner's referral
    merged in, when the partner observed it (the referral was filed then, not at the merge)."""

    filed_by: str
    unit_id: str | None
    report_id: str
    received_at: datetime
    known_at: datetime


class UnclearedReleaseView(BaseModel):
    """A statement or information released without its clearance chain, as the office
    recorded it (未经批准擅自对外发布)."""

    release_id: str
    released_by: str
    unit_id: str
    channel: str
    released_at: datetime
    content: str
    recorded_by: str
    recorded_at: datetime


class CommendationView(BaseModel):
    """A commendation (表扬) of a person or of a unit for their work on the incident."""

    commendation_id: str
    person_id: str | None
    unit_id: str
    reason: str
    recorded_by: str
    recorded_at: datetime


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
    sight: Literal["full"] = "full"  # the whole record; a partner gets `ReferredIncidentView`
    incident_id: str
    status: IncidentStatus = IncidentStatus.OPEN
    status_reason: str | None = None
    level: Level | None = None
    category: Category | None = None
    sensitive_topics: list[str] = []
    unit_ids: list[str] = []
    title: str | None = None
    first_report_id: str | None = None
    referral: ReferralView | None = None  # set when a partner's report opened it
    # The first `archive_embedded_reports` reports; all of them by page at
    # /incidents/{id}/reports. `report_count` counts them all, `filed_by` names every filer.
    reports: list[ReportView] = []
    report_count: int = 0
    filed_by: list[str] = []
    attachments: list[AttachmentView] = []  # every file attached to any of its reports
    grade_history: list[GradeChange] = []
    # True while the rulebook's grade is a proposal awaiting its body (level stays unset).
    grade_proposed: bool = False
    instructions: list[InstructionView] = []
    decisions: list[DecisionView] = []
    obligations: list[ObligationView] = []
    statements: list[StatementView] = []
    review: ReviewView | None = None
    # For the assessment (考评): each filer's first report, releases without clearance and
    # commendations the office recorded.
    first_filings: list[FilingView] = []
    uncleared_releases: list[UnclearedReleaseView] = []
    commendations: list[CommendationView] = []
    case_id: str | None = None
    case_figures: dict[str, Any] | None = None
    opened_at: datetime | None = None
    graded_at: datetime | None = None
    # The plan the incident was graded under (its first grade): the version that applied.
    plan_id: str | None = None
    plan_version: str | None = None
    resolved_at: datetime | None = None
    watch: WatchView | None = None  # its latest watch after resolution (善后跟踪)
    dismissed_at: datetime | None = None
    archived_at: datetime | None = None
    updated_at: datetime | None = None
    # False while the opening event is missing or some stream skipped a version.
    complete: bool = False
    gaps: list[Gap] = []
    event_count: int = 0
    as_of: datetime | None = None


class ReferredIncidentView(ReferredIncident):
    """What a partner sees of an incident it referred: the shared `ReferredIncident`, the
    reports it filed itself (as it filed them) and every publication of a statement."""

    reports: list[ReportView] = Field(default_factory=list)
    statements: list[PublishedLine] = Field(default_factory=list)
    # Of its own referral: the incident the office merged it into (the outcome).
    merged_into: str | None = None


def published_lines(view: IncidentView) -> list[PublishedLine]:
    """Every publication of the incident's statements, oldest first: the official line."""
    lines = [
        PublishedLine(
            statement_id=s.statement_id,
            kind=s.kind,
            version=p.version,
            title=p.title,
            body=p.body,
            outlet=p.outlet,
            url=p.url,
            published_at=p.at,
        )
        for s in view.statements
        for p in s.publications
    ]
    return sorted(lines, key=lambda line: (line.published_at, line.statement_id))


def partner_view(view: IncidentView, partner: str) -> ReferredIncidentView:
    """The one projection of an incident view to what partner `partner` may see of it."""
    return ReferredIncidentView(
        incident_id=view.incident_id,
        status=view.status,
        level=view.level,
        category=view.category,
        resolved_at=view.resolved_at,
        dismissed_at=view.dismissed_at,
        archived_at=view.archived_at,
        # Why intake attached a report, and who checked its claims and why, are the
        # bureau's reasoning, not what was filed.
        reports=[
            r.model_copy(update={"match": None, "claims_confirmed": None})
            for r in view.reports
            if r.filed_by == partner
        ],
        statements=published_lines(view),
        merged_into=referral.merged_into
        if (referral := view.referral) is not None and referral.referred_by == partner
        else None,
    )
