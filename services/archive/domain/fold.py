"""The incident view as a fold of its log, in causal order.

Each payload class has one small step in `STEPS`. Events about a child (a report's match,
an obligation's fulfilment, a statement's approval) that sort before the child exists wait
for it instead of being lost, and obligation states are decided by precedence rather than
by arrival, so those steps commute. The fold shows what the owning services recorded: a
statement's state and missing steps as the statement service stated them, an
obligation's lateness and miss as notification recorded them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from services.archive.domain.ordering import Logged, causal_order
from services.archive.domain.views import (
    ApprovalView,
    AttachmentView,
    ClaimsConfirmationView,
    CommendationView,
    DecisionView,
    FilingView,
    Gap,
    GradeChange,
    IncidentView,
    InstructionView,
    NotificationView,
    ObligationView,
    PublicationView,
    ReferralView,
    ReportView,
    ReviewView,
    StatementView,
    UnclearedReleaseView,
    UntrueMark,
    WatchReportView,
    WatchView,
)
from shared.events import (
    AttachmentAdded,
    CaseArchived,
    CommendationRecorded,
    DeadlineMissed,
    DutyDecided,
    Envelope,
    EventPayload,
    FulfilmentMarkedUntrue,
    GradeOverridden,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentGradeProposed,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    IncidentStatus,
    IncidentWatchStarted,
    LeaderInstructionRecorded,
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
    ObligationState,
    ReferralMerged,
    ReferralOpened,
    ReportAttached,
    ReportClaimsConfirmed,
    ReportReceived,
    ReviewRecorded,
    StatementApproved,
    StatementDrafted,
    StatementPublished,
    StatementRejected,
    StatementRevised,
    StatementState,
    StatementSubmitted,
    StatementWithdrawn,
    UnclearedReleaseRecorded,
    WatchReportReceived,
)

# Intake's `match` for the reports of a partner's referral merged in (services/intake).
MERGED_REFERRAL = "merged_referral"


class _Folder:
    """Mutable state of one fold. Child events whose parent has not been folded yet wait
    under the parent's id and are applied right after it.
    """

    def __init__(self, incident_id: str) -> None:
        self.view = IncidentView(incident_id=incident_id)
        self.reports: dict[str, ReportView] = {}
        self.obligations: dict[str, ObligationView] = {}
        self.statements: dict[str, StatementView] = {}
        self.submitted: dict[str, int] = {}  # statement id -> version of its last submission
        self.waiting: dict[str, list[Envelope]] = {}
        self.envelope_units: list[str] = []
        self.filer_units: dict[str, str | None] = {}  # report id -> its filer's own unit
        self.opened = False
        self.versions: dict[str, set[int]] = {}

    def park(self, key: str, event: Envelope) -> None:
        self.waiting.setdefault(key, []).append(event)

    def release(self, key: str) -> None:
        for event in self.waiting.pop(key, []):
            self.apply(event)

    def add(self, event: Envelope) -> None:
        view = self.view
        view.event_count += 1
        self.versions.setdefault(event.stream_id, set()).add(event.stream_version)
        if event.unit_id and event.unit_id not in self.envelope_units:
            self.envelope_units.append(event.unit_id)
        if view.updated_at is None or event.occurred_at > view.updated_at:
            view.updated_at = event.occurred_at
        self.apply(event)

    def apply(self, event: Envelope) -> None:
        step = STEPS.get(type(event.payload))
        if step is not None:  # a type newer than this fold: it is in the log and the timeline
            step(self, event, event.payload)

    def finish(self, embedded_reports: int | None = None) -> IncidentView:
        view = self.view
        view.report_count = len(view.reports)
        view.filed_by = sorted({r.filed_by for r in view.reports})
        view.first_filings = _first_filings(view.reports, self.filer_units)
        if embedded_reports is not None:
            # The first ones stay in the view; all of them are listed by page.
            view.reports = view.reports[:embedded_reports]
        if not view.unit_ids:
            view.unit_ids = list(self.envelope_units)
        if view.title is None and view.reports:
            view.title = view.reports[0].title
        for obligation in view.obligations:
            obligation.state = _obligation_state(obligation)
        view.gaps = [
            Gap(stream_id=stream, missing_versions=missing)
            for stream, seen in sorted(self.versions.items())
            if (missing := sorted(set(range(1, max(seen) + 1)) - seen))
        ]
        view.complete = self.opened and not view.gaps and not self.waiting
        return view


Step = Callable[[_Folder, Envelope, Any], None]


def fold(
    incident_id: str,
    records: Iterable[Logged],
    as_of: datetime | None = None,
    embedded_reports: int | None = None,
) -> IncidentView:
    """The incident as the log says it is (or was at `as_of`, by when things happened),
    with at most `embedded_reports` of its reports in `reports` (all when None)."""
    folder = _Folder(incident_id)
    for record in causal_order(records):
        if as_of is None or record.event.occurred_at <= as_of:
            folder.add(record.event)
    view = folder.finish(embedded_reports)
    view.as_of = as_of
    return view


def _first_filings(
    reports: Iterable[ReportView], filer_units: dict[str, str | None]
) -> list[FilingView]:
    """Each filer's first report (every report, before the view keeps only the first)."""
    first: dict[str, FilingView] = {}
    for r in sorted(reports, key=lambda r: (r.received_at, r.report_id)):
        if r.filed_by in first:
            continue
        merged = r.match == MERGED_REFERRAL
        first[r.filed_by] = FilingView(
            filed_by=r.filed_by,
            unit_id=filer_units.get(r.report_id),
            report_id=r.report_id,
            received_at=r.received_at,
            known_at=min(r.observed_at, r.received_at) if merged else r.received_at,
        )
    return sorted(first.values(), key=lambda f: (f.known_at, f.filed_by))


