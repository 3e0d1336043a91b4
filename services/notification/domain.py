"""Reporting obligations (报送/处置义务), their deadlines, and the record of one notification.

The rules only: no I/O, no environment, no clock (time is passed in), no HTTP. The
obligations policy here is the duties part of config/obligations.yaml; how duties reach
people (channels, endpoints, secrets) is `delivery.py`'s, loaded beside it at start.

An incident's obligations form one aggregate, the `Ledger`, folded from its stream
`obligations-{incident_id}`: which duties are owed, by when, and whether each was met,
missed or closed. Each notification sent about a duty has a stream of its own, folded into
a `Notification`: sent or failed, then acknowledged. Every decision returns the event
payloads that record it (the caller saves them) or raises a domain error with its code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from shared.errors import Conflict, Forbidden, Invalid
from shared.events import (
    Category,
    DeadlineMissed,
    DutyDecided,
    Envelope,
    EventPayload,
    Level,
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
    ObligationState,
)
from shared.identity import Role
from shared.plan_rules import (
    COUNTABLE_FROM_REPORT,
    OPENS_ON_PROPOSAL,
    Instants,
    ObligationPolicy,
    ObligationRule,
    PlanStamp,
)
from shared.visibility import hidden


def stream_id(incident_id: str) -> str:
    return f"obligations-{incident_id}"


def notification_stream(notification_id: str) -> str:
    # A stream per notification: its record never contends with the incident's duties.
    return f"notification-{notification_id}"


# --------------------------------------------------------------------------- errors


class AlreadyFulfilled(Conflict):
    code = "already_fulfilled"


class ObligationAlreadyClosed(Conflict):
    code = "obligation_closed"


class NotObligationOwner(Forbidden):
    """Only the duty's owner role, the leading group or an admin files a duty."""

    code = "not_obligation_owner"


class NotRecipient(Forbidden):
    """Only a notification's recipient (or an admin) acknowledges it."""

    code = "not_recipient"


class NotDecider(Forbidden):
    """Only the role a duty names to decide it (`decided_by`) or an admin decides it."""

    code = "not_decider"


class DecisionRefused(Conflict):
    """A decision the incident cannot take now: not graded, ended, or the duty owed already."""

    code = "decision_refused"


class AlreadyAcknowledged(Conflict):
    code = "already_acknowledged"


class NotDelivered(Conflict):
    """A notification not (or not yet) delivered cannot have been seen."""

    code = "not_delivered"


# --------------------------------------------------------------------------- the policy


# SameDay, ObligationRule and ObligationPolicy: shared/plan_rules.py (the plan view and
# grading's what-if read the same duties).


UNSTAMPED = PlanStamp()


# --------------------------------------------------------------------------- obligations


LIVE_STATES = frozenset({ObligationState.OPEN, ObligationState.MISSED, ObligationState.FULFILLED})
OWED_STATES = frozenset({ObligationState.OPEN, ObligationState.MISSED})


def seconds_left(state: ObligationState, deadline: datetime, now: datetime) -> float | None:
    """Time left to meet a duty still owed (negative once overdue); None once settled."""
    if state not in OWED_STATES:
        return None
    return (deadline - now).total_seconds()


@dataclass(frozen=True)
class Obligation:
    obligation_id: str
    kind: str
    title: str
    level: Level
    owner_role: str
    recipients: tuple[str, ...]
    alert_roles: tuple[str, ...]
    counted_from: datetime
    deadline: datetime
    opened_event_id: uuid.UUID
    correlation_id: uuid.UUID
    state: ObligationState = ObligationState.OPEN
    missed: bool = False
    fulfilled_by: str | None = None
    fulfilled_at: datetime | None = None
    reference: str | None = None
    late: bool = False
    closed_reason: str | None = None
    plan_id: str | None = None
    plan_version: str | None = None

    @property
    def stamp(self) -> PlanStamp:
        return PlanStamp(self.plan_id, self.plan_version)

    def may_be_filed_by(self, roles: Iterable[Role]) -> bool:
        """Its owner role, the leading group or an admin files a duty."""
        held = {r.value for r in roles}
        return bool(held & {self.owner_role, Role.LEADER.value, Role.ADMIN.value})


