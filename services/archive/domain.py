"""The archive's pure core: causal order, the incident view as a fold of the log, the Chinese
timeline lines, and the per-incident hash chain.

Ordering. One incident's events arrive on five topics, each in order, but the topics are
consumed independently, so the archive may ingest a grade before the opening it follows.
Nothing here depends on ingest order across topics: every view is recomputed by folding the
incident's whole log sorted causally, i.e. by `occurred_at`, then by ingest sequence, and
then corrected so that no event comes before the event recorded as its cause (a guard
against clocks that disagree between services). Events about a child (a report's match, an
obligation's fulfilment, a statement's approval) that sort before the child exists wait
for it instead of being lost, and obligation states are decided by precedence rather than
by arrival, so those steps commute.

The chain, by contrast, follows ingest order: it must only ever grow at its end, or an
honest late arrival would look like an edit.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Literal

from pydantic import BaseModel

from shared.events import (
    Actor,
    ApprovalStep,
    CaseArchived,
    Category,
    DeadlineMissed,
    Envelope,
    Fact,
    FiredRule,
    GradeOverridden,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    Level,
    MediaTier,
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
    Reach,
    ReportAttached,
    ReportReceived,
    ReviewRecorded,
    SourceType,
    StatementApproved,
    StatementDrafted,
    StatementKind,
    StatementPublished,
    StatementRejected,
    StatementRevised,
    StatementSubmitted,
    StatementWithdrawn,
)

# --------------------------------------------------------------------------- log records


@dataclass(frozen=True)
class Logged:
    """One event as the archive stored it: `seq` is its place in the global ingest order."""

    seq: int
    event: Envelope


def causal_order(records: Iterable[Logged]) -> list[Logged]:
    """Sort by (occurred_at, seq), then move any event that precedes its cause to just after it."""
    ordered = sorted(records, key=lambda r: (r.event.occurred_at, r.seq))
    present = {r.event.event_id for r in ordered}
    emitted: set[uuid.UUID] = set()
    waiting: dict[uuid.UUID, list[Logged]] = {}
    out: list[Logged] = []

    def emit(first: Logged) -> None:
        stack = [first]
        while stack:
            record = stack.pop()
            out.append(record)
            emitted.add(record.event.event_id)
            stack.extend(reversed(waiting.pop(record.event.event_id, [])))

    for record in ordered:
        cause = record.event.causation_id
        if cause is not None and cause in present and cause not in emitted:
            waiting.setdefault(cause, []).append(record)
        else:
            emit(record)
    # Only a causation cycle (a malformed log) leaves anything waiting; keep it, in sort order.
    leftovers = (r for rs in waiting.values() for r in rs)
    return out + sorted(leftovers, key=lambda r: (r.event.occurred_at, r.seq))


# --------------------------------------------------------------------------- the view

Status = Literal["open", "resolved", "dismissed", "archived"]
ObligationState = Literal["open", "fulfilled", "missed", "closed"]
StatementState = Literal["draft", "submitted", "approved", "rejected", "withdrawn", "published"]


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
    state: ObligationState = "open"
    fulfilled_at: datetime | None = None
    fulfilled_by: str | None = None
    reference: str | None = None
    late: bool = False
    missed_at: datetime | None = None
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
    state: StatementState = "draft"
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
    status: Status = "open"
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


class _Folder:
    """Mutable state of one fold. Child events whose parent has not been folded yet wait
    under the parent's id and are applied right after it.
    """

    def __init__(self, incident_id: str) -> None:
        self.view = IncidentView(incident_id=incident_id)
        self.reports: dict[str, ReportView] = {}
        self.obligations: dict[str, ObligationView] = {}
        self.statements: dict[str, StatementView] = {}
        self.waiting: dict[str, list[Envelope]] = {}
        self.envelope_units: list[str] = []
        self.opened = False
        self.versions: dict[str, set[int]] = {}

    def _park(self, key: str, event: Envelope) -> None:
        self.waiting.setdefault(key, []).append(event)

    def _release(self, key: str) -> None:
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
        view = self.view
        at = event.occurred_at
        match event.payload:
            # intake
            case IncidentOpened() as p:
                self.opened = True
                view.title = p.title
                view.first_report_id = p.first_report_id
                view.opened_at = at
                view.unit_ids = _merge(list(p.unit_ids), view.unit_ids)
            case ReportReceived() as p:
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
                    received_at=at,
                )
                self.reports[p.report_id] = report
                view.reports.append(report)
                view.unit_ids = _merge(view.unit_ids, list(p.unit_ids))
                self._release(f"report:{p.report_id}")
            case ReportAttached() as p:
                if p.report_id in self.reports:
                    self.reports[p.report_id].match = p.match
                else:
                    self._park(f"report:{p.report_id}", event)
            case IncidentResolved() as p:
                view.status, view.status_reason, view.resolved_at = "resolved", p.reason, at
            case IncidentDismissed() as p:
                view.status, view.status_reason, view.dismissed_at = "dismissed", p.reason, at
            case IncidentReopened() as p:
                view.status, view.status_reason = "open", p.reason
            # grading
            case IncidentGraded() as p:
                view.level, view.category, view.graded_at = p.level, p.category, at
                view.sensitive_topics = list(p.sensitive_topics)
                view.grade_history.append(
                    GradeChange(
                        change="graded",
                        level=p.level,
                        category=p.category,
                        rules_fired=list(p.rules_fired),
                        rulebook_version=p.rulebook_version,
                        actor=event.actor,
                        at=at,
                        event_id=event.event_id,
                    )
                )
            case IncidentEscalated() as p:
                view.level, view.category = p.to_level, p.category
                view.grade_history.append(
                    GradeChange(
                        change="escalated",
                        level=p.to_level,
                        from_level=p.from_level,
                        category=p.category,
                        reason=p.reason,
                        rules_fired=list(p.rules_fired),
                        rulebook_version=p.rulebook_version,
                        actor=event.actor,
                        at=at,
                        event_id=event.event_id,
                    )
                )
            case GradeOverridden() as p:
                view.level, view.category = p.to_level, p.category
                view.grade_history.append(
                    GradeChange(
                        change="overridden",
                        level=p.to_level,
                        from_level=p.from_level,
                        category=p.category,
                        reason=p.reason,
                        actor=event.actor,
                        at=at,
                        event_id=event.event_id,
                    )
                )
            # notification
            case ObligationOpened() as p:
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
                self.obligations[p.obligation_id] = obligation
                view.obligations.append(obligation)
                self._release(f"obligation:{p.obligation_id}")
            case (
                NotificationSent()
                | NotificationFailed()
                | NotificationAcknowledged()
                | ObligationFulfilled()
                | ObligationClosed()
                | DeadlineMissed()
            ) as p:
                found = self.obligations.get(p.obligation_id)
                if found is None:
                    self._park(f"obligation:{p.obligation_id}", event)
                else:
                    _apply_to_obligation(found, event)
            # statement
            case StatementDrafted() as p:
                statement = StatementView(
                    statement_id=p.statement_id,
                    kind=p.kind,
                    version=p.version,
                    title=p.title,
                    body=p.body,
                    facts=list(p.facts),
                    outlets=list(p.outlets),
                    author=p.author,
                    drafted_at=at,
                    updated_at=at,
                )
                self.statements[p.statement_id] = statement
                view.statements.append(statement)
                self._release(f"statement:{p.statement_id}")
            case (
                StatementRevised()
                | StatementSubmitted()
                | StatementApproved()
                | StatementRejected()
                | StatementWithdrawn()
                | StatementPublished()
            ) as p:
                found_statement = self.statements.get(p.statement_id)
                if found_statement is None:
                    self._park(f"statement:{p.statement_id}", event)
                else:
                    _apply_to_statement(found_statement, event)
            # archive
            case ReviewRecorded() as p:
                view.review = ReviewView(
                    cause=p.cause,
                    handling=p.handling,
                    lessons=p.lessons,
                    reviewed_by=p.reviewed_by,
                    reviewed_at=at,
                )
            case CaseArchived() as p:
                view.status, view.case_id, view.archived_at = "archived", p.case_id, at
                view.case_figures = dict(p.figures)
            case _:
                pass  # a type newer than this fold: it is in the log and the timeline

    def finish(self) -> IncidentView:
        view = self.view
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


def _merge(first: list[str], more: list[str]) -> list[str]:
    return first + [u for u in more if u not in first]


def _apply_to_obligation(obligation: ObligationView, event: Envelope) -> None:
    at = event.occurred_at
    match event.payload:
        case NotificationSent() as p:
            note = _notification(obligation, p.notification_id, p.channel, p.recipient, at)
            note.attempts = max(note.attempts, p.attempt)
            if note.state != "acknowledged":
                note.state = "sent"
        case NotificationFailed() as p:
            note = _notification(obligation, p.notification_id, p.channel, p.recipient, at)
            note.attempts = max(note.attempts, p.attempts)
            note.reason = p.reason
            if note.state != "acknowledged":
                note.state = "failed"
        case NotificationAcknowledged() as p:
            note = _notification(obligation, p.notification_id, "", "", at)
            note.state, note.acknowledged_by = "acknowledged", p.acknowledged_by
        case ObligationFulfilled() as p:
            obligation.fulfilled_at = p.fulfilled_at
            obligation.fulfilled_by = p.fulfilled_by
            obligation.reference = p.reference
            # A miss on record makes the report late whatever fulfilled_at claims: the watch
            # records a miss only while the duty is still open, so the report came after it.
            obligation.late = (
                p.late or obligation.missed_at is not None or p.fulfilled_at > obligation.deadline
            )
        case DeadlineMissed():
            obligation.missed_at = obligation.missed_at or at
            # A backdated report sorts before the miss (by occurred_at) yet was filed after it.
            obligation.late = obligation.late or obligation.fulfilled_at is not None
        case ObligationClosed() as p:
            obligation.closed_at, obligation.closed_reason = at, p.reason
        case _:
            pass


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


def _obligation_state(obligation: ObligationView) -> ObligationState:
    """By precedence, not arrival: a filed report stands even if the miss was noted later,
    and a miss stays on the record when the obligation is closed afterwards (迟报 counts).
    """
    if obligation.fulfilled_at is not None:
        return "fulfilled"
    if obligation.missed_at is not None:
        return "missed"
    if obligation.closed_at is not None:
        return "closed"
    return "open"


def _apply_to_statement(statement: StatementView, event: Envelope) -> None:
    at = event.occurred_at
    statement.updated_at = at
    match event.payload:
        case StatementRevised() as p:
            statement.version, statement.title, statement.body = p.version, p.title, p.body
            statement.facts, statement.outlets = list(p.facts), list(p.outlets)
            statement.state = "draft"
            statement.approved_at = None
        case StatementSubmitted() as p:
            statement.state, statement.submitted_at = "submitted", at
            statement.level, statement.chain = p.level, list(p.chain)
        case StatementApproved() as p:
            statement.approvals.append(
                ApprovalView(
                    version=p.version,
                    role=p.step.role,
                    unit_id=p.step.unit_id,
                    approver=p.approver,
                    decision="approved",
                    comment=p.comment,
                    at=at,
                )
            )
            if p.fully_approved:
                statement.state, statement.approved_at = "approved", at
        case StatementRejected() as p:
            statement.approvals.append(
                ApprovalView(
                    version=p.version,
                    role=p.step.role,
                    unit_id=p.step.unit_id,
                    approver=p.approver,
                    decision="rejected",
                    comment=p.comment,
                    at=at,
                )
            )
            statement.state = "rejected"
        case StatementWithdrawn():
            statement.state, statement.approved_at = "withdrawn", None
        case StatementPublished() as p:
            statement.publications.append(
                PublicationView(
                    version=p.version,
                    outlet=p.outlet,
                    url=p.url,
                    published_by=p.published_by,
                    at=at,
                )
            )
            statement.state = "published"
            statement.published_at = statement.published_at or at
        case _:
            pass


def fold(
    incident_id: str, records: Iterable[Logged], as_of: datetime | None = None
) -> IncidentView:
    """The incident as the log says it is (or was at `as_of`, by when things happened)."""
    folder = _Folder(incident_id)
    for record in causal_order(records):
        if as_of is None or record.event.occurred_at <= as_of:
            folder.add(record.event)
    view = folder.finish()
    view.as_of = as_of
    return view


# --------------------------------------------------------------------------- timeline

LEVEL_LABEL = {Level.ONE: "一级（重大）", Level.TWO: "二级（严重）", Level.THREE: "三级（一般）"}
CATEGORY_LABEL = {
    Category.INQUIRY: "询问",
    Category.HYPE: "炒作",
    Category.RUMOR: "谣言",
    Category.SUGGESTION: "建议",
}
TIER_LABEL = {
    MediaTier.CENTRAL: "中央媒体",
    MediaTier.NATIONAL_PORTAL: "全国性门户网站",
    MediaTier.PROVINCIAL: "省级媒体",
    MediaTier.MUNICIPAL: "市级媒体",
    MediaTier.COUNTY: "县级媒体",
    MediaTier.SELF_MEDIA: "自媒体",
}
STATEMENT_KIND_LABEL = {
    StatementKind.PRESS_RELEASE: "新闻通稿",
    StatementKind.ONLINE_REPLY: "网上回复稿",
    StatementKind.CLARIFICATION: "澄清说明",
    StatementKind.BULLETIN: "情况通报",
}
ROLE_LABEL = {
    "admin": "系统管理员",
    "monitor": "网络舆情管理员",
    "leader": "领导小组",
    "office": "领导小组办公室",
    "propaganda": "宣传部/处置专班",
    "dept_head": "分管领导",
    "spokesperson": "网络发言人",
    "partner": "协作单位",
    "analyst": "分析员",
}
MATCH_LABEL = {"same_url": "同一网址", "similar_text": "内容相似"}
CHANNEL_LABEL = {
    "sms": "短信",
    "email": "邮件",
    "phone": "电话",
    "wechat": "微信",
    "webhook": "接口推送",
    "console": "系统消息",
}


class TimelineEntry(BaseModel):
    event_id: uuid.UUID
    event_type: str
    occurred_at: datetime
    recorded_at: datetime | None
    actor: Actor
    summary: str
    seq: int
    stream_id: str
    stream_version: int


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _role(role: str) -> str:
    return ROLE_LABEL.get(role, role)


def _names(events: Iterable[Envelope]) -> dict[str, str]:
    """Titles of obligations and statements, so a line about one can name it."""
    names: dict[str, str] = {}
    for event in events:
        match event.payload:
            case ObligationOpened() as p:
                names[f"obligation:{p.obligation_id}"] = p.title
            case StatementDrafted() | StatementRevised() as p:
                names[f"statement:{p.statement_id}"] = p.title
            case _:
                pass
    return names


def summarize(event: Envelope, names: Mapping[str, str], tz: tzinfo) -> str:
    """One line, in the bureau's words, of what the event means."""

    def when(moment: datetime) -> str:
        return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")

    def obligation(obligation_id: str) -> str:
        return "「" + names.get(f"obligation:{obligation_id}", obligation_id) + "」"

    def statement(statement_id: str, version: int) -> str:
        title = names.get(f"statement:{statement_id}", statement_id)
        return f"「{_short(title, 40)}」第 {version} 版"

    match event.payload:
        case ReportReceived() as p:
            return f"舆情件来自 {p.source_name}（{TIER_LABEL[p.media_tier]}）：{_short(p.title)}"
        case IncidentOpened() as p:
            return f"立为舆情事件：{_short(p.title)}（涉及单位：{'、'.join(p.unit_ids)}）"
        case ReportAttached() as p:
            return f"舆情件 {p.report_id} 归入本事件（{MATCH_LABEL.get(p.match, p.match)}）"
        case IncidentResolved() as p:
            return f"事件处置完毕：{_short(p.reason)}"
        case IncidentDismissed() as p:
            return f"判定为网络伪舆情，不予处置：{_short(p.reason)}"
        case IncidentReopened() as p:
            return f"事件重新开启：{_short(p.reason)}"
        case IncidentGraded() as p:
            line = f"研判为{LEVEL_LABEL[p.level]}，类别：{CATEGORY_LABEL[p.category]}"
            reasons = "；".join(r.reason for r in p.rules_fired)
            return f"{line}（依据：{_short(reasons)}）" if reasons else line
        case IncidentEscalated() as p:
            return (
                f"级别由{LEVEL_LABEL[p.from_level]}升为{LEVEL_LABEL[p.to_level]}，"
                f"类别：{CATEGORY_LABEL[p.category]}；原因：{_short(p.reason)}"
            )
        case GradeOverridden() as p:
            return (
                f"人工调整级别：由{LEVEL_LABEL[p.from_level]}调为{LEVEL_LABEL[p.to_level]}，"
                f"类别：{CATEGORY_LABEL[p.category]}；理由：{_short(p.reason)}"
            )
        case ObligationOpened() as p:
            return (
                f"开启报送义务：{p.title}，截止 {when(p.deadline)}（责任：{_role(p.owner_role)}）"
            )
        case NotificationSent() as p:
            channel = CHANNEL_LABEL.get(p.channel, p.channel)
            return (
                f"已通过{channel}通知 {p.recipient}：{obligation(p.obligation_id)}"
                f"（第 {p.attempt} 次）"
            )
        case NotificationFailed() as p:
            channel = CHANNEL_LABEL.get(p.channel, p.channel)
            return (
                f"通过{channel}通知 {p.recipient} 失败（已尝试 {p.attempts} 次）："
                f"{_short(p.reason)}"
            )
        case NotificationAcknowledged() as p:
            return f"{p.acknowledged_by} 确认收到通知：{obligation(p.obligation_id)}"
        case ObligationFulfilled() as p:
            line = (
                f"报送义务{obligation(p.obligation_id)}已完成，"
                f"{when(p.fulfilled_at)}，{p.fulfilled_by}"
            )
            return line + "（迟报）" if p.late else line
        case ObligationClosed() as p:
            return f"报送义务{obligation(p.obligation_id)}关闭：{_short(p.reason)}"
        case DeadlineMissed() as p:
            alerted = "、".join(_role(r) for r in p.alerted_roles) or "无"
            return (
                f"报送义务{obligation(p.obligation_id)}超时未完成（截止 {when(p.deadline)}），"
                f"已提醒：{alerted}"
            )
        case StatementDrafted() as p:
            return (
                f"{p.author} 起草{STATEMENT_KIND_LABEL[p.kind]}「{_short(p.title, 40)}」"
                f"（第 {p.version} 版）"
            )
        case StatementRevised() as p:
            return f"{p.author} 修改为{statement(p.statement_id, p.version)}"
        case StatementSubmitted() as p:
            chain = " → ".join(_role(s.role) for s in p.chain)
            return f"{statement(p.statement_id, p.version)}提交审核，审核链：{chain}"
        case StatementApproved() as p:
            line = (
                f"{p.approver}（{_role(p.step.role)}）审核通过"
                f"{statement(p.statement_id, p.version)}"
            )
            return line + "，审核全部完成，可以发布" if p.fully_approved else line
        case StatementRejected() as p:
            return (
                f"{p.approver}（{_role(p.step.role)}）退回"
                f"{statement(p.statement_id, p.version)}：{_short(p.comment)}"
            )
        case StatementWithdrawn() as p:
            return (
                f"{p.withdrawn_by} 撤回{statement(p.statement_id, p.version)}：{_short(p.reason)}"
            )
        case StatementPublished() as p:
            return f"{statement(p.statement_id, p.version)}已在 {p.outlet} 发布：{p.url}"
        case ReviewRecorded() as p:
            return f"{p.reviewed_by} 记录总结评估：原因：{_short(p.cause, 40)}"
        case CaseArchived() as p:
            return f"归档入案例库（案例 {p.case_id}）"
        case _:
            return event.event_type


