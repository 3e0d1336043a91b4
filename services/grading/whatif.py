"""What-if (预案推演): past incidents, as grading recorded them, replayed through a candidate
plan's rulebook and duties. Pure: the caller reads the records and the candidate plan; this
says per incident what would differ (level, category, each duty and its deadline) and which
duties would have been missed given when the recorded duties were met. Nothing is written.

How the replay reads the record:
- the candidate grades the first report at the recorded grading time, and each later report
  may raise the level (never lower it), as the live rulebook does; a leader's override and
  an escalation for a missed deadline are not replayed (the recorded level shows them);
- a duty of the first grade counts from the recorded grading; a duty of a level the
  candidate raises to counts from when the recorded grade first reached that level or a
  more severe one, else from the grading (the earliest the record allows);
- a duty is matched with the recorded duty of the same kind (its first round, for a
  recurring one): met when that was met by the candidate deadline, late when met after it,
  missed when it was never met and the deadline has passed, open otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from shared.plan import Plan
from shared.plan_rules import ObligationPolicy, ObligationRule

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


@dataclass(frozen=True)
class GradeStep:
    at: datetime
    level: Level


@dataclass(frozen=True)
class RecordedIncident:
    """An incident as grading recorded it: its reports, grade history and duties."""

    incident_id: str
    graded_at: datetime
    level: Level
    category: Category
    plan_id: str | None
    plan_version: str | None
    history: tuple[GradeStep, ...]
    reports: tuple[ReportFacts, ...]
    duties: tuple[RecordedDuty, ...]


@dataclass(frozen=True)
class Candidate:
    plan_id: str
    plan_version: str
    rulebook: Rulebook
    duties: ObligationPolicy


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


def compare(
    incident: RecordedIncident, candidate: Candidate, tz: ZoneInfo, now: datetime
) -> IncidentDifference:
    """What the candidate plan would have decided for this incident, beside the record."""
    if not incident.reports:
        raise ValueError(f"{incident.incident_id}: no reports recorded, nothing to replay")
    levels = candidate_levels(candidate.rulebook, incident.reports)
    category = assess(candidate.rulebook, incident.reports[:1]).category
    # A duty that waits on another (`after`) opens when that one is met: the record, not
    # the candidate, says when that was, so it is left out of the comparison.
    opened: list[tuple[ObligationRule, datetime]] = [
        (rule, incident.graded_at)
        for rule in candidate.duties.rules_for(levels[0], category)
        if rule.after is None
    ]
    seen = {rule.kind for rule, _ in opened}
    for before, after in pairwise(levels):
        if after < before:  # raised: the new level's duties not already owed
            at = _reached(incident.history, after, incident.graded_at)
            for rule in candidate.duties.rules_for(after, None):
                if rule.kind not in seen and rule.after is None:
                    opened.append((rule, at))
                    seen.add(rule.kind)
    recorded = _first_rounds(incident.duties)
    duties: list[DutyDifference] = []
    for rule, counted_from in opened:
        deadline = rule.deadline(counted_from, tz)
        match = recorded.get(rule.kind)
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
            )
        )
    recorded_plan = (
        f"{incident.plan_id}@{incident.plan_version}" if incident.plan_id is not None else None
    )
    return IncidentDifference(
        incident_id=incident.incident_id,
        recorded_plan=recorded_plan,
        recorded_level=incident.level,
        level=levels[-1],
        recorded_category=incident.category,
        category=category,
        duties=tuple(duties),
        dropped=tuple(sorted(set(recorded) - seen)),
    )