def _opened(_: Obligation | None, event: Envelope, p: ObligationOpened) -> Obligation:
    return Obligation(
        obligation_id=p.obligation_id,
        kind=p.kind,
        title=p.title,
        level=p.level,
        owner_role=p.owner_role,
        recipients=p.recipients,
        alert_roles=p.alert_roles,
        counted_from=p.counted_from,
        deadline=p.deadline,
        opened_event_id=event.event_id,
        correlation_id=event.correlation_id,
        plan_id=p.plan_id,
        plan_version=p.plan_version,
    )


def _fulfilled(o: Obligation | None, _: Envelope, p: ObligationFulfilled) -> Obligation:
    assert o is not None
    return replace(
        o,
        state=ObligationState.FULFILLED,
        fulfilled_by=p.fulfilled_by,
        fulfilled_at=p.fulfilled_at,
        reference=p.reference,
        late=p.late,
    )


def _missed(o: Obligation | None, _: Envelope, p: DeadlineMissed) -> Obligation:
    assert o is not None
    return replace(o, state=ObligationState.MISSED, missed=True)


def _closed(o: Obligation | None, _: Envelope, p: ObligationClosed) -> Obligation:
    assert o is not None
    return replace(o, state=ObligationState.CLOSED, closed_reason=p.reason)


# Each event of an obligations stream and what it makes of the one duty it names.
_EVOLVE: dict[type[EventPayload], Callable[[Obligation | None, Envelope, Any], Obligation]] = {
    ObligationOpened: _opened,
    ObligationFulfilled: _fulfilled,
    DeadlineMissed: _missed,
    ObligationClosed: _closed,
}


def evolve_obligation(current: Obligation | None, event: Envelope) -> Obligation:
    """One duty after one event of its incident's obligations stream (the ledger's fold,
    and the read model's)."""
    return _EVOLVE[type(event.payload)](current, event, event.payload)


def obligation_of(event: Envelope) -> str:
    """The duty an obligations-stream event is about."""
    obligation_id: str = getattr(event.payload, "obligation_id")  # noqa: B009
    return obligation_id


