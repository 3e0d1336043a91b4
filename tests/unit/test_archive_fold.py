"""The archive's pure core: the incident view folded from a scripted incident that touches
every service, out-of-order arrival, time travel, the Chinese timeline and the hash chain."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.archive.domain import (
    GENESIS,
    ChainLink,
    Logged,
    TimelineEntry,
    fold,
    link_hash,
    timeline,
    verify_chain,
)
from shared.catalogue import Catalogue
from shared.events import (
    NO_CHANNEL,
    Actor,
    ApprovalStep,
    CaseArchived,
    DeadlineMissed,
    Envelope,
    EventPayload,
    FiredRule,
    GradeOverridden,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    Level,
    MediaTier,
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
    Reach,
    ReferralMerged,
    ReferralOpened,
    ReportAttached,
    ReportClaimsConfirmed,
    ReportReceived,
    ReviewRecorded,
    SourceType,
    StatementApproved,
    StatementDrafted,
    StatementPublished,
    StatementRejected,
    StatementRevised,
    StatementState,
    StatementSubmitted,
    StatementWithdrawn,
)
from shared.settings import CONFIG_DIR

T0 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)  # 08:00 in the bureau's time zone
SHANGHAI = ZoneInfo("Asia/Shanghai")
CATALOGUE = Catalogue.load(CONFIG_DIR / "catalogue.yaml")
INCIDENT = "inc-1"
MONITOR = Actor(type="person", id="monitor-chen", unit_id="school-a")


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def lines_of(records: list[Logged], event_types: list[str] | None = None) -> list[TimelineEntry]:
    """The timeline as the bureau reads it, in its time zone and with the catalogue's names."""
    return timeline(records, SHANGHAI, CATALOGUE, event_types or ())


class Script:
    """Builds one incident's events as the five services would publish them."""

    def __init__(self, incident_id: str = INCIDENT) -> None:
        self.incident_id = incident_id
        self.events: list[Envelope] = []
        self.versions: dict[str, int] = {}

    def add(
        self,
        payload: EventPayload,
        stream: str,
        when: datetime,
        cause: Envelope | None = None,
        actor: Actor = MONITOR,
    ) -> Envelope:
        version = self.versions.get(stream, 0) + 1
        self.versions[stream] = version
        fields: dict[str, Any] = {
            "stream_id": stream,
            "stream_version": version,
            "actor": actor,
            "occurred_at": when,
        }
        if cause is not None:
            event = cause.caused(payload, **fields)
        else:
            event = Envelope.new(
                payload, incident_id=self.incident_id, unit_id="school-a", **fields
            )
        self.events.append(event)
        return event

    def logged(self, order: list[int] | None = None) -> list[Logged]:
        """The events as the archive would have stored them, ingested in `order`."""
        indexes = order if order is not None else list(range(len(self.events)))
        return [Logged(seq=seq, event=self.events[i]) for seq, i in enumerate(indexes, start=1)]


def report(report_id: str, tier: MediaTier, source: str, title: str) -> ReportReceived:
    return ReportReceived(
        report_id=report_id,
        source_type=SourceType.NEWS,
        source_name=source,
        media_tier=tier,
        url=f"https://news.example/{report_id}",
        normalized_url=f"news.example/{report_id}",
        title=title,
        excerpt="家长反映食堂饭菜质量问题",
        author=None,
        published_at=T0 - timedelta(minutes=30),
        observed_at=T0 - timedelta(minutes=5),
        reach=Reach(views=120000, reposts=3400),
        unit_ids=("school-a",),
        filed_by="monitor-chen",
    )


def obligation(ob_id: str, kind: str, title: str, level: Level, due: datetime) -> ObligationOpened:
    return ObligationOpened(
        obligation_id=ob_id,
        kind=kind,
        title=title,
        level=level,
        owner_role="office",
        recipients=("leader-zhang",),
        counted_from=due - timedelta(minutes=30),
        deadline=due,
    )


