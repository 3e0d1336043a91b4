"""The archive's view of a statement that is out when the incident's level moves: it stays
published (as the statement service says), shows what the new chain still needs, and keeps
the time it was first cleared."""

from __future__ import annotations

from services.archive.domain import fold
from shared.events import (
    ApprovalStep,
    StatementApproved,
    StatementDrafted,
    StatementPublished,
    StatementState,
    StatementSubmitted,
)
from tests.unit.test_archive_fold import INCIDENT, Script, at

STREAM = "statement-s1"
HEAD = ApprovalStep(role="dept_head", unit_id="school-a")
LEVEL_ONE = (ApprovalStep(role="office"), ApprovalStep(role="propaganda"))


def approved(step: ApprovalStep, by: str, missing: tuple[ApprovalStep, ...]) -> StatementApproved:
    return StatementApproved(
        statement_id="s1",
        version=1,
        step=step,
        approver=by,
        fully_approved=not missing,
        missing=missing,
    )


def published(outlet: str) -> StatementPublished:
    return StatementPublished(
        statement_id="s1",
        version=1,
        outlet=outlet,
        url=f"https://{outlet}.example/1",
        published_by="spokesperson-sun",
    )


def test_a_published_statement_rechained_at_a_higher_level_stays_published_until_out_again() -> (
    None
):
    s = Script()
    s.add(
        StatementDrafted(
            statement_id="s1",
            kind="press_release",
            version=1,
            title="通报",
            body="正文",
            author="spokesperson-sun",
        ),
        STREAM,
        at(minutes=1),
    )
    s.add(
        StatementSubmitted(statement_id="s1", version=1, level=3, chain=(HEAD,), missing=(HEAD,)),
        STREAM,
        at(minutes=2),
    )
    s.add(approved(HEAD, "head-liu", ()), STREAM, at(minutes=3))
    s.add(published("weibo"), STREAM, at(minutes=4))
    s.add(
        StatementSubmitted(
            statement_id="s1",
            version=1,
            level=1,
            chain=LEVEL_ONE,
            missing=LEVEL_ONE,
            reason="事件级别由3级调整为1级，按新级别审批",
        ),
        STREAM,
        at(minutes=5),
    )

    (statement,) = fold(INCIDENT, s.logged()).statements
    assert (statement.state, statement.level) == (StatementState.PUBLISHED, 1)
    assert statement.missing == list(LEVEL_ONE)
    assert statement.approved_at == at(minutes=3)  # first cleared then, at level 3

    s.add(approved(LEVEL_ONE[0], "office-li", LEVEL_ONE[1:]), STREAM, at(minutes=6))
    s.add(approved(LEVEL_ONE[1], "propaganda-wang", ()), STREAM, at(minutes=7))
    s.add(published("site"), STREAM, at(minutes=8))

    (statement,) = fold(INCIDENT, s.logged()).statements
    assert (statement.state, statement.missing) == (StatementState.PUBLISHED, [])
    assert [p.outlet for p in statement.publications] == ["weibo", "site"]
