"""The duties and clearance chains of a plan, as its policy files state them: the models of
obligations.yaml (duties per level and category, with their deadlines) and approval.yaml
(who clears a statement, per level). Pure: the notification and statement services decide
with them, and grading's plan view and what-if read the same rules (shared/plan.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from shared.events import Category, Level, SourceType, StatementKind
from shared.identity import Role
from shared.models import FrozenModel
from shared.policy import ClockTime, Duration

INCIDENT_UNIT = "incident"  # in the approval policy: the unit(s) the incident concerns

# When a duty opens (`opens_on` of a duty): with the grade of its level or category (and
# escalation, re-grading and reopening, as before), or when the incident is resolved
# (处置结果上报, 总结评估), counted from the resolution.
OPENS_ON_GRADE = "graded"
OPENS_ON_RESOLUTION = "resolved"
# Under a plan whose grade a body confirms (plan.yaml `grading`): when the rulebook's grade
# is proposed (IncidentGradeProposed), counted from the proposal; and when a leader's
# signed instruction (签批) is recorded (LeaderInstructionRecorded), counted from it.
OPENS_ON_PROPOSAL = "proposed"
OPENS_ON_INSTRUCTION = "instructed"
# `decided`: when the role the duty names (`decided_by`) decides that it is owed ("as the
# group decides", seed 003 篇一 二（二）), counted from the decision; a decision against it
# is recorded and opens nothing.
OPENS_ON_DECISION = "decided"
OPENS_ON = (
    OPENS_ON_GRADE,
    OPENS_ON_RESOLUTION,
    OPENS_ON_PROPOSAL,
    OPENS_ON_INSTRUCTION,
    OPENS_ON_DECISION,
)

# Where a duty's clock starts (`counted_from` of a duty opened with the grade or the
# proposal): the grading (the default), the first report's `published_at` (舆情发生, seed 003
# 第十三条) or its `observed_at` (first seen by the monitors). A deadline already past when
# the duty opens is missed at once, as any other.
COUNTED_FROM_GRADE = "graded"
COUNTED_FROM_PUBLISHED = "published"
COUNTED_FROM_OBSERVED = "observed"
COUNTED_FROM = (COUNTED_FROM_GRADE, COUNTED_FROM_PUBLISHED, COUNTED_FROM_OBSERVED)
# The events whose duties may count from the first report (the others count from their own
# event: a resolution, an instruction, the duty waited on).
COUNTABLE_FROM_REPORT = (OPENS_ON_GRADE, OPENS_ON_PROPOSAL)


@dataclass(frozen=True)
class Instants:
    """The instants a duty opened now may be counted from: the event that opens it, and the
    incident's first report's publication and observation when known."""

    at: datetime
    published: datetime | None = None
    observed: datetime | None = None

    def of(self, counted_from: str) -> datetime:
        """The instant a duty counted from `counted_from` starts; the event's own when the
        first report's is not known (an incident graded before its report was recorded)."""
        if counted_from == COUNTED_FROM_PUBLISHED and self.published is not None:
            return self.published
        if counted_from == COUNTED_FROM_OBSERVED and self.observed is not None:
            return self.observed
        return self.at


class MetBy(FrozenModel):
    """An action that meets a duty without anyone filing it: a statement of this kind
    published on the incident (an online reply meets 网上答复)."""

    statement_published: StatementKind


class SameDay(FrozenModel):
    """当日回复: due at `due` local time on the day of grading; a case graded at or after
    `cutoff` (late evening) is due at `rollover_to` the next day instead."""

    due: ClockTime
    cutoff: ClockTime
    rollover_to: ClockTime

    @model_validator(mode="after")
    def _cutoff_not_after_due(self) -> SameDay:
        if self.cutoff > self.due:
            raise ValueError("cutoff must not be later than due, or some deadlines would be past")
        return self

    def deadline(self, counted_from: datetime, tz: ZoneInfo) -> datetime:
        local = counted_from.astimezone(tz)
        day: date = local.date()
        at = self.due
        if local.time() >= self.cutoff:
            day, at = day + timedelta(days=1), self.rollover_to
        return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