def full_incident() -> Script:
    """A level-2 inquiry that grows to level 1, with obligations met, missed and closed,
    a statement rejected then revised, approved and published, then resolved and archived.
    """
    s = Script()
    rule = Actor.rule("rulebook")
    intake = f"incident-{INCIDENT}"
    grades = f"grading-{INCIDENT}"
    r1 = s.add(
        report("r1", MediaTier.PROVINCIAL, "大河网", "实验小学食堂饭菜变质"), "report-r1", at()
    )
    opened = s.add(
        IncidentOpened(title="实验小学食堂饭菜变质", unit_ids=("school-a",), first_report_id="r1"),
        intake,
        at(seconds=1),
        r1,
    )
    graded = s.add(
        IncidentGraded(
            level=2,
            category="inquiry",
            rules_fired=(FiredRule(rule_id="tier-provincial", reason="省级媒体报道"),),
            rulebook_version="1",
        ),
        grades,
        at(seconds=2),
        opened,
        rule,
    )
    s.add(
        obligation("ob-bulletin", "bulletin", "《网上舆情》报送", 2, at(hours=4)),
        "obligation-ob-bulletin",
        at(seconds=3),
        graded,
        rule,
    )
    r2 = s.add(
        report("r2", MediaTier.CENTRAL, "人民网", "实验小学食堂问题引关注"),
        "report-r2",
        at(minutes=10),
    )
    s.add(
        ReportAttached(report_id="r2", match="similar_text"), intake, at(minutes=10, seconds=1), r2
    )
    escalated = s.add(
        IncidentEscalated(
            from_level=2,
            to_level=1,
            category="inquiry",
            reason="中央媒体报道",
            rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体报道"),),
            rulebook_version="1",
        ),
        grades,
        at(minutes=10, seconds=2),
        r2,
        rule,
    )
    phone = s.add(
        obligation("ob-phone", "phone_quick_report", "手机快报", 1, at(minutes=40)),
        "obligation-ob-phone",
        at(minutes=10, seconds=3),
        escalated,
        rule,
    )
    s.add(
        obligation("ob-written", "written_quick_report", "纸质快报", 1, at(minutes=70)),
        "obligation-ob-written",
        at(minutes=10, seconds=4),
        escalated,
        rule,
    )
    sent = s.add(
        NotificationSent(
            notification_id="n1",
            obligation_id="ob-phone",
            channel="sms",
            recipient="leader-zhang",
            attempt=1,
        ),
        "obligation-ob-phone",
        at(minutes=10, seconds=5),
        phone,
    )
    s.add(
        NotificationAcknowledged(
            notification_id="n1", obligation_id="ob-phone", acknowledged_by="leader-zhang"
        ),
        "obligation-ob-phone",
        at(minutes=12),
        sent,
    )
    s.add(
        ObligationFulfilled(
            obligation_id="ob-phone", fulfilled_by="office-li", fulfilled_at=at(minutes=20)
        ),
        "obligation-ob-phone",
        at(minutes=20),
    )
    statement = "statement-s1"
    s.add(
        StatementDrafted(
            statement_id="s1",
            kind="online_reply",
            version=1,
            title="关于实验小学食堂问题的回复",
            body="初稿",
            author="spokesperson-sun",
        ),
        statement,
        at(minutes=30),
    )
    chain = (ApprovalStep(role="propaganda"),)
    s.add(
        StatementSubmitted(statement_id="s1", version=1, level=1, chain=chain, missing=chain),
        statement,
        at(minutes=31),
    )
    s.add(
        StatementRejected(
            statement_id="s1",
            version=1,
            step=chain[0],
            approver="propaganda-wang",
            comment="数据不准",
        ),
        statement,
        at(minutes=32),
    )
    s.add(
        StatementRevised(
            statement_id="s1",
            version=2,
            title="关于实验小学食堂问题的回复",
            body="修改稿",
            author="spokesperson-sun",
        ),
        statement,
        at(minutes=33),
    )
    s.add(
        StatementSubmitted(statement_id="s1", version=2, level=1, chain=chain, missing=chain),
        statement,
        at(minutes=34),
    )
    s.add(
        StatementApproved(
            statement_id="s1",
            version=2,
            step=chain[0],
            approver="propaganda-wang",
            fully_approved=True,
            missing=(),
        ),
        statement,
        at(minutes=40),
    )
    s.add(
        StatementPublished(
            statement_id="s1",
            version=2,
            outlet="weibo",
            url="https://weibo.example/1",
            published_by="spokesperson-sun",
        ),
        statement,
        at(minutes=45),
    )
    s.add(
        StatementDrafted(
            statement_id="s2",
            kind="press_release",
            version=1,
            title="情况说明",
            body="草稿",
            author="spokesperson-sun",
        ),
        "statement-s2",
        at(minutes=50),
    )
    s.add(
        DeadlineMissed(
            obligation_id="ob-written",
            kind="written_quick_report",
            level=1,
            deadline=at(minutes=70),
            alerted_roles=("leader",),
        ),
        "obligation-ob-written",
        at(minutes=70, seconds=1),
        actor=Actor.rule("deadline-watch"),
    )
    s.add(
        ObligationClosed(obligation_id="ob-bulletin", reason="已升为一级，改为快报"),
        "obligation-ob-bulletin",
        at(minutes=71),
    )
    s.add(IncidentResolved(reason="舆情平息"), intake, at(hours=5))
    s.add(
        ReviewRecorded(
            cause="供货商问题", handling="当日回复", lessons="加强抽检", reviewed_by="leader-zhang"
        ),
        "case-inc-1",
        at(hours=6),
    )
    s.add(CaseArchived(case_id="case-1"), "case-inc-1", at(hours=6, seconds=1))
    return s


