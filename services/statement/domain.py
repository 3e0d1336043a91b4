"""Statements (通稿/回复稿) and their approval chains. Pure: no I/O.

A statement is one aggregate folded from its stream: its versions, the chain its current
version must pass for the incident's level, the approvals given (to which version, for
which step, by whom, when), rejections and publications. Only approvals of the current
version count; older ones stay on the record.

The figures of published statements are the incident's official line (口径): a version
that states a published label with another value is flagged at submit, and an approver
clears it only by acknowledging the change with a reason.

Decisions take the caller's plain facts (`Caller`: id, unit, roles) and refuse with the
errors below, each a kind of `shared.errors` with its own code; what HTTP status a kind
answers with is decided elsewhere, once.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from shared.errors import Conflict, Forbidden, Invalid, NotFound
from shared.events import (
    DEFAULT_STATEMENT_KINDS,
    ApprovalStep,
    Envelope,
    Fact,
    FactChangeAcknowledgement,
    FactConflict,
    Level,
    StatementApproved,
    StatementDrafted,
    StatementKind,
    StatementPublished,
    StatementRejected,
    StatementRevised,
    StatementState,
    StatementSubmitted,
    StatementWithdrawn,
)
from shared.identity import Caller, Role
from shared.plan_rules import INCIDENT_UNIT, ApprovalPolicy


def stream_id(statement_id: str) -> str:
    return f"statement-{statement_id}"


# --------------------------------------------------------------------------- refusals


class SelfApproval(Forbidden):
    """Whoever wrote any version of a statement approves or rejects no step of it: the
    author of v1 does not clear the v2 a colleague revised from it."""

    code = "self_approval"


class SameApproverTwice(Forbidden):
    """One person fills at most one step of a chain."""

    code = "same_approver_twice"


class NotYourStep(Forbidden):
    """No step of the chain is the caller's to fill."""

    code = "not_your_step"


class MayNotWithdraw(Forbidden):
    """Only an author of the statement or the office takes a version back."""

    code = "may_not_withdraw"


class OutOfOrder(Conflict):
    """A later step of the chain is the caller's, but an earlier one is not filled yet."""

    code = "out_of_order"


class NotInReview(Conflict):
    """Approving or rejecting a version that is not under review."""

    code = "not_in_review"


class NotSubmittable(Conflict):
    """Submitting a version that is already in the chain, cleared, rejected or withdrawn."""

    code = "not_submittable"


class NotGraded(Conflict):
    """The incident has no level yet, so there is no chain to submit into."""

    code = "not_graded"


class ChainUndetermined(Conflict):
    """The chain names the heads of the incident's units, and none is known yet."""

    code = "chain_undetermined"


class FactChangesUnacknowledged(Conflict):
    """Approving figures that contradict the published line without a reason."""

    code = "fact_changes_unacknowledged"


class NotApproved(Conflict):
    """Publishing a version that is not cleared: `details` name its state and the steps
    still missing."""

    code = "not_approved"


class OutletNotApproved(Conflict):
    code = "outlet_not_approved"


class AlreadyPublished(Conflict):
    """The version is already out on that outlet."""

    code = "already_published"


class NotWithdrawable(Conflict):
    code = "not_withdrawable"


class UnknownVersion(NotFound):
    code = "unknown_version"


class NoOfficialLine(NotFound):
    """Nothing of the incident is published yet."""

    code = "no_official_line"


# --------------------------------------------------------------------------- the policy


# StepRule and ApprovalPolicy: shared/plan_rules.py (the plan view reads them too).


