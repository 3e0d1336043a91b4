"""Approval chains and the rules of clearing a statement, without I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.statement.domain import (
    AlreadyPublished,
    ApprovalPolicy,
    ApprovalRules,
    FactChangesUnacknowledged,
    MayNotWithdraw,
    NotApproved,
    NotGraded,
    NotInReview,
    NotSubmittable,
    NotWithdrawable,
    NotYourStep,
    OutletNotApproved,
    OutOfOrder,
    SameApproverTwice,
    SelfApproval,
    Statement,
    UnknownVersion,
    draft,
    official_line,
    stream_id,
)
from shared.catalogue import Catalogue
from shared.errors import Conflict, DomainError, Forbidden, NotFound
from shared.events import (
    Actor,
    ApprovalStep,
    Envelope,
    EventPayload,
    Fact,
    Level,
    StatementState,
)
from shared.identity import Caller, Role
from shared.policy import PolicyError, load_policy
from shared.settings import CONFIG_DIR

CATALOGUE = Catalogue.load(CONFIG_DIR / "catalogue.yaml")
POLICY = ApprovalRules(load_policy(CONFIG_DIR / "approval.yaml", ApprovalPolicy), CATALOGUE.roles)

AUTHOR = Caller(id="spokesperson-sun", unit="school-a", roles=frozenset({Role.SPOKESPERSON}))
OFFICE = Caller(id="office-li", unit="county", roles=frozenset({Role.OFFICE}))
PROPAGANDA = Caller(id="propaganda-wang", unit="county", roles=frozenset({Role.PROPAGANDA}))
HEAD_A = Caller(id="head-liu", unit="school-a", roles=frozenset({Role.DEPT_HEAD}))
HEAD_B = Caller(id="head-wu", unit="school-b", roles=frozenset({Role.DEPT_HEAD}))
BOTH = Caller(id="li-and-wang", unit="county", roles=frozenset({Role.OFFICE, Role.PROPAGANDA}))
ADMIN = Caller(id="admin", unit="county", roles=frozenset({Role.ADMIN}))


def record(statement: Statement | None, payload: EventPayload) -> Statement:
    version = statement.version + 1 if statement else 1
    event = Envelope.new(
        payload,
        incident_id="inc-1",
        stream_id=stream_id("s1"),
        stream_version=version,
        actor=Actor.system("test"),
    )
    return statement.apply(event) if statement else Statement.fold([event])


def drafted(
    author: str = AUTHOR.id,
    facts: tuple[Fact, ...] = (Fact(label="受伤人数", value="0"),),
    statement_id: str = "s1",
) -> Statement:
    return record(
        None,
        draft(
            statement_id,
            kind="press_release",
            title="关于网传信息的情况通报",
            body="经核实……",
            facts=facts,
            outlets=("官方微博", "官网"),
            by=author,
        ),
    )


def submitted(level: Level, units: tuple[str, ...] = ("school-a",)) -> Statement:
    statement = drafted()
    return record(statement, statement.submit(level, POLICY, units))


def approved_by(statement: Statement, *who: Caller) -> Statement:
    for caller in who:
        statement = record(statement, statement.approve(caller, "同意", POLICY))
    return statement


def test_each_level_has_its_chain_from_the_policy() -> None:
    assert POLICY.chain(1, ["school-a"]) == (
        ApprovalStep(role="office"),
        ApprovalStep(role="propaganda"),
    )
    assert POLICY.chain(2, ["school-a"]) == (ApprovalStep(role="office"),)
    assert POLICY.chain(3, ["school-a", "school-b"]) == (
        ApprovalStep(role="dept_head", unit_id="school-a"),
        ApprovalStep(role="dept_head", unit_id="school-b"),
    )


def test_level_one_needs_the_office_then_the_task_force_in_that_order() -> None:
    statement = submitted(1)

    with pytest.raises(OutOfOrder, match="须先由领导小组办公室审批"):
        statement.approve(PROPAGANDA, "", POLICY)
    statement = approved_by(statement, OFFICE)
    assert statement.state is StatementState.IN_REVIEW
    assert statement.missing() == [ApprovalStep(role="propaganda")]
    with pytest.raises(NotApproved, match=r"缺少：宣传部（处置专班）"):
        statement.publish(outlet="官网", url="https://example.org/1", by=AUTHOR.id, rules=POLICY)

    statement = approved_by(statement, PROPAGANDA)
    assert statement.state is StatementState.APPROVED
    published = statement.publish(
        outlet="官网", url="https://example.org/1", by=AUTHOR.id, rules=POLICY
    )
    assert published.version == 1


def test_level_three_is_cleared_by_the_head_of_the_unit_concerned_only() -> None:
    statement = submitted(3, ("school-a",))

    with pytest.raises(NotYourStep, match=r"部门分管领导（school-a）"):
        statement.approve(HEAD_B, "", POLICY)
    assert approved_by(statement, HEAD_A).state is StatementState.APPROVED


def test_the_author_cannot_approve_their_own_version() -> None:
    statement = drafted(author=OFFICE.id)
    statement = record(statement, statement.submit(2, POLICY, ["school-a"]))

    with pytest.raises(SelfApproval, match="不能审批自己起草的版本"):
        statement.approve(OFFICE, "", POLICY)


def test_one_person_cannot_fill_two_steps_of_a_chain() -> None:
    statement = approved_by(submitted(1), BOTH)

    with pytest.raises(SameApproverTwice, match="两个环节"):
        statement.approve(BOTH, "", POLICY)


def test_an_admin_account_does_not_stand_in_for_the_chain() -> None:
    with pytest.raises(NotYourStep):
        submitted(2).approve(ADMIN, "", POLICY)


def test_a_revision_restarts_the_chain_and_old_approvals_stop_counting() -> None:
    statement = approved_by(submitted(2), OFFICE)
    assert statement.state is StatementState.APPROVED

    statement = record(
        statement,
        statement.revise(title="更正", body="新的表述", facts=(), outlets=("官网",), by=AUTHOR.id),
    )

    assert statement.current.version == 2
    assert statement.state is StatementState.DRAFT
    with pytest.raises(NotApproved, match="尚未提交审批"):
        statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY)
    statement = record(statement, statement.submit(2, POLICY, ["school-a"]))
    assert statement.missing() == [ApprovalStep(role="office")]
    assert len(statement.approvals) == 1  # the old approval stays on the record


def test_the_reviser_of_a_version_cannot_approve_it() -> None:
    statement = approved_by(submitted(2), OFFICE)
    statement = record(
        statement, statement.revise(title="t", body="b", facts=(), outlets=(), by=OFFICE.id)
    )
    statement = record(statement, statement.submit(2, POLICY, ["school-a"]))

    with pytest.raises(SelfApproval, match="不能审批自己起草的版本"):
        statement.approve(OFFICE, "", POLICY)


def test_the_author_of_an_earlier_version_approves_or_rejects_no_step_of_a_revision() -> None:
    # The office drafts v1; a spokesperson revises it; the office may not clear v2.
    statement = drafted(author=OFFICE.id)
    statement = record(
        statement, statement.revise(title="t", body="b", facts=(), outlets=(), by=AUTHOR.id)
    )
    statement = record(statement, statement.submit(1, POLICY, ["school-a"]))

    with pytest.raises(SelfApproval, match="第1版由本人起草") as refused:
        statement.approve(OFFICE, "", POLICY)
    assert refused.value.details == {"authored_versions": [1]}
    with pytest.raises(SelfApproval, match="第1版由本人起草"):
        statement.reject(OFFICE, "退回", POLICY)
    # Nor a later step: the office colleague fills the first, the v1 author none at all.
    colleague = Caller(id="office-zhao", unit="county", roles=frozenset({Role.OFFICE}))
    statement = approved_by(statement, colleague)
    both = Caller(id=OFFICE.id, unit="county", roles=frozenset({Role.OFFICE, Role.PROPAGANDA}))
    with pytest.raises(SelfApproval):
        statement.approve(both, "", POLICY)
    assert statement.state is StatementState.IN_REVIEW


def published_at_level_three() -> Statement:
    statement = approved_by(submitted(3), HEAD_A)
    return record(statement, statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY))


def test_a_statement_out_at_level_three_goes_out_again_only_with_the_level_one_chain() -> None:
    statement = published_at_level_three()

    rechained = statement.rechain(1, POLICY, ["school-a"], "升级")
    assert rechained is not None
    assert rechained.missing == (ApprovalStep(role="office"), ApprovalStep(role="propaganda"))
    statement = record(statement, rechained)
    assert statement.state is StatementState.PUBLISHED  # what is out stays out
    assert statement.missing() == [ApprovalStep(role="office"), ApprovalStep(role="propaganda")]

    with pytest.raises(NotApproved, match="须按现行级别的审批链审批后再发布") as refused:
        statement.publish(outlet="官方微博", url="u2", by=AUTHOR.id, rules=POLICY, level=1)
    assert refused.value.details["missing"] == [
        {"role": "office", "unit_id": None},
        {"role": "propaganda", "unit_id": None},
    ]
    with pytest.raises(OutOfOrder):
        statement.approve(PROPAGANDA, "", POLICY)

    statement = approved_by(statement, OFFICE, PROPAGANDA)
    assert statement.missing() == []
    again = statement.publish(outlet="官方微博", url="u2", by=AUTHOR.id, rules=POLICY, level=1)
    assert (again.version, again.outlet) == (1, "官方微博")


def test_publishing_checks_the_chain_of_the_level_in_force_even_before_the_rechain() -> None:
    # Approved at level 3; the incident is level 1 when the publisher asks.
    statement = approved_by(submitted(3), HEAD_A)

    with pytest.raises(NotApproved, match="缺少：领导小组办公室"):
        statement.publish(
            outlet="官网",
            url="u",
            by=AUTHOR.id,
            rules=POLICY,
            level=1,
            unit_ids=["school-a"],
        )
    statement.publish(
        outlet="官网", url="u", by=AUTHOR.id, rules=POLICY, level=3, unit_ids=["school-a"]
    )


def test_a_published_statement_rejected_at_the_new_level_is_not_cleared_again() -> None:
    statement = published_at_level_three()
    statement = record(statement, statement.rechain(2, POLICY, ["school-a"], "升级"))
    statement = record(statement, statement.reject(OFFICE, "口径需调整", POLICY))

    with pytest.raises(NotInReview):
        statement.approve(
            Caller(id="office-zhao", unit="county", roles=frozenset({Role.OFFICE})), "", POLICY
        )
    with pytest.raises(NotApproved):
        statement.publish(outlet="官方微博", url="u2", by=AUTHOR.id, rules=POLICY, level=2)
    with pytest.raises(NotWithdrawable):
        statement.withdraw(AUTHOR, "撤回")


def test_a_rejected_version_cannot_be_published_or_resubmitted_unchanged() -> None:
    statement = submitted(2)
    statement = record(statement, statement.reject(OFFICE, "数据未核实", POLICY))

    assert statement.state is StatementState.REJECTED
    with pytest.raises(NotApproved, match="已被退回"):
        statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY)
    with pytest.raises(NotSubmittable, match="请修改后再提交"):
        statement.submit(2, POLICY, ["school-a"])


def test_publishing_goes_only_to_the_approved_outlets_and_once_per_outlet() -> None:
    statement = approved_by(submitted(2), OFFICE)

    with pytest.raises(OutletNotApproved, match="不在审批通过的渠道之内"):
        statement.publish(outlet="抖音", url="u", by=AUTHOR.id, rules=POLICY)
    statement = record(
        statement, statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY)
    )
    assert statement.state is StatementState.PUBLISHED
    with pytest.raises(AlreadyPublished, match="已在“官网”发布"):
        statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY)
    statement.publish(outlet="官方微博", url="u2", by=AUTHOR.id, rules=POLICY)


def test_a_statement_of_an_ungraded_incident_cannot_be_submitted() -> None:
    with pytest.raises(NotGraded, match="尚未定级"):
        drafted().submit(None, POLICY, ["school-a"])


def test_an_escalation_mid_review_keeps_approvals_the_new_chain_also_needs() -> None:
    statement = approved_by(submitted(2), OFFICE)

    rechained = statement.rechain(1, POLICY, ["school-a"], "升级")
    assert rechained is not None
    assert rechained.missing == (ApprovalStep(role="propaganda"),)
    statement = record(statement, rechained)

    assert statement.state is StatementState.IN_REVIEW
    assert statement.missing() == [ApprovalStep(role="propaganda")]
    assert statement.rechain(1, POLICY, ["school-a"], "again") is None


def test_a_lowered_grade_whose_chain_the_approvals_cover_clears_the_statement() -> None:
    statement = approved_by(submitted(1), OFFICE)
    assert statement.state is StatementState.IN_REVIEW

    rechained = statement.rechain(2, POLICY, ["school-a"], "降级")
    assert rechained is not None
    assert rechained.chain == (ApprovalStep(role="office"),)
    assert rechained.missing == ()  # the office's approval fills the new chain
    statement = record(statement, rechained)

    assert statement.state is StatementState.APPROVED
    assert statement.missing() == []
    statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY)


def test_the_events_say_what_each_submission_and_approval_leaves_missing() -> None:
    statement = drafted()
    submission = statement.submit(1, POLICY, ["school-a"])
    assert submission.missing == submission.chain
    statement = record(statement, submission)

    first = statement.approve(OFFICE, "同意", POLICY)
    assert (first.missing, first.fully_approved) == ((ApprovalStep(role="propaganda"),), False)
    statement = record(statement, first)
    last = statement.approve(PROPAGANDA, "同意", POLICY)
    assert (last.missing, last.fully_approved) == ((), True)
    assert record(statement, last).missing() == []


@pytest.mark.parametrize(
    ("refusal", "kind", "code"),
    [
        (SelfApproval, Forbidden, "self_approval"),
        (SameApproverTwice, Forbidden, "same_approver_twice"),
        (NotYourStep, Forbidden, "not_your_step"),
        (MayNotWithdraw, Forbidden, "may_not_withdraw"),
        (OutOfOrder, Conflict, "out_of_order"),
        (NotInReview, Conflict, "not_in_review"),
        (NotSubmittable, Conflict, "not_submittable"),
        (NotGraded, Conflict, "not_graded"),
        (NotApproved, Conflict, "not_approved"),
        (FactChangesUnacknowledged, Conflict, "fact_changes_unacknowledged"),
        (UnknownVersion, NotFound, "unknown_version"),
    ],
)
def test_each_refusal_is_a_kind_of_error_with_a_code_of_its_own(
    refusal: type[DomainError], kind: type[DomainError], code: str
) -> None:
    assert issubclass(refusal, kind)
    assert refusal.code == code


def test_a_policy_role_without_a_name_to_show_is_refused() -> None:
    names: dict[Role, str] = {r: n for r, n in CATALOGUE.roles.items() if r is not Role.PROPAGANDA}

    with pytest.raises(ValueError, match="without a name to show: propaganda"):
        ApprovalRules(POLICY.policy, names)


def test_a_policy_level_without_steps_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "approval.yaml"
    path.write_text(
        "version: t\nlevels:\n  1: [{role: office}]\n  2: [{role: office}]\n  3: []\n",
        encoding="utf-8",
    )

    with pytest.raises(PolicyError, match=r"levels\.3: every level needs at least one step"):
        load_policy(path, ApprovalPolicy)


# --------------------------------------------------------------------------- withdraw


def withdrawn() -> Statement:
    statement = submitted(2)
    return record(statement, statement.withdraw(AUTHOR, "情况有变，暂不发布"))


def test_a_withdrawn_version_can_be_neither_approved_published_nor_resubmitted() -> None:
    statement = withdrawn()

    assert statement.state is StatementState.WITHDRAWN
    assert statement.withdrawals[0].withdrawn_by == AUTHOR.id
    with pytest.raises(NotInReview, match="已撤回"):
        statement.approve(OFFICE, "同意", POLICY)
    with pytest.raises(NotApproved, match="已撤回，不能发布"):
        statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY)
    with pytest.raises(NotSubmittable, match="已撤回，请修改后再提交"):
        statement.submit(2, POLICY, ["school-a"])
    with pytest.raises(NotWithdrawable, match="已撤回"):
        statement.withdraw(AUTHOR, "again")


def test_a_withdrawn_statement_comes_back_as_a_new_version() -> None:
    statement = withdrawn()
    statement = record(
        statement, statement.revise(title="t", body="b", facts=(), outlets=(), by=AUTHOR.id)
    )
    assert statement.state is StatementState.DRAFT

    statement = record(statement, statement.submit(2, POLICY, ["school-a"]))
    assert approved_by(statement, OFFICE).state is StatementState.APPROVED


def test_only_an_author_or_the_office_may_withdraw() -> None:
    statement = approved_by(submitted(1), OFFICE)

    with pytest.raises(MayNotWithdraw, match="起草人或领导小组办公室"):
        statement.withdraw(PROPAGANDA, "不同意")
    by_office = record(statement, statement.withdraw(OFFICE, "口径调整"))
    assert by_office.state is StatementState.WITHDRAWN


def test_a_published_version_cannot_be_withdrawn() -> None:
    statement = approved_by(submitted(2), OFFICE)
    statement = record(
        statement, statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY)
    )

    with pytest.raises(NotWithdrawable, match="已发布，不能撤回"):
        statement.withdraw(AUTHOR, "撤稿")


# --------------------------------------------------------------------------- the official line


def published(statement_id: str, *facts: Fact) -> Statement:
    statement = drafted(facts=facts, statement_id=statement_id)
    statement = record(statement, statement.submit(2, POLICY, ["school-a"]))
    statement = approved_by(statement, OFFICE)
    return record(statement, statement.publish(outlet="官网", url="u", by=AUTHOR.id, rules=POLICY))


FIRST = published("first", Fact(label="受伤人数", value="3人"), Fact(label="涉事车辆", value="1"))


def submitted_against(*facts: Fact) -> Statement:
    statement = drafted(facts=facts, statement_id="second")
    return record(statement, statement.submit(2, POLICY, ["school-a"], official_line([FIRST])))


def test_a_draft_contradicting_a_published_figure_is_flagged_at_submit() -> None:
    statement = submitted_against(
        Fact(label="受伤人数", value="5人"), Fact(label="事发时间", value="10时")
    )

    (conflict,) = statement.submissions[-1].fact_conflicts
    assert (conflict.label, conflict.published_value, conflict.new_value) == (
        "受伤人数",
        "3人",
        "5人",
    )
    assert (conflict.published_in, conflict.published_version) == ("first", 1)


def test_full_width_digits_and_whitespace_do_not_make_a_contradiction() -> None:
    statement = submitted_against(
        Fact(label=" 受伤人数", value="３ 人"), Fact(label="涉事车辆", value="１")
    )

    assert statement.submissions[-1].fact_conflicts == ()
    assert approved_by(statement, OFFICE).state is StatementState.APPROVED


def test_approving_a_contradiction_needs_an_acknowledged_reason_which_is_recorded() -> None:
    statement = submitted_against(Fact(label="受伤人数", value="5人"))
    official = official_line([FIRST])

    refusal = r"受伤人数（已发布：3人，本稿：5人）"
    with pytest.raises(FactChangesUnacknowledged, match=refusal) as refused:
        statement.approve(OFFICE, "同意", POLICY, official=official)
    assert refused.value.details["fact_conflicts"][0]["label"] == "受伤人数"

    approval = statement.approve(
        OFFICE, "同意", POLICY, official=official, acknowledgement="经医院复核，新增2人就医"
    )
    assert approval.fact_changes_acknowledged is not None
    assert approval.fact_changes_acknowledged.reason == "经医院复核，新增2人就医"
    assert [c.new_value for c in approval.fact_changes_acknowledged.changes] == ["5人"]
    statement = record(statement, approval)
    assert statement.state is StatementState.APPROVED
    recorded = statement.progress()[0].approval
    assert recorded is not None
    assert recorded.acknowledgement == approval.fact_changes_acknowledged


def test_the_latest_publication_is_the_official_line_and_its_figures_supersede() -> None:
    statement = submitted_against(Fact(label="受伤人数", value="5人"))
    statement = record(
        statement,
        statement.approve(
            OFFICE, "", POLICY, official=official_line([FIRST]), acknowledgement="复核"
        ),
    )
    second = record(
        statement, statement.publish(outlet="官网", url="u2", by=AUTHOR.id, rules=POLICY)
    )

    line = official_line([FIRST, second])
    assert line is not None
    assert line.statement.statement_id == "second"
    assert {f.fact.label: f.fact.value for f in line.figures} == {
        "受伤人数": "5人",
        "涉事车辆": "1",
    }
    assert [p.approval.approver for p in line.cleared_by() if p.approval] == [OFFICE.id]
    third = submitted_against(Fact(label="受伤人数", value="5人"))
    assert third.approve(OFFICE, "", POLICY, official=line).fact_changes_acknowledged is None
    assert official_line([drafted()]) is None


# --------------------------------------------------------------------------- diffs


def test_a_diff_shows_the_wording_and_facts_that_changed() -> None:
    statement = drafted(facts=(Fact(label="受伤人数", value="0"), Fact(label="车辆", value="1")))
    statement = record(
        statement,
        statement.revise(
            title="关于网传信息的情况通报（更新）",
            body="经核实……\n已妥善处置。",
            facts=(Fact(label="受伤人数", value="2"), Fact(label="事发时间", value="10时")),
            outlets=(),
            by=AUTHOR.id,
        ),
    )

    diff = statement.diff(1, 2)
    assert "-关于网传信息的情况通报\n+关于网传信息的情况通报（更新）" in diff.title
    assert "+已妥善处置。" in diff.body
    assert diff.body.startswith("--- 第1版\n+++ 第2版")
    assert [(c.label, c.before, c.after) for c in diff.facts.changed] == [("受伤人数", "0", "2")]
    assert diff.facts.added == (Fact(label="事发时间", value="10时"),)
    assert diff.facts.removed == (Fact(label="车辆", value="1"),)
    assert statement.diff(2, 2).body == ""


def test_a_diff_with_a_version_that_does_not_exist_is_not_found() -> None:
    with pytest.raises(UnknownVersion, match="没有第3版"):
        drafted().diff(1, 3)
