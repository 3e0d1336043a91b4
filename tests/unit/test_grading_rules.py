"""The rulebook, table by table: tiers, reach thresholds, categories, sensitive topics,
escalation that never lowers, missed deadlines, and the leader's override."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.grading.bootstrap import load_rulebook
from services.grading.domain import (
    Grade,
    OverrideRefused,
    ReportFacts,
    Rulebook,
    RulebookError,
    assess,
    evolve,
    on_claims_confirmed,
    on_deadline_missed,
    on_report,
    override,
    parse_rulebook,
)
from shared.errors import Conflict
from shared.events import (
    Actor,
    Category,
    Envelope,
    EventPayload,
    FiredRule,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    Level,
    MediaTier,
    Reach,
    ReportClaimsConfirmed,
)
from shared.settings import CONFIG_DIR

RULEBOOK = load_rulebook(CONFIG_DIR / "rulebook.yaml")


def facts(
    tier: MediaTier = MediaTier.COUNTY,
    text: str = "道路积水",
    url: str = "https://a.example.com/1",
    **reach: int,
) -> ReportFacts:
    return ReportFacts(
        report_id=f"rep-{url}-{tier.value}",
        source_name=f"{tier.value}-site",
        media_tier=tier,
        normalized_url=url,
        reach=Reach(**reach),
        text=text,
    )


def ids(assessment_rules: Any) -> set[str]:
    return {r.rule_id for r in assessment_rules}


# --------------------------------------------------------------------------- tiers


@pytest.mark.parametrize(
    ("tier", "level"),
    [
        (MediaTier.CENTRAL, 1),
        (MediaTier.NATIONAL_PORTAL, 1),
        (MediaTier.PROVINCIAL, 2),
        (MediaTier.MUNICIPAL, 3),
        (MediaTier.COUNTY, 3),
        (MediaTier.SELF_MEDIA, 3),
    ],
)
def test_each_media_tier_gets_its_level(tier: MediaTier, level: Level) -> None:
    assessment = assess(RULEBOOK, [facts(tier)])
    assert assessment.level == level
    assert all(r.reason for r in assessment.rules_fired)


def test_the_grade_names_the_rule_and_the_source() -> None:
    assessment = assess(RULEBOOK, [facts(MediaTier.CENTRAL)])
    fired = {r.rule_id: r.reason for r in assessment.rules_fired}
    assert "tier-central" in fired
    assert "central-site" in fired["tier-central"]
    assert "level-default" not in fired


# --------------------------------------------------------------------------- reach


@pytest.mark.parametrize(
    ("reach", "level", "rule"),
    [
        ({"views": 99_999}, 3, "level-default"),
        ({"views": 100_000}, 2, "reach-views-100k"),
        ({"views": 999_999}, 2, "reach-views-100k"),
        ({"views": 1_000_000}, 1, "reach-views-1m"),
        ({"reposts": 4_999}, 3, "level-default"),
        ({"reposts": 5_000}, 2, "reach-reposts-5k"),
        ({"reposts": 50_000}, 1, "reach-reposts-50k"),
        ({"comments": 10_000_000}, 3, "level-default"),  # no rule on comments
    ],
)
def test_reach_thresholds_at_their_edges(reach: dict[str, int], level: Level, rule: str) -> None:
    assessment = assess(RULEBOOK, [replace(facts(), reach=Reach(**reach))])
    assert assessment.level == level
    assert rule in ids(assessment.rules_fired)


def test_reach_adds_up_over_items_but_counts_one_item_once() -> None:
    two_items = [facts(url="https://a/1", views=60_000), facts(url="https://a/2", views=40_000)]
    assert assess(RULEBOOK, two_items).level == 2
    refiled = [facts(url="https://a/1", views=60_000), facts(url="https://a/1", views=70_000)]
    assert assess(RULEBOOK, refiled).level == 3


# --------------------------------------------------------------------------- categories


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("网传某校发生事故，系造谣", "rumor"),
        ("有人恶意炒作此事", "hype"),
        ("家长建议增加校车线路", "suggestion"),
        ("请问学校为什么收费", "inquiry"),
        ("路面有坑", "inquiry"),  # nothing matches: the default
        ("有人炒作谣言", "rumor"),  # rulebook order decides between two
    ],
)
def test_keywords_set_the_category(text: str, category: Category) -> None:
    assert assess(RULEBOOK, [facts(text=text)]).category == category


def test_the_default_category_says_so() -> None:
    assert "category-default" in ids(assess(RULEBOOK, [facts(text="路面有坑")]).rules_fired)


# --------------------------------------------------------------------------- sensitive


def test_sensitive_topics_are_flagged_and_may_raise_the_level() -> None:
    assessment = assess(RULEBOOK, [facts(text="学生在食堂食物中毒")])
    assert set(assessment.sensitive_topics) == {"minors", "food_safety"}
    assert assessment.level == 2
    only_flag = assess(RULEBOOK, [facts(text="高考加分政策")])
    assert only_flag.sensitive_topics == ("exam_fairness",)
    assert only_flag.level == 3


# --------------------------------------------------------------------------- decisions


def test_the_first_report_grades_the_incident() -> None:
    decision = on_report(RULEBOOK, None, [], facts(MediaTier.PROVINCIAL), dismissed=False)
    assert isinstance(decision, IncidentGraded)
    assert decision.level == 2
    assert decision.rulebook_version == RULEBOOK.version
    assert "tier-provincial" in ids(decision.rules_fired)


def test_a_central_report_after_a_provincial_one_escalates_with_the_reason() -> None:
    first = facts(MediaTier.PROVINCIAL, url="https://p/1")
    decision = on_report(
        RULEBOOK,
        Grade(2, "inquiry", 1),
        [first],
        facts(MediaTier.CENTRAL),
        dismissed=False,
    )
    assert isinstance(decision, IncidentEscalated)
    assert (decision.from_level, decision.to_level) == (2, 1)
    assert ids(decision.rules_fired) == {"tier-central"}
    assert "中央级媒体" in decision.reason


def test_reach_growing_over_a_bound_escalates() -> None:
    first = facts(url="https://x/1", views=50_000)
    grown = facts(url="https://x/1", views=150_000)
    decision = on_report(RULEBOOK, Grade(3, "inquiry", 1), [first], grown, False)
    assert isinstance(decision, IncidentEscalated)
    assert decision.to_level == 2
    assert ids(decision.rules_fired) == {"reach-views-100k"}


def test_a_lesser_report_never_lowers_the_level() -> None:
    first = facts(MediaTier.CENTRAL, url="https://c/1")
    grade = Grade(1, "inquiry", 1)
    assert on_report(RULEBOOK, grade, [first], facts(MediaTier.COUNTY), False) is None
    assert on_report(RULEBOOK, grade, [first], facts(MediaTier.PROVINCIAL), False) is None


def test_a_dismissed_incident_is_not_escalated() -> None:
    first = facts(MediaTier.COUNTY, url="https://c/1")
    grade = Grade(3, "inquiry", 1)
    assert on_report(RULEBOOK, grade, [first], facts(MediaTier.CENTRAL), dismissed=True) is None
    assert on_deadline_missed(RULEBOOK, grade, 3, dismissed=True) is None


def test_a_dismissed_incident_is_not_graded_either() -> None:
    # A grade would open reporting obligations for what was judged a pseudo-incident.
    assert on_report(RULEBOOK, None, [], facts(MediaTier.CENTRAL), dismissed=True) is None


def test_an_override_down_holds_until_new_facts_raise_the_assessment() -> None:
    central = facts(MediaTier.CENTRAL, url="https://c/1")
    overridden = Grade(3, "inquiry", 2)  # leader lowered it from 1
    assert (
        on_report(
            RULEBOOK, overridden, [central], facts(MediaTier.CENTRAL, url="https://c/2"), False
        )
        is None
    )

    provincial = facts(MediaTier.PROVINCIAL, url="https://p/1")
    lowered = Grade(3, "inquiry", 2)  # leader lowered it from 2
    decision = on_report(RULEBOOK, lowered, [provincial], facts(MediaTier.CENTRAL), False)
    assert isinstance(decision, IncidentEscalated)
    assert decision.to_level == 1


def test_an_override_up_is_not_undone_by_a_weaker_escalation() -> None:
    raised = Grade(1, "inquiry", 2)  # leader raised a level-3 to 1
    decision = on_report(RULEBOOK, raised, [facts()], facts(MediaTier.PROVINCIAL), False)
    assert decision is None


def test_a_missed_deadline_at_the_current_level_raises_one_step() -> None:
    grade = Grade(3, "inquiry", 1)
    decision = on_deadline_missed(RULEBOOK, grade, 3, dismissed=False)
    assert isinstance(decision, IncidentEscalated)
    assert (decision.from_level, decision.to_level) == (3, 2)
    assert ids(decision.rules_fired) == {"mishandling-deadline-missed"}
    # A deadline of a level the incident has left, or level 1 itself, changes nothing.
    assert on_deadline_missed(RULEBOOK, Grade(2, "inquiry", 2), 3, False) is None
    assert on_deadline_missed(RULEBOOK, Grade(1, "inquiry", 2), 1, False) is None


def test_override_goes_up_or_down_and_refuses_a_no_op() -> None:
    grade = Grade(1, "inquiry", 1)
    down = override(grade, 3, None, "经核实影响较小", dismissed=False)
    assert down == GradeOverridden(
        from_level=1,
        to_level=3,
        category="inquiry",
        reason="经核实影响较小",
    )
    recategorised = override(grade, 1, "rumor", "系谣言", dismissed=False)
    assert recategorised.category == "rumor"
    with pytest.raises(OverrideRefused):
        override(grade, 1, None, "same", dismissed=False)
    with pytest.raises(OverrideRefused):
        override(None, 1, None, "not graded", dismissed=False)


def test_a_refused_override_is_a_conflict_naming_the_grade_it_met() -> None:
    grade = Grade(2, "rumor", 3)
    with pytest.raises(OverrideRefused) as refused:
        override(grade, 2, None, "same", dismissed=False)
    assert isinstance(refused.value, Conflict)
    assert refused.value.code == "override_refused"
    assert refused.value.details == {"level": 2, "category": "rumor"}
    with pytest.raises(OverrideRefused) as ungraded:
        override(None, 1, None, "not graded", dismissed=False)
    assert ungraded.value.details == {"level": None, "category": None}


def test_a_dismissed_pseudo_incident_cannot_be_regraded_by_hand() -> None:
    grade = Grade(3, "inquiry", 1)
    with pytest.raises(OverrideRefused, match="dismissed"):
        override(grade, 1, None, "上级关注", dismissed=True)


# --------------------------------------------------------------------------- the stream


def _in_stream(version: int, payload: EventPayload) -> Envelope:
    return Envelope.new(
        payload,
        incident_id="inc-1",
        stream_id="grade-inc-1",
        stream_version=version,
        actor=Actor.rule("rulebook"),
    )


def test_the_grade_stream_folds_into_the_current_grade_at_its_version() -> None:
    rules = (FiredRule(rule_id="tier-provincial", reason="省内媒体"),)
    events = [
        _in_stream(
            1,
            IncidentGraded(level=2, category="inquiry", rules_fired=rules, rulebook_version="v"),
        ),
        _in_stream(
            2,
            IncidentEscalated(
                from_level=2,
                to_level=1,
                category="inquiry",
                reason="中央级媒体",
                rules_fired=rules,
                rulebook_version="v",
            ),
        ),
        _in_stream(
            3,
            GradeOverridden(from_level=1, to_level=3, category="rumor", reason="核实"),
        ),
    ]
    grade = None
    seen = []
    for event in events:
        grade = evolve(grade, event)
        seen.append(grade)
    assert seen == [
        Grade(2, "inquiry", 1),
        Grade(1, "inquiry", 2),
        Grade(3, "rumor", 3),
    ]
    # An escalation of a grade that was never given is not a stream grading writes.
    with pytest.raises(ValueError, match="cannot follow"):
        evolve(None, events[1])


# --------------------------------------------------------------------------- the file


def _shipped() -> dict[str, Any]:
    data = yaml.safe_load((CONFIG_DIR / "rulebook.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_a_bad_entry_is_named_in_the_error() -> None:
    data = _shipped()
    data["reach"][1]["level"] = 0  # not a rank (one the plan lacks: check_rulebook)
    with pytest.raises(RulebookError, match=r"reach\[1\] \(reach-reposts-5k\)\.level"):
        parse_rulebook(data, "rulebook.yaml")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["tiers"][1]["media_tiers"].append("central"), "media tier 'central'"),
        (lambda d: d["categories"][0].update(id="tier-central"), "used twice"),
        (lambda d: d["categories"][0].update(category="Gossip!"), r"categories\[0\]"),
        (
            lambda d: d["categories"][2].update(keywords=[]),
            r"categories\[2\] \(category-suggestion\)",
        ),
        (lambda d: d.pop("version"), "version"),
    ],
)
def test_malformed_rulebooks_are_refused(mutate: Any, message: str) -> None:
    data = _shipped()
    mutate(data)
    with pytest.raises(RulebookError, match=message):
        parse_rulebook(data, "rulebook.yaml")


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rulebook.yaml"
    path.write_text("version: [unclosed\n")
    with pytest.raises(RulebookError, match=str(path)):
        load_rulebook(path)


def test_the_shipped_rulebook_is_valid() -> None:
    assert isinstance(RULEBOOK, Rulebook)
    assert RULEBOOK.version


# --------------------------------------------------------------------------- partner claims


def claimed(tier: MediaTier, **reach: int) -> ReportFacts:
    """A partner's report: its media tier and reach are claims the office has not confirmed."""
    return replace(facts(tier, url="https://p/claimed", **reach), claims_unconfirmed=True)