def test_the_view_shows_the_grade_after_escalation_and_how_it_came() -> None:
    view = fold(INCIDENT, full_incident().logged())

    assert view.level == 1
    assert view.category == "inquiry"
    assert [(g.change, g.level, g.from_level) for g in view.grade_history] == [
        ("graded", 2, None),
        ("escalated", 1, 2),
    ]
    assert view.title == "实验小学食堂饭菜变质"
    assert view.unit_ids == ["school-a"]
    assert [(r.report_id, r.match) for r in view.reports] == [("r1", None), ("r2", "similar_text")]
    assert view.opened_at == at(seconds=1)
    assert view.complete


def test_obligations_are_fulfilled_missed_or_closed_with_their_deadlines() -> None:
    view = fold(INCIDENT, full_incident().logged())

    states = {o.obligation_id: (o.state, o.deadline, o.fulfilled_at) for o in view.obligations}
    assert states == {
        "ob-bulletin": ("closed", at(hours=4), None),
        "ob-phone": ("fulfilled", at(minutes=40), at(minutes=20)),
        "ob-written": ("missed", at(minutes=70), None),
    }
    phone = next(o for o in view.obligations if o.obligation_id == "ob-phone")
    assert not phone.late
    assert [(n.notification_id, n.state) for n in phone.notifications] == [("n1", "acknowledged")]


def test_a_report_filed_after_the_miss_is_fulfilled_late_and_the_miss_stays_on_record() -> None:
    s = full_incident()
    s.add(
        ObligationFulfilled(
            obligation_id="ob-written",
            fulfilled_by="office-li",
            fulfilled_at=at(minutes=80),
            late=True,  # as notification records a report filed after the miss
        ),
        "obligation-ob-written",
        at(minutes=80),
    )

    written = next(
        o for o in fold(INCIDENT, s.logged()).obligations if o.obligation_id == "ob-written"
    )

    assert (written.state, written.late, written.missed_at) == (
        "fulfilled",
        True,
        at(minutes=70, seconds=1),
    )


@pytest.mark.parametrize("recorded_at", [at(minutes=60), at(minutes=80)])
@pytest.mark.parametrize("late", [True, False])
def test_lateness_is_what_notification_recorded_whatever_time_the_report_claims(
    recorded_at: datetime, late: bool
) -> None:
    # The report claims a time before the deadline, and the miss is on record; the archive
    # does not judge lateness again from those: notification did, when the report was filed.
    # Backdated (occurred_at before the miss) or not, its verdict is what the view shows.
    s = full_incident()
    s.add(
        ObligationFulfilled(
            obligation_id="ob-written",
            fulfilled_by="office-li",
            fulfilled_at=at(minutes=60),
            late=late,
        ),
        "obligation-ob-written",
        recorded_at,
    )

    written = next(
        o for o in fold(INCIDENT, s.logged()).obligations if o.obligation_id == "ob-written"
    )

    assert (written.state, written.late, written.missed_at) == (
        "fulfilled",
        late,
        at(minutes=70, seconds=1),
    )