@dataclass(frozen=True)
class Ledger:
    """One incident's obligations, as its stream says."""

    incident_id: str
    version: int = 0
    obligations: dict[str, Obligation] = field(default_factory=dict)
    # The decisions recorded on duties `opens_on: decided`, in order.
    decisions: tuple[DutyDecided, ...] = ()

    @staticmethod
    def evolve(ledger: Ledger | None, event: Envelope) -> Ledger:
        return (ledger or Ledger(event.incident_id)).apply(event)

    def apply(self, event: Envelope) -> Ledger:
        if isinstance(event.payload, DutyDecided):
            decisions = (*self.decisions, event.payload)
            return replace(self, version=event.stream_version, decisions=decisions)
        key = obligation_of(event)
        obligations = {**self.obligations, key: evolve_obligation(self.obligations.get(key), event)}
        return Ledger(self.incident_id, event.stream_version, obligations, self.decisions)

    def get(self, obligation_id: str) -> Obligation:
        try:
            return self.obligations[obligation_id]
        except KeyError:
            raise hidden("obligation", obligation_id) from None

    def live_kinds(self) -> set[str]:
        return {o.kind for o in self.obligations.values() if o.state in LIVE_STATES}

    # decisions ------------------------------------------------------------------------

    def open_for_grade(
        self,
        policy: ObligationPolicy,
        *,
        level: Level,
        category: Category | None,
        graded_at: datetime,
        tz: ZoneInfo,
        include_level_duties: bool,
        stamp: PlanStamp = UNSTAMPED,
        first_report: Instants | None = None,
    ) -> list[ObligationOpened]:
        """Open the duties a grading creates that are not already owed or met.

        `include_level_duties` is false when the level went down: a milder level owes
        nothing new, while a category's duties (e.g. the same-day reply) still apply. A
        duty that waits on another (`after`) opens when that one is fulfilled, not here.
        A duty counted from the first report's publication or observation (`counted_from`)
        takes it from `first_report` (the grading's own time when not known).
        """
        rules = policy.rules_for(level if include_level_duties else None, category)
        at = _at(graded_at, first_report)
        return _open(policy, rules, level, at, tz, skip=self.live_kinds(), stamp=stamp)

    def open_for_reopen(
        self,
        policy: ObligationPolicy,
        *,
        level: Level | None,
        category: Category | None,
        reopened_at: datetime,
        tz: ZoneInfo,
        stamp: PlanStamp = UNSTAMPED,
    ) -> list[ObligationOpened]:
        """A reopened incident owes its level's and category's duties afresh, counted from
        the reopening: resolving closed what was pending, and a report met before then says
        nothing about the incident flaring up again. A duty still owed (open or missed) is
        not opened twice; an incident never graded owes nothing yet. A duty that waits on
        another opens again when that one is fulfilled again.
        """
        if level is None:
            return []
        rules = policy.rules_for(level, category)
        return _open(policy, rules, level, reopened_at, tz, skip=self._owed_kinds(), stamp=stamp)

    def open_at_closure(
        self,
        policy: ObligationPolicy,
        *,
        level: Level | None,
        category: Category | None,
        resolved_at: datetime,
        tz: ZoneInfo,
        stamp: PlanStamp = UNSTAMPED,
    ) -> list[ObligationOpened]:
        """The duties of the level and category that open when the incident is resolved
        (`opens_on: resolved`: 处置结果上报, 总结评估), counted from the resolution. One
        still owed from an earlier resolution is not opened twice; an incident never graded
        owes nothing."""
        if level is None:
            return []
        rules = policy.rules_for(level, category, at_closure=True)
        return _open(policy, rules, level, resolved_at, tz, skip=self._owed_kinds(), stamp=stamp)

    def open_on(
        self,
        policy: ObligationPolicy,
        opens_on: str,
        *,
        level: Level,
        category: Category | None,
        at: datetime,
        tz: ZoneInfo,
        stamp: PlanStamp = UNSTAMPED,
        first_report: Instants | None = None,
    ) -> list[ObligationOpened]:
        """The duties of the level and category that open on a grade's proposal (`opens_on:
        proposed`) or a leader's signed instruction (`instructed`), counted from it (a
        proposal's, from the first report where `counted_from` says so). A proposal raised
        again opens none already owed or met; another signed instruction opens afresh what
        the last one's duties no longer owe."""
        rules = policy.rules_on(level, category, opens_on)
        skip = self.live_kinds() if opens_on == OPENS_ON_PROPOSAL else self._owed_kinds()
        return _open(policy, rules, level, _at(at, first_report), tz, skip=skip, stamp=stamp)

    def decide(
        self,
        policy: ObligationPolicy,
        *,
        kind: str,
        decision: bool,
        reason: str,
        by: str,
        level: Level,
        category: Category | None,
    ) -> DutyDecided:
        """Record whether a duty `opens_on: decided` of the incident's level and category is
        owed. Yes to a duty already owed or met is refused (409); no is always recorded."""
        rule = policy.decided_rule(kind, level, category)
        if rule is None:
            raise Invalid(
                "kind",
                f"not a duty opened by a decision at level {level} and category {category}",
                "not_decided_duty",
                message=f"“{kind}”不是本事件级别、类别下须经决定开启的义务",
            )
        if decision and kind in self.live_kinds():
            raise DecisionRefused(
                f"“{rule.title}”已开启，无需再决定",
                {"kind": kind, "incident_id": self.incident_id},
            )
        return DutyDecided(
            kind=kind,
            title=rule.title,
            decision=decision,
            reason=reason,
            decided_by=by,
            level=level,
        )

    def open_decided(
        self,
        decided: DutyDecided,
        policy: ObligationPolicy,
        *,
        category: Category | None,
        at: datetime,
        tz: ZoneInfo,
        stamp: PlanStamp = UNSTAMPED,
    ) -> list[ObligationOpened]:
        """The duty a yes opens, counted from the decision; nothing for a no."""
        rule = policy.decided_rule(decided.kind, decided.level, category)
        if not decided.decision or rule is None or decided.kind in self.live_kinds():
            return []
        return [_opening(policy, rule, decided.level, at, tz, stamp)]

    def close_at_reopen(self, policy: ObligationPolicy, reason: str) -> list[ObligationClosed]:
        """Reopening ends the duties its resolution opened that are still open: the matter
        is not over, and the next resolution owes them afresh."""
        return [
            ObligationClosed(obligation_id=o.obligation_id, reason=reason)
            for o in self.obligations.values()
            if o.state is ObligationState.OPEN
            and (rule := policy.rule(o.kind)) is not None
            and rule.at_closure
        ]

    def _owed_kinds(self) -> set[str]:
        return {o.kind for o in self.obligations.values() if o.state in OWED_STATES}

    def open_after(
        self, obligation_id: str, policy: ObligationPolicy, tz: ZoneInfo
    ) -> list[ObligationOpened]:
        """The duties waiting on this one, now that it is fulfilled (late or not), counted
        from its fulfilment. One already owed, or opened since this one was, is not opened
        twice; a duty missed and never filed, or closed, opens nothing."""
        done = self.get(obligation_id)
        if done.state is not ObligationState.FULFILLED or done.fulfilled_at is None:
            return []
        return [
            _opening(policy, rule, done.level, done.fulfilled_at, tz, done.stamp)
            for rule in policy.dependents(done.kind)
            if not self._holds(rule.kind, since=done.counted_from)
        ]

    def _holds(self, kind: str, *, since: datetime) -> bool:
        """A duty of this kind still owed, or met and counted from `since` on."""
        return any(
            o.kind == kind
            and (o.state in OWED_STATES or (o.state in LIVE_STATES and o.counted_from >= since))
            for o in self.obligations.values()
        )

    def close_owed(self, reason: str, *, keep: Collection[str] = ()) -> list[ObligationClosed]:
        """Resolving or dismissing ends what is still pending but the kinds kept (those owed
        at closure, which resolving does not end); missed duties stay missed."""
        return [
            ObligationClosed(obligation_id=o.obligation_id, reason=reason)
            for o in self.obligations.values()
            if o.state is ObligationState.OPEN and o.kind not in keep
        ]

    def fulfil(
        self,
        obligation_id: str,
        *,
        by: str,
        at: datetime,
        reference: str | None,
        statement_id: str | None = None,
    ) -> ObligationFulfilled:
        """A duty met: filed by a person, or (`statement_id`) met by publishing that
        statement, as the duty's `met_by` says."""
        obligation = self.get(obligation_id)
        if obligation.state is ObligationState.FULFILLED:
            raise AlreadyFulfilled(
                f"“{obligation.title}”已由 {obligation.fulfilled_by} 报送，不能重复报送",
                {
                    "obligation_id": obligation_id,
                    "state": obligation.state.value,
                    "fulfilled_at": obligation.fulfilled_at,
                },
            )
        if obligation.state is ObligationState.CLOSED:
            raise ObligationAlreadyClosed(
                f"“{obligation.title}”已关闭（{obligation.closed_reason}），无需报送",
                {"obligation_id": obligation_id, "state": obligation.state.value},
            )
        if at < obligation.counted_from:
            raise Invalid(
                "fulfilled_at",
                f"before the obligation was counted from {obligation.counted_from.isoformat()}",
                "before_counted_from",
                message=f"fulfilled_at 不能早于“{obligation.title}”的起算时间",
            )
        return ObligationFulfilled(
            obligation_id=obligation_id,
            fulfilled_by=by,
            fulfilled_at=at,
            reference=reference,
            # fulfilled_at is the filer's word; a miss already on record is not, so a duty
            # filed after its miss is late whatever earlier time is claimed (考评).
            late=obligation.missed or at > obligation.deadline,
            met_by=None if statement_id is None else MET_BY_STATEMENT,
            statement_id=statement_id,
        )

    def met_by_publication(
        self, statement_kind: str, at: datetime, met_by: Callable[[Obligation], str | None]
    ) -> list[str]:
        """The duties still owed (open, or missed and not yet filed) that publishing a
        statement of this kind at `at` meets: those whose `met_by` (as `met_by` reads it
        from the table each was opened from) names the kind and counted from `at` or
        before. A statement published before a duty opened does not meet it."""
        return [
            o.obligation_id
            for o in self.obligations.values()
            if o.state in OWED_STATES and o.counted_from <= at and met_by(o) == statement_kind
        ]

    def next_round(self, obligation_id: str, policy: ObligationPolicy) -> ObligationOpened | None:
        """The next round of a recurring duty whose current round was just met or missed.

        Counted from the last deadline, not from when it was met, so the rhythm the policy
        sets (every N hours from grading) holds however early or late a round was filed.
        """
        obligation = self.get(obligation_id)
        rule = policy.rule(obligation.kind)
        if rule is None or rule.every is None:
            return None
        if any(
            o.kind == obligation.kind and o.state is ObligationState.OPEN
            for o in self.obligations.values()
        ):
            return None  # a missed round filed late: its successor is already owed
        return ObligationOpened(
            obligation_id=uuid.uuid4().hex,
            kind=obligation.kind,
            title=obligation.title,
            level=obligation.level,
            owner_role=obligation.owner_role,
            recipients=obligation.recipients,
            counted_from=obligation.deadline,
            deadline=obligation.deadline + rule.every,
            alert_roles=obligation.alert_roles,
            plan_id=obligation.plan_id,
            plan_version=obligation.plan_version,
        )

    def missed_by(self, obligation_id: str, now: datetime) -> DeadlineMissed | None:
        """The miss to record if this duty is still open past its deadline, else nothing."""
        obligation = self.obligations.get(obligation_id)
        if obligation is None or obligation.state is not ObligationState.OPEN:
            return None
        if now < obligation.deadline:
            return None
        return DeadlineMissed(
            obligation_id=obligation_id,
            kind=obligation.kind,
            level=obligation.level,
            deadline=obligation.deadline,
            alerted_roles=obligation.alert_roles,
        )