class ObligationRule(FrozenModel):
    kind: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    title: str = Field(min_length=1)
    owner_role: Role
    recipients: tuple[Role, ...] = Field(min_length=1)
    within: Duration | None = None
    same_day: SameDay | None = None
    alert_roles: tuple[Role, ...] | None = None
    # A duty that recurs while the incident is open (动态跟踪): each round met or missed
    # opens the next, due this long after the last round's deadline.
    every: Duration | None = None
    # A duty that waits on another of the same level or category (预案 orders them): it
    # opens when that duty of the incident is fulfilled, its clock counted from then, and
    # never if that duty is missed without being filed, or closed.
    after: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*$")
    # `resolved`: the duty opens when the incident is resolved (not dismissed), its clock
    # counted from the resolution, and resolving does not close it; `graded` (the default)
    # as every other duty. Checked by the policy, which names the entry.
    opens_on: str = OPENS_ON_GRADE
    # Where its clock starts (COUNTED_FROM): only for a duty opened with the grade or the
    # proposal; the others count from their own event.
    counted_from: str = COUNTED_FROM_GRADE
    # An action that meets it (the duty is fulfilled when it happens); a person may still
    # file it by hand.
    met_by: MetBy | None = None
    # Who decides whether a duty `opens_on: decided` is owed (and only for such a duty).
    decided_by: Role | None = None

    @property
    def at_closure(self) -> bool:
        return self.opens_on == OPENS_ON_RESOLUTION

    @model_validator(mode="after")
    def _one_deadline(self) -> ObligationRule:
        if (self.within is None) == (self.same_day is None):
            raise ValueError(f"{self.kind}: give exactly one of 'within' or 'same_day'")
        return self

    def deadline(self, counted_from: datetime, tz: ZoneInfo) -> datetime:
        if self.same_day is not None:
            return self.same_day.deadline(counted_from, tz)
        assert self.within is not None
        return counted_from + self.within


ROUTED = "@"  # a routed recipient is written `role@unit`: that role's holders in that unit


def routed_recipient(role: str, unit: str) -> str:
    return f"{role}{ROUTED}{unit}"


def split_recipient(recipient: str) -> tuple[str, str | None]:
    """A recipient's role and, for one a route added (`role@unit`), its unit."""
    role, _, unit = recipient.partition(ROUTED)
    return role, unit or None


class RouteRecipient(FrozenModel):
    role: Role
    unit: str = Field(min_length=1, description="a unit id of the directory")


@dataclass(frozen=True)
class ReportSource:
    """Where a report came from, as routing reads it."""

    source_type: str
    source_name: str


