"""Grading's pure rules: the rulebook, what it says about an incident's reports, and the
decisions to grade, escalate or override. Nothing here does I/O.

Levels count down: 1 is the most severe, so "raising" a level makes the number smaller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import Field, PositiveInt, ValidationError, model_validator

from shared.errors import Conflict, Invalid
from shared.events import (
    Category,
    Envelope,
    EventPayload,
    FiredRule,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    IncidentGradeProposed,
    LeaderInstructionRecorded,
    Level,
    MediaTier,
    Reach,
    ReportClaimsConfirmed,
    ReportOrigin,
    ReportReceived,
    SourceType,
)
from shared.models import FrozenModel
from shared.plan_rules import PlanStamp

# --------------------------------------------------------------------------- rulebook

Keywords = tuple[str, ...]
RuleId = str


class _Rule(FrozenModel):
    id: RuleId = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    reason: str = Field(min_length=1, max_length=500)


class TierRule(_Rule):
    """Media tier to level (seed 003, 第三条)."""

    media_tiers: tuple[MediaTier, ...] = Field(min_length=1)
    level: Level


class ReachRule(_Rule):
    """Reach at or above a bound raises the level (an item that is spreading)."""

    metric: Literal["views", "reposts", "comments", "likes"]
    at_least: PositiveInt
    level: Level


class CategoryRule(_Rule):
    """Keywords that decide how an incident is handled (seed 000, 分类处置)."""

    category: Category
    keywords: Keywords = Field(min_length=1)


class SensitiveRule(_Rule):
    """A sensitive topic; it may also raise the level."""

    topic: str = Field(min_length=1, max_length=100)
    keywords: Keywords = Field(min_length=1)
    level: Level | None = None


class DefaultLevel(_Rule):
    level: Level


class DefaultCategory(_Rule):
    category: Category


class MishandlingRule(_Rule):
    """A missed deadline on the incident's current level lets it grow: raise by `steps`."""

    steps: PositiveInt = 1


class Rulebook(FrozenModel):
    """The rules in force, as config/rulebook.yaml states them (validated at start)."""

    version: str = Field(min_length=1, max_length=100)
    default_level: DefaultLevel
    default_category: DefaultCategory
    tiers: tuple[TierRule, ...] = ()
    reach: tuple[ReachRule, ...] = ()
    categories: tuple[CategoryRule, ...] = ()
    sensitive: tuple[SensitiveRule, ...] = ()
    mishandling: MishandlingRule | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        seen: set[str] = set()
        rules: list[_Rule] = [
            self.default_level,
            self.default_category,
            *self.tiers,
            *self.reach,
            *self.categories,
            *self.sensitive,
            *([self.mishandling] if self.mishandling else []),
        ]
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        mapped: dict[MediaTier, str] = {}
        for tier_rule in self.tiers:
            for tier in tier_rule.media_tiers:
                if tier in mapped:
                    twice = f"{mapped[tier]!r} and {tier_rule.id!r}"
                    raise ValueError(f"media tier {tier.value!r} is in both {twice}")
                mapped[tier] = tier_rule.id
        return self


NO_PLAN = PlanStamp()


class RulebookError(ValueError):
    """A rulebook that cannot be used; the message names the bad entry."""