def confirmation(
    report: ReportFacts, tier: MediaTier | None = None, **reach: int
) -> ReportClaimsConfirmed:
    return ReportClaimsConfirmed(
        report_id=report.report_id,
        media_tier=tier or report.media_tier,
        reach=Reach(**reach) if reach else report.reach,
        reason="已核实",
        confirmed_by="office-li",
    )


@pytest.mark.parametrize(
    "report",
    [
        claimed(MediaTier.CENTRAL, views=10),
        claimed(MediaTier.SELF_MEDIA, views=10**12),
        claimed(MediaTier.PROVINCIAL, reposts=50_000),
    ],
)
def test_unconfirmed_partner_claims_grade_as_if_not_made(report: ReportFacts) -> None:
    decision = on_report(RULEBOOK, None, [], report, dismissed=False)
    assert isinstance(decision, IncidentGraded)
    assert decision.level == 3
    assert ids(decision.rules_fired) >= {"level-default", "partner-claims-unconfirmed"}
    assert not any(r.startswith(("tier-", "reach-")) for r in ids(decision.rules_fired))


def test_what_a_partners_report_says_still_counts() -> None:
    assessment = assess(RULEBOOK, [replace(claimed(MediaTier.CENTRAL), text="学生在食堂食物中毒")])
    assert assessment.level == 2  # the sensitive topic, not the claimed tier
    assert "food_safety" in assessment.sensitive_topics


