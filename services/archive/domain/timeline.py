"""The timeline: every event of an incident in causal order, each with one line in the
bureau's words. Every name a person reads (level, category, media tier, role, channel,
statement kind, match) comes from the catalogue."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from pydantic import BaseModel

from services.archive.domain.ordering import Logged, causal_order
from shared.catalogue import Catalogue
from shared.events import (
    NO_CHANNEL,
    Actor,
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
    IncidentWatchStarted,
    LeaderInstructionRecorded,
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
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
    StatementSubmitted,
    StatementWithdrawn,
    UnclearedReleaseRecorded,
    WatchReportReceived,
)


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


def short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Words:
    """What a line needs besides its event: the catalogue's names, the bureau's time zone,
    and the titles of the incident's obligations and statements."""

    catalogue: Catalogue
    tz: tzinfo
    names: Mapping[str, str]
    # The directory's names of people (id -> 张组长) and units (id -> 实验小学): staff read
    # names, not ids.
    people: Mapping[str, str] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)

    def person(self, person_id: str) -> str:
        return self.people.get(person_id, person_id)

    def unit(self, unit_id: str) -> str:
        return self.units.get(unit_id, unit_id)

    def when(self, moment: datetime) -> str:
        return moment.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")

    def obligation(self, obligation_id: str) -> str:
        return "「" + self.names.get(f"obligation:{obligation_id}", obligation_id) + "」"

    def statement(self, statement_id: str, version: int) -> str:
        title = self.names.get(f"statement:{statement_id}", statement_id)
        return f"「{short(title, 40)}」第 {version} 版"

    def role(self, role: str) -> str:
        return self.catalogue.role(role)


def _names(events: Iterable[Envelope]) -> dict[str, str]:
    """Titles of obligations and statements, so a line about one can name it."""
    names: dict[str, str] = {}
    for event in events:
        p = event.payload
        if isinstance(p, ObligationOpened):
            names[f"obligation:{p.obligation_id}"] = p.title
        elif isinstance(p, StatementDrafted | StatementRevised):
            names[f"statement:{p.statement_id}"] = p.title
    return names


Line = Callable[[Any, Words], str]


def _report_received(p: ReportReceived, w: Words) -> str:
    tier = w.catalogue.media_tiers[p.media_tier]
    if p.claims_unconfirmed:
        tier += "，合作单位所报，待核实"
    return f"舆情件来自 {p.source_name}（{tier}）：{short(p.title)}"


def _opened(p: IncidentOpened, w: Words) -> str:
    return f"立为舆情事件：{short(p.title)}（涉及单位：{'、'.join(map(w.unit, p.unit_ids))}）"


def _attached(p: ReportAttached, w: Words) -> str:
    return f"舆情件 {p.report_id} 归入本事件（{w.catalogue.match(p.match)}）"


def _referral_opened(p: ReferralOpened, w: Words) -> str:
    linked = f"，与事件 {'、'.join(p.matched_incident_ids)} 相关" if p.matched_incident_ids else ""
    return f"合作单位 {p.referred_by} 转办线索，单独立为转办事件{linked}，待办公室核并"


def _referral_merged(p: ReferralMerged, w: Words) -> str:
    return f"转办线索并入事件 {p.into_incident_id}：{short(p.reason)}"


def _claims_confirmed(p: ReportClaimsConfirmed, w: Words) -> str:
    tier = w.catalogue.media_tiers[p.media_tier]
    return f"办公室核实舆情件 {p.report_id} 的媒体级别（{tier}）与传播数据：{short(p.reason)}"


def _attachment_added(p: AttachmentAdded, w: Words) -> str:
    return (
        f"{w.person(p.added_by)} 为舆情件 {p.report_id} 添加附件「{short(p.filename)}」"
        f"（{p.size} 字节，SHA-256 {p.sha256}）"
    )


def _resolved(p: IncidentResolved, w: Words) -> str:
    return f"事件处置完毕：{short(p.reason)}"


def _dismissed(p: IncidentDismissed, w: Words) -> str:
    return f"判定为网络伪舆情，不予处置：{short(p.reason)}"


def _reopened(p: IncidentReopened, w: Words) -> str:
    return f"事件重新开启：{short(p.reason)}"


def _watch_started(p: IncidentWatchStarted, w: Words) -> str:
    if p.on_report == "reopen":
        then = "跟踪期内收到相关舆情即重新开启事件"
    else:
        then = "跟踪期内收到的相关舆情归入本事件，报办公室知悉"
    return f"善后跟踪至 {w.when(p.watch_until)}：{then}"


def _watch_report(p: WatchReportReceived, w: Words) -> str:
    then = "事件重新开启" if p.reopened else "已归入本事件，事件仍为已处置，请办公室关注"
    return f"跟踪期内收到新舆情（舆情件 {p.report_id}）：{then}"


