"""The assessment (考评, seed 003 篇三 第二十八条) computed from folded incident views: who
each duty's outcome counts for, concealment by rule, untrue fulfilments, releases without
clearance and commendations; its Chinese document; its rules file; the timeline's lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.archive.assessment_api import load_rules
from services.archive.assessment_report import AssessmentReport
from services.archive.domain import Logged, fold, timeline
from services.archive.domain.assessment import (
    AlreadyMarkedUntrue,
    Assessment,
    AssessmentRules,
    NotFulfilled,
    assess,
    decide_untrue,
)
from services.archive.domain.views import IncidentView
from shared.catalogue import Catalogue
from shared.directory import Directory
from shared.events import (
    Actor,
    CommendationRecorded,
    DeadlineMissed,
    Envelope,
    EventPayload,
    FulfilmentMarkedUntrue,
    IncidentOpened,
    MediaTier,
    ObligationFulfilled,
    ObligationOpened,
    Reach,
    ReportAttached,
    ReportReceived,
    SourceType,
    UnclearedReleaseRecorded,
)
from shared.settings import CONFIG_DIR

T0 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)  # 08:00 in the bureau's time
TZ = ZoneInfo("Asia/Shanghai")
CATALOGUE = Catalogue.load(CONFIG_DIR / "catalogue.yaml")
DIRECTORY = Directory.model_validate(
    {
        "units": [
            {"id": "county", "name": "县局"},
            {"id": "school-a", "name": "实验小学", "parent": "county"},
            {"id": "school-b", "name": "第二中学", "parent": "county"},
        ],
        "people": [
            {"id": "office-li", "name": "李主任", "unit": "county", "roles": ["office"]},
            {"id": "monitor-chen", "name": "陈管理员", "unit": "school-a", "roles": ["monitor"]},
            {"id": "sun", "name": "孙老师", "unit": "school-a", "roles": ["spokesperson"]},
            {"id": "zhou", "name": "周老师", "unit": "school-a", "roles": ["spokesperson"]},
            {"id": "monitor-wu", "name": "吴管理员", "unit": "school-b", "roles": ["monitor"]},
        ],
    }
)
RULES = AssessmentRules(concealed_after_minutes=60)
RULE = Actor.rule("rulebook")
OFFICE = Actor(type="person", id="office-li", unit_id="county")


class Log:
    """One incident's log as the archive holds it, each stream numbered."""

    def __init__(self, incident_id: str = "inc-a", units: tuple[str, ...] = ("school-a",)):
        self.incident_id = incident_id
        self.units = units
        self.records: list[Logged] = []
        self.versions: dict[str, int] = {}

    def add(self, payload: EventPayload, stream: str, at: datetime, actor: Actor) -> Envelope:
        key = f"{stream}-{self.incident_id}"
        self.versions[key] = self.versions.get(key, 0) + 1
        event = Envelope.new(
            payload,
            incident_id=self.incident_id,
            stream_id=key,
            stream_version=self.versions[key],
            actor=actor,
            unit_id=self.units[0],
            occurred_at=at,
        )
        self.records.append(Logged(seq=len(self.records) + 1, event=event))
        return event

    def report(self, report_id: str, filer: Actor, at: datetime, **changes: object) -> None:
        payload = ReportReceived(
            report_id=report_id,
            source_type=SourceType.FORUM,
            source_name="本地论坛",
            media_tier=MediaTier.COUNTY,
            url=f"https://bbs.example/{report_id}",
            normalized_url=f"bbs.example/{report_id}",
            title="网传食堂问题",
            excerpt="有网友发帖称……",
            author=None,
            published_at=at - timedelta(minutes=30),
            observed_at=changes.pop("observed_at", at),  # type: ignore[arg-type]
            reach=Reach(),
            unit_ids=self.units,
            filed_by=str(changes.pop("filed_by", filer.id)),
        )
        self.add(payload, f"report-{report_id}", at, filer)
        if not any(isinstance(r.event.payload, IncidentOpened) for r in self.records):
            self.add(
                IncidentOpened(
                    title="网传食堂问题", unit_ids=self.units, first_report_id=report_id
                ),
                "incident",
                at,
                filer,
            )

    def duty(self, obligation_id: str, owner_role: str = "office", minutes: int = 30) -> None:
        self.add(
            ObligationOpened(
                obligation_id=obligation_id,
                kind="phone_quick_report",
                title="手机快报",
                level=1,
                owner_role=owner_role,
                recipients=("leader-zhang",),
                counted_from=T0,
                deadline=T0 + timedelta(minutes=minutes),
            ),
            "obligations",
            T0,
            RULE,
        )

    def fulfilled(self, obligation_id: str, by: str, at: datetime, late: bool = False) -> None:
        actor = Actor(type="person", id=by, unit_id="school-a")
        self.add(
            ObligationFulfilled(
                obligation_id=obligation_id, fulfilled_by=by, fulfilled_at=at, late=late
            ),
            "obligations",
            at,
            actor,
        )

    def missed(self, obligation_id: str) -> None:
        self.add(
            DeadlineMissed(
                obligation_id=obligation_id,
                kind="phone_quick_report",
                level=1,
                deadline=T0 + timedelta(minutes=30),
                alerted_roles=("leader",),
            ),
            "obligations",
            T0 + timedelta(minutes=31),
            Actor.rule("deadline-watch"),
        )

    def view(self) -> IncidentView:
        return fold(self.incident_id, self.records)