def _merge(first: list[str], more: list[str]) -> list[str]:
    return first + [u for u in more if u not in first]


# --------------------------------------------------------------------------- intake


def _opened(f: _Folder, event: Envelope, p: IncidentOpened) -> None:
    view = f.view
    f.opened = True
    view.title, view.first_report_id, view.opened_at = p.title, p.first_report_id, event.occurred_at
    view.unit_ids = _merge(list(p.unit_ids), view.unit_ids)


def _report_received(f: _Folder, event: Envelope, p: ReportReceived) -> None:
    report = ReportView(
        report_id=p.report_id,
        source_type=p.source_type,
        source_name=p.source_name,
        media_tier=p.media_tier,
        url=p.url,
        title=p.title,
        excerpt=p.excerpt,
        author=p.author,
        published_at=p.published_at,
        observed_at=p.observed_at,
        reach=p.reach,
        unit_ids=list(p.unit_ids),
        filed_by=p.filed_by,
        received_at=event.occurred_at,
        claims_unconfirmed=p.claims_unconfirmed,
    )
    f.reports[p.report_id] = report
    f.view.reports.append(report)
    actor = event.actor
    own = actor.type == "person" and actor.id == p.filed_by
    f.filer_units[p.report_id] = actor.unit_id if own else None
    f.view.unit_ids = _merge(f.view.unit_ids, list(p.unit_ids))
    f.release(f"report:{p.report_id}")


def _report_attached(f: _Folder, event: Envelope, p: ReportAttached) -> None:
    if p.report_id in f.reports:
        f.reports[p.report_id].match = p.match
    else:
        f.park(f"report:{p.report_id}", event)


def _claims_confirmed(f: _Folder, event: Envelope, p: ReportClaimsConfirmed) -> None:
    report = f.reports.get(p.report_id)
    if report is None:
        f.park(f"report:{p.report_id}", event)
        return
    report.claims_unconfirmed = False
    report.claims_confirmed = ClaimsConfirmationView(
        media_tier=p.media_tier,
        reach=p.reach,
        reason=p.reason,
        confirmed_by=p.confirmed_by,
        at=event.occurred_at,
    )


def _referral_opened(f: _Folder, event: Envelope, p: ReferralOpened) -> None:
    f.view.referral = ReferralView(
        referred_by=p.referred_by, matched_incident_ids=list(p.matched_incident_ids)
    )
    f.release("referral")


