"""What-if (预案推演): past incidents, as grading recorded them, replayed through a candidate
plan's rulebook and duties. Pure: the caller reads the records and the candidate plan; this
says per incident what would differ (level, category, each duty and its deadline) and which
duties would have been missed given when the recorded duties were met. Nothing is written.

How the replay reads the record (RecordedIncident: reports, grade history, signed
instructions, resolutions, duty decisions, duties opened and met):
- the candidate grades the first report, and each later report may raise the level (never
  lower it), as the live rulebook does; a leader's override, a body's change on
  confirmation and an escalation for a missed deadline are not replayed (the recorded level
  shows them);
- when each duty opens, by its `opens_on`:
  - `proposed` (a candidate whose grade a body confirms, plan.yaml `grading.confirmed_by`):
    at the recorded proposal, else at the recorded grading (the rulebook graded then);
  - `graded`: under a confirming candidate at the recorded confirmation (an IncidentGraded
    after a proposal), or at the recorded grading when the record had no proposal (taken as
    confirmed at once); under a candidate that does not confirm, at the recorded proposal or
    grading, whichever came first; a duty of a level the candidate raises to counts from
    when the recorded grade first reached that level or a more severe one (the earliest the
    record allows);
  - `instructed`: at the first signed instruction (签批) recorded;
  - `resolved`: at the first recorded resolution;
  - `decided`: at the first recorded decision (DutyDecided) that it is owed;
  - with `after`: when the duty it waits on was met, by the record;
  a duty opened with the grade or the proposal counts from the first report's
  `published_at` or `observed_at` when its `counted_from` says so (from the event when the
  report does not carry it); the instruction, resolution and decision duties are those of
  the candidate's last level. A duty whose event the record lacks is listed as not opened,
  with why;
- a duty is matched with the recorded duty of the same kind (its first round, for a
  recurring or re-opened one): met when that was met by the candidate deadline, late when
  met after it, missed when it was never met and the deadline has passed, open otherwise.
  An action that would meet it (`met_by`: a statement published) counts only through the
  recorded fulfilment: grading does not record publications.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

from services.grading.domain import (
    CategoryRule,
    DefaultCategory,
    ReachRule,
    ReportFacts,
    Rulebook,
    TierRule,
    assess,
)
from shared.events import Category, Level
from shared.identity import Role
from shared.plan import Plan
from shared.plan_rules import (
    OPENS_ON_DECISION,
    OPENS_ON_GRADE,
    OPENS_ON_INSTRUCTION,
    OPENS_ON_PROPOSAL,
    OPENS_ON_RESOLUTION,
    Instants,
    ObligationPolicy,
    ObligationRule,
)

Outcome = Literal["met", "late", "missed", "open"]
Change = Literal["same", "new", "moved"]


class CandidateMismatch(ValueError):
    """A candidate plan whose rulebook grades at a level or category the plan does not list."""


def check_rulebook(plan: Plan, rulebook: Rulebook) -> list[str]:
    """Every level and category the rulebook can decide is one the plan lists."""
    file = plan.paths["rulebook"]
    problems: list[str] = []
    levelled: list[TierRule | ReachRule] = [*rulebook.tiers, *rulebook.reach]
    for rule in levelled:
        if rule.level not in plan.manifest.ranks:
            problems.append(f"{file}: {rule.id}: level {int(rule.level)} is not one of the plan's")
    for sensitive in rulebook.sensitive:
        if sensitive.level is not None and sensitive.level not in plan.manifest.ranks:
            problems.append(
                f"{file}: {sensitive.id}: level {int(sensitive.level)} is not one of the plan's"
            )
    if rulebook.default_level.level not in plan.manifest.ranks:
        problems.append(f"{file}: {rulebook.default_level.id}: level is not one of the plan's")
    categorised: list[CategoryRule | DefaultCategory] = [
        *rulebook.categories,
        rulebook.default_category,
    ]
    for category_rule in categorised:
        if category_rule.category not in plan.manifest.categories:
            problems.append(
                f"{file}: {category_rule.id}: category {str(category_rule.category)!r} is not "
                "one of the plan's"
            )
    return problems


@dataclass(frozen=True)
class RecordedDuty:
    kind: str
    deadline: datetime
    fulfilled_at: datetime | None = None


GRADED_EVENT = "IncidentGraded"
PROPOSED_EVENT = "IncidentGradeProposed"


@dataclass(frozen=True)
class GradeStep:
    at: datetime
    level: Level
    # The grade event of the step: IncidentGraded (the grade, or its confirmation),
    # IncidentGradeProposed, IncidentEscalated, GradeOverridden.
    event: str = GRADED_EVENT


@dataclass(frozen=True)
class RecordedInstruction:
    """A leader's instruction (批示) recorded on the incident; `signed`: 签批."""

    at: datetime
    signed: bool


