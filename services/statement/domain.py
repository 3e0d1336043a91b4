"""Statements (通稿/回复稿) and their approval chains. Pure: no I/O.

A statement is one aggregate folded from its stream: its versions, the chain its current
version must pass for the incident's level, the approvals given (to which version, for
which step, by whom, when), rejections and publications. Only approvals of the current
version count; older ones stay on the record.

The figures of published statements are the incident's official line (口径): a version
that states a published label with another value is flagged at submit, and an approver
clears it only by acknowledging the change with a reason.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.auth import Principal, Role
from shared.errors import Conflict, Forbidden, NotFound
from shared.events import (
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
    StatementSubmitted,
    StatementWithdrawn,
)

INCIDENT_UNIT = "incident"  # in the policy: the unit(s) the incident concerns


def stream_id(statement_id: str) -> str:
    return f"statement-{statement_id}"


# --------------------------------------------------------------------------- the policy


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepRule(_Strict):
    role: Role
    unit: str | None = Field(
        default=None,
        description=f"a unit id, or {INCIDENT_UNIT!r} for each unit the incident concerns",
    )


class ApprovalPolicy(_Strict):
    """Who clears a statement at each level, in order, from config/approval.yaml."""

    version: str
    role_names: dict[Role, str]
    levels: dict[Level, tuple[StepRule, ...]]

    @model_validator(mode="after")
    def _complete(self) -> ApprovalPolicy:
        for level in Level:
            if not self.levels.get(level):
                raise ValueError(f"levels.{int(level)}: every level needs at least one step")
            for i, step in enumerate(self.levels[level]):
                if step.role not in self.role_names:
                    raise ValueError(
                        f"levels.{int(level)}.{i}: role {step.role.value!r} has no entry in "
                        "role_names (the name staff read)"
                    )
        return self

    def chain(self, level: Level, unit_ids: Sequence[str]) -> tuple[ApprovalStep, ...]:
        steps: list[ApprovalStep] = []
        for rule in self.levels[level]:
            if rule.unit != INCIDENT_UNIT:
                steps.append(ApprovalStep(role=rule.role.value, unit_id=rule.unit))
                continue
            if not unit_ids:
                raise Conflict("事件涉及的单位尚未确定，无法确定审批链", {"level": int(level)})
            steps.extend(ApprovalStep(role=rule.role.value, unit_id=u) for u in unit_ids)
        return tuple(steps)

    def describe(self, step: ApprovalStep) -> str:
        name = self.role_names.get(Role(step.role), step.role)
        return f"{name}（{step.unit_id}）" if step.unit_id else name


# --------------------------------------------------------------------------- the aggregate


class StatementState(str, Enum):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    PUBLISHED = "published"


# Why a version in each state cannot take the decision asked for; staff read these.
_NOT_IN_REVIEW = {
    StatementState.DRAFT: "当前版本尚未提交审批",
    StatementState.APPROVED: "当前版本已审批通过",
    StatementState.REJECTED: "当前版本已被退回",
    StatementState.WITHDRAWN: "当前版本已撤回",
    StatementState.PUBLISHED: "当前版本已发布",
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


@dataclass(frozen=True)
class Statement:
    statement_id: str
    incident_id: str
    kind: StatementKind
    stream_version: int
    versions: tuple[Version, ...]
    submissions: tuple[Submission, ...] = ()
    approvals: tuple[Approval, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    publications: tuple[Publication, ...] = ()
    withdrawals: tuple[Withdrawal, ...] = ()

    # folding ----------------------------------------------------------------------------

    @classmethod
    def fold(cls, events: Sequence[Envelope]) -> Statement:
        first = events[0]
        assert isinstance(first.payload, StatementDrafted), "a statement starts with its draft"
        statement = cls(
            statement_id=first.payload.statement_id,
            incident_id=first.incident_id,
            kind=first.payload.kind,
            stream_version=0,
            versions=(),
        )
        for event in events:
            statement = statement.apply(event)
        return statement

    def apply(self, event: Envelope) -> Statement:
        p = event.payload
        at = event.occurred_at
        s = replace(self, stream_version=event.stream_version)
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

    def version(self, number: int) -> Version:
        for version in self.versions:
            if version.version == number:
                return version
        raise NotFound(f"稿件没有第{number}版", {"versions": [v.version for v in self.versions]})

    @property
    def submission(self) -> Submission | None:
        """The chain the current version is under, if it was submitted."""
        return self._submission_of(self.current.version)

    def _submission_of(self, version: int) -> Submission | None:
        for submission in reversed(self.submissions):
            if submission.version == version:
                return submission
        return None

    def progress(self, version: int | None = None) -> list[StepProgress]:
        """Each step of the chain of a version (the current one by default) with the
        approval of that version that fills it. An approval counts for a step of the same
        role and unit, so approvals given before the chain changed (the level moved) still
        count where they fit."""
        number = self.current.version if version is None else version
        submission = self._submission_of(number)
        if submission is None:
            return []
        unused = [a for a in self.approvals if a.version == number]
        filled: list[StepProgress] = []
        for step in submission.chain:
            match = next((a for a in unused if a.step == step), None)
            if match is not None:
                unused.remove(match)
            filled.append(StepProgress(step, match))
        return filled

    def missing(self) -> list[ApprovalStep]:
        return [p.step for p in self.progress() if p.approval is None]

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
        policy: ApprovalPolicy,
        unit_ids: Sequence[str],
        official: OfficialLine | None = None,
    ) -> StatementSubmitted:
        """Into the chain of the incident's level, with the figures that contradict the
        published line flagged for the approvers."""
        state = self.state
        if state is not StatementState.DRAFT:
            reasons = {
                StatementState.IN_REVIEW: "当前版本已提交审批",
                StatementState.APPROVED: "当前版本已审批通过",
                StatementState.REJECTED: "当前版本已被退回，请修改后再提交",
                StatementState.WITHDRAWN: "当前版本已撤回，请修改后再提交",
                StatementState.PUBLISHED: "当前版本已发布",
            }
            raise Conflict(reasons[state], {"state": state.value})
        if level is None:
            raise Conflict("事件尚未定级，无法确定审批链；定级后再提交", {"level": None})
        return StatementSubmitted(
            statement_id=self.statement_id,
            version=self.current.version,
            level=level,
            chain=policy.chain(level, unit_ids),
            fact_conflicts=fact_conflicts(self.current.facts, official),
        )

    def rechain(
        self, level: Level, policy: ApprovalPolicy, unit_ids: Sequence[str], reason: str
    ) -> StatementSubmitted | None:
        """The incident's level changed: a statement under review (or approved and not yet
        out) needs the new level's chain. None when nothing changes."""
        submission = self.submission
        if self.state not in (StatementState.IN_REVIEW, StatementState.APPROVED):
            return None
        assert submission is not None
        chain = policy.chain(level, unit_ids)
        if chain == submission.chain and level == submission.level:
            return None
        return StatementSubmitted(
            statement_id=self.statement_id,
            version=self.current.version,
            level=level,
            chain=chain,
            reason=reason,
            fact_conflicts=submission.fact_conflicts,
        )

    def _step_for(self, principal: Principal, policy: ApprovalPolicy) -> ApprovalStep:
        """The step this person may act on now, or why not."""
        state = self.state
        if state is not StatementState.IN_REVIEW:
            raise Conflict(_NOT_IN_REVIEW[state], {"state": state.value})
        if principal.sub == self.current.author:
            raise Forbidden("不能审批自己起草的版本", {"author": self.current.author})
        progress = self.progress()
        if any(p.approval and p.approval.approver == principal.sub for p in progress):
            raise Forbidden("同一人不能审批同一审批链中的两个环节")
        pending = [p.step for p in progress if p.approval is None]
        step = pending[0]
        if _fits(principal, step):
            return step
        if any(_fits(principal, later) for later in pending[1:]):
            raise Conflict(
                f"须先由{policy.describe(step)}审批",
                {"waiting_for": step.model_dump()},
            )
        raise Forbidden(
            f"当前环节需要{policy.describe(step)}审批",
            {"waiting_for": step.model_dump()},
        )

    def approve(
        self,
        principal: Principal,
        comment: str,
        policy: ApprovalPolicy,
        *,
        official: OfficialLine | None = None,
        acknowledgement: str | None = None,
    ) -> StatementApproved:
        """Fill the caller's step. Figures that contradict the published line as it is now
        (it may have moved since the submit) are cleared only with a reason, which goes on
        the record with the figures it covers."""
        step = self._step_for(principal, policy)
        conflicts = fact_conflicts(self.current.facts, official)
        if conflicts and not acknowledgement:
            raise Conflict(
                f"本稿数据与已发布口径不一致：{describe_conflicts(conflicts)}；"
                "审批须确认变更并说明理由",
                {"fact_conflicts": [c.model_dump() for c in conflicts]},
            )
        return StatementApproved(
            statement_id=self.statement_id,
            version=self.current.version,
            step=step,
            approver=principal.sub,
            comment=comment,
            fully_approved=len(self.missing()) == 1,
            fact_changes_acknowledged=(
                FactChangeAcknowledgement(reason=acknowledgement, changes=conflicts)
                if conflicts and acknowledgement
                else None
            ),
        )

    def reject(
        self, principal: Principal, comment: str, policy: ApprovalPolicy
    ) -> StatementRejected:
        step = self._step_for(principal, policy)
        return StatementRejected(
            statement_id=self.statement_id,
            version=self.current.version,
            step=step,
            approver=principal.sub,
            comment=comment,
        )

    def withdraw(self, principal: Principal, reason: str) -> StatementWithdrawn:
        """The author of any version, or the office, takes the current version back. It
        can then be neither approved nor published; a revision starts it over."""
        if principal.sub not in {v.author for v in self.versions} and not principal.has(
            Role.OFFICE
        ):
            raise Forbidden("只有起草人或领导小组办公室可以撤回稿件")
        state = self.state
        if state in (StatementState.WITHDRAWN, StatementState.PUBLISHED):
            reasons = {
                StatementState.WITHDRAWN: "当前版本已撤回",
                StatementState.PUBLISHED: "当前版本已发布，不能撤回；如需更正请另发澄清说明",
            }
            raise Conflict(reasons[state], {"state": state.value})
        return StatementWithdrawn(
            statement_id=self.statement_id,
            version=self.current.version,
            withdrawn_by=principal.sub,
            reason=reason,
        )

    def diff(self, from_version: int, to_version: int) -> VersionDiff:
        return diff_versions(self.version(from_version), self.version(to_version))

    def publish(
        self, *, outlet: str, url: str, by: str, policy: ApprovalPolicy
    ) -> StatementPublished:
        """Only the fully approved current version goes out, and only to its outlets."""
        state = self.state
        version = self.current
        if state is StatementState.IN_REVIEW:
            missing = "、".join(policy.describe(s) for s in self.missing())
            raise Conflict(
                f"当前版本尚未审批完成，缺少：{missing}",
                {"missing": [s.model_dump() for s in self.missing()]},
            )
        if state not in (StatementState.APPROVED, StatementState.PUBLISHED):
            reasons = {
                StatementState.DRAFT: "当前版本尚未提交审批，不能发布",
                StatementState.REJECTED: "当前版本已被退回，不能发布",
                StatementState.WITHDRAWN: "当前版本已撤回，不能发布",
            }
            raise Conflict(reasons[state], {"state": state.value})
        if version.outlets and outlet not in version.outlets:
            raise Conflict(
                f"发布渠道“{outlet}”不在审批通过的渠道之内：{'、'.join(version.outlets)}",
                {"outlets": list(version.outlets)},
            )
        if any(p.version == version.version and p.outlet == outlet for p in self.publications):
            raise Conflict(f"当前版本已在“{outlet}”发布", {"outlet": outlet})
        return StatementPublished(
            statement_id=self.statement_id,
            version=version.version,
            outlet=outlet,
            url=url,
            published_by=by,
        )


def _fits(principal: Principal, step: ApprovalStep) -> bool:
    # The chain names who clears: an admin account is not a substitute for that authority.
    return Role(step.role) in principal.roles and (
        step.unit_id is None or step.unit_id == principal.unit
    )


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
        return self.statement.version(self.publication.version)

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
        for fact in statement.version(publication.version).facts:
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
