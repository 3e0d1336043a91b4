"""The what-if (services/grading/whatif.py) replays every duty rule of a candidate plan
against the record, not only the duties opened with the grade: those opened on the
proposal, at the confirmation, on a signed instruction, at resolution and on a decision,
those waiting on another duty, and those counted from the first report's publication; it
says which would have been missed given when the recorded duties were met, and which the
record gives no event to open on. The candidate is tests/fakes/rules_pack.py (the town plan
with every rule written); the records are built here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.grading.bootstrap import load_rulebook
from services.grading.domain import ReportFacts
from services.grading.whatif import (
    PROPOSED_EVENT,
    Candidate,
    GradeStep,
    IncidentDifference,
    RecordedDecision,
    RecordedDuty,
    RecordedIncident,
    RecordedInstruction,
    compare,
)
from shared.directory import Directory
from shared.events import Category, MediaTier, Reach
from shared.plan import load_plan
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.rules_pack import write_rules_pack

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # graded (or proposed) at 10:00 in Shanghai
NOW = T0 + timedelta(days=5)
DIRECTORY = Directory.load(CONFIG_DIR / "directory.yaml")


def load(pack: Path) -> Candidate:
    plan = load_plan(pack, Settings().policy_paths, DIRECTORY)
    return Candidate(
        plan.id,
        plan.version,
        load_rulebook(plan.paths["rulebook"]),
        plan.obligations,
        plan.manifest.grading.confirmed_by,
    )


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Candidate:
    return load(write_rules_pack(tmp_path_factory.mktemp("plans")))


TOWN = load(CONFIG_DIR / "plans" / "town")


def report(tier: MediaTier, published: datetime | None = None) -> ReportFacts:
    return ReportFacts(
        report_id="r1",
        source_name="某网站",
        media_tier=tier,
        normalized_url="https://example.com/1",
        reach=Reach(),
        text="镇上道路积水",
        published_at=published,
        observed_at=published,
    )


def record(
    level: int,
    tier: MediaTier,
    *duties: RecordedDuty,
    history: tuple[GradeStep, ...] | None = None,
    published: datetime | None = None,
    instructions: tuple[RecordedInstruction, ...] = (),
    resolved_at: datetime | None = None,
    decisions: tuple[RecordedDecision, ...] = (),
) -> RecordedIncident:
    return RecordedIncident(
        incident_id="inc-1",
        graded_at=T0,
        level=level,
        category=Category("inquiry"),
        plan_id="town",
        plan_version="2026.12.1-seed003-1",
        history=history or (GradeStep(T0, level),),
        reports=(report(tier, published),),
        duties=duties,
        instructions=instructions,
        resolved_at=resolved_at,
        decisions=decisions,
    )


def by_kind(diff: IncidentDifference) -> dict[str, tuple[datetime, datetime, str, str]]:
    """Each duty the candidate opens: (counted from, deadline, outcome, change)."""
    return {d.kind: (d.counted_from, d.deadline, d.outcome, d.change) for d in diff.duties}


def not_opened(diff: IncidentDifference) -> dict[str, str]:
    return {n.kind: n.why for n in diff.not_opened}


def test_a_duty_counted_from_publication_is_late_where_the_grade_was_met_in_time(
    rules: Candidate,
) -> None:
    # First published two hours before the grading; the group was told 10 minutes after it.
    published = T0 - timedelta(hours=2)
    told = T0 + timedelta(minutes=10)
    incident = record(
        1,
        MediaTier.CENTRAL,
        RecordedDuty("group_report_major", T0 + timedelta(minutes=30), told),
        RecordedDuty("county_report", told + timedelta(hours=1), T0 + timedelta(minutes=50)),
        published=published,
    )
    # Under the town plan as recorded, the two duties filed were on time.
    as_recorded = by_kind(compare(incident, TOWN, TZ, NOW))
    assert as_recorded["group_report_major"][2:] == ("met", "same")
    assert as_recorded["county_report"][2:] == ("met", "same")
    diff = compare(incident, rules, TZ, NOW)
    duties = by_kind(diff)
    # 舆情发生 + 30 minutes: 1.5 hours before the grading, so met late.
    assert duties["group_report_major"] == (
        published,
        published + timedelta(minutes=30),
        "late",
        "moved",
    )
    # Waiting on the group report: counted from when the record says it was met.
    assert duties["county_report"] == (told, told + timedelta(hours=1), "met", "same")
    assert duties["response_plan"] == (told, told + timedelta(hours=2), "missed", "new")
    assert "group_report_major" in diff.would_miss
    # Never resolved on record: the result report is not opened, and said so.
    assert not_opened(diff)["result_report_major"] == "not_resolved"
    assert "result_report_major" not in duties


def test_a_duty_waiting_on_one_never_met_does_not_open(rules: Candidate) -> None:
    diff = compare(record(1, MediaTier.CENTRAL), rules, TZ, NOW)
    assert by_kind(diff)["group_report_major"][2] == "missed"
    assert not_opened(diff) | {"result_report_major": ""} == {
        "county_report": "waits_on_unmet",
        "response_plan": "waits_on_unmet",
        "result_report_major": "",
    }
    note = next(n.note for n in diff.not_opened if n.kind == "county_report")
    assert note == "须待前一项义务完成，记录中未完成"


def test_the_resolution_opens_the_result_report_counted_from_it(rules: Candidate) -> None:
    resolved = T0 + timedelta(days=1)
    diff = compare(
        record(
            2,
            MediaTier.PROVINCIAL,
            RecordedDuty(
                "result_report", resolved + timedelta(days=3), resolved + timedelta(days=4)
            ),
            resolved_at=resolved,
        ),
        rules,
        TZ,
        NOW,
    )
    assert by_kind(diff)["result_report"] == (
        resolved,
        resolved + timedelta(days=3),
        "late",
        "same",
    )
    assert "result_report" in diff.would_miss


def test_a_proposal_never_confirmed_opens_only_the_proposal_duties(rules: Candidate) -> None:
    proposed = record(2, MediaTier.PROVINCIAL, history=(GradeStep(T0, 2, PROPOSED_EVENT),))
    diff = compare(proposed, rules, TZ, NOW)
    assert by_kind(diff)["proposal_notice"] == (T0, T0 + timedelta(hours=1), "missed", "new")
    assert not_opened(diff) == {
        "group_report": "not_confirmed",
        "online_reply": "not_confirmed",
        "instruction_followup": "no_signed_instruction",
        "result_report": "not_resolved",
        "county_report_decided": "no_decision",
    }
    # A plan that does not confirm grades at the proposal: its duties count from then.
    town = compare(proposed, TOWN, TZ, NOW)
    assert by_kind(town)["group_report"][:2] == (T0, T0 + timedelta(hours=2))
    assert "proposal_notice" not in by_kind(town)


def test_the_grade_duties_count_from_the_recorded_confirmation(rules: Candidate) -> None:
    confirmed = T0 + timedelta(hours=3)
    history = (GradeStep(T0, 2, PROPOSED_EVENT), GradeStep(confirmed, 2))
    met = T0 + timedelta(hours=4)
    incident = record(
        2,
        MediaTier.PROVINCIAL,
        RecordedDuty("group_report", T0 + timedelta(hours=2), met),
        history=history,
    )
    duties = by_kind(compare(incident, rules, TZ, NOW))
    assert duties["group_report"] == (confirmed, confirmed + timedelta(hours=2), "met", "moved")
    assert duties["proposal_notice"][:2] == (T0, T0 + timedelta(hours=1))
    # Under the recorded plan (no confirmation) the same report was late.
    assert by_kind(compare(incident, TOWN, TZ, NOW))["group_report"][2] == "late"


def test_a_signed_instruction_opens_its_duty_and_an_unsigned_one_does_not(
    rules: Candidate,
) -> None:
    signed = T0 + timedelta(hours=2)
    instructions = (
        RecordedInstruction(T0 + timedelta(hours=1), signed=False),
        RecordedInstruction(signed, signed=True),
    )
    diff = compare(record(2, MediaTier.PROVINCIAL, instructions=instructions), rules, TZ, NOW)
    assert by_kind(diff)["instruction_followup"][:2] == (signed, signed + timedelta(hours=4))
    unsigned = compare(
        record(2, MediaTier.PROVINCIAL, instructions=instructions[:1]), rules, TZ, NOW
    )
    assert not_opened(unsigned)["instruction_followup"] == "no_signed_instruction"


def test_a_decided_duty_opens_on_the_recorded_decision_and_not_against_it(
    rules: Candidate,
) -> None:
    decided = T0 + timedelta(hours=1)
    yes = record(
        2,
        MediaTier.PROVINCIAL,
        RecordedDuty("county_report_decided", decided + timedelta(hours=1), decided),
        decisions=(RecordedDecision("county_report_decided", True, decided),),
    )
    duty = by_kind(compare(yes, rules, TZ, NOW))["county_report_decided"]
    assert duty == (decided, decided + timedelta(hours=1), "met", "same")
    no = record(
        2,
        MediaTier.PROVINCIAL,
        decisions=(RecordedDecision("county_report_decided", False, decided),),
    )
    diff = compare(no, rules, TZ, NOW)
    assert not_opened(diff)["county_report_decided"] == "decided_against"
    assert next(n.note for n in diff.not_opened if n.kind == "county_report_decided") == (
        "记录中决定不开启"
    )