def _referral_merged(f: _Folder, event: Envelope, p: ReferralMerged) -> None:
    referral = f.view.referral
    if referral is None:
        f.park("referral", event)
        return
    referral.merged_into, referral.merged_at = p.into_incident_id, event.occurred_at
    referral.merged_by, referral.merge_reason = p.merged_by, p.reason


def _resolved(f: _Folder, event: Envelope, p: IncidentResolved) -> None:
    view = f.view
    view.status, view.status_reason, view.resolved_at = (
        IncidentStatus.RESOLVED,
        p.reason,
        event.occurred_at,
    )


def _dismissed(f: _Folder, event: Envelope, p: IncidentDismissed) -> None:
    view = f.view
    view.status, view.status_reason, view.dismissed_at = (
        IncidentStatus.DISMISSED,
        p.reason,
        event.occurred_at,
    )


def _reopened(f: _Folder, event: Envelope, p: IncidentReopened) -> None:
    f.view.status, f.view.status_reason = IncidentStatus.OPEN, p.reason
    watch = f.view.watch
    if watch is not None and watch.ended_at is None and event.occurred_at <= watch.until:
        watch.ended_at = event.occurred_at


def _watch_started(f: _Folder, event: Envelope, p: IncidentWatchStarted) -> None:
    f.view.watch = WatchView(
        started_at=event.occurred_at,
        until=p.watch_until,
        on_report=p.on_report,
        plan_id=p.plan_id,
        plan_version=p.plan_version,
    )
    f.release("watch")


def _watch_report(f: _Folder, event: Envelope, p: WatchReportReceived) -> None:
    watch = f.view.watch
    if watch is None or watch.until != p.watch_until:
        f.park("watch", event)  # its watch has not been folded yet
        return
    watch.reports.append(
        WatchReportView(report_id=p.report_id, at=event.occurred_at, reopened=p.reopened)
    )


# --------------------------------------------------------------------------- grading


def _graded(f: _Folder, event: Envelope, p: IncidentGraded) -> None:
    view = f.view
    view.level, view.category, view.graded_at = p.level, p.category, event.occurred_at
    view.sensitive_topics = list(p.sensitive_topics)
    view.plan_id, view.plan_version = p.plan_id, p.plan_version
    view.grade_proposed = False
    view.grade_history.append(
        GradeChange(
            change="graded",
            level=p.level,
            category=p.category,
            reason=p.confirmation_reason,
            rules_fired=list(p.rules_fired),
            rulebook_version=p.rulebook_version,
            plan_id=p.plan_id,
            plan_version=p.plan_version,
            confirmed_by=p.confirmed_by,
            actor=event.actor,
            at=event.occurred_at,
            event_id=event.event_id,
        )
    )


def _proposed(f: _Folder, event: Envelope, p: IncidentGradeProposed) -> None:
    # Not the incident's grade until its body confirms it (IncidentGraded), so the level
    # stays as it was; the proposal is in the history.
    f.view.grade_proposed = f.view.level is None
    f.view.grade_history.append(
        GradeChange(
            change="proposed",
            level=p.level,
            category=p.category,
            rules_fired=list(p.rules_fired),
            rulebook_version=p.rulebook_version,
            plan_id=p.plan_id,
            plan_version=p.plan_version,
            confirm_role=p.confirm_role,
            actor=event.actor,
            at=event.occurred_at,
            event_id=event.event_id,
        )
    )


def _instructed(f: _Folder, event: Envelope, p: LeaderInstructionRecorded) -> None:
    f.view.instructions.append(
        InstructionView(
            instruction_id=p.instruction_id,
            text=p.text,
            signed=p.signed,
            instructed_by=p.instructed_by,
            at=event.occurred_at,
            event_id=event.event_id,
        )
    )


def _decided(f: _Folder, event: Envelope, p: DutyDecided) -> None:
    f.view.decisions.append(
        DecisionView(
            kind=p.kind,
            title=p.title,
            decision=p.decision,
            reason=p.reason,
            decided_by=p.decided_by,
            level=p.level,
            at=event.occurred_at,
            event_id=event.event_id,
        )
    )