def test_a_duty_past_its_deadline_is_missed_only_once_notification_recorded_the_miss() -> None:
    s = full_incident()
    s.events = [e for e in s.events if e.event_type != "DeadlineMissed"]

    view = fold(INCIDENT, s.logged())

    written = next(o for o in view.obligations if o.obligation_id == "ob-written")
    assert written.deadline < at(hours=6)  # long past, as of the last event
    assert (written.state, written.missed_at) == ("open", None)


def test_statements_carry_their_state_version_and_clearance() -> None:
    view = fold(INCIDENT, full_incident().logged())

    s1, s2 = view.statements
    assert (s1.statement_id, s1.state, s1.version, s1.body) == ("s1", "published", 2, "修改稿")
    assert [(a.version, a.decision) for a in s1.approvals] == [(1, "rejected"), (2, "approved")]
    assert s1.approved_at == at(minutes=40)
    assert [(p.outlet, p.version) for p in s1.publications] == [("weibo", 2)]
    assert (s2.statement_id, s2.state, s2.kind) == ("s2", "draft", "press_release")


def test_status_follows_resolve_review_and_archive() -> None:
    view = fold(INCIDENT, full_incident().logged())

    assert view.status == "archived"
    assert view.resolved_at == at(hours=5)
    assert view.case_id == "case-1"
    assert view.review is not None
    assert view.review.lessons == "加强抽检"


def test_dismissed_and_reopened_incidents() -> None:
    s = Script()
    r1 = s.add(report("r1", MediaTier.SELF_MEDIA, "某论坛", "传言"), "report-r1", at())
    s.add(
        IncidentOpened(title="传言", unit_ids=("school-a",), first_report_id="r1"),
        "incident-x",
        at(seconds=1),
        r1,
    )
    s.add(IncidentDismissed(reason="网络伪舆情"), "incident-x", at(minutes=5))
    assert (fold(INCIDENT, s.logged()).status, fold(INCIDENT, s.logged()).status_reason) == (
        "dismissed",
        "网络伪舆情",
    )

    s.add(IncidentReopened(reason="出现新情况"), "incident-x", at(minutes=9))
    assert fold(INCIDENT, s.logged()).status == "open"


@pytest.mark.parametrize("seed", range(8))
def test_any_ingest_order_across_streams_gives_the_same_view(seed: int) -> None:
    s = full_incident()
    in_order = fold(INCIDENT, s.logged())
    shuffled = list(range(len(s.events)))
    random.Random(seed).shuffle(shuffled)

    assert fold(INCIDENT, s.logged(shuffled)).model_dump() == in_order.model_dump()
    assert [e.event_id for e in lines_of(s.logged(shuffled))] == [e.event_id for e in s.events]


def test_a_grade_ingested_before_the_opening_is_right_once_both_are_in() -> None:
    s = full_incident()
    grade_only = fold(INCIDENT, [Logged(seq=1, event=s.events[2])])
    assert (grade_only.level, grade_only.opened_at, grade_only.complete) == (2, None, False)

    # the grading topic is ahead: grade first, then the intake events
    view = fold(INCIDENT, s.logged([2, 0, 1]))

    assert (view.level, view.title, view.opened_at, view.status) == (
        2,
        "实验小学食堂饭菜变质",
        at(seconds=1),
        "open",
    )
    assert view.complete


def test_an_event_from_a_slow_clock_still_follows_its_cause() -> None:
    s = Script()
    r1 = s.add(report("r1", MediaTier.CENTRAL, "人民网", "标题"), "report-r1", at())
    graded = s.add(
        IncidentGraded(level=1, category="hype", rules_fired=(), rulebook_version="1"),
        "grading-x",
        at(minutes=1),
        r1,
    )
    # the notification host's clock is two minutes behind grading's
    s.add(
        obligation("ob", "phone_quick_report", "手机快报", 1, at(minutes=31)),
        "obligation-ob",
        at(seconds=-60),
        graded,
    )
    s.add(
        ObligationFulfilled(
            obligation_id="ob", fulfilled_by="office-li", fulfilled_at=at(minutes=5)
        ),
        "obligation-ob",
        at(seconds=-90),
    )

    entries = lines_of(s.logged([3, 2, 1, 0]))

    order = [e.event_type for e in entries if e.event_type != "ObligationFulfilled"]
    assert order == ["ReportReceived", "IncidentGraded", "ObligationOpened"]
    # sorted before the obligation it is about, the fulfilment waits for it instead of vanishing
    (ob,) = fold(INCIDENT, s.logged([3, 2, 1, 0])).obligations
    assert ob.state == "fulfilled"