@dataclass(frozen=True)
class ApprovalRules:
    """The approval policy as decisions apply it: the chains of the policy file, and the
    names staff read for their roles (from the catalogue), as in "缺少：宣传部（处置专班）"."""

    policy: ApprovalPolicy
    role_names: Mapping[Role, str]
    # The statement kinds of the plan in force (plan.yaml `statement_kinds`).
    kinds: frozenset[str] = frozenset(DEFAULT_STATEMENT_KINDS)

    def __post_init__(self) -> None:
        unnamed = sorted(r.value for r in self.policy.roles() if r not in self.role_names)
        if unnamed:
            raise ValueError(f"approval policy roles without a name to show: {', '.join(unnamed)}")

    def check_kind(self, kind: StatementKind) -> None:
        """A kind of the plan in force, or a 422 naming the field."""
        if kind not in self.kinds:
            raise Invalid(
                "kind",
                f"{kind!r} is not one of the plan's statement kinds {sorted(self.kinds)}",
                "plan_statement_kind",
            )

    def chain(self, level: Level, unit_ids: Sequence[str]) -> tuple[ApprovalStep, ...]:
        steps: list[ApprovalStep] = []
        if level not in self.policy.levels:  # graded under a plan with other levels
            raise ChainUndetermined(
                f"本预案没有{int(level)}级的审批链，无法确定审批链", {"level": int(level)}
            )
        for rule in self.policy.levels[level]:
            if rule.unit != INCIDENT_UNIT:
                steps.append(ApprovalStep(role=rule.role.value, unit_id=rule.unit))
                continue
            if not unit_ids:
                raise ChainUndetermined(
                    "事件涉及的单位尚未确定，无法确定审批链", {"level": int(level)}
                )
            steps.extend(ApprovalStep(role=rule.role.value, unit_id=u) for u in unit_ids)
        return tuple(steps)

    def describe(self, step: ApprovalStep) -> str:
        try:
            name = self.role_names[Role(step.role)]
        except (ValueError, KeyError):
            name = step.role
        return f"{name}（{step.unit_id}）" if step.unit_id else name


# --------------------------------------------------------------------------- the aggregate


# Why a version in each state cannot take the decision asked for; staff read these.
_NOT_IN_REVIEW = {
    StatementState.DRAFT: "当前版本尚未提交审批",
    StatementState.APPROVED: "当前版本已审批通过",
    StatementState.REJECTED: "当前版本已被退回",
    StatementState.WITHDRAWN: "当前版本已撤回",
    StatementState.PUBLISHED: "当前版本已发布",
}
_NOT_SUBMITTABLE = {
    StatementState.IN_REVIEW: "当前版本已提交审批",
    StatementState.APPROVED: "当前版本已审批通过",
    StatementState.REJECTED: "当前版本已被退回，请修改后再提交",
    StatementState.WITHDRAWN: "当前版本已撤回，请修改后再提交",
    StatementState.PUBLISHED: "当前版本已发布",
}
_NOT_PUBLISHABLE = {
    StatementState.DRAFT: "当前版本尚未提交审批，不能发布",
    StatementState.REJECTED: "当前版本已被退回，不能发布",
    StatementState.WITHDRAWN: "当前版本已撤回，不能发布",
}
# The states whose chain follows the incident's level: a published version too, since it
# goes out again (to another outlet) only cleared by the chain of the level in force.
_FOLLOWS_THE_LEVEL = (StatementState.IN_REVIEW, StatementState.APPROVED, StatementState.PUBLISHED)
_NOT_WITHDRAWABLE = {
    StatementState.WITHDRAWN: "当前版本已撤回",
    StatementState.PUBLISHED: "当前版本已发布，不能撤回；如需更正请另发澄清说明",
}


@dataclass(frozen=True)
class Version:
    version: int
    title: str
    body: str
    facts: tuple[Fact, ...]
    outlets: tuple[str, ...]
    author: str
    at: datetime


@dataclass(frozen=True)
class Approval:
    version: int
    step: ApprovalStep
    approver: str
    comment: str
    at: datetime
    acknowledgement: FactChangeAcknowledgement | None = None


@dataclass(frozen=True)
class Rejection:
    version: int
    step: ApprovalStep
    approver: str
    comment: str
    at: datetime


@dataclass(frozen=True)
class Submission:
    version: int
    level: Level
    chain: tuple[ApprovalStep, ...]
    reason: str
    at: datetime
    fact_conflicts: tuple[FactConflict, ...] = ()


@dataclass(frozen=True)
class Withdrawal:
    version: int
    withdrawn_by: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class Publication:
    version: int
    outlet: str
    url: str
    published_by: str
    at: datetime


@dataclass(frozen=True)
class StepProgress:
    step: ApprovalStep
    approval: Approval | None


def _fill(chain: Sequence[ApprovalStep], approvals: Iterable[Approval]) -> list[StepProgress]:
    """Each step of `chain` with the approval that fills it. An approval counts for a step
    of the same role and unit, so approvals given before the chain changed (the level
    moved) still count where they fit."""
    unused = list(approvals)
    filled: list[StepProgress] = []
    for step in chain:
        match = next((a for a in unused if a.step == step), None)
        if match is not None:
            unused.remove(match)
        filled.append(StepProgress(step, match))
    return filled