def person(person_id: str, unit: str = "school-a") -> Actor:
    return Actor(type="person", id=person_id, unit_id=unit)


def assessed(*views: IncidentView, units: set[str] | None = None, **rules: float) -> Assessment:
    chosen = AssessmentRules(**rules) if rules else RULES
    return assess(
        views,
        T0 - timedelta(days=1),
        T0 + timedelta(days=1),
        units,
        T0 + timedelta(hours=6),
        chosen,
        DIRECTORY,
    )


def counts_of(assessment: Assessment) -> dict[str, dict[str, int]]:
    """Per unit and person id, the non-zero counts."""
    rows = {u.unit_id: u.counts for u in assessment.units} | {
        p.person_id: p.counts for p in assessment.people
    }
    return {key: {k: v for k, v in c.model_dump().items() if v} for key, c in rows.items()}


# --------------------------------------------------------------------------- per person


def test_a_duty_met_counts_for_the_person_who_met_it_and_a_miss_for_the_role_holders() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.duty("on-time")
    log.duty("late")
    log.duty("missed", owner_role="spokesperson")
    log.fulfilled("on-time", "monitor-chen", T0 + timedelta(minutes=10))
    log.fulfilled("late", "sun", T0 + timedelta(minutes=40), late=True)
    log.missed("missed")

    assessment = assessed(log.view())

    assert counts_of(assessment) == {
        "school-a": {"on_time": 1, "late": 1, "missed": 1},
        "monitor-chen": {"on_time": 1},
        "sun": {"late": 1, "missed": 1},
        "zhou": {"missed": 1},  # holds the owner role in the unit too
    }
    [missed] = [r for r in assessment.units[0].records if r.kind == "missed"]
    assert (missed.unit_id, missed.owner_role, missed.holders) == (
        "school-a",
        "spokesperson",
        ["sun", "zhou"],
    )
    assert {p.person_id: p.name for p in assessment.people}["sun"] == "孙老师"


def test_a_miss_of_a_role_the_unit_lacks_counts_against_its_holders_in_the_unit_above() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.duty("missed")  # owned by the office: the county's, not the school's
    log.missed("missed")

    assessment = assessed(log.view())

    assert counts_of(assessment) == {"school-a": {"missed": 1}, "office-li": {"missed": 1}}
    [missed] = assessment.units[0].records
    assert (missed.unit_id, missed.holders) == ("school-a", ["office-li"])


def test_an_incident_of_two_units_counts_a_duty_for_each_unit_and_once_for_the_person() -> None:
    log = Log(units=("school-a", "school-b"))
    log.report("r1", person("monitor-chen"), T0)
    log.duty("d1")
    log.fulfilled("d1", "monitor-chen", T0 + timedelta(minutes=5))

    assessment = assessed(log.view())
    only_b = assessed(log.view(), units={"school-b"})

    assert counts_of(assessment) == {
        "school-a": {"on_time": 1},
        "school-b": {"on_time": 1},
        "monitor-chen": {"on_time": 1},
    }
    assert [u.unit_id for u in only_b.units] == ["school-b"]


def test_a_duty_of_another_period_is_not_counted() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.duty("d1")
    later = assess(
        [log.view()], T0 + timedelta(days=1), T0 + timedelta(days=2), None, T0, RULES, DIRECTORY
    )
    assert (later.units, later.people) == ([], [])


# --------------------------------------------------------------------------- concealed (瞒报)


def test_a_units_first_report_long_after_another_filer_is_concealed() -> None:
    log = Log()
    log.report("r-county", OFFICE, T0)  # the county knew it first
    log.report("r-own", person("monitor-chen"), T0 + timedelta(minutes=61))

    assessment = assessed(log.view())

    assert counts_of(assessment) == {
        "school-a": {"concealed": 1},
        "monitor-chen": {"concealed": 1},
    }
    [record] = assessment.units[0].records
    assert (record.known_from, record.known_at, record.delay_seconds, record.record_id) == (
        "office-li",
        T0,
        61 * 60,
        "r-own",
    )