def _graded(p: IncidentGraded, w: Words) -> str:
    c = w.catalogue
    line = f"研判为{c.level(p.level)}，类别：{c.category(p.category)}"
    reasons = "；".join(r.reason for r in p.rules_fired)
    if p.confirmed_by is not None:  # a proposal its body confirmed or changed
        why = f"；理由：{short(p.confirmation_reason)}" if p.confirmation_reason else ""
        return f"{w.person(p.confirmed_by)} 确认级别：{line}{why}"
    return f"{line}（依据：{short(reasons)}）" if reasons else line


def _proposed(p: IncidentGradeProposed, w: Words) -> str:
    c = w.catalogue
    line = f"规则拟定为{c.level(p.level)}，类别：{c.category(p.category)}"
    line += f"，待{w.role(p.confirm_role)}确认"
    reasons = "；".join(r.reason for r in p.rules_fired)
    return f"{line}（依据：{short(reasons)}）" if reasons else line


def _instructed(p: LeaderInstructionRecorded, w: Words) -> str:
    how = "签批" if p.signed else "批示（未签批，持续监测）"
    return f"{w.person(p.instructed_by)} {how}：{short(p.text)}"


def _escalated(p: IncidentEscalated, w: Words) -> str:
    c = w.catalogue
    return (
        f"级别由{c.level(p.from_level)}升为{c.level(p.to_level)}，"
        f"类别：{c.category(p.category)}；原因：{short(p.reason)}"
    )


def _overridden(p: GradeOverridden, w: Words) -> str:
    c = w.catalogue
    return (
        f"人工调整级别：由{c.level(p.from_level)}调为{c.level(p.to_level)}，"
        f"类别：{c.category(p.category)}；理由：{short(p.reason)}"
    )


def _obligation_opened(p: ObligationOpened, w: Words) -> str:
    return f"开启报送义务：{p.title}，截止 {w.when(p.deadline)}（责任：{w.role(p.owner_role)}）"


def _sent(p: NotificationSent, w: Words) -> str:
    return (
        f"已通过{w.catalogue.channel(p.channel)}通知 {w.person(p.recipient)}："
        f"{w.obligation(p.obligation_id)}"
        f"（第 {p.attempt} 次）"
    )


def _failed(p: NotificationFailed, w: Words) -> str:
    if p.channel == NO_CHANNEL and not p.recipient:  # nobody holds the roles paged
        return f"未能通知任何人{w.obligation(p.obligation_id)}：{short(p.reason)}"
    if p.channel == NO_CHANNEL:  # nothing was sent: no channel reaches the person
        return f"未能通知 {w.person(p.recipient)}{w.obligation(p.obligation_id)}：{short(p.reason)}"
    return (
        f"通过{w.catalogue.channel(p.channel)}通知 {w.person(p.recipient)} 失败"
        f"（已尝试 {p.attempts} 次）：{short(p.reason)}"
    )


def _acknowledged(p: NotificationAcknowledged, w: Words) -> str:
    return f"{w.person(p.acknowledged_by)} 确认收到通知：{w.obligation(p.obligation_id)}"


def _fulfilled(p: ObligationFulfilled, w: Words) -> str:
    done = f"{w.when(p.fulfilled_at)}，{w.person(p.fulfilled_by)}"
    line = f"报送义务{w.obligation(p.obligation_id)}已完成，{done}"
    if p.statement_id is not None:  # met by publishing a statement (obligations.yaml met_by)
        line += f"（发布稿件 {p.statement_id} 即完成）"
    return line + "（迟报）" if p.late else line


def _decided(p: DutyDecided, w: Words) -> str:
    said = "决定开启" if p.decision else "决定不开启"
    return f"{w.person(p.decided_by)}{said}报送义务：{p.title}；理由：{short(p.reason)}"


def _closed(p: ObligationClosed, w: Words) -> str:
    return f"报送义务{w.obligation(p.obligation_id)}关闭：{short(p.reason)}"


def _missed(p: DeadlineMissed, w: Words) -> str:
    alerted = "、".join(w.role(r) for r in p.alerted_roles) or "无"
    return (
        f"报送义务{w.obligation(p.obligation_id)}超时未完成（截止 {w.when(p.deadline)}），"
        f"已提醒：{alerted}"
    )


def _drafted(p: StatementDrafted, w: Words) -> str:
    kind = w.catalogue.statement_kinds[p.kind]
    return f"{w.person(p.author)} 起草{kind}「{short(p.title, 40)}」（第 {p.version} 版）"


def _revised(p: StatementRevised, w: Words) -> str:
    return f"{w.person(p.author)} 修改为{w.statement(p.statement_id, p.version)}"