@dataclass(frozen=True)
class Statement:
    """One statement as its stream tells it. `version` is the position of that stream
    (what the next event continues from), not the number of a text: see `current`."""

    statement_id: str
    incident_id: str
    kind: StatementKind
    version: int
    versions: tuple[Version, ...]
    submissions: tuple[Submission, ...] = ()
    approvals: tuple[Approval, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    publications: tuple[Publication, ...] = ()
    withdrawals: tuple[Withdrawal, ...] = ()

    # folding ----------------------------------------------------------------------------

    @classmethod
    def fold(cls, events: Sequence[Envelope]) -> Statement:
        statement: Statement | None = None
        for event in events:
            statement = evolve(statement, event)
        if statement is None:
            raise ValueError("a statement starts with its draft")
        return statement

    def apply(self, event: Envelope) -> Statement:
        p = event.payload
        at = event.occurred_at
        s = replace(self, version=event.stream_version)
        match p:
            case StatementDrafted() | StatementRevised():
                version = Version(p.version, p.title, p.body, p.facts, p.outlets, p.author, at)
                return replace(s, versions=(*s.versions, version))
            case StatementSubmitted():
                submission = Submission(p.version, p.level, p.chain, p.reason, at, p.fact_conflicts)
                return replace(s, submissions=(*s.submissions, submission))
            case StatementApproved():
                approval = Approval(
                    p.version, p.step, p.approver, p.comment, at, p.fact_changes_acknowledged
                )
                return replace(s, approvals=(*s.approvals, approval))
            case StatementRejected():
                rejection = Rejection(p.version, p.step, p.approver, p.comment, at)
                return replace(s, rejections=(*s.rejections, rejection))
            case StatementPublished():
                publication = Publication(p.version, p.outlet, p.url, p.published_by, at)
                return replace(s, publications=(*s.publications, publication))
            case StatementWithdrawn():
                withdrawal = Withdrawal(p.version, p.withdrawn_by, p.reason, at)
                return replace(s, withdrawals=(*s.withdrawals, withdrawal))
        return s

    # reading ----------------------------------------------------------------------------

    @property
    def current(self) -> Version:
        return self.versions[-1]

    def numbered(self, number: int) -> Version:
        """The text of version `number`."""
        for version in self.versions:
            if version.version == number:
                return version
        raise UnknownVersion(
            f"稿件没有第{number}版", {"versions": [v.version for v in self.versions]}
        )

    @property
    def submission(self) -> Submission | None:
        """The chain the current version is under, if it was submitted."""
        return self._submission_of(self.current.version)

    def _submission_of(self, version: int) -> Submission | None:
        for submission in reversed(self.submissions):
            if submission.version == version:
                return submission
        return None

    def _approvals_of(self, version: int) -> list[Approval]:
        return [a for a in self.approvals if a.version == version]

    def progress(self, version: int | None = None) -> list[StepProgress]:
        """Each step of the chain of a version (the current one by default) with the
        approval of that version that fills it."""
        number = self.current.version if version is None else version
        submission = self._submission_of(number)
        if submission is None:
            return []
        return _fill(submission.chain, self._approvals_of(number))

    def missing(self) -> list[ApprovalStep]:
        return [p.step for p in self.progress() if p.approval is None]

    def _unfilled(self, chain: Sequence[ApprovalStep]) -> tuple[ApprovalStep, ...]:
        """The steps of `chain` that the current version's approvals leave open."""
        filled = _fill(chain, self._approvals_of(self.current.version))
        return tuple(p.step for p in filled if p.approval is None)

    @property
    def state(self) -> StatementState:
        version = self.current.version
        if any(p.version == version for p in self.publications):
            return StatementState.PUBLISHED
        if any(w.version == version for w in self.withdrawals):
            return StatementState.WITHDRAWN
        if any(r.version == version for r in self.rejections):
            return StatementState.REJECTED
        if self.submission is None:
            return StatementState.DRAFT
        return StatementState.APPROVED if not self.missing() else StatementState.IN_REVIEW

    # decisions --------------------------------------------------------------------------

    def revise(
        self, *, title: str, body: str, facts: tuple[Fact, ...], outlets: tuple[str, ...], by: str
    ) -> StatementRevised:
        """A new version: the chain starts again for it."""
        return StatementRevised(
            statement_id=self.statement_id,
            version=self.current.version + 1,
            title=title,
            body=body,
            facts=facts,
            outlets=outlets,
            author=by,
        )

    def submit(
        self,
        level: Level | None,
        rules: ApprovalRules,
        unit_ids: Sequence[str],
        official: OfficialLine | None = None,
    ) -> StatementSubmitted:
        """Into the chain of the incident's level, with the figures that contradict the
        published line flagged for the approvers."""
        state = self.state
        if state is not StatementState.DRAFT:
            raise NotSubmittable(_NOT_SUBMITTABLE[state], {"state": state.value})
        if level is None:
            raise NotGraded("事件尚未定级，无法确定审批链；定级后再提交", {"level": None})
        chain = rules.chain(level, unit_ids)
        return StatementSubmitted(
            statement_id=self.statement_id,
            version=self.current.version,
            level=level,
            chain=chain,
            missing=self._unfilled(chain),
            fact_conflicts=fact_conflicts(self.current.facts, official),
        )

    def rechain(
        self, level: Level, rules: ApprovalRules, unit_ids: Sequence[str], reason: str
    ) -> StatementSubmitted | None:
        """The incident's level changed: a statement under review, approved, or already
        published needs the new level's chain (a published one before it goes out again),
        and says what of it its approvals leave open (nothing: it is cleared). None when
        nothing changes."""
        submission = self.submission
        if self.state not in _FOLLOWS_THE_LEVEL:
            return None
        assert submission is not None
        chain = rules.chain(level, unit_ids)
        if chain == submission.chain and level == submission.level:
            return None
        return StatementSubmitted(
            statement_id=self.statement_id,
            version=self.current.version,
            level=level,
            chain=chain,
            missing=self._unfilled(chain),
            reason=reason,
            fact_conflicts=submission.fact_conflicts,
        )

    @property
    def reclearing(self) -> bool:
        """The current version is out, and the level moved since: the new level's chain
        has steps open before it is published again."""
        version = self.current.version
        return (
            self.state is StatementState.PUBLISHED
            and bool(self.missing())
            and not any(r.version == version for r in self.rejections)
        )

    def _step_for(self, caller: Caller, rules: ApprovalRules) -> ApprovalStep:
        """The step this person may act on now (always the first one open), or why not."""
        state = self.state
        if state is not StatementState.IN_REVIEW and not self.reclearing:
            raise NotInReview(_NOT_IN_REVIEW[state], {"state": state.value})
        if caller.id == self.current.author:
            raise SelfApproval("不能审批自己起草的版本", {"author": self.current.author})
        written = [v.version for v in self.versions if v.author == caller.id]
        if written:
            raise SelfApproval(
                f"不能审批自己起草过的稿件（第{'、'.join(map(str, written))}版由本人起草）",
                {"authored_versions": written},
            )
        progress = self.progress()
        if any(p.approval and p.approval.approver == caller.id for p in progress):
            raise SameApproverTwice("同一人不能审批同一审批链中的两个环节")
        pending = [p.step for p in progress if p.approval is None]
        step = pending[0]
        if _fits(caller, step):
            return step
        if any(_fits(caller, later) for later in pending[1:]):
            raise OutOfOrder(
                f"须先由{rules.describe(step)}审批", {"waiting_for": step.model_dump()}
            )
        raise NotYourStep(
            f"当前环节需要{rules.describe(step)}审批", {"waiting_for": step.model_dump()}
        )

    def approve(
        self,
        caller: Caller,
        comment: str,
        rules: ApprovalRules,
        *,
        official: OfficialLine | None = None,
        acknowledgement: str | None = None,
    ) -> StatementApproved:
        """Fill the caller's step. Figures that contradict the published line as it is now
        (it may have moved since the submit) are cleared only with a reason, which goes on
        the record with the figures it covers."""
        step = self._step_for(caller, rules)
        conflicts = fact_conflicts(self.current.facts, official)
        if conflicts and not acknowledgement:
            raise FactChangesUnacknowledged(
                f"本稿数据与已发布口径不一致：{describe_conflicts(conflicts)}；"
                "审批须确认变更并说明理由",
                {"fact_conflicts": [c.model_dump() for c in conflicts]},
            )
        still_missing = tuple(self.missing()[1:])  # the step filled is the first one open
        return StatementApproved(
            statement_id=self.statement_id,
            version=self.current.version,
            step=step,
            approver=caller.id,
            comment=comment,
            fully_approved=not still_missing,
            missing=still_missing,
            fact_changes_acknowledged=(
                FactChangeAcknowledgement(reason=acknowledgement, changes=conflicts)
                if conflicts and acknowledgement
                else None
            ),
        )

    def reject(self, caller: Caller, comment: str, rules: ApprovalRules) -> StatementRejected:
        step = self._step_for(caller, rules)
        return StatementRejected(
            statement_id=self.statement_id,
            version=self.current.version,
            step=step,
            approver=caller.id,
            comment=comment,
        )

    def withdraw(self, caller: Caller, reason: str) -> StatementWithdrawn:
        """The author of any version, or the office, takes the current version back. It
        can then be neither approved nor published; a revision starts it over."""
        if caller.id not in {v.author for v in self.versions} and not caller.has(Role.OFFICE):
            raise MayNotWithdraw("只有起草人或领导小组办公室可以撤回稿件")
        state = self.state
        if state in _NOT_WITHDRAWABLE:
            raise NotWithdrawable(_NOT_WITHDRAWABLE[state], {"state": state.value})
        return StatementWithdrawn(
            statement_id=self.statement_id,
            version=self.current.version,
            withdrawn_by=caller.id,
            reason=reason,
        )

    def _missing_for(
        self, level: Level | None, rules: ApprovalRules, unit_ids: Sequence[str]
    ) -> list[ApprovalStep]:
        """The steps of the chain of `level` that the current version's approvals leave
        open: the submission's own when it was for that level (or none is given), else the
        chain of `level` for the incident's units (the level moved and the re-chain has not
        been recorded yet)."""
        submission = self.submission
        if submission is None or level is None or level == submission.level:
            return self.missing()
        units = list(unit_ids) or [s.unit_id for s in submission.chain if s.unit_id]
        return list(self._unfilled(rules.chain(level, units)))

    def diff(self, from_version: int, to_version: int) -> VersionDiff:
        return diff_versions(self.numbered(from_version), self.numbered(to_version))

    def publish(
        self,
        *,
        outlet: str,
        url: str,
        by: str,
        rules: ApprovalRules,
        level: Level | None = None,
        unit_ids: Sequence[str] = (),
    ) -> StatementPublished:
        """Only the fully approved current version goes out, and only to its outlets. The
        chain is checked again against the incident's level in force (`level`, when the
        caller knows it): a version cleared at a lower level, even one already out, goes
        out again only once the chain of the level now in force is filled."""
        state = self.state
        version = self.current
        missing = self._missing_for(level, rules, unit_ids)
        if state is StatementState.IN_REVIEW or (state in _FOLLOWS_THE_LEVEL and missing):
            missing = missing or self.missing()
            named = "、".join(rules.describe(s) for s in missing)
            message = (
                f"当前版本尚未审批完成，缺少：{named}"
                if state is StatementState.IN_REVIEW
                else f"事件级别已调整，须按现行级别的审批链审批后再发布，缺少：{named}"
            )
            raise NotApproved(
                message, {"state": state.value, "missing": [s.model_dump() for s in missing]}
            )
        if state in _NOT_PUBLISHABLE:
            raise NotApproved(_NOT_PUBLISHABLE[state], {"state": state.value, "missing": []})
        if version.outlets and outlet not in version.outlets:
            raise OutletNotApproved(
                f"发布渠道“{outlet}”不在审批通过的渠道之内：{'、'.join(version.outlets)}",
                {"outlets": list(version.outlets)},
            )
        if any(p.version == version.version and p.outlet == outlet for p in self.publications):
            raise AlreadyPublished(f"当前版本已在“{outlet}”发布", {"outlet": outlet})
        return StatementPublished(
            statement_id=self.statement_id,
            version=version.version,
            outlet=outlet,
            url=url,
            published_by=by,
        )


def evolve(statement: Statement | None, event: Envelope) -> Statement:
    """One event more of a statement's stream; the first one must be its draft."""
    if statement is None:
        first = event.payload
        if not isinstance(first, StatementDrafted):
            raise ValueError(f"a statement starts with its draft, not {event.event_type}")
        statement = Statement(
            statement_id=first.statement_id,
            incident_id=event.incident_id,
            kind=first.kind,
            version=0,
            versions=(),
        )
    return statement.apply(event)


def _fits(caller: Caller, step: ApprovalStep) -> bool:
    # The chain names who clears: an admin account is not a substitute for that authority.
    held = {role.value for role in caller.roles}
    return step.role in held and (step.unit_id is None or step.unit_id == caller.unit)


def draft(
    statement_id: str,
    *,
    kind: StatementKind,
    title: str,
    body: str,
    facts: tuple[Fact, ...],
    outlets: tuple[str, ...],
    by: str,
) -> StatementDrafted:
    return StatementDrafted(
        statement_id=statement_id,
        kind=kind,
        version=1,
        title=title,
        body=body,
        facts=facts,
        outlets=outlets,
        author=by,
    )


# --------------------------------------------------------------------------- the official line


def normalise(text: str) -> str:
    """What two figures are compared as: full-width digits and letters folded (NFKC),
    whitespace dropped, case ignored, so "３ 人" and "3人" state the same thing."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).casefold()


@dataclass(frozen=True)
class PublishedFigure:
    fact: Fact
    statement_id: str
    version: int
    at: datetime


@dataclass(frozen=True)
class OfficialLine:
    """The incident's current official line: its latest publication, and for each label
    the value most recently published (a later cleared change supersedes an earlier one)."""

    statement: Statement
    publication: Publication
    figures: tuple[PublishedFigure, ...]

    @property
    def version(self) -> Version:
        return self.statement.numbered(self.publication.version)

    def cleared_by(self) -> list[StepProgress]:
        return self.statement.progress(self.publication.version)


def official_line(statements: Iterable[Statement]) -> OfficialLine | None:
    published = sorted(
        ((s, p) for s in statements for p in s.publications), key=lambda sp: sp[1].at
    )
    if not published:
        return None
    figures: dict[str, PublishedFigure] = {}
    for statement, publication in published:
        for fact in statement.numbered(publication.version).facts:
            figure = PublishedFigure(
                fact, statement.statement_id, publication.version, publication.at
            )
            figures[normalise(fact.label)] = figure
    latest_statement, latest = published[-1]
    return OfficialLine(latest_statement, latest, tuple(figures.values()))


def fact_conflicts(
    facts: Sequence[Fact], official: OfficialLine | None
) -> tuple[FactConflict, ...]:
    """The facts stating a published label with another value."""
    if official is None:
        return ()
    published = {normalise(f.fact.label): f for f in official.figures}
    conflicts: list[FactConflict] = []
    for fact in facts:
        figure = published.get(normalise(fact.label))
        if figure is not None and normalise(figure.fact.value) != normalise(fact.value):
            conflicts.append(
                FactConflict(
                    label=fact.label,
                    published_value=figure.fact.value,
                    new_value=fact.value,
                    published_in=figure.statement_id,
                    published_version=figure.version,
                )
            )
    return tuple(conflicts)


def describe_conflicts(conflicts: Sequence[FactConflict]) -> str:
    return "；".join(
        f"{c.label}（已发布：{c.published_value}，本稿：{c.new_value}）" for c in conflicts
    )


# --------------------------------------------------------------------------- diffs


@dataclass(frozen=True)
class FactChange:
    label: str
    before: str
    after: str


@dataclass(frozen=True)
class FactsDiff:
    added: tuple[Fact, ...]
    removed: tuple[Fact, ...]
    changed: tuple[FactChange, ...]


@dataclass(frozen=True)
class VersionDiff:
    from_version: int
    to_version: int
    title: str  # unified diff, empty when unchanged
    body: str
    facts: FactsDiff


def _unified(before: str, after: str, old: int, new: int) -> str:
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), f"第{old}版", f"第{new}版", lineterm=""
    )
    return "\n".join(lines)


def diff_versions(old: Version, new: Version) -> VersionDiff:
    """Title and body as unified diffs; facts by label, compared as the check compares them."""
    before = {normalise(f.label): f for f in old.facts}
    after = {normalise(f.label): f for f in new.facts}
    changed = tuple(
        FactChange(label=after[k].label, before=before[k].value, after=after[k].value)
        for k in after
        if k in before and normalise(before[k].value) != normalise(after[k].value)
    )
    return VersionDiff(
        from_version=old.version,
        to_version=new.version,
        title=_unified(old.title, new.title, old.version, new.version),
        body=_unified(old.body, new.body, old.version, new.version),
        facts=FactsDiff(
            added=tuple(f for k, f in after.items() if k not in before),
            removed=tuple(f for k, f in before.items() if k not in after),
            changed=changed,
        ),
    )