def test_a_first_report_within_the_configured_time_is_not_concealed() -> None:
    log = Log()
    log.report("r-county", OFFICE, T0)
    log.report("r-own", person("monitor-chen"), T0 + timedelta(minutes=50))

    assert counts_of(assessed(log.view())) == {}
    # The same delay under a plan that allows 30 minutes is concealment.
    assert counts_of(assessed(log.view(), concealed_after_minutes=30))["school-a"] == {
        "concealed": 1
    }


def test_a_unit_that_reported_first_conceals_nothing_whoever_reports_later() -> None:
    log = Log()
    log.report("r-own", person("monitor-chen"), T0)
    log.report("r-own-2", person("sun"), T0 + timedelta(hours=3))
    log.report("r-county", OFFICE, T0 + timedelta(hours=2))

    assert counts_of(assessed(log.view())) == {}


def test_a_partners_referral_merged_in_counts_from_when_the_partner_observed_it() -> None:
    log = Log()
    merged_by = OFFICE  # the office merging records the partner's report on the incident
    log.report(
        "r-partner", merged_by, T0 + timedelta(hours=3), filed_by="partner-wxb", observed_at=T0
    )
    log.add(
        ReportAttached(report_id="r-partner", match="merged_referral"),
        "report-r-partner",
        T0 + timedelta(hours=3),
        merged_by,
    )
    log.report("r-own", person("monitor-chen"), T0 + timedelta(hours=2))

    assessment = assessed(log.view())

    assert counts_of(assessment) == {"school-a": {"concealed": 1}, "monitor-chen": {"concealed": 1}}
    [record] = assessment.units[0].records
    assert (record.known_from, record.known_at) == ("partner-wxb", T0)


# --------------------------------------------------------------------------- untrue (谎报)


def test_a_fulfilment_marked_untrue_counts_against_the_fulfiller_not_as_met() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.duty("d1")
    log.fulfilled("d1", "sun", T0 + timedelta(minutes=5))
    log.add(
        FulfilmentMarkedUntrue(
            obligation_id="d1",
            fulfilled_by="sun",
            reason="快报内容与事实不符",
            marked_by="office-li",
        ),
        "assessment",
        T0 + timedelta(hours=1),
        OFFICE,
    )

    assessment = assessed(log.view())

    assert counts_of(assessment) == {"school-a": {"untrue": 1}, "sun": {"untrue": 1}}
    [record] = assessment.people[0].records
    assert (record.reason, record.recorded_by) == ("快报内容与事实不符", "office-li")


def test_only_a_fulfilled_duty_is_found_untrue_and_only_once() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.duty("open")
    log.duty("done")
    log.fulfilled("done", "sun", T0 + timedelta(minutes=5))
    duties = {o.obligation_id: o for o in log.view().obligations}

    with pytest.raises(NotFulfilled):
        decide_untrue(duties["open"], None, "不实", "office-li")
    found = decide_untrue(duties["done"], None, "不实", "office-li")
    log.add(found, "assessment", T0 + timedelta(hours=1), OFFICE)
    with pytest.raises(AlreadyMarkedUntrue):
        decide_untrue(
            {o.obligation_id: o for o in log.view().obligations}["done"], None, "不实", "office-li"
        )
    assert found.fulfilled_by == "sun"


# --------------------------------------------------------------------------- releases, praise


def test_releases_without_clearance_and_commendations_are_counted_and_listed() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.add(
        UnclearedReleaseRecorded(
            release_id="rel-1",
            released_by="sun",
            unit_id="school-a",
            channel="个人微博",
            released_at=T0 + timedelta(hours=1),
            content="未经审核的情况说明",
            recorded_by="office-li",
        ),
        "assessment",
        T0 + timedelta(hours=2),
        OFFICE,
    )
    for n, (person_id, unit) in enumerate([("monitor-chen", "school-a"), (None, "school-a")]):
        log.add(
            CommendationRecorded(
                commendation_id=f"c{n}",
                person_id=person_id,
                unit_id=unit,
                reason="发现及时，报送准确",
                recorded_by="office-li",
            ),
            "assessment",
            T0 + timedelta(hours=3),
            OFFICE,
        )

    assessment = assessed(log.view())

    assert counts_of(assessment) == {
        "school-a": {"uncleared_release": 1, "commendation": 1},
        "sun": {"uncleared_release": 1},
        "monitor-chen": {"commendation": 1},
    }
    release = next(r for r in assessment.units[0].records if r.kind == "uncleared_release")
    assert (release.title, release.reason, release.at) == (
        "个人微博",
        "未经审核的情况说明",
        T0 + timedelta(hours=1),
    )