def parse_rulebook(data: Any, source: str) -> Rulebook:
    try:
        return Rulebook.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_entry_name(data, err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise RulebookError(f"rulebook {source} is invalid: " + "; ".join(problems)) from None


def _entry_name(data: Any, loc: tuple[int | str, ...]) -> str:
    """'reach[1] (reach-views-big).at_least' rather than a bare path, so staff find it."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int):
            parts[-1] += f"[{key}]"
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if isinstance(node, dict) and "id" in node:
                parts[-1] += f" ({node['id']})"
        else:
            parts.append(key)
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "top level"


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class ReportFacts:
    """What grading keeps of a report: enough to assess the incident again later."""

    report_id: str
    source_name: str
    media_tier: MediaTier
    normalized_url: str
    reach: Reach
    text: str
    # A partner's media tier and reach, not yet confirmed by the office: graded as if
    # they had not been made (what the report says still counts).
    claims_unconfirmed: bool = False
    # Where it came from and when it was published and first observed: the first
    # report's are carried on the grade events (ReportOrigin) for notification's duties.
    source_type: SourceType | None = None
    published_at: datetime | None = None
    observed_at: datetime | None = None

    @classmethod
    def of(cls, report: ReportReceived) -> ReportFacts:
        return cls(
            report_id=report.report_id,
            source_name=report.source_name,
            media_tier=report.media_tier,
            normalized_url=report.normalized_url,
            reach=report.reach,
            text=f"{report.title}\n{report.excerpt}",
            claims_unconfirmed=report.claims_unconfirmed,
            source_type=report.source_type,
            published_at=report.published_at,
            observed_at=report.observed_at,
        )

    @property
    def origin(self) -> ReportOrigin | None:
        """Where and when it came from, if grading kept it (reports kept before it did not)."""
        if self.source_type is None or self.published_at is None or self.observed_at is None:
            return None
        return ReportOrigin(
            report_id=self.report_id,
            source_type=self.source_type,
            source_name=self.source_name,
            published_at=self.published_at,
            observed_at=self.observed_at,
        )

    def confirmed(self, confirmation: ReportClaimsConfirmed) -> ReportFacts:
        """The report once the office confirmed its claims, as the office stated them."""
        return replace(
            self,
            media_tier=confirmation.media_tier,
            reach=confirmation.reach,
            claims_unconfirmed=False,
        )


@dataclass(frozen=True)
class Finding:
    rule_id: str
    reason: str
    level: Level | None = None

    def fired(self) -> FiredRule:
        return FiredRule(rule_id=self.rule_id, reason=self.reason)


@dataclass(frozen=True)
class Assessment:
    level: Level
    category: Category
    findings: tuple[Finding, ...]
    sensitive_topics: tuple[str, ...]

    @property
    def rules_fired(self) -> tuple[FiredRule, ...]:
        return tuple(f.fired() for f in self.findings)


def incident_reach(reports: Sequence[ReportFacts]) -> Reach:
    """Reach summed over distinct items: a URL filed twice counts once, at its latest."""
    latest = {r.normalized_url: r.reach for r in reports}
    return Reach(
        views=sum(r.views for r in latest.values()),
        reposts=sum(r.reposts for r in latest.values()),
        comments=sum(r.comments for r in latest.values()),
        likes=sum(r.likes for r in latest.values()),
    )


# Not a rule of the rulebook: what a grade says when a partner's claims were left out.
CLAIMS_PENDING = "partner-claims-unconfirmed"
CLAIMS_PENDING_REASON = "合作单位所报媒体级别与传播数据待办公室核实，暂不计入"


def _mentions(text: str, keywords: Keywords) -> str | None:
    lowered = text.casefold()
    return next((k for k in keywords if k.casefold() in lowered), None)


def assess(rulebook: Rulebook, reports: Sequence[ReportFacts]) -> Assessment:
    """What the rulebook says about an incident with these reports. A partner's claims
    that the office has not confirmed count for no tier and no reach."""
    findings: list[Finding] = []
    stated = [r for r in reports if not r.claims_unconfirmed]
    for rule in rulebook.tiers:
        sources = [r.source_name for r in stated if r.media_tier in rule.media_tiers]
        if sources:
            names = "、".join(dict.fromkeys(sources))
            findings.append(Finding(rule.id, f"{rule.reason}（{names}）", rule.level))
    pending = [r.source_name for r in reports if r.claims_unconfirmed]
    if pending:
        names = "、".join(dict.fromkeys(pending))
        findings.append(Finding(CLAIMS_PENDING, f"{CLAIMS_PENDING_REASON}（{names}）"))
    reach = incident_reach(stated)
    for reach_rule in rulebook.reach:
        value = getattr(reach, reach_rule.metric)
        if value >= reach_rule.at_least:
            reason = f"{reach_rule.reason}（{reach_rule.metric}={value}）"
            findings.append(Finding(reach_rule.id, reason, reach_rule.level))
    topics: list[str] = []
    for sensitive in rulebook.sensitive:
        word = next(
            (w for r in reports if (w := _mentions(r.text, sensitive.keywords)) is not None), None
        )
        if word is not None:
            topics.append(sensitive.topic)
            reason = f"{sensitive.reason}（关键词：{word}）"
            findings.append(Finding(sensitive.id, reason, sensitive.level))
    if not any(f.level is not None for f in findings):
        default = rulebook.default_level
        findings.append(Finding(default.id, default.reason, default.level))
    level = min(f.level for f in findings if f.level is not None)

    category_finding = _categorise(rulebook, reports)
    findings.append(category_finding)
    category = next(
        (c.category for c in rulebook.categories if c.id == category_finding.rule_id),
        rulebook.default_category.category,
    )
    return Assessment(int(level), category, tuple(findings), tuple(topics))


def _categorise(rulebook: Rulebook, reports: Sequence[ReportFacts]) -> Finding:
    """The first category rule, in rulebook order, whose keywords any report mentions."""
    for rule in rulebook.categories:
        for report in reports:
            word = _mentions(report.text, rule.keywords)
            if word is not None:
                return Finding(rule.id, f"{rule.reason}（关键词：{word}）")
    default = rulebook.default_category
    return Finding(default.id, default.reason)


# --------------------------------------------------------------------------- grade


def grade_stream(incident_id: str) -> str:
    return f"grade-{incident_id}"


@dataclass(frozen=True)
class Grade:
    """An incident's grade as its grade stream tells it, at the stream's version."""

    level: Level
    category: Category
    version: int
    # The plan its grade events record: the last graded or escalated under (an override,
    # a person's decision, records none and keeps it).
    plan: PlanStamp = NO_PLAN
    # The rulebook's proposal awaiting its body's confirmation (plan.yaml `grading`): the
    # level and category above are proposed, not yet the incident's.
    proposal: IncidentGradeProposed | None = None

    @property
    def proposed(self) -> bool:
        return self.proposal is not None


def evolve(grade: Grade | None, event: Envelope) -> Grade:
    """The grade after one more event of its stream: graded first, then moved up or down."""
    payload = event.payload
    if isinstance(payload, IncidentGradeProposed) and (grade is None or grade.proposed):
        stamp = PlanStamp(payload.plan_id, payload.plan_version)
        return Grade(payload.level, payload.category, event.stream_version, stamp, payload)
    if grade is not None and isinstance(payload, LeaderInstructionRecorded):
        return replace(grade, version=event.stream_version)
    if isinstance(payload, IncidentGraded):
        stamp = PlanStamp(payload.plan_id, payload.plan_version)
        return Grade(payload.level, payload.category, event.stream_version, stamp)
    if grade is not None and isinstance(payload, IncidentEscalated):
        stamp = PlanStamp(payload.plan_id, payload.plan_version)
        return Grade(payload.to_level, payload.category, event.stream_version, stamp)
    if grade is not None and isinstance(payload, GradeOverridden):
        return Grade(payload.to_level, payload.category, event.stream_version, grade.plan)
    raise ValueError(
        f"{event.event_type} at version {event.stream_version} cannot follow in {event.stream_id}"
    )


def on_report(
    rulebook: Rulebook,
    grade: Grade | None,
    prior: Sequence[ReportFacts],
    new: ReportFacts,
    dismissed: bool,
    plan: PlanStamp = NO_PLAN,
    confirm_role: str | None = None,
) -> EventPayload | None:
    """Grade an incident on its first report; escalate it when a later one raises it.
    Under a plan whose grade a body confirms (`confirm_role`), propose the grade instead,
    and propose again while unconfirmed when a later report raises it.

    Escalation compares what the rules said before this report with what they say now,
    so a leader's override down holds until new facts raise the assessment again, and
    nothing here ever lowers a level. A dismissed pseudo-incident is neither graded nor
    escalated, whatever is filed about it: a grade would open reporting obligations.
    """
    if dismissed:
        return None
    now = assess(rulebook, [*prior, new])
    first = _first_report([*prior, new])
    if grade is None and confirm_role is not None:
        return _proposal(rulebook, now, confirm_role, plan).model_copy(update=first)
    if grade is not None and grade.proposal is not None:
        raised = now.level < grade.level
        proposal = _proposal(rulebook, now, grade.proposal.confirm_role, plan)
        return proposal.model_copy(update=first) if raised else None
    if grade is None:
        return IncidentGraded(
            level=now.level,
            category=now.category,
            rules_fired=now.rules_fired,
            rulebook_version=rulebook.version,
            sensitive_topics=now.sensitive_topics,
            **plan.fields(),
            **first,
        )
    return _raised(rulebook, grade, assess(rulebook, prior), now, plan)


def on_reopened(
    rulebook: Rulebook,
    grade: Grade | None,
    counted: Sequence[ReportFacts],
    held: Sequence[ReportFacts],
    plan: PlanStamp = NO_PLAN,
) -> IncidentEscalated | None:
    """Reports filed while the incident was closed (dismissed, or resolved and under watch)
    were recorded without changing its grade; reopened, they count as if they came now."""
    if grade is None or not held or grade.proposal is not None:
        return None
    return _raised(
        rulebook, grade, assess(rulebook, counted), assess(rulebook, [*counted, *held]), plan
    )


def _first_report(reports: Sequence[ReportFacts]) -> dict[str, ReportOrigin | None]:
    """The first report's origin, as the grade events carry it (`first_report`)."""
    return {"first_report": reports[0].origin if reports else None}


def on_claims_confirmed(
    rulebook: Rulebook,
    grade: Grade | None,
    reports: Sequence[ReportFacts],
    confirmation: ReportClaimsConfirmed,
    dismissed: bool,
    plan: PlanStamp = NO_PLAN,
) -> IncidentEscalated | IncidentGradeProposed | None:
    """The office confirmed a partner's claims: the incident is assessed again with them,
    and escalated if they raise it (as a new report would; proposed again if its grade is
    still a proposal). Nothing is lowered."""
    if dismissed or grade is None:
        return None
    after = [
        r.confirmed(confirmation) if r.report_id == confirmation.report_id else r for r in reports
    ]
    if grade.proposal is not None:
        now = assess(rulebook, after)
        if now.level >= grade.level:
            return None
        return _proposal(rulebook, now, grade.proposal.confirm_role, plan)
    return _raised(rulebook, grade, assess(rulebook, reports), assess(rulebook, after), plan)


def _proposal(
    rulebook: Rulebook, now: Assessment, confirm_role: str, plan: PlanStamp
) -> IncidentGradeProposed:
    return IncidentGradeProposed(
        level=now.level,
        category=now.category,
        rules_fired=now.rules_fired,
        rulebook_version=rulebook.version,
        sensitive_topics=now.sensitive_topics,
        confirm_role=confirm_role,
        **plan.fields(),
    )


def _raised(
    rulebook: Rulebook,
    grade: Grade,
    before: Assessment,
    now: Assessment,
    plan: PlanStamp = NO_PLAN,
) -> IncidentEscalated | None:
    """The escalation when the facts now raise the assessment above before and the grade."""
    if now.level >= before.level or now.level >= grade.level:
        return None
    known = {f.rule_id for f in before.findings}
    raising = [f for f in now.findings if f.level == now.level and f.rule_id not in known]
    return IncidentEscalated(
        from_level=grade.level,
        to_level=now.level,
        category=grade.category,
        reason="；".join(f.reason for f in raising),
        rules_fired=tuple(f.fired() for f in raising),
        rulebook_version=rulebook.version,
        **plan.fields(),
    )


def on_deadline_missed(
    rulebook: Rulebook,
    grade: Grade | None,
    missed_level: Level,
    dismissed: bool,
    plan: PlanStamp = NO_PLAN,
) -> IncidentEscalated | None:
    """A deadline of the current level missed: the incident was mishandled and grows.

    A deadline of an earlier, lower level says nothing about the handling at this one.
    """
    rule = rulebook.mishandling
    if rule is None or grade is None or dismissed or missed_level != grade.level:
        return None
    if grade.proposed:
        return None  # a proposal's level is its body's to decide, not the rulebook's
    to_level = max(1, grade.level - rule.steps)  # 1, the most severe, is as high as it goes
    if to_level == grade.level:
        return None
    return IncidentEscalated(
        from_level=grade.level,
        to_level=to_level,
        category=grade.category,
        reason=rule.reason,
        rules_fired=(FiredRule(rule_id=rule.id, reason=rule.reason),),
        rulebook_version=rulebook.version,
        **plan.fields(),
    )


class OverrideRefused(Conflict):
    """An override that would change nothing, of an incident not graded yet, or of a
    dismissed pseudo-incident. `details` holds the grade it was refused on."""

    code = "override_refused"

    def __init__(self, message: str, grade: Grade | None) -> None:
        super().__init__(
            message,
            {
                "level": int(grade.level) if grade is not None else None,
                "category": str(grade.category) if grade is not None else None,
            },
        )


def override(
    grade: Grade | None, to_level: Level, category: Category | None, reason: str, dismissed: bool
) -> GradeOverridden:
    """The leading group sets the level by hand, up or down."""
    if grade is None:
        raise OverrideRefused("the incident has not been graded yet", grade)
    if grade.proposal is not None:
        raise OverrideRefused(
            f"the grade is proposed, awaiting confirmation by {grade.proposal.confirm_role}: "
            "confirm it, with another level or category and a reason to change it",
            grade,
        )
    if dismissed:
        # A grade on a pseudo-incident would open reporting obligations; reopen it first.
        raise OverrideRefused(
            "the incident was dismissed as a pseudo-incident; reopen it first", grade
        )
    new_category = category or grade.category
    if to_level == grade.level and new_category == grade.category:
        raise OverrideRefused(
            f"the incident is already level {int(grade.level)}, {grade.category}", grade
        )
    return GradeOverridden(
        from_level=grade.level, to_level=to_level, category=new_category, reason=reason
    )


# --------------------------------------------------------------------------- by a body


class ConfirmRefused(OverrideRefused):
    """A confirmation with nothing proposed, or of a dismissed pseudo-incident (409)."""

    code = "confirm_refused"


def confirm(
    grade: Grade | None,
    level: Level | None,
    category: Category | None,
    reason: str | None,
    dismissed: bool,
    by: str,
) -> IncidentGraded:
    """The body the plan names confirms the proposed grade, or changes it with a reason:
    the incident is graded, as every consumer knows it (IncidentGraded), by `by`."""
    proposal = grade.proposal if grade is not None else None
    if grade is None or proposal is None:
        raise ConfirmRefused("no grade is proposed for the incident", grade)
    if dismissed:
        raise ConfirmRefused(
            "the incident was dismissed as a pseudo-incident; reopen it first", grade
        )
    new_level = proposal.level if level is None else level
    new_category = proposal.category if category is None else category
    changed = new_level != proposal.level or new_category != proposal.category
    if changed and not reason:
        raise Invalid(
            "reason",
            "required when the level or category differs from the proposal",
            "missing",
            message="改变拟定级别或类别时须说明理由（reason）",
        )
    return IncidentGraded(
        level=new_level,
        category=new_category,
        rules_fired=proposal.rules_fired,
        rulebook_version=proposal.rulebook_version,
        sensitive_topics=proposal.sensitive_topics,
        plan_id=grade.plan.plan_id,
        plan_version=grade.plan.plan_version,
        confirmed_by=by,
        confirmation_reason=reason or None,
    )


class InstructionRefused(OverrideRefused):
    """An instruction on an incident neither graded nor proposed (409)."""

    code = "instruction_refused"


def instruct(
    grade: Grade | None, instruction_id: str, text: str, signed: bool, by: str
) -> LeaderInstructionRecorded:
    """A leader's instruction (批示/签批) on the incident, at its grade (proposed or not)."""
    if grade is None:
        raise InstructionRefused("the incident has not been graded or proposed yet", grade)
    return LeaderInstructionRecorded(
        instruction_id=instruction_id,
        text=text,
        signed=signed,
        instructed_by=by,
        level=grade.level,
        category=grade.category,
    )