def test_as_of_shows_the_incident_as_it_stood_then() -> None:
    records = full_incident().logged()

    early = fold(INCIDENT, records, as_of=at(minutes=5))
    assert (early.level, early.status, len(early.reports)) == (2, "open", 1)
    assert [(o.obligation_id, o.state) for o in early.obligations] == [("ob-bulletin", "open")]
    assert early.statements == []

    middle = fold(INCIDENT, records, as_of=at(minutes=50))
    assert middle.level == 1
    assert {o.obligation_id: o.state for o in middle.obligations} == {
        "ob-bulletin": "open",
        "ob-phone": "fulfilled",
        "ob-written": "open",
    }
    assert [(st.statement_id, st.state) for st in middle.statements] == [
        ("s1", "published"),
        ("s2", "draft"),
    ]
    assert middle.as_of == at(minutes=50)

    late = fold(INCIDENT, records, as_of=at(hours=5, seconds=1))
    assert (late.status, late.case_id) == ("resolved", None)
    assert {o.obligation_id: o.state for o in late.obligations}["ob-written"] == "missed"


def test_a_skipped_stream_version_marks_the_incident_incomplete_until_it_arrives() -> None:
    s = full_incident()
    missing = next(i for i, e in enumerate(s.events) if e.event_type == "StatementRejected")
    without = [i for i in range(len(s.events)) if i != missing]

    view = fold(INCIDENT, s.logged(without))
    assert not view.complete
    assert [(g.stream_id, g.missing_versions) for g in view.gaps] == [("statement-s1", [3])]

    assert fold(INCIDENT, s.logged([*without, missing])).complete


def test_the_timeline_reads_in_chinese() -> None:
    lines = {e.event_type: e.summary for e in reversed(lines_of(full_incident().logged()))}

    assert lines["ReportReceived"] == "舆情件来自 大河网（省级媒体）：实验小学食堂饭菜变质"
    assert lines["IncidentGraded"] == "研判为二级（严重），类别：询问（依据：省级媒体报道）"
    assert lines["IncidentEscalated"].startswith("级别由二级（严重）升为一级（重大）")
    assert (
        lines["ObligationOpened"]
        == "开启报送义务：《网上舆情》报送，截止 2026-11-21 12:00（责任：领导小组办公室）"
    )
    assert (
        lines["DeadlineMissed"]
        == "报送义务「纸质快报」超时未完成（截止 2026-11-21 09:10），已提醒：领导小组"
    )
    assert lines["ObligationFulfilled"] == "报送义务「手机快报」已完成，2026-11-21 08:20，office-li"
    assert lines["StatementRejected"] == (
        "propaganda-wang（宣传部（处置专班））退回「关于实验小学食堂问题的回复」第 1 版：数据不准"
    )
    assert lines["IncidentResolved"] == "事件处置完毕：舆情平息"


def test_the_timeline_can_be_limited_to_some_event_types() -> None:
    entries = lines_of(full_incident().logged(), ["ObligationOpened", "DeadlineMissed"])

    assert [e.event_type for e in entries] == ["ObligationOpened"] * 3 + ["DeadlineMissed"]


def chain_of(events: list[Envelope]) -> list[ChainLink]:
    links, prev = [], GENESIS
    for position, event in enumerate(events, start=1):
        envelope = event.model_dump(mode="json")
        digest = link_hash(prev, envelope)
        links.append(ChainLink(position, str(event.event_id), envelope, prev, digest))
        prev = digest
    return links


def test_an_untouched_chain_verifies() -> None:
    links = chain_of(full_incident().events)

    report = verify_chain(INCIDENT, links, expected_length=len(links))

    assert (report.ok, report.length, report.head, report.broken) == (
        True,
        len(links),
        links[-1].hash,
        None,
    )