class Route(FrozenModel):
    """A routing rule: a report from a matching source (its `source_type`, and its
    `source_name` searched with the regular expression `source_name`) adds `recipients`, a
    role at a named unit each, to the incident's duties (those of `kinds`; all if none),
    e.g. 地方领导留言板 items go to the 督办室 of whoever's board it is (seed 003 第十七条)."""

    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: str = Field(min_length=1)
    source_type: SourceType
    source_name: str | None = Field(default=None, min_length=1)
    recipients: tuple[RouteRecipient, ...] = Field(min_length=1)
    kinds: tuple[str, ...] = ()

    @field_validator("source_name")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
        return pattern

    def matches(self, source: ReportSource) -> bool:
        if source.source_type != self.source_type.value:
            return False
        return (
            self.source_name is None or re.search(self.source_name, source.source_name) is not None
        )

    def applies_to(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


class ObligationPolicy(FrozenModel):
    """What each level and category obliges: the duties part of config/obligations.yaml."""

    version: str
    alert_roles: tuple[Role, ...] = Field(min_length=1)
    levels: dict[Level, tuple[ObligationRule, ...]]
    categories: dict[Category, tuple[ObligationRule, ...]] = Field(default_factory=dict)
    # Recipients by a report's source (seed 003 第十七条), in addition to each duty's own.
    routing: tuple[Route, ...] = ()

    @model_validator(mode="after")
    def _routes_sound(self) -> ObligationPolicy:
        problems: list[str] = []
        kinds = {rule.kind for _, rule in self._all_rules()}
        seen: set[str] = set()
        for n, route in enumerate(self.routing):
            entry = f"routing.{n} ({route.id})"
            if route.id in seen:
                problems.append(f"{entry}.id: {route.id!r} is the id of an earlier route")
            seen.add(route.id)
            problems += [
                f"{entry}.kinds: {kind!r} is not a duty of this file"
                for kind in route.kinds
                if kind not in kinds
            ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def routed(self, kind: str, sources: Sequence[ReportSource]) -> tuple[str, ...]:
        """The recipients the routes add to a duty of this kind, for reports from these
        sources (`role@unit`, each once, in the routes' order)."""
        found = [
            routed_recipient(r.role.value, r.unit)
            for route in self.routing
            if route.applies_to(kind) and any(route.matches(s) for s in sources)
            for r in route.recipients
        ]
        return tuple(dict.fromkeys(found))

    def decided_rule(
        self, kind: str, level: Level | None, category: Category | None
    ) -> ObligationRule | None:
        """The duty of this kind that opens on a decision at the level and category."""
        found = self.rules_on(level, category, OPENS_ON_DECISION) if level is not None else []
        return next((rule for rule in found if rule.kind == kind), None)

    def met_by_statement(self, kind: str) -> str | None:
        """The statement kind whose publication meets a duty of this kind, if any."""
        rule = self.rule(kind)
        return None if rule is None or rule.met_by is None else str(rule.met_by.statement_published)

    @model_validator(mode="after")
    def _kinds_unique(self) -> ObligationPolicy:
        # A kind names one duty of an incident: two rules with one kind could never both open.
        seen: dict[str, str] = {}
        for where, rule in self._all_rules():
            if rule.kind in seen:
                raise ValueError(f"kind {rule.kind!r} appears in {seen[rule.kind]} and {where}")
            seen[rule.kind] = where
        return self

    @model_validator(mode="after")
    def _opens_on_known(self) -> ObligationPolicy:
        # A duty opened at closure has no grade to wait on and no open incident to recur in:
        # `after` and `every` belong to duties opened with the grade.
        problems: list[str] = []
        for place, rules in self._lists():
            closure = {rule.kind for rule in rules if rule.opens_on == OPENS_ON_RESOLUTION}
            for rule in rules:
                entry = f"{place} ({rule.kind})"
                if rule.opens_on not in OPENS_ON:
                    problems.append(
                        f"{entry}.opens_on: {rule.opens_on!r} is not one of "
                        f"{', '.join(OPENS_ON)} (the default is {OPENS_ON_GRADE})"
                    )
                elif rule.at_closure and rule.after is not None:
                    problems.append(
                        f"{entry}.after: a duty that opens on {OPENS_ON_RESOLUTION} cannot wait "
                        "on another duty (it opens when the incident is resolved)"
                    )
                elif rule.at_closure and rule.every is not None:
                    problems.append(
                        f"{entry}.every: a duty that opens on {OPENS_ON_RESOLUTION} cannot "
                        "recur (the incident is no longer open)"
                    )
                decided = rule.opens_on == OPENS_ON_DECISION
                if decided and rule.decided_by is None:
                    problems.append(
                        f"{entry}.decided_by: a duty that opens on {OPENS_ON_DECISION} names "
                        "the role that decides it"
                    )
                elif not decided and rule.decided_by is not None:
                    problems.append(
                        f"{entry}.decided_by: only for a duty that opens on {OPENS_ON_DECISION} "
                        f"(this one opens on {rule.opens_on})"
                    )
                if decided and rule.after is not None:
                    problems.append(
                        f"{entry}.after: a duty that opens on {OPENS_ON_DECISION} cannot wait "
                        "on another duty (it opens when it is decided)"
                    )
                if rule.counted_from not in COUNTED_FROM:
                    problems.append(
                        f"{entry}.counted_from: {rule.counted_from!r} is not one of "
                        f"{', '.join(COUNTED_FROM)} (the default is {COUNTED_FROM_GRADE})"
                    )
                elif rule.counted_from != COUNTED_FROM_GRADE and (
                    rule.after is not None or rule.opens_on not in COUNTABLE_FROM_REPORT
                ):
                    problems.append(
                        f"{entry}.counted_from: {rule.counted_from!r} is for a duty that opens "
                        f"on {' or '.join(COUNTABLE_FROM_REPORT)} and waits on no other; this "
                        "one counts from its own event"
                    )
                if rule.after in closure:
                    problems.append(
                        f"{entry}.after: {rule.after!r} opens on {OPENS_ON_RESOLUTION}, when "
                        "the incident is no longer open: nothing can open after it"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _after_known_and_acyclic(self) -> ObligationPolicy:
        # `after` names a duty of the same list; duties waiting on each other would never open.
        problems: list[str] = []
        for place, rules in self._lists():
            kinds = [rule.kind for rule in rules]
            waits = {rule.kind: rule.after for rule in rules if rule.after is not None}
            for kind, after in waits.items():
                if after not in kinds:
                    problems.append(
                        f"{place} ({kind}).after: {after!r} is not a duty of {place} "
                        f"(its duties: {', '.join(kinds)})"
                    )
            done: set[str] = set()
            for start in kinds:
                path: list[str] = []
                node: str | None = start
                while node is not None and node in waits and node not in done:
                    if node in path:
                        cycle = [*path[path.index(node) :], node]
                        problems.append(
                            f"{place} ({', '.join(cycle[:-1])}).after: these duties wait on "
                            f"each other, so none would ever open: {' → '.join(cycle)}"
                        )
                        break
                    path.append(node)
                    node = waits[node]
                done.update(path)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _lists(self) -> Iterable[tuple[str, tuple[ObligationRule, ...]]]:
        for level, rules in self.levels.items():
            yield f"levels.{int(level)}", rules
        for category, rules in self.categories.items():
            yield f"categories.{category}", rules

    def _all_rules(self) -> Iterable[tuple[str, ObligationRule]]:
        for place, rules in self._lists():
            for rule in rules:
                yield place, rule

    def entries(self) -> Iterable[tuple[str, ObligationRule]]:
        """Each duty with where it is written (`levels.1`, `categories.inquiry`)."""
        return self._all_rules()

    def rule(self, kind: str) -> ObligationRule | None:
        return next((rule for _, rule in self._all_rules() if rule.kind == kind), None)

    def closure_kinds(self) -> frozenset[str]:
        """The kinds of the duties that open when an incident is resolved."""
        return frozenset(rule.kind for _, rule in self._all_rules() if rule.at_closure)

    def dependents(self, kind: str) -> list[ObligationRule]:
        """The duties that open when a duty of this kind is fulfilled."""
        return [rule for _, rule in self._all_rules() if rule.after == kind]

    def rules_for(
        self, level: Level | None, category: Category | None, *, at_closure: bool = False
    ) -> list[ObligationRule]:
        """Every duty of the level and category that opens with the grade, those waiting on
        another included; with `at_closure`, those that open when it is resolved instead."""
        return self.rules_on(level, category, OPENS_ON_RESOLUTION if at_closure else OPENS_ON_GRADE)

    def rules_on(
        self, level: Level | None, category: Category | None, opens_on: str
    ) -> list[ObligationRule]:
        """Every duty of the level and category that opens on `opens_on` (see OPENS_ON)."""
        by_level = list(self.levels.get(level, ())) if level is not None else []
        by_category = list(self.categories.get(category, ())) if category is not None else []
        return [rule for rule in by_level + by_category if rule.opens_on == opens_on]


class StepRule(FrozenModel):
    role: Role
    unit: str | None = Field(
        default=None,
        description=f"a unit id, or {INCIDENT_UNIT!r} for each unit the incident concerns",
    )


class ApprovalPolicy(FrozenModel):
    """Who clears a statement at each level, in order, from config/approval.yaml."""

    version: str
    levels: dict[Level, tuple[StepRule, ...]]

    @model_validator(mode="after")
    def _complete(self) -> ApprovalPolicy:
        # Which levels there are is the plan's: the plan loader checks each has a chain.
        if not self.levels:
            raise ValueError("levels: at least one level needs a chain")
        for level, steps in self.levels.items():
            if not steps:
                raise ValueError(f"levels.{int(level)}: every level needs at least one step")
        return self

    def roles(self) -> set[Role]:
        return {rule.role for rules in self.levels.values() for rule in rules}


@dataclass(frozen=True)
class PlanStamp:
    """A plan version (its id and version), recorded on what was decided under it: every
    grade event, every duty opened."""

    plan_id: str | None = None
    plan_version: str | None = None

    def fields(self) -> dict[str, str | None]:
        return {"plan_id": self.plan_id, "plan_version": self.plan_version}