@dataclass(frozen=True)
class RecordedDecision:
    """Whether a duty `opens_on: decided` was owed (DutyDecided), and when."""

    kind: str
    decision: bool
    at: datetime


@dataclass(frozen=True)
class RecordedIncident:
    """An incident as grading recorded it: its reports, grade history, duties, and the
    instructions, resolutions and decisions duties may open on."""

    incident_id: str
    graded_at: datetime
    level: Level
    category: Category
    plan_id: str | None
    plan_version: str | None
    history: tuple[GradeStep, ...]
    reports: tuple[ReportFacts, ...]
    duties: tuple[RecordedDuty, ...]
    instructions: tuple[RecordedInstruction, ...] = ()
    resolved_at: datetime | None = None  # the first resolution
    decisions: tuple[RecordedDecision, ...] = ()

    @property
    def proposed_at(self) -> datetime | None:
        """When the rulebook's grade was first proposed, under a plan whose grade a body
        confirms."""
        return next((s.at for s in self.history if s.event == PROPOSED_EVENT), None)

    @property
    def confirmed_at(self) -> datetime | None:
        """When it was first graded (IncidentGraded: after a proposal, its confirmation);
        none when a proposal was never confirmed."""
        graded = next((s.at for s in self.history if s.event == GRADED_EVENT), None)
        if graded is None and self.proposed_at is None:
            return self.graded_at
        return graded

    @property
    def signed_at(self) -> datetime | None:
        """The first signed instruction (签批)."""
        return min((i.at for i in self.instructions if i.signed), default=None)


@dataclass(frozen=True)
class Candidate:
    plan_id: str
    plan_version: str
    rulebook: Rulebook
    duties: ObligationPolicy
    # plan.yaml grading.confirmed_by: the grade is a proposal until this role confirms it.
    confirmed_by: Role | None = None


@dataclass(frozen=True)
class DutyDifference:
    kind: str
    title: str
    counted_from: datetime
    deadline: datetime
    recorded_deadline: datetime | None
    met_at: datetime | None
    outcome: Outcome
    change: Change
    opens_on: str = OPENS_ON_GRADE
    after: str | None = None


# Why a duty of the candidate did not open on the record (NotOpened.why), and the note staff
# read.
NotOpenedWhy = Literal[
    "no_proposal",
    "not_confirmed",
    "no_signed_instruction",
    "not_resolved",
    "no_decision",
    "decided_against",
    "waits_on_unmet",
]
NOTES: dict[str, str] = {
    "no_proposal": "候选预案不设定级确认，不会有“提出定级”",
    "not_confirmed": "记录中的定级建议未经确认",
    "no_signed_instruction": "记录中没有领导签批",
    "not_resolved": "记录中事件未办结",
    "no_decision": "记录中没有是否开启的决定",
    "decided_against": "记录中决定不开启",
    "waits_on_unmet": "须待前一项义务完成，记录中未完成",
}


