"""The duties and clearance chains of a plan, as its policy files state them: the models of
obligations.yaml (duties per level and category, with their deadlines) and approval.yaml
(who clears a statement, per level). Pure: the notification and statement services decide
with them, and grading's plan view and what-if read the same rules (shared/plan.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator

from shared.events import Category, Level
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
OPENS_ON = (OPENS_ON_GRADE, OPENS_ON_RESOLUTION, OPENS_ON_PROPOSAL, OPENS_ON_INSTRUCTION)


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


class ObligationPolicy(FrozenModel):
    """What each level and category obliges: the duties part of config/obligations.yaml."""

    version: str
    alert_roles: tuple[Role, ...] = Field(min_length=1)
    levels: dict[Level, tuple[ObligationRule, ...]]
    categories: dict[Category, tuple[ObligationRule, ...]] = Field(default_factory=dict)

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