def _escalated(f: _Folder, event: Envelope, p: IncidentEscalated) -> None:
    f.view.level, f.view.category = p.to_level, p.category
    f.view.grade_history.append(
        GradeChange(
            change="escalated",
            level=p.to_level,
            from_level=p.from_level,
            category=p.category,
            reason=p.reason,
            rules_fired=list(p.rules_fired),
            rulebook_version=p.rulebook_version,
            plan_id=p.plan_id,
            plan_version=p.plan_version,
            actor=event.actor,
            at=event.occurred_at,
            event_id=event.event_id,
        )
    )


def _overridden(f: _Folder, event: Envelope, p: GradeOverridden) -> None:
    f.view.level, f.view.category = p.to_level, p.category
    f.view.grade_history.append(
        GradeChange(
            change="overridden",
            level=p.to_level,
            from_level=p.from_level,
            category=p.category,
            reason=p.reason,
            actor=event.actor,
            at=event.occurred_at,
            event_id=event.event_id,
        )
    )


# --------------------------------------------------------------------------- notification


def _obligation_opened(f: _Folder, event: Envelope, p: ObligationOpened) -> None:
    obligation = ObligationView(
        obligation_id=p.obligation_id,
        kind=p.kind,
        title=p.title,
        level=p.level,
        owner_role=p.owner_role,
        recipients=list(p.recipients),
        counted_from=p.counted_from,
        deadline=p.deadline,
    )
    f.obligations[p.obligation_id] = obligation
    f.view.obligations.append(obligation)
    f.release(f"obligation:{p.obligation_id}")


ObligationStep = Callable[[ObligationView, Envelope, Any], None]


def _of_obligation(step: ObligationStep) -> Step:
    """A step about one obligation, waiting for its opening if that is not folded yet."""

    def apply(f: _Folder, event: Envelope, p: Any) -> None:
        found = f.obligations.get(p.obligation_id)
        if found is None:
            f.park(f"obligation:{p.obligation_id}", event)
        else:
            step(found, event, p)

    return apply


def _notification(
    obligation: ObligationView, notification_id: str, channel: str, recipient: str, at: datetime
) -> NotificationView:
    for note in obligation.notifications:
        if note.notification_id == notification_id:
            note.channel = note.channel or channel
            note.recipient = note.recipient or recipient
            note.updated_at = at
            return note
    note = NotificationView(
        notification_id=notification_id,
        channel=channel,
        recipient=recipient,
        state="sent",
        attempts=0,
        updated_at=at,
    )
    obligation.notifications.append(note)
    return note


def _sent(o: ObligationView, event: Envelope, p: NotificationSent) -> None:
    note = _notification(o, p.notification_id, p.channel, p.recipient, event.occurred_at)
    note.attempts = max(note.attempts, p.attempt)
    if note.state != "acknowledged":
        note.state = "sent"


def _failed(o: ObligationView, event: Envelope, p: NotificationFailed) -> None:
    note = _notification(o, p.notification_id, p.channel, p.recipient, event.occurred_at)
    note.attempts = max(note.attempts, p.attempts)
    note.reason = p.reason
    if note.state != "acknowledged":
        note.state = "failed"


def _acknowledged(o: ObligationView, event: Envelope, p: NotificationAcknowledged) -> None:
    note = _notification(o, p.notification_id, "", "", event.occurred_at)
    note.state, note.acknowledged_by = "acknowledged", p.acknowledged_by


def _fulfilled(o: ObligationView, event: Envelope, p: ObligationFulfilled) -> None:
    o.fulfilled_at, o.fulfilled_by, o.reference = p.fulfilled_at, p.fulfilled_by, p.reference
    o.late = p.late  # notification's verdict (迟报), which already counts a recorded miss


def _marked_untrue(o: ObligationView, event: Envelope, p: FulfilmentMarkedUntrue) -> None:
    o.untrue = o.untrue or UntrueMark(
        fulfilled_by=p.fulfilled_by,
        reason=p.reason,
        marked_by=p.marked_by,
        at=event.occurred_at,
        event_id=event.event_id,
    )


def _missed(o: ObligationView, event: Envelope, p: DeadlineMissed) -> None:
    o.missed_at = o.missed_at or event.occurred_at


def _closed(o: ObligationView, event: Envelope, p: ObligationClosed) -> None:
    o.closed_at, o.closed_reason = event.occurred_at, p.reason