def _submitted(p: StatementSubmitted, w: Words) -> str:
    head = w.statement(p.statement_id, p.version)
    chain = " → ".join(w.role(s.role) for s in p.chain)
    if p.reason:  # the chain set again, as when the incident's level changed in review
        line = f"{head}审核链调整为：{chain}（{short(p.reason)}）"
    else:
        line = f"{head}提交审核，审核链：{chain}"
    return line if p.missing else line + "，已有审核均已覆盖，可以发布"


def _approved(p: StatementApproved, w: Words) -> str:
    who = f"{w.person(p.approver)}（{w.role(p.step.role)}）"
    line = f"{who}审核通过{w.statement(p.statement_id, p.version)}"
    return line if p.missing else line + "，审核全部完成，可以发布"


def _rejected(p: StatementRejected, w: Words) -> str:
    return (
        f"{w.person(p.approver)}（{w.role(p.step.role)}）退回"
        f"{w.statement(p.statement_id, p.version)}：{short(p.comment)}"
    )


def _withdrawn(p: StatementWithdrawn, w: Words) -> str:
    what = w.statement(p.statement_id, p.version)
    return f"{w.person(p.withdrawn_by)} 撤回{what}：{short(p.reason)}"


def _published(p: StatementPublished, w: Words) -> str:
    return f"{w.statement(p.statement_id, p.version)}已在 {p.outlet} 发布：{p.url}"


def _review_recorded(p: ReviewRecorded, w: Words) -> str:
    return f"{p.reviewed_by} 记录总结评估：原因：{short(p.cause, 40)}"


def _case_archived(p: CaseArchived, w: Words) -> str:
    return f"归档入案例库（案例 {p.case_id}）"


def _marked_untrue(p: FulfilmentMarkedUntrue, w: Words) -> str:
    return (
        f"{w.person(p.marked_by)} 认定报送义务{w.obligation(p.obligation_id)}的完成情况不实"
        f"（谎报，完成人：{w.person(p.fulfilled_by)}）：{short(p.reason)}"
    )


def _uncleared_release(p: UnclearedReleaseRecorded, w: Words) -> str:
    return (
        f"{w.person(p.recorded_by)} 记录未经审核发布：{w.person(p.released_by)}"
        f"（{w.unit(p.unit_id)}）于 {w.when(p.released_at)} 经 {short(p.channel, 30)} 发布"
        f"「{short(p.content, 40)}」"
    )


def _commendation(p: CommendationRecorded, w: Words) -> str:
    whom = w.unit(p.unit_id)
    if p.person_id is not None:
        whom = f"{w.person(p.person_id)}（{whom}）"
    return f"{w.person(p.recorded_by)} 表扬{whom}：{short(p.reason)}"


# Each payload class and its line.
LINES: dict[type[EventPayload], Line] = {
    ReportReceived: _report_received,
    IncidentOpened: _opened,
    ReportAttached: _attached,
    ReferralOpened: _referral_opened,
    ReferralMerged: _referral_merged,
    ReportClaimsConfirmed: _claims_confirmed,
    AttachmentAdded: _attachment_added,
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
    ObligationOpened: _obligation_opened,
    NotificationSent: _sent,
    NotificationFailed: _failed,
    NotificationAcknowledged: _acknowledged,
    ObligationFulfilled: _fulfilled,
    ObligationClosed: _closed,
    DeadlineMissed: _missed,
    DutyDecided: _decided,
    StatementDrafted: _drafted,
    StatementRevised: _revised,
    StatementSubmitted: _submitted,
    StatementApproved: _approved,
    StatementRejected: _rejected,
    StatementWithdrawn: _withdrawn,
    StatementPublished: _published,
    ReviewRecorded: _review_recorded,
    CaseArchived: _case_archived,
    FulfilmentMarkedUntrue: _marked_untrue,
    UnclearedReleaseRecorded: _uncleared_release,
    CommendationRecorded: _commendation,
}


def summarize(event: Envelope, words: Words) -> str:
    """One line, in the bureau's words, of what the event means."""
    line = LINES.get(type(event.payload))
    return line(event.payload, words) if line is not None else event.event_type


def timeline(
    records: Iterable[Logged],
    tz: tzinfo,
    catalogue: Catalogue,
    event_types: Sequence[str] = (),
    people: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
) -> list[TimelineEntry]:
    """Every event in causal order with a Chinese line; only `event_types` when given."""
    ordered = causal_order(records)
    words = Words(
        catalogue, tz, _names(r.event for r in ordered), dict(people or {}), dict(units or {})
    )
    return [
        TimelineEntry(
            event_id=r.event.event_id,
            event_type=r.event.event_type,
            occurred_at=r.event.occurred_at,
            recorded_at=r.event.recorded_at,
            actor=r.event.actor,
            summary=summarize(r.event, words),
            seq=r.seq,
            stream_id=r.event.stream_id,
            stream_version=r.event.stream_version,
        )
        for r in ordered
        if not event_types or r.event.event_type in event_types
    ]