def timeline(
    records: Iterable[Logged], tz: tzinfo, event_types: Sequence[str] = ()
) -> list[TimelineEntry]:
    """Every event in causal order with a Chinese line; only `event_types` when given."""
    ordered = causal_order(records)
    names = _names(r.event for r in ordered)
    return [
        TimelineEntry(
            event_id=r.event.event_id,
            event_type=r.event.event_type,
            occurred_at=r.event.occurred_at,
            recorded_at=r.event.recorded_at,
            actor=r.event.actor,
            summary=summarize(r.event, names, tz),
            seq=r.seq,
            stream_id=r.event.stream_id,
            stream_version=r.event.stream_version,
        )
        for r in ordered
        if not event_types or r.event.event_type in event_types
    ]


# --------------------------------------------------------------------------- hash chain

GENESIS = "0" * 64


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """One byte form per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def link_hash(prev_hash: str, envelope: Mapping[str, Any]) -> str:
    """sha256 over the previous link's hash and this envelope's canonical JSON."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(envelope)).hexdigest()


@dataclass(frozen=True)
class ChainLink:
    """One stored event as the chain sees it."""

    position: int
    event_id: str
    envelope: Mapping[str, Any]
    prev_hash: str
    hash: str


class ChainBreak(BaseModel):
    position: int
    event_id: str | None
    reason: str


