"""Intake's pure rules: URL and text normalisation, matching and routing a report, the
incident lifecycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.intake.domain import (
    MERGED_REFERRAL,
    ClaimsNotPending,
    IllegalTransition,
    Incident,
    IntakePolicy,
    NotAReferral,
    ReachLimits,
    Routing,
    TextCandidate,
    TextMatch,
    TextMatching,
    best_text_match,
    incident_stream,
    normalize_text,
    normalize_url,
    partner_may_join,
    place_referral,
    place_report,
    route_report,
    text_similarity,
)
from shared.errors import Conflict
from shared.events import (
    Actor,
    Envelope,
    EventPayload,
    IncidentDismissed,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    IncidentStatus,
    MediaTier,
    Reach,
    ReferralMerged,
    ReferralOpened,
    ReportAttached,
    ReportClaimsConfirmed,
    ReportReceived,
    SourceType,
)
from shared.policy import load_policy
from shared.settings import CONFIG_DIR

POLICY = load_policy(CONFIG_DIR / "intake.yaml", IntakePolicy)
T0 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTPS://News.Example.COM/a/1", "https://news.example.com/a/1"),
        ("https://news.example.com/a/1/", "https://news.example.com/a/1"),
        ("https://news.example.com/a/1#comments", "https://news.example.com/a/1"),
        ("http://news.example.com/a/1", "https://news.example.com/a/1"),
        ("https://news.example.com:443/a/1", "https://news.example.com/a/1"),
        ("https://news.example.com/a/1?utm_source=wx&utm_MEDIUM=x", "https://news.example.com/a/1"),
        (
            "https://news.example.com/a?id=7&spm=abc&from=timeline",
            "https://news.example.com/a?id=7",
        ),
        ("https://bbs.example.com/t?page=2&tid=9", "https://bbs.example.com/t?tid=9&page=2"),
        (
            "https://mp.weixin.qq.com/s?__biz=M&sn=1&chksm=zz&scene=21#wechat_redirect",
            "https://mp.weixin.qq.com/s?sn=1&__biz=M",
        ),
    ],
)
def test_links_to_one_item_normalise_alike(a: str, b: str) -> None:
    assert normalize_url(a, POLICY.tracking_params) == normalize_url(b, POLICY.tracking_params)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://news.example.com/a/1", "https://news.example.com/a/2"),
        ("https://news.example.com/a?id=7", "https://news.example.com/a?id=8"),
        (
            "https://news.example.com/A/1",
            "https://news.example.com/a/1",
        ),  # paths are case-sensitive
        ("https://news.example.com:8080/a", "https://news.example.com/a"),
        ("https://a.example.com/x", "https://b.example.com/x"),
    ],
)
def test_different_items_stay_different(a: str, b: str) -> None:
    assert normalize_url(a, POLICY.tracking_params) != normalize_url(b, POLICY.tracking_params)


def test_normalised_form_is_readable() -> None:
    url = "HTTP://WWW.Example.com:80/news/2026/1121/?utm_campaign=x&id=3#top"
    assert normalize_url(url, ["utm_*"]) == "https://www.example.com/news/2026/1121?id=3"


def report(report_id: str = "rep-1", units: tuple[str, ...] = ("school-a",)) -> ReportReceived:
    return ReportReceived(
        report_id=report_id,
        source_type=SourceType.NEWS,
        source_name="人民网",
        media_tier=MediaTier.CENTRAL,
        url="https://news.example.com/a/1",
        normalized_url="https://news.example.com/a/1",
        title="某校食堂饭菜变质",
        excerpt="网友反映",
        author=None,
        published_at=T0,
        observed_at=T0,
        reach=Reach(),
        unit_ids=units,
        filed_by="monitor-chen",
    )


def stream(*payloads: EventPayload, at: datetime = T0) -> list[Envelope]:
    return [
        Envelope.new(
            p,
            incident_id="inc-1",
            stream_id=incident_stream("inc-1"),
            stream_version=v,
            actor=Actor(type="person", id="x"),
            occurred_at=at,
        )
        for v, p in enumerate(payloads, start=1)
    ]


def opened() -> Incident:
    incident = Incident.replay(stream(*place_report(Routing.OPEN_NEW, report(), "same_url")))
    assert incident is not None
    return incident


def test_a_new_report_opens_an_incident_then_records_the_report() -> None:
    payloads = place_report(Routing.OPEN_NEW, report(), "same_url")
    assert [type(p) for p in payloads] == [IncidentOpened, ReportReceived]
    incident = opened()
    assert incident.status is IncidentStatus.OPEN
    assert incident.report_ids == ("rep-1",)
    assert incident.version == 2


def test_a_report_on_an_open_incident_is_attached_with_the_reason() -> None:
    payloads = place_report(Routing.ATTACH, report("rep-2"), "same_url")
    assert [type(p) for p in payloads] == [ReportReceived, ReportAttached]
    assert payloads[1] == ReportAttached(report_id="rep-2", match="same_url")


def test_attached_reports_add_their_units_to_the_incident() -> None:
    events = stream(
        *place_report(Routing.OPEN_NEW, report(), "same_url"),
        *place_report(Routing.ATTACH, report("rep-2", ("school-a", "road-1")), "same_url"),
    )
    incident = Incident.replay(events)
    assert incident is not None
    assert incident.unit_ids == ("school-a", "road-1")
    assert incident.report_ids == ("rep-1", "rep-2")


def test_routing_follows_the_status_of_the_incident_that_holds_the_url() -> None:
    incident = opened()
    later = T0 + timedelta(days=30)
    assert route_report(None, T0, POLICY) is Routing.OPEN_NEW
    assert route_report(incident, later, POLICY) is Routing.ATTACH
    dismissed = Incident.replay(stream(*opened_payloads(), IncidentDismissed(reason="伪舆情")))
    assert route_report(dismissed, later, POLICY) is Routing.ATTACH


def opened_payloads() -> list[EventPayload]:
    return place_report(Routing.OPEN_NEW, report(), "same_url")


def test_a_resolved_incident_reopens_within_the_window_and_not_after() -> None:
    policy = IntakePolicy(reopen_window_hours=72)
    resolved = Incident.replay(stream(*opened_payloads(), IncidentResolved(reason="平息")))
    assert resolved is not None
    inside = T0 + timedelta(hours=72)
    outside = T0 + timedelta(hours=72, seconds=1)
    assert route_report(resolved, inside, policy) is Routing.REOPEN_AND_ATTACH
    assert route_report(resolved, outside, policy) is Routing.OPEN_NEW
    payloads = place_report(Routing.REOPEN_AND_ATTACH, report("rep-2"), "same_url")
    assert [type(p) for p in payloads] == [IncidentReopened, ReportReceived, ReportAttached]
    after = Incident.replay(stream(*opened_payloads(), IncidentResolved(reason="x"), *payloads))
    assert after is not None
    assert after.status is IncidentStatus.OPEN


def test_lifecycle_transitions() -> None:
    incident = opened()
    assert incident.resolve("平息") == [IncidentResolved(reason="平息")]
    assert incident.dismiss("网络伪舆情") == [IncidentDismissed(reason="网络伪舆情")]
    resolved = Incident.replay(stream(*opened_payloads(), *incident.resolve("平息")))
    assert resolved is not None
    assert resolved.status is IncidentStatus.RESOLVED
    assert resolved.reopen("再次发酵") == [IncidentReopened(reason="再次发酵")]
    dismissed = Incident.replay(stream(*opened_payloads(), *incident.dismiss("伪")))
    assert dismissed is not None
    assert dismissed.reopen("误判") == [IncidentReopened(reason="误判")]


@pytest.mark.parametrize(
    ("history", "action", "status"),
    [
        ((), "reopen", IncidentStatus.OPEN),
        ((IncidentResolved(reason="x"),), "resolve", IncidentStatus.RESOLVED),
        ((IncidentResolved(reason="x"),), "dismiss", IncidentStatus.RESOLVED),
        ((IncidentDismissed(reason="x"),), "resolve", IncidentStatus.DISMISSED),
        ((IncidentDismissed(reason="x"),), "dismiss", IncidentStatus.DISMISSED),
    ],
)
def test_illegal_transitions_name_the_current_status(
    history: tuple[EventPayload, ...], action: str, status: IncidentStatus
) -> None:
    incident = Incident.replay(stream(*opened_payloads(), *history))
    assert incident is not None
    with pytest.raises(IllegalTransition) as err:
        getattr(incident, action)("reason")
    assert err.value.status is status
    # A conflict of its own kind: the API answers 409 with this code and these details.
    assert isinstance(err.value, Conflict)
    assert err.value.code == "illegal_transition"
    assert err.value.details == {"status": status.value, "action": DONE[action]}


DONE = {"resolve": "resolved", "dismiss": "dismissed", "reopen": "reopened"}


def test_a_stream_must_start_with_the_opening() -> None:
    with pytest.raises(ValueError, match="IncidentOpened"):
        Incident.replay(stream(IncidentResolved(reason="x")))


def test_a_bad_policy_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "intake.yaml"
    bad.write_text("reopen_window_hours: -1\n")
    with pytest.raises(ValueError, match="reopen_window_hours"):
        load_policy(bad, IntakePolicy)


# --------------------------------------------------------------------------- text

MATCHING = POLICY.similar_text
ORIGINAL = (
    "县第二中学食堂饭菜发霉变质，多名学生腹痛就医"
    "网友爆料称，该校食堂近日供应的午餐出现发霉现象，家长要求彻查。"
)


def test_text_normalisation_drops_punctuation_and_spacing_and_folds_width_and_case() -> None:
    assert normalize_text("ＡＢＣ１２３，Hello　World!") == "abc123helloworld"
    assert normalize_text("食堂 饭菜，发霉！") == normalize_text("食堂饭菜,发霉!") == "食堂饭菜发霉"


@pytest.mark.parametrize(
    "repost",
    [
        # half-width punctuation
        "县第二中学食堂饭菜发霉变质,多名学生腹痛就医"
        "网友爆料称:该校食堂近日供应的午餐出现发霉现象,家长要求彻查!",
        # spaces instead of punctuation
        "县第二中学食堂饭菜发霉变质 多名学生腹痛就医 "
        "网友爆料称 该校食堂近日供应的午餐出现发霉现象 家长要求彻查",
        # a repost marker and a source line
        "【转】" + ORIGINAL + "（来源：某论坛）",
    ],
)
def test_reposts_of_one_text_match(repost: str) -> None:
    candidates = [TextCandidate("inc-1", normalize_text(ORIGINAL))]
    match = best_text_match(normalize_text(repost), candidates, MATCHING)
    assert match is not None
    assert match.incident_id == "inc-1"
    assert MATCHING.threshold <= match.score <= 1


def test_another_matter_of_the_same_unit_does_not_match() -> None:
    other = "县第二中学运动会圆满落幕该校秋季运动会昨日闭幕，多名学生打破校纪录。"
    candidates = [TextCandidate("inc-1", normalize_text(ORIGINAL))]
    assert best_text_match(normalize_text(other), candidates, MATCHING) is None


def test_the_threshold_is_inclusive() -> None:
    a, b = normalize_text(ORIGINAL), normalize_text("【转】" + ORIGINAL)
    score = text_similarity(a, b, MATCHING.ngram)
    candidates = [TextCandidate("inc-1", b)]
    at_score = MATCHING.model_copy(update={"threshold": score})
    above = MATCHING.model_copy(update={"threshold": min(1.0, score + 0.001)})
    assert best_text_match(a, candidates, at_score) is not None
    assert best_text_match(a, candidates, above) is None


def test_the_closest_incident_wins_and_the_newer_on_a_tie() -> None:
    text = normalize_text(ORIGINAL)
    candidates = [
        TextCandidate("inc-newer", normalize_text("【转】" + ORIGINAL)),
        TextCandidate("inc-exact", text),
        TextCandidate("inc-exact-older", text),
    ]
    assert best_text_match(text, candidates, MATCHING) == TextMatch("inc-exact", 1.0)


def test_short_texts_never_match_by_text() -> None:
    short = normalize_text("求助！！")
    matching = TextMatching(min_chars=12)
    assert best_text_match(short, [TextCandidate("inc-1", short)], matching) is None


def test_a_report_joined_by_its_text_says_so_with_the_score() -> None:
    payloads = place_report(Routing.ATTACH, report("rep-2"), "similar_text", 0.93)
    assert payloads[1] == ReportAttached(report_id="rep-2", match="similar_text", score=0.93)


def test_a_bad_text_matching_setting_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "intake.yaml"
    bad.write_text("similar_text:\n  threshold: 1.5\n")
    with pytest.raises(ValueError, match="threshold"):
        load_policy(bad, IntakePolicy)


# --------------------------------------------------------------------------- partners

PARTNER = "partner-wxb"


def partner_report(
    report_id: str = "rep-p", units: tuple[str, ...] = ("school-a",)
) -> ReportReceived:
    return report(report_id, units).model_copy(
        update={"filed_by": PARTNER, "claims_unconfirmed": True, "reach": Reach(views=10)}
    )


def incident_of(*payloads: EventPayload, incident_id: str = "inc-1") -> Incident:
    events = [
        e.model_copy(update={"incident_id": incident_id, "stream_id": incident_stream(incident_id)})
        for e in stream(*payloads)
    ]
    incident = Incident.replay(events)
    assert incident is not None
    return incident


def referral() -> Incident:
    return incident_of(*place_referral(partner_report(), ["inc-1"]), incident_id="inc-r")


def test_a_partner_joins_only_an_open_incident_it_already_files_for_without_new_units() -> None:
    school = opened()  # a monitor's: the partner is no filer of it
    assert not partner_may_join(None, PARTNER, ["school-a"])
    assert not partner_may_join(school, PARTNER, ["school-a"])
    own = referral()
    assert partner_may_join(own, PARTNER, ["school-a"])
    assert not partner_may_join(own, PARTNER, ["school-a", "road-1"])  # would add a unit
    closed = incident_of(*place_referral(partner_report(), []), IncidentResolved(reason="x"))
    assert not partner_may_join(closed, PARTNER, ["school-a"])  # would reopen it


def test_a_referral_is_an_incident_of_its_own_marked_and_linked_to_what_it_matched() -> None:
    payloads = place_referral(partner_report(), ["inc-1", "inc-2", "inc-1"])
    assert [type(p) for p in payloads] == [IncidentOpened, ReportReceived, ReferralOpened]
    assert payloads[2] == ReferralOpened(
        report_id="rep-p", referred_by=PARTNER, matched_incident_ids=("inc-1", "inc-2")
    )
    incident = referral()
    assert incident.referral is not None
    assert incident.referral.referred_by == PARTNER
    assert incident.unconfirmed == {"rep-p"}
    assert incident.filed_by == (PARTNER,)


def test_merging_records_the_partners_reports_on_the_target_and_closes_the_referral() -> None:
    school = opened()
    own = referral()
    closed, recorded = own.merge(school, "同一事项", "office-li")
    assert [type(p) for p in closed] == [ReferralMerged, IncidentResolved]
    assert closed[0] == ReferralMerged(
        into_incident_id="inc-1", report_ids=("rep-p",), reason="同一事项", merged_by="office-li"
    )
    copied, attached = recorded
    assert isinstance(copied, ReportReceived)
    assert (copied.report_id, copied.filed_by, copied.claims_unconfirmed) == (
        "rep-p",
        PARTNER,
        True,
    )
    assert attached == ReportAttached(report_id="rep-p", match=MERGED_REFERRAL)
    after = incident_of(*opened_payloads(), *recorded)
    assert PARTNER in after.filed_by
    assert after.unit_ids == school.unit_ids
    merged = incident_of(*place_referral(partner_report(), ["inc-1"]), *closed)
    assert merged.merged
    assert merged.status is IncidentStatus.RESOLVED
    with pytest.raises(IllegalTransition):
        merged.reopen("再议")
    with pytest.raises(NotAReferral):
        merged.merge(school, "again", "office-li")
    # A URL that led to the merged referral leads to a new incident, never reopens it.
    assert route_report(merged, T0, POLICY) is Routing.OPEN_NEW


def test_a_merge_adds_no_unit_to_the_target() -> None:
    own = incident_of(
        *place_referral(partner_report(units=("school-a", "road-1")), []), incident_id="inc-r"
    )
    _, recorded = own.merge(opened(), "同一事项", "office-li")
    assert isinstance(recorded[0], ReportReceived)
    assert recorded[0].unit_ids == ("school-a",)


@pytest.mark.parametrize(
    ("target", "into_status"),
    [
        ((), None),  # a monitor's incident is no referral
        ((IncidentResolved(reason="x"),), IncidentStatus.RESOLVED),
    ],
)
def test_only_an_open_referral_is_merged_and_only_into_an_open_incident(
    target: tuple[EventPayload, ...], into_status: IncidentStatus | None
) -> None:
    if into_status is None:
        with pytest.raises(NotAReferral):
            opened().merge(referral(), "x", "office-li")
        return
    with pytest.raises(IllegalTransition) as err:
        referral().merge(incident_of(*opened_payloads(), *target), "x", "office-li")
    assert err.value.status is into_status
    with pytest.raises(NotAReferral):
        referral().merge(referral(), "into itself", "office-li")


def test_the_office_confirms_a_partners_claims_once() -> None:
    own = referral()
    confirmed = own.confirm_claims("rep-p", "已核实为人民网报道", "office-li")
    assert confirmed == [
        ReportClaimsConfirmed(
            report_id="rep-p",
            media_tier=MediaTier.CENTRAL,
            reach=Reach(views=10),
            reason="已核实为人民网报道",
            confirmed_by="office-li",
        )
    ]
    corrected = own.confirm_claims("rep-p", "实为县级媒体", "office-li", MediaTier.COUNTY)
    assert isinstance(corrected[0], ReportClaimsConfirmed)
    assert corrected[0].media_tier is MediaTier.COUNTY
    after = incident_of(*place_referral(partner_report(), []), *confirmed)
    assert after.unconfirmed == frozenset()
    with pytest.raises(ClaimsNotPending):
        after.confirm_claims("rep-p", "again", "office-li")
    with pytest.raises(ClaimsNotPending):  # a monitor's report states facts, not claims
        opened().confirm_claims("rep-1", "x", "office-li")


def test_reach_beyond_its_bound_is_named_per_field() -> None:
    limits = ReachLimits(views=1000, reposts=10)
    assert limits.beyond(Reach(views=1000, reposts=10)) == []
    assert limits.beyond(Reach(views=1001, reposts=11)) == [("views", 1000), ("reposts", 10)]
    assert POLICY.reach_max.beyond(Reach(views=10**12)) == [("views", POLICY.reach_max.views)]