# --------------------------------------------------------------------------- the document


def test_the_period_report_reads_in_chinese_with_a_table_per_unit_and_person() -> None:
    log = Log()
    log.report("r-county", OFFICE, T0)
    log.report("r-own", person("monitor-chen"), T0 + timedelta(hours=2))
    log.duty("d1")
    log.missed("d1")
    report = AssessmentReport(DIRECTORY, CATALOGUE, TZ)

    text = report.markdown(assessed(log.view()))

    assert text.startswith("# 网络舆情处置考评报告（2026-11-20 08:00 至 2026-11-22 08:00）")
    assert "| 单位 | 按时 | 迟报 | 漏报 | 瞒报 | 谎报 | 未经审核发布 | 表扬 |" in text
    assert "| 实验小学 | 0 | 0 | 1 | 1 | 0 | 0 | 0 |" in text
    assert "| 陈管理员 | 实验小学 | 0 | 0 | 0 | 1 | 0 | 0 | 0 |" in text
    assert "### 瞒报（1）" in text
    assert "本单位首报晚于 李主任 报送（2026-11-21 08:00）2 小时" in text
    assert "### 漏报（1）" in text
    assert "手机快报（责任：领导小组办公室" in text


def test_the_html_report_shows_markup_in_what_people_wrote_as_text_and_loads_nothing() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.add(
        CommendationRecorded(
            commendation_id="c1",
            person_id="sun",
            unit_id="school-a",
            reason="<script>alert(1)</script> ![x](https://evil.example/x.png) | 表扬",
            recorded_by="office-li",
        ),
        "assessment",
        T0 + timedelta(hours=1),
        OFFICE,
    )
    page = AssessmentReport(DIRECTORY, CATALOGUE, TZ).html(assessed(log.view()))

    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<img" not in page
    assert 'src="https://evil.example' not in page
    assert "default-src 'none'" in page
    assert "<title>网络舆情处置考评报告（2026-11-20 08:00 至 2026-11-22 08:00）</title>" in page
    assert page.count("<tr>") >= 4  # the tables held: the | in the reason did not split a row


# --------------------------------------------------------------------------- rules and lines


def test_the_plans_assessment_file_wins_over_the_default_and_a_bad_one_names_the_field(
    tmp_path: Path,
) -> None:
    pack = tmp_path / "pack"
    pack.mkdir()
    assert load_rules(pack).concealed_after_minutes == 60  # config/assessment.yaml
    (pack / "assessment.yaml").write_text("concealed_after_minutes: 30\n", encoding="utf-8")
    assert load_rules(pack).concealed_after_minutes == 30
    (pack / "assessment.yaml").write_text("concealed_after_minutes: -5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"assessment\.yaml.*concealed_after_minutes"):
        load_rules(pack)


def test_the_timeline_says_each_finding_in_chinese() -> None:
    log = Log()
    log.report("r1", person("monitor-chen"), T0)
    log.duty("d1")
    log.fulfilled("d1", "sun", T0 + timedelta(minutes=5))
    log.add(
        FulfilmentMarkedUntrue(
            obligation_id="d1", fulfilled_by="sun", reason="内容不实", marked_by="office-li"
        ),
        "assessment",
        T0 + timedelta(hours=1),
        OFFICE,
    )
    log.add(
        UnclearedReleaseRecorded(
            release_id="rel-1",
            released_by="sun",
            unit_id="school-a",
            channel="个人微博",
            released_at=T0 + timedelta(hours=1),
            content="情况说明",
            recorded_by="office-li",
        ),
        "assessment",
        T0 + timedelta(hours=2),
        OFFICE,
    )
    log.add(
        CommendationRecorded(
            commendation_id="c1", unit_id="school-a", reason="处置及时", recorded_by="office-li"
        ),
        "assessment",
        T0 + timedelta(hours=3),
        OFFICE,
    )
    people = {p.id: p.name for p in DIRECTORY.people}
    units = {u.id: u.name for u in DIRECTORY.units}

    lines = [e.summary for e in timeline(log.records, TZ, CATALOGUE, (), people, units)][-3:]

    assert lines == [
        "李主任 认定报送义务「手机快报」的完成情况不实（谎报，完成人：孙老师）：内容不实",
        "李主任 记录未经审核发布：孙老师（实验小学）于 2026-11-21 09:00 经 个人微博 "
        "发布「情况说明」",
        "李主任 表扬实验小学：处置及时",
    ]