class ChainReport(BaseModel):
    incident_id: str
    ok: bool
    length: int
    head: str
    broken: ChainBreak | None = None


def verify_chain(incident_id: str, links: Sequence[ChainLink], expected_length: int) -> ChainReport:
    """Recompute the chain in stored order and name the first link that does not hold."""
    prev = GENESIS
    broken: ChainBreak | None = None
    for expected_position, link in enumerate(links, start=1):
        reason: str | None = None
        if link.position != expected_position:
            reason = f"position {expected_position} is missing (found {link.position})"
        elif link.prev_hash != prev:
            reason = "prev_hash does not match the hash of the link before"
        elif str(link.envelope.get("event_id")) != link.event_id:
            reason = "stored event_id differs from the envelope's"
        elif link_hash(prev, link.envelope) != link.hash:
            reason = "the stored event does not match its hash: it was altered"
        if reason:
            broken = ChainBreak(position=expected_position, event_id=link.event_id, reason=reason)
            break
        prev = link.hash
    if broken is None and len(links) != expected_length:
        broken = ChainBreak(
            position=min(len(links), expected_length) + 1,
            event_id=None,
            reason=f"the chain head records {expected_length} links but {len(links)} are stored",
        )
    return ChainReport(
        incident_id=incident_id,
        ok=broken is None,
        length=len(links),
        head=links[-1].hash if links else GENESIS,
        broken=broken,
    )


# --------------------------------------------------------------------------- list rows


class IncidentSummary(BaseModel):
    """One row of the incident list: enough to pick an incident, not the whole record."""

    incident_id: str
    status: Status
    level: Level | None
    category: Category | None
    unit_ids: list[str]
    title: str | None
    opened_at: datetime | None
    updated_at: datetime | None
    report_count: int
    obligations_open: int
    obligations_missed: int
    next_deadline: datetime | None  # the earliest deadline of an obligation still not met
    statements_published: int
    complete: bool


def unmet_deadlines(view: IncidentView) -> list[datetime]:
    return [o.deadline for o in view.obligations if o.state in ("open", "missed")]


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
        obligations_open=sum(o.state == "open" for o in view.obligations),
        obligations_missed=sum(o.state == "missed" for o in view.obligations),
        next_deadline=min(deadlines) if deadlines else None,
        statements_published=sum(s.state == "published" for s in view.statements),
        complete=view.complete,
    )