def test_an_edited_event_is_named_as_the_first_broken_link() -> None:
    links = chain_of(full_incident().events)
    edited = dict(links[4].envelope)
    edited["payload"] = {**edited["payload"], "title": "改过的标题"}
    links[4] = ChainLink(5, links[4].event_id, edited, links[4].prev_hash, links[4].hash)

    report = verify_chain(INCIDENT, links, expected_length=len(links))

    assert not report.ok
    assert report.broken is not None
    assert (report.broken.position, report.broken.event_id) == (5, links[4].event_id)
    assert "altered" in report.broken.reason


def test_a_removed_event_breaks_the_chain() -> None:
    links = chain_of(full_incident().events)

    middle = verify_chain(INCIDENT, links[:3] + links[4:], expected_length=len(links))
    tail = verify_chain(INCIDENT, links[:-1], expected_length=len(links))

    assert middle.broken is not None
    assert middle.broken.position == 4
    assert tail.broken is not None
    assert tail.broken.position == len(links)


def test_a_withdrawn_statement_shows_as_withdrawn_and_says_why() -> None:
    s = full_incident()
    s.add(
        StatementWithdrawn(
            statement_id="s2", version=1, withdrawn_by="spokesperson-sun", reason="口径待统一"
        ),
        "statement-s2",
        at(hours=4, minutes=30),
    )

    view = fold(INCIDENT, s.logged())
    lines = {e.event_type: e.summary for e in lines_of(s.logged())}

    assert {st.statement_id: st.state for st in view.statements} == {
        "s1": "published",
        "s2": "withdrawn",
    }
    assert lines["StatementWithdrawn"].startswith("spokesperson-sun 撤回")
    assert lines["StatementWithdrawn"].endswith("：口径待统一")


def level_one_statement_in_review() -> tuple[Script, Envelope]:
    """A level-1 incident whose reply the office has approved; the task force has not."""
    s = Script()
    r1 = s.add(report("r1", MediaTier.CENTRAL, "人民网", "食堂问题"), "report-r1", at())
    opened = s.add(
        IncidentOpened(title="食堂问题", unit_ids=("school-a",), first_report_id="r1"),
        f"incident-{INCIDENT}",
        at(seconds=1),
        r1,
    )
    graded = s.add(
        IncidentGraded(level=1, category="inquiry", rules_fired=(), rulebook_version="1"),
        f"grading-{INCIDENT}",
        at(seconds=2),
        opened,
        Actor.rule("rulebook"),
    )
    office, task_force = ApprovalStep(role="office"), ApprovalStep(role="propaganda")
    s.add(
        StatementDrafted(
            statement_id="s1",
            kind="online_reply",
            version=1,
            title="情况回复",
            body="经核查……",
            author="spokesperson-sun",
        ),
        "statement-s1",
        at(minutes=5),
    )
    s.add(
        StatementSubmitted(
            statement_id="s1",
            version=1,
            level=1,
            chain=(office, task_force),
            missing=(office, task_force),
        ),
        "statement-s1",
        at(minutes=6),
    )
    s.add(
        StatementApproved(
            statement_id="s1",
            version=1,
            step=office,
            approver="office-li",
            fully_approved=False,
            missing=(task_force,),
        ),
        "statement-s1",
        at(minutes=8),
    )
    return s, graded


def test_a_statement_in_review_says_so_in_the_statement_services_words() -> None:
    s, _ = level_one_statement_in_review()

    (statement,) = fold(INCIDENT, s.logged()).statements

    assert statement.state is StatementState.IN_REVIEW
    assert statement.model_dump(mode="json")["state"] == "in_review"
    assert [step.role for step in statement.missing] == ["propaganda"]
    assert (statement.submitted_at, statement.approved_at) == (at(minutes=6), None)