MET_BY_STATEMENT = "statement_published"  # ObligationFulfilled.met_by of a publication


def _at(at: datetime, first_report: Instants | None) -> Instants:
    if first_report is None:
        return Instants(at)
    return Instants(at, first_report.published, first_report.observed)


def _open(
    policy: ObligationPolicy,
    rules: Iterable[ObligationRule],
    level: Level,
    counted_from: datetime | Instants,
    tz: ZoneInfo,
    *,
    skip: set[str],
    stamp: PlanStamp,
) -> list[ObligationOpened]:
    """The duties a grading, reopening or resolution opens: all but those skipped and those
    waiting on another duty (they open when it is fulfilled: `Ledger.open_after`)."""
    return [
        _opening(policy, rule, level, counted_from, tz, stamp)
        for rule in rules
        if rule.kind not in skip and rule.after is None
    ]


def _opening(
    policy: ObligationPolicy,
    rule: ObligationRule,
    level: Level,
    at: datetime | Instants,
    tz: ZoneInfo,
    stamp: PlanStamp,
) -> ObligationOpened:
    """A duty opened now, counted from the event (`at`) or, where its `counted_from`
    says so, from the first report's instant `at` knows."""
    counted_from = at
    if isinstance(at, Instants):
        counted_from = at.of(rule.counted_from) if rule.opens_on in COUNTABLE_FROM_REPORT else at.at
    assert isinstance(counted_from, datetime)
    return ObligationOpened(
        obligation_id=uuid.uuid4().hex,
        kind=rule.kind,
        title=rule.title,
        level=level,
        owner_role=rule.owner_role.value,
        recipients=tuple(r.value for r in rule.recipients),
        counted_from=counted_from,
        deadline=rule.deadline(counted_from, tz),
        alert_roles=tuple(r.value for r in (rule.alert_roles or policy.alert_roles)),
        plan_id=stamp.plan_id,
        plan_version=stamp.plan_version,
    )