def _obligation_state(obligation: ObligationView) -> ObligationState:
    """By precedence, not arrival: a filed report stands even if the miss was noted later,
    and a miss stays on the record when the obligation is closed afterwards (迟报 counts).
    Missed only when notification recorded the miss, whatever the clock says now.
    """
    if obligation.fulfilled_at is not None:
        return ObligationState.FULFILLED
    if obligation.missed_at is not None:
        return ObligationState.MISSED
    if obligation.closed_at is not None:
        return ObligationState.CLOSED
    return ObligationState.OPEN


# --------------------------------------------------------------------------- statement


def _drafted(f: _Folder, event: Envelope, p: StatementDrafted) -> None:
    statement = StatementView(
        statement_id=p.statement_id,
        kind=p.kind,
        version=p.version,
        title=p.title,
        body=p.body,
        facts=list(p.facts),
        outlets=list(p.outlets),
        author=p.author,
        drafted_at=event.occurred_at,
        updated_at=event.occurred_at,
    )
    f.statements[p.statement_id] = statement
    f.view.statements.append(statement)
    f.release(f"statement:{p.statement_id}")


StatementStep = Callable[[_Folder, StatementView, Envelope, Any], None]


def _of_statement(step: StatementStep) -> Step:
    """A step about one statement, waiting for its draft if that is not folded yet."""

    def apply(f: _Folder, event: Envelope, p: Any) -> None:
        found = f.statements.get(p.statement_id)
        if found is None:
            f.park(f"statement:{p.statement_id}", event)
        else:
            found.updated_at = event.occurred_at
            step(f, found, event, p)

    return apply


def _revised(f: _Folder, s: StatementView, event: Envelope, p: StatementRevised) -> None:
    s.version, s.title, s.body = p.version, p.title, p.body
    s.facts, s.outlets = list(p.facts), list(p.outlets)
    # A new version has not been submitted: nothing of a chain is missing yet.
    s.state, s.missing, s.approved_at = StatementState.DRAFT, [], None


def _cleared(s: StatementView, missing: Iterable[Any], at: datetime) -> None:
    """The state the statement service stated: approved once no step is missing. A
    version already out stays published when the level moves: `missing` then says what
    the new level's chain needs before it goes out again."""
    s.missing = list(missing)
    if any(p.version == s.version for p in s.publications):
        return
    if s.missing:
        s.state, s.approved_at = StatementState.IN_REVIEW, None
    else:
        s.state, s.approved_at = StatementState.APPROVED, s.approved_at or at


def _submitted(f: _Folder, s: StatementView, event: Envelope, p: StatementSubmitted) -> None:
    # The same version submitted again is its chain set again (the level changed in
    # review): it has been under review since the first submission.
    if f.submitted.get(s.statement_id) != p.version or s.submitted_at is None:
        s.submitted_at = event.occurred_at
        s.approved_at = None
    f.submitted[s.statement_id] = p.version
    s.level, s.chain = p.level, list(p.chain)
    _cleared(s, p.missing, event.occurred_at)


def _approved(f: _Folder, s: StatementView, event: Envelope, p: StatementApproved) -> None:
    s.approvals.append(
        ApprovalView(
            version=p.version,
            role=p.step.role,
            unit_id=p.step.unit_id,
            approver=p.approver,
            decision="approved",
            comment=p.comment,
            at=event.occurred_at,
        )
    )
    _cleared(s, p.missing, event.occurred_at)


def _rejected(f: _Folder, s: StatementView, event: Envelope, p: StatementRejected) -> None:
    s.approvals.append(
        ApprovalView(
            version=p.version,
            role=p.step.role,
            unit_id=p.step.unit_id,
            approver=p.approver,
            decision="rejected",
            comment=p.comment,
            at=event.occurred_at,
        )
    )
    s.state = StatementState.REJECTED


def _withdrawn(f: _Folder, s: StatementView, event: Envelope, p: StatementWithdrawn) -> None:
    s.state, s.approved_at = StatementState.WITHDRAWN, None