def test_a_level_lowered_in_review_clears_the_statement_as_the_statement_service_says() -> None:
    # Approved by the office at level 1; then the incident is lowered to level 2, whose
    # chain is the office alone: the statement service sets the chain again, and says the
    # office's approval covers it. The archive shows the same: approved, nothing missing.
    s, graded = level_one_statement_in_review()
    lowered = s.add(
        GradeOverridden(from_level=1, to_level=2, category="inquiry", reason="人工研判"),
        f"grading-{INCIDENT}",
        at(minutes=10),
        graded,
    )
    office = ApprovalStep(role="office")
    s.add(
        StatementSubmitted(
            statement_id="s1",
            version=1,
            level=2,
            chain=(office,),
            missing=(),
            reason="事件级别调整为二级",
        ),
        "statement-s1",
        at(minutes=10, seconds=1),
        lowered,
    )

    view = fold(INCIDENT, s.logged())

    (statement,) = view.statements
    assert (statement.state, statement.missing) == (StatementState.APPROVED, [])
    assert (statement.level, statement.chain) == (2, [office])
    # under review since its first submission, cleared when the chain was set again
    assert (statement.submitted_at, statement.approved_at) == (
        at(minutes=6),
        at(minutes=10, seconds=1),
    )
    line = lines_of(s.logged(), ["StatementSubmitted"])[-1].summary
    assert line == (
        "「情况回复」第 1 版审核链调整为：领导小组办公室（事件级别调整为二级），"
        "已有审核均已覆盖，可以发布"
    )


def test_a_rechain_that_needs_more_puts_an_approved_statement_back_in_review() -> None:
    s, _ = level_one_statement_in_review()
    task_force = ApprovalStep(role="propaganda")
    s.add(
        StatementApproved(
            statement_id="s1",
            version=1,
            step=task_force,
            approver="propaganda-wang",
            fully_approved=True,
            missing=(),
        ),
        "statement-s1",
        at(minutes=9),
    )
    assert fold(INCIDENT, s.logged()).statements[0].state is StatementState.APPROVED
    leader = ApprovalStep(role="leader")
    s.add(
        StatementSubmitted(
            statement_id="s1",
            version=1,
            level=1,
            chain=(ApprovalStep(role="office"), task_force, leader),
            missing=(leader,),
            reason="审批链调整",
        ),
        "statement-s1",
        at(minutes=11),
    )

    (statement,) = fold(INCIDENT, s.logged()).statements

    assert (statement.state, statement.missing, statement.approved_at) == (
        StatementState.IN_REVIEW,
        [leader],
        None,
    )


def test_notification_channels_are_named_by_the_catalogue() -> None:
    s = Script()
    s.add(obligation("ob", "phone_quick_report", "手机快报", 1, at(minutes=30)), "ob", at())
    for attempt, channel in enumerate(("wecom", "dingtalk", "feishu"), start=1):
        s.add(
            NotificationSent(
                notification_id=f"n{attempt}",
                obligation_id="ob",
                channel=channel,
                recipient="leader-zhang",
                attempt=1,
            ),
            "ob",
            at(minutes=attempt),
        )

    lines = [e.summary for e in lines_of(s.logged(), ["NotificationSent"])]

    assert lines == [
        f"已通过{name}通知 leader-zhang：「手机快报」（第 1 次）"
        for name in ("企业微信", "钉钉", "飞书")
    ]
    # With the directory's names, as the archive's API reads them, staff see the person.
    named = timeline(
        s.logged(), SHANGHAI, CATALOGUE, ["NotificationSent"], {"leader-zhang": "张组长"}
    )
    assert named[0].summary == "已通过企业微信通知 张组长：「手机快报」（第 1 次）"


def test_a_person_no_channel_reaches_reads_as_not_told_with_why() -> None:
    s = Script()
    s.add(obligation("ob", "phone_quick_report", "手机快报", 1, at(minutes=30)), "ob", at())
    no_contact = "没有可送达此人的渠道（未配置联系方式）"
    s.add(
        NotificationFailed(
            notification_id="n1",
            obligation_id="ob",
            channel=NO_CHANNEL,
            recipient="leader-qian",
            attempts=0,
            reason=no_contact,
        ),
        "notification-n1",
        at(seconds=1),
    )
    s.add(
        NotificationFailed(
            notification_id="n2",
            obligation_id="ob",
            channel="sms",
            recipient="leader-zhang",
            attempts=5,
            reason="HTTP 503",
        ),
        "notification-n2",
        at(minutes=5),
    )
    nobody = "无人可通知（事件所属单位及其上级单位中无人担任应通知的角色）"
    s.add(
        NotificationFailed(
            notification_id="n3",
            obligation_id="ob",
            channel=NO_CHANNEL,
            recipient="",
            attempts=0,
            reason=nobody,
        ),
        "notification-n3",
        at(minutes=6),
    )
    people = {"leader-qian": "钱副组长", "leader-zhang": "张组长"}

    lines = timeline(s.logged(), SHANGHAI, CATALOGUE, ["NotificationFailed"], people)

    assert [e.summary for e in lines] == [
        f"未能通知 钱副组长「手机快报」：{no_contact}",
        "通过短信通知 张组长 失败（已尝试 5 次）：HTTP 503",
        f"未能通知任何人「手机快报」：{nobody}",
    ]
    (duty,) = fold(INCIDENT, s.logged()).obligations
    assert [
        (n.recipient, n.channel, n.state, n.attempts, n.reason) for n in duty.notifications
    ] == [
        ("leader-qian", "none", "failed", 0, no_contact),
        ("leader-zhang", "sms", "failed", 5, "HTTP 503"),
        ("", "none", "failed", 0, nobody),
    ]