@dataclass(frozen=True)
class NotOpened:
    """A duty of the candidate that would not have opened, the record lacking its event."""

    kind: str
    title: str
    opens_on: str
    why: NotOpenedWhy
    note: str


@dataclass(frozen=True)
class IncidentDifference:
    incident_id: str
    recorded_plan: str | None
    recorded_level: Level
    level: Level
    recorded_category: Category
    category: Category
    duties: tuple[DutyDifference, ...]
    dropped: tuple[str, ...]  # recorded duties the candidate would not open
    not_opened: tuple[NotOpened, ...] = ()

    @property
    def would_miss(self) -> tuple[str, ...]:
        return tuple(d.kind for d in self.duties if d.outcome in ("late", "missed"))

    @property
    def differs(self) -> bool:
        return (
            self.level != self.recorded_level
            or self.category != self.recorded_category
            or bool(self.dropped)
            or any(d.change != "same" for d in self.duties)
        )


def candidate_levels(rulebook: Rulebook, reports: Sequence[ReportFacts]) -> list[Level]:
    """The level the candidate would hold after each report: graded on the first, raised
    (never lowered) by the later ones."""
    levels: list[Level] = []
    for n in range(1, len(reports) + 1):
        now = assess(rulebook, reports[:n]).level
        levels.append(min(now, levels[-1]) if levels else now)
    return levels


def _reached(history: Sequence[GradeStep], level: Level, fallback: datetime) -> datetime:
    """When the recorded grade first reached `level` or a more severe one."""
    return next((step.at for step in history if step.level <= level), fallback)


def _first_rounds(duties: Sequence[RecordedDuty]) -> dict[str, RecordedDuty]:
    first: dict[str, RecordedDuty] = {}
    for duty in sorted(duties, key=lambda d: d.deadline):
        first.setdefault(duty.kind, duty)
    return first


def _outcome(deadline: datetime, met_at: datetime | None, now: datetime) -> Outcome:
    if met_at is not None:
        return "met" if met_at <= deadline else "late"
    return "missed" if deadline <= now else "open"


class _Replay:
    """The duties the candidate opens on one record, in the order they would open."""

    def __init__(self, incident: RecordedIncident, policy: ObligationPolicy) -> None:
        first = incident.reports[0]
        self.published, self.observed = first.published_at, first.observed_at
        self.policy = policy
        self.recorded = _first_rounds(incident.duties)
        self.opened: list[tuple[ObligationRule, datetime]] = []
        self.skipped: dict[str, NotOpened] = {}

    @property
    def kinds(self) -> set[str]:
        return {rule.kind for rule, _ in self.opened}

    def open(self, rules: Iterable[ObligationRule], at: datetime | None, why: NotOpenedWhy) -> None:
        """Open each rule not waiting on another, counted from `at` (or from the first
        report, where its `counted_from` says so); none when the record lacks the event."""
        for rule in rules:
            if rule.after is not None or rule.kind in self.kinds:
                continue
            if at is None:
                self.skip(rule, why)
                continue
            start = at
            if rule.opens_on in (OPENS_ON_GRADE, OPENS_ON_PROPOSAL):
                start = Instants(at, self.published, self.observed).of(rule.counted_from)
            self.opened.append((rule, start))

    def skip(self, rule: ObligationRule, why: NotOpenedWhy) -> None:
        self.skipped.setdefault(
            rule.kind, NotOpened(rule.kind, rule.title, rule.opens_on, why, NOTES[why])
        )

    def open_waiting(self, lists: Sequence[Sequence[ObligationRule]]) -> None:
        """Open the duties that wait on another when that one was met, by the record."""
        waiting = [rule for rules in lists for rule in rules if rule.after is not None]
        progressed = True
        while progressed:
            progressed = False
            for rule in waiting:
                if rule.kind in self.kinds or rule.after not in self.kinds:
                    continue
                before = self.recorded.get(rule.after)
                met_at = before.fulfilled_at if before is not None else None
                if met_at is not None:
                    self.opened.append((rule, met_at))
                    progressed = True
        for rule in waiting:
            if rule.kind not in self.kinds:
                self.skip(rule, "waits_on_unmet")

    def not_opened(self) -> tuple[NotOpened, ...]:
        kinds = self.kinds
        return tuple(n for kind, n in self.skipped.items() if kind not in kinds)