def _published(f: _Folder, s: StatementView, event: Envelope, p: StatementPublished) -> None:
    s.publications.append(
        PublicationView(
            version=p.version,
            outlet=p.outlet,
            url=p.url,
            published_by=p.published_by,
            at=event.occurred_at,
            # Only the current version is published: its text is the one that went out.
            title=s.title if p.version == s.version else None,
            body=s.body if p.version == s.version else None,
        )
    )
    s.state = StatementState.PUBLISHED
    s.published_at = s.published_at or event.occurred_at


# --------------------------------------------------------------------------- archive


def _review_recorded(f: _Folder, event: Envelope, p: ReviewRecorded) -> None:
    f.view.review = ReviewView(
        cause=p.cause,
        handling=p.handling,
        lessons=p.lessons,
        reviewed_by=p.reviewed_by,
        reviewed_at=event.occurred_at,
    )


def _attachment_added(f: _Folder, event: Envelope, p: AttachmentAdded) -> None:
    f.view.attachments.append(
        AttachmentView(
            attachment_id=p.attachment_id,
            report_id=p.report_id,
            filename=p.filename,
            content_type=p.content_type,
            size=p.size,
            sha256=p.sha256,
            added_by=p.added_by,
            added_at=event.occurred_at,
            event_id=str(event.event_id),
        )
    )


def _uncleared_release(f: _Folder, event: Envelope, p: UnclearedReleaseRecorded) -> None:
    f.view.uncleared_releases.append(
        UnclearedReleaseView(
            release_id=p.release_id,
            released_by=p.released_by,
            unit_id=p.unit_id,
            channel=p.channel,
            released_at=p.released_at,
            content=p.content,
            recorded_by=p.recorded_by,
            recorded_at=event.occurred_at,
        )
    )


def _commendation(f: _Folder, event: Envelope, p: CommendationRecorded) -> None:
    f.view.commendations.append(
        CommendationView(
            commendation_id=p.commendation_id,
            person_id=p.person_id,
            unit_id=p.unit_id,
            reason=p.reason,
            recorded_by=p.recorded_by,
            recorded_at=event.occurred_at,
        )
    )


def _case_archived(f: _Folder, event: Envelope, p: CaseArchived) -> None:
    view = f.view
    view.status, view.case_id, view.archived_at = (
        IncidentStatus.ARCHIVED,
        p.case_id,
        event.occurred_at,
    )
    view.case_figures = dict(p.figures)


# Each payload class and what it does to the view.
STEPS: dict[type[EventPayload], Step] = {
    IncidentOpened: _opened,
    ReportReceived: _report_received,
    ReportAttached: _report_attached,
    ReportClaimsConfirmed: _claims_confirmed,
    AttachmentAdded: _attachment_added,
    ReferralOpened: _referral_opened,
    ReferralMerged: _referral_merged,
    IncidentResolved: _resolved,
    IncidentDismissed: _dismissed,
    IncidentReopened: _reopened,
    IncidentWatchStarted: _watch_started,
    WatchReportReceived: _watch_report,
    IncidentGraded: _graded,
    IncidentEscalated: _escalated,
    GradeOverridden: _overridden,
    IncidentGradeProposed: _proposed,
    LeaderInstructionRecorded: _instructed,
    DutyDecided: _decided,
    ObligationOpened: _obligation_opened,
    NotificationSent: _of_obligation(_sent),
    NotificationFailed: _of_obligation(_failed),
    NotificationAcknowledged: _of_obligation(_acknowledged),
    ObligationFulfilled: _of_obligation(_fulfilled),
    DeadlineMissed: _of_obligation(_missed),
    ObligationClosed: _of_obligation(_closed),
    StatementDrafted: _drafted,
    StatementRevised: _of_statement(_revised),
    StatementSubmitted: _of_statement(_submitted),
    StatementApproved: _of_statement(_approved),
    StatementRejected: _of_statement(_rejected),
    StatementWithdrawn: _of_statement(_withdrawn),
    StatementPublished: _of_statement(_published),
    ReviewRecorded: _review_recorded,
    CaseArchived: _case_archived,
    FulfilmentMarkedUntrue: _of_obligation(_marked_untrue),
    UnclearedReleaseRecorded: _uncleared_release,
    CommendationRecorded: _commendation,
}