# --------------------------------------------------------------------------- referrals


def referral_script() -> tuple[Script, datetime]:
    """A partner's referral, its claims confirmed by the office, then merged."""
    s = Script("inc-r")
    stream = "incident-inc-r"
    partner = Actor(type="client", id="partner-wxb", unit_id="county")
    office = Actor(type="person", id="office-li", unit_id="county")
    claimed = report("rp", MediaTier.CENTRAL, "网信办转办", "实验小学食堂问题").model_copy(
        update={"filed_by": "partner-wxb", "claims_unconfirmed": True}
    )
    s.add(
        IncidentOpened(title="实验小学食堂问题", unit_ids=("school-a",), first_report_id="rp"),
        stream,
        at(),
        actor=partner,
    )
    s.add(claimed, stream, at(), actor=partner)
    s.add(
        ReferralOpened(report_id="rp", referred_by="partner-wxb", matched_incident_ids=("inc-1",)),
        stream,
        at(),
        actor=partner,
    )
    confirmed_at = at(minutes=5)
    s.add(
        ReportClaimsConfirmed(
            report_id="rp",
            media_tier=MediaTier.CENTRAL,
            reach=claimed.reach,
            reason="已核实",
            confirmed_by="office-li",
        ),
        stream,
        confirmed_at,
        actor=office,
    )
    s.add(
        ReferralMerged(
            into_incident_id="inc-1", report_ids=("rp",), reason="同一事项", merged_by="office-li"
        ),
        stream,
        at(minutes=10),
        actor=office,
    )
    s.add(
        IncidentResolved(reason="已并入事件 inc-1：同一事项"), stream, at(minutes=10), actor=office
    )
    return s, confirmed_at


def test_a_referral_shows_its_link_its_merge_and_the_confirmed_claims() -> None:
    s, confirmed_at = referral_script()
    before = fold("inc-r", s.logged(), as_of=at(minutes=1))
    assert before.referral is not None
    assert before.referral.matched_incident_ids == ["inc-1"]
    assert before.referral.merged_into is None
    assert before.reports[0].claims_unconfirmed is True

    view = fold("inc-r", s.logged())

    assert view.referral is not None
    assert (view.referral.referred_by, view.referral.merged_into) == ("partner-wxb", "inc-1")
    assert (view.referral.merged_by, view.referral.merge_reason) == ("office-li", "同一事项")
    assert view.status.value == "resolved"
    (claimed,) = view.reports
    assert claimed.claims_unconfirmed is False
    assert claimed.claims_confirmed is not None
    assert (claimed.claims_confirmed.confirmed_by, claimed.claims_confirmed.at) == (
        "office-li",
        confirmed_at,
    )
    lines = [e.summary for e in lines_of(s.logged())]
    assert any("待核实" in line for line in lines)
    assert any("转办线索并入事件 inc-1" in line for line in lines)
    assert any("办公室核实舆情件 rp" in line for line in lines)


def test_a_confirmation_seen_before_its_report_waits_for_it() -> None:
    s, _ = referral_script()
    order = [0, 3, 2, 1, 4, 5]  # the confirmation and the link before the report
    view = fold("inc-r", s.logged(order))
    assert view.reports[0].claims_confirmed is not None
    assert view.referral is not None
    assert view.referral.merged_into == "inc-1"
