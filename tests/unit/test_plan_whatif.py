"""The what-if's pure comparison (services/grading/whatif.py): a recorded incident replayed
through a candidate plan's rulebook and duties, and what would differ."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.grading.bootstrap import load_rulebook
from services.grading.domain import ReportFacts
from services.grading.whatif import (
    Candidate,
    GradeStep,
    RecordedDuty,
    RecordedIncident,
    candidate_levels,
    compare,
)
from shared.directory import Directory
from shared.events import MediaTier, Reach
from shared.plan import load_plan
from shared.settings import CONFIG_DIR, Settings

TZ = ZoneInfo("Asia/Shanghai")
# 19:00 in Shanghai: after the school's 18:00 cut-off, before Huaning's 21:00 one.
GRADED = datetime(2026, 11, 20, 11, 0, tzinfo=UTC)
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")


def candidate(name: str) -> Candidate:
    plan = load_plan(CONFIG_DIR / "plans" / name, Settings().policy_paths, DIRECTORY)
    return Candidate(plan.id, plan.version, load_rulebook(plan.paths["rulebook"]), plan.obligations)


HUANING = candidate("huaning")
SCHOOL = candidate("school")


def report(n: int, text: str, tier: MediaTier = MediaTier.COUNTY, views: int = 0) -> ReportFacts:
    return ReportFacts(
        report_id=f"r{n}",
        source_name=f"站点{n}",
        media_tier=tier,
        normalized_url=f"https://example.com/{n}",
        reach=Reach(views=views),
        text=text,
    )


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=TZ).astimezone(UTC)


def inquiry(duties: tuple[RecordedDuty, ...]) -> RecordedIncident:
    """A level-3 inquiry graded under Huaning at 19:00: direct handling in 24h, a reply the
    same day by 23:59 (graded before Huaning's 21:00 cut-off)."""
    return RecordedIncident(
        incident_id="inc-1",
        graded_at=GRADED,
        level=3,
        category="inquiry",
        plan_id="huaning",
        plan_version="2026.11-seed003",
        history=(GradeStep(GRADED, 3),),
        reports=(report(1, "请问学校门口为什么积水"),),
        duties=duties,
    )


RECORDED_DUTIES = (
    RecordedDuty("direct_handling", GRADED + timedelta(hours=24), GRADED + timedelta(hours=30)),
    RecordedDuty("same_day_reply", local(20, 23, 59), local(20, 22, 0)),
)


def test_the_plan_it_was_graded_under_changes_nothing() -> None:
    diff = compare(inquiry(RECORDED_DUTIES), HUANING, TZ, GRADED + timedelta(days=3))
    assert not diff.differs
    assert diff.recorded_plan == "huaning@2026.11-seed003"
    outcomes = {d.kind: (d.change, d.outcome) for d in diff.duties}
    # Direct handling was met 30 hours after grading: late, as it was on record.
    assert outcomes == {"direct_handling": ("same", "late"), "same_day_reply": ("same", "met")}
    assert diff.would_miss == ("direct_handling",)


def test_the_school_plan_moves_deadlines_and_judges_them_by_when_they_were_met() -> None:
    diff = compare(inquiry(RECORDED_DUTIES), SCHOOL, TZ, GRADED + timedelta(days=3))
    assert diff.differs
    assert (diff.level, diff.category) == (3, "inquiry")
    by_kind = {d.kind: d for d in diff.duties}
    # 48 hours for direct handling: the reply at 30 hours would have been on time.
    handling = by_kind["direct_handling"]
    assert handling.deadline == GRADED + timedelta(hours=48)
    assert (handling.change, handling.outcome) == ("moved", "met")
    # Graded at 19:00, after the school's 18:00 cut-off: due next day at 12:00, met at 22:00.
    reply = by_kind["same_day_reply"]
    assert reply.deadline == local(21, 12, 0)
    assert reply.recorded_deadline == local(20, 23, 59)
    assert (reply.change, reply.outcome) == ("moved", "met")
    assert diff.would_miss == ()


def test_a_duty_the_record_never_had_is_new_and_missed_once_its_deadline_passed() -> None:
    recorded = inquiry(RECORDED_DUTIES)
    hype = replace(recorded, category="hype", reports=(report(1, "有人恶意炒作学校"),))
    diff = compare(hype, SCHOOL, TZ, GRADED + timedelta(days=3))
    told = next(d for d in diff.duties if d.kind == "facts_told")
    assert (told.change, told.outcome, told.met_at) == ("new", "missed", None)
    assert told.deadline == GRADED + timedelta(hours=12)
    assert "facts_told" in diff.would_miss
    # Huaning opened a same-day reply the school plan does not owe a hype case.
    assert diff.dropped == ("same_day_reply",)
    # Before its deadline it is still open, not missed.
    early = compare(hype, SCHOOL, TZ, GRADED + timedelta(hours=1))
    assert next(d for d in early.duties if d.kind == "facts_told").outcome == "open"


def test_a_later_report_raises_the_level_and_opens_its_duties_when_the_record_rose() -> None:
    raised_at = GRADED + timedelta(hours=5)
    recorded = RecordedIncident(
        incident_id="inc-2",
        graded_at=GRADED,
        level=1,
        category="inquiry",
        plan_id="huaning",
        plan_version="2026.11-seed003",
        history=(GradeStep(GRADED, 3), GradeStep(raised_at, 1)),
        reports=(report(1, "请问积水"), report(2, "央视报道积水", MediaTier.CENTRAL)),
        duties=(RecordedDuty("phone_quick_report", raised_at + timedelta(minutes=30), raised_at),),
    )
    assert candidate_levels(SCHOOL.rulebook, recorded.reports) == [3, 1]
    diff = compare(recorded, SCHOOL, TZ, GRADED + timedelta(days=3))
    assert diff.level == 1
    tracking = next(d for d in diff.duties if d.kind == "tracking_update")
    assert tracking.counted_from == raised_at
    assert tracking.deadline == raised_at + timedelta(hours=2)
    assert diff.dropped == ("phone_quick_report",)
    # Under Huaning the quick report, met at once, stays met.
    same = compare(recorded, HUANING, TZ, GRADED + timedelta(days=3))
    quick = next(d for d in same.duties if d.kind == "phone_quick_report")
    assert (quick.change, quick.outcome) == ("same", "met")


def test_levels_never_go_down_as_reports_come() -> None:
    reports = (report(1, "央视报道", MediaTier.CENTRAL), report(2, "请问", MediaTier.COUNTY))
    assert candidate_levels(HUANING.rulebook, reports) == [1, 1]