def test_an_unconfirmed_central_claim_does_not_escalate_an_incident() -> None:
    first = facts(MediaTier.PROVINCIAL, url="https://p/1")
    grade = Grade(2, "inquiry", 1)
    assert on_report(RULEBOOK, grade, [first], claimed(MediaTier.CENTRAL), False) is None


def test_confirmed_claims_regrade_the_incident() -> None:
    report = claimed(MediaTier.CENTRAL, views=10)
    grade = Grade(3, "inquiry", 1)
    decision = on_claims_confirmed(RULEBOOK, grade, [report], confirmation(report), False)
    assert isinstance(decision, IncidentEscalated)
    assert (decision.from_level, decision.to_level) == (3, 1)
    assert ids(decision.rules_fired) == {"tier-central"}


def test_claims_confirmed_as_corrected_count_as_corrected() -> None:
    report = claimed(MediaTier.CENTRAL, views=10)
    grade = Grade(3, "inquiry", 1)
    county = confirmation(report, MediaTier.COUNTY)
    assert on_claims_confirmed(RULEBOOK, grade, [report], county, False) is None
    spreading = confirmation(report, MediaTier.COUNTY, views=150_000)
    decision = on_claims_confirmed(RULEBOOK, grade, [report], spreading, False)
    assert isinstance(decision, IncidentEscalated)
    assert decision.to_level == 2


def test_confirmation_never_lowers_nor_touches_a_dismissed_incident() -> None:
    report = claimed(MediaTier.COUNTY)
    one = Grade(1, "inquiry", 2)
    assert on_claims_confirmed(RULEBOOK, one, [report], confirmation(report), False) is None
    central = claimed(MediaTier.CENTRAL)
    three = Grade(3, "inquiry", 1)
    assert on_claims_confirmed(RULEBOOK, three, [central], confirmation(central), True) is None