def compare(
    incident: RecordedIncident, candidate: Candidate, tz: ZoneInfo, now: datetime
) -> IncidentDifference:
    """What the candidate plan would have decided for this incident, beside the record."""
    if not incident.reports:
        raise ValueError(f"{incident.incident_id}: no reports recorded, nothing to replay")
    policy = candidate.duties
    levels = candidate_levels(candidate.rulebook, incident.reports)
    category = assess(candidate.rulebook, incident.reports[:1]).category
    replay = _Replay(incident, policy)
    proposed, confirmed = incident.proposed_at, incident.confirmed_at
    if candidate.confirmed_by is not None:
        proposal: datetime | None = proposed or confirmed or incident.graded_at
        grading = confirmed
    else:
        proposal = None
        grading = min((t for t in (proposed, confirmed) if t is not None), default=None)
        grading = grading or incident.graded_at
    on_proposal: NotOpenedWhy = "no_proposal"
    replay.open(policy.rules_on(levels[0], category, OPENS_ON_PROPOSAL), proposal, on_proposal)
    replay.open(policy.rules_on(levels[0], category, OPENS_ON_GRADE), grading, "not_confirmed")
    for before, after in pairwise(levels):
        if after < before:  # raised: the new level's duties not already owed
            at = _reached(incident.history, after, grading or proposal or incident.graded_at)
            if proposal is not None:
                replay.open(policy.rules_on(after, None, OPENS_ON_PROPOSAL), at, on_proposal)
            replay.open(
                policy.rules_on(after, None, OPENS_ON_GRADE),
                at if grading is not None else None,
                "not_confirmed",
            )
    last = levels[-1]
    replay.open(
        policy.rules_on(last, category, OPENS_ON_INSTRUCTION),
        incident.signed_at,
        "no_signed_instruction",
    )
    replay.open(
        policy.rules_on(last, category, OPENS_ON_RESOLUTION), incident.resolved_at, "not_resolved"
    )
    for rule in policy.rules_on(last, category, OPENS_ON_DECISION):
        decisions = [d for d in incident.decisions if d.kind == rule.kind]
        owed = min((d.at for d in decisions if d.decision), default=None)
        replay.open([rule], owed, "decided_against" if decisions else "no_decision")
    reached = [policy.levels.get(level, ()) for level in dict.fromkeys(levels)]
    replay.open_waiting([*reached, policy.categories.get(category, ())])

    duties: list[DutyDifference] = []
    for rule, counted_from in replay.opened:
        deadline = rule.deadline(counted_from, tz)
        match = replay.recorded.get(rule.kind)
        met_at = match.fulfilled_at if match is not None else None
        change: Change = (
            "new" if match is None else "same" if match.deadline == deadline else "moved"
        )
        duties.append(
            DutyDifference(
                kind=rule.kind,
                title=rule.title,
                counted_from=counted_from,
                deadline=deadline,
                recorded_deadline=match.deadline if match is not None else None,
                met_at=met_at,
                outcome=_outcome(deadline, met_at, now),
                change=change,
                opens_on=rule.opens_on,
                after=rule.after,
            )
        )
    recorded_plan = (
        f"{incident.plan_id}@{incident.plan_version}" if incident.plan_id is not None else None
    )
    return IncidentDifference(
        incident_id=incident.incident_id,
        recorded_plan=recorded_plan,
        recorded_level=incident.level,
        level=last,
        recorded_category=incident.category,
        category=category,
        duties=tuple(duties),
        dropped=tuple(sorted(set(replay.recorded) - replay.kinds)),
        not_opened=replay.not_opened(),
    )