# --------------------------------------------------------------------------- notifications


Outcome = NotificationSent | NotificationFailed


@dataclass(frozen=True)
class Notification:
    """One message about a duty, as its stream says: sent or failed, then acknowledged."""

    notification_id: str
    version: int = 0
    obligation_id: str | None = None
    recipient: str | None = None
    sent: bool = False
    failed: bool = False
    acknowledged_by: str | None = None

    @staticmethod
    def evolve(current: Notification | None, event: Envelope) -> Notification:
        p = event.payload
        assert isinstance(p, NotificationSent | NotificationFailed | NotificationAcknowledged)
        n = current or Notification(p.notification_id)
        after = replace(n, version=event.stream_version, obligation_id=p.obligation_id)
        if isinstance(p, NotificationSent):
            return replace(after, sent=True, recipient=p.recipient)
        if isinstance(p, NotificationFailed):
            return replace(after, failed=True, recipient=p.recipient)
        return replace(after, acknowledged_by=p.acknowledged_by)

    def record(self, outcome: Outcome) -> list[Outcome]:
        """The outcome of sending it, unless one is on record already: a resend after a
        lost lease reached the receiver again, but the record says it once."""
        return [] if self.sent or self.failed else [outcome]

    def acknowledge(self, by: str) -> NotificationAcknowledged:
        if self.acknowledged_by is not None:
            raise AlreadyAcknowledged(
                "该通知已确认",
                {"notification_id": self.notification_id, "acknowledged_by": self.acknowledged_by},
            )
        if not self.sent:
            state = "failed" if self.failed else "pending"
            raise NotDelivered(
                "该通知尚未送达，不能确认",
                {"notification_id": self.notification_id, "state": state},
            )
        assert self.obligation_id is not None
        return NotificationAcknowledged(
            notification_id=self.notification_id,
            obligation_id=self.obligation_id,
            acknowledged_by=by,
        )
