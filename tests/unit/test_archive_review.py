"""The post-event review: the figures a case is archived with, the review's events folding
into an archived view, the assessment (考评) and the review document in Chinese."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.archive.domain import IncidentView, causal_order, fold
from services.archive.domain.cases import (
    accountability,
    case_figures,
    case_record,
    outcome,
    overdue,
)
from services.archive.domain.review import (
    AlreadyReviewed,
    NotResolved,
    Review,
    ReviewDecision,
    ReviewLog,
    decide_review,
    evolve,
    review_stream,
)
from services.archive.report import CaseReport
from shared.directory import Directory
from shared.events import (
    Actor,
    IncidentReopened,
    IncidentResolved,
    ObligationFulfilled,
)
from shared.settings import Settings
from tests.unit.test_archive_fold import (
    CATALOGUE,
    INCIDENT,
    SHANGHAI,
    Script,
    at,
    full_incident,
)

LEADER = Actor(type="person", id="leader-zhang", unit_id="county")


def resolved_incident() -> Script:
    """The scripted incident up to its resolution, before anyone reviewed it."""
    script = full_incident()
    script.events = [e for e in script.events if e.stream_id != "case-inc-1"]
    return script


def decision(lessons: str = "加强食材抽检") -> ReviewDecision:
    return ReviewDecision(
        cause="供货商以次充好",
        handling="当日回复家长，更换供货商",
        lessons=lessons,
        reviewed_by=LEADER.id,
        at=at(hours=6),
    )


def decide(script: Script, log: ReviewLog | None = None, lessons: str = "加强食材抽检") -> Review:
    records = script.logged()
    return decide_review(fold(INCIDENT, records), causal_order(records), log, decision(lessons))


def reviewed(script: Script, log: ReviewLog | None = None, lessons: str = "加强食材抽检") -> Review:
    """Decide the review and add its two events to the log, as the archive stores them:
    the record caused by the resolution, the case by the record."""
    decided = decide(script, log, lessons)
    stream = review_stream(INCIDENT)
    recorded = script.add(decided.recorded, stream, at(hours=6), decided.resolution, LEADER)
    script.add(decided.archived, stream, at(hours=6), recorded, LEADER)
    return decided


def review_log(script: Script) -> ReviewLog | None:
    log: ReviewLog | None = None
    for event in script.events:
        if event.stream_id == review_stream(INCIDENT):
            log = evolve(log, event)
    return log


def archived_view(lessons: str = "加强食材抽检") -> IncidentView:
    script = resolved_incident()
    reviewed(script, lessons=lessons)
    return fold(INCIDENT, script.logged())


def test_the_case_figures_time_the_grade_the_obligations_and_the_clearance() -> None:
    figures = case_figures(fold(INCIDENT, resolved_incident().logged()), at(hours=6))

    assert (figures.first_report_at, figures.graded_at) == (at(), at(seconds=2))
    assert figures.seconds_to_grade == 2
    assert (figures.level, figures.highest_level) == (1, 1)
    assert {
        o.obligation_id: (o.deadline, o.fulfilled_at, o.outcome) for o in figures.obligations
    } == {
        "ob-bulletin": (at(hours=4), None, "closed"),
        "ob-phone": (at(minutes=40), at(minutes=20), "on_time"),
        "ob-written": (at(minutes=70), None, "missed"),
    }
    s1, s2 = figures.statements
    # cleared from the second submission (minute 34): approved at 40, published at 45
    assert (s1.clearance_seconds, s1.seconds_to_publication) == (360, 660)
    assert (s2.state, s2.clearance_seconds, s2.published_at) == ("draft", None, None)


def test_a_review_archives_the_resolved_incident_as_a_case() -> None:
    view = archived_view()

    assert view.status == "archived"
    assert view.review is not None
    assert (view.review.cause, view.review.reviewed_by) == ("供货商以次充好", "leader-zhang")
    case = case_record(view)
    assert case is not None
    assert (case.case_id, case.incident_id, case.archived_at) == (
        "case-inc-1",
        INCIDENT,
        at(hours=6),
    )
    assert case.figures == case_figures(fold(INCIDENT, resolved_incident().logged()), at(hours=6))


def test_one_resolution_is_reviewed_once_and_a_reopened_case_again() -> None:
    script = resolved_incident()
    before_the_log = Script()
    before_the_log.events = list(script.events)
    first = reviewed(script)
    # Before the review's events come back through the log, the incident is still resolved:
    # the review stream says that resolution is answered.
    with pytest.raises(AlreadyReviewed):
        decide(before_the_log, review_log(script))
    with pytest.raises(NotResolved):  # and once they are in, it is archived
        decide(script, review_log(script))

    script.add(IncidentReopened(reason="再次发酵"), f"incident-{INCIDENT}", at(hours=7))
    reopened = fold(INCIDENT, script.logged())
    assert (reopened.status, case_record(reopened)) == ("open", None)
    with pytest.raises(NotResolved) as refused:
        decide(script, review_log(script))
    assert refused.value.details == {"status": "open"}
    again = script.add(IncidentResolved(reason="再次平息"), f"incident-{INCIDENT}", at(hours=8))
    second = decide(script, review_log(script))
    assert (first.resolution.payload, second.resolution.event_id) == (
        IncidentResolved(reason="舆情平息"),
        again.event_id,
    )


def test_the_review_record_answers_the_resolution_and_the_case_follows_it() -> None:
    script = resolved_incident()
    decided = reviewed(script)

    recorded, archived = script.events[-2:]

    assert (recorded.event_type, archived.event_type) == ("ReviewRecorded", "CaseArchived")
    assert recorded.causation_id == decided.resolution.event_id
    assert archived.causation_id == recorded.event_id
    assert review_log(script) == ReviewLog(
        version=2, reviewed=frozenset({decided.resolution.event_id})
    )


def test_accountability_counts_on_time_late_and_missed_per_unit_and_role() -> None:
    first = fold(INCIDENT, resolved_incident().logged())
    other = resolved_incident()
    other.incident_id = "inc-2"
    other.events = [
        e.model_copy(update={"incident_id": "inc-2"}) for e in other.events
    ]  # the same story at another unit, where the written report came late
    other.add(
        ObligationFulfilled(
            obligation_id="ob-written",
            fulfilled_by="office-li",
            fulfilled_at=at(minutes=95),
            late=True,
        ),
        "obligation-ob-written",
        at(minutes=95),
    )
    second = fold("inc-2", other.logged()).model_copy(update={"unit_ids": ["school-b"]})

    report = accountability([first, second], at(), at(days=1), None, at(days=1))

    by_unit = {u.unit_id: u for u in report.units}
    assert set(by_unit) == {"school-a", "school-b"}
    a, b = by_unit["school-a"].totals, by_unit["school-b"].totals
    assert (a.on_time, a.late, a.missed, a.closed) == (1, 0, 1, 1)
    assert (b.on_time, b.late, b.missed, b.closed) == (1, 1, 0, 1)
    assert [r.owner_role for r in by_unit["school-a"].by_role] == ["office"]
    # level 1 duties were counted from minute 10 and the phone report was met at minute 20
    assert report.median_first_report_seconds == {1: 600.0}

    only_b = accountability([first, second], at(), at(days=1), {"school-b"}, at(days=1))
    assert [u.unit_id for u in only_b.units] == ["school-b"]
    later = accountability([first, second], at(days=1), at(days=2), None, at(days=2))
    assert later.units == []


def report_renderer() -> CaseReport:
    directory = Directory.load(Settings().directory_path)
    return CaseReport(Settings().archive_report_template, directory, CATALOGUE, SHANGHAI)


def test_the_review_document_reads_in_chinese_with_its_figures() -> None:
    case = case_record(archived_view())
    assert case is not None

    markdown = report_renderer().markdown(case)

    assert markdown.startswith("# 舆情事件总结评估报告")
    for text in ("## 一、事件起因", "供货商以次充好", "## 三、经验教训", "加强食材抽检"):
        assert text in markdown
    assert (
        "| 纸质快报 | 一级（重大） | 领导小组办公室 | 2026-11-21 09:10:00 | — | — | 超时未完成 |"
        in (markdown)
    )
    assert "| 手机快报 | 一级（重大） | 领导小组办公室 | 2026-11-21 08:40:00 |" in markdown
    assert "| 首报时间 | 2026-11-21 08:00:00 |" in markdown
    assert "（首报后 2 秒）" in markdown
    assert "6 分" in markdown  # the statement's clearance


def test_the_html_document_keeps_markup_in_the_review_as_text() -> None:
    case = case_record(archived_view(lessons="<script>alert(1)</script> 加强抽检"))
    assert case is not None

    html = report_renderer().html(case)

    assert "<h1>舆情事件总结评估报告</h1>" in html
    assert "<table>" in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_a_late_report_is_shown_as_late_in_the_figures() -> None:
    script = resolved_incident()
    script.add(
        ObligationFulfilled(
            obligation_id="ob-written",
            fulfilled_by="office-li",
            fulfilled_at=at(minutes=70) + timedelta(minutes=5),
            late=True,  # as notification records a report filed after its deadline
        ),
        "obligation-ob-written",
        at(minutes=75),
    )
    figures = case_figures(fold(INCIDENT, script.logged()), at(hours=6))
    written = next(o for o in figures.obligations if o.obligation_id == "ob-written")
    # counted from minute 40, due at 70, filed at 75
    assert (written.outcome, written.seconds_to_fulfil) == ("late", 35 * 60)


def test_a_duty_not_met_by_its_deadline_is_open_and_overdue_until_the_watch_records_it() -> None:
    script = resolved_incident()
    script.events = [e for e in script.events if e.event_type != "DeadlineMissed"]
    view = fold(INCIDENT, script.logged())
    written = next(o for o in view.obligations if o.obligation_id == "ob-written")

    assert (outcome(written), overdue(written, at(minutes=69))) == ("open", False)
    assert (outcome(written), overdue(written, at(minutes=71))) == ("open", True)

    figures = case_figures(view, at(minutes=71))
    figure = next(o for o in figures.obligations if o.obligation_id == "ob-written")
    assert (figure.outcome, figure.overdue) == ("open", True)
    counts = accountability([view], at(), at(days=1), None, at(minutes=71)).units[0].totals
    assert (counts.missed, counts.open, counts.overdue) == (0, 1, 1)


def test_the_review_document_says_an_overdue_duty_is_open_not_missed() -> None:
    script = resolved_incident()
    script.events = [e for e in script.events if e.event_type != "DeadlineMissed"]
    reviewed(script)  # at hour 6, long after the written report was due
    case = case_record(fold(INCIDENT, script.logged()))
    assert case is not None

    markdown = report_renderer().markdown(case)

    row = "| 纸质快报 | 一级（重大） | 领导小组办公室 | 2026-11-21 09:10:00 | — | — |"
    assert f"{row} 未完成（已过截止时间） |" in markdown
    assert "超时未完成" not in markdown
