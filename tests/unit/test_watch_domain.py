"""The watch after resolution (善后、动态跟踪, plan.yaml `watch:`), as intake's pure rules
decide it: the resolution records it, a matching report during it reopens or is attached
as the plan says, after it a report opens a new incident; a partner never reopens; a pack
with a malformed watch is refused naming the file and the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.intake.bootstrap import plan_watch
from services.intake.domain import (
    WATCH_REOPEN_REASON,
    Incident,
    IntakePolicy,
    Routing,
    Watch,
    WatchRule,
    incident_stream,
    partner_may_join,
    place_referral,
    place_report,
    route_report,
)
from shared.events import (
    Actor,
    Envelope,
    EventPayload,
    IncidentReopened,
    IncidentResolved,
    IncidentStatus,
    IncidentWatchStarted,
    MediaTier,
    Reach,
    ReportAttached,
    ReportReceived,
    SourceType,
    WatchReportReceived,
)
from shared.plan import PlanError, read_manifest
from shared.settings import CONFIG_DIR

POLICY = IntakePolicy(reopen_window_hours=72)
T0 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
RESOLVED_AT = T0 + timedelta(hours=6)
WEEK = WatchRule(timedelta(days=7), "reopen", "school", "2026.12.4-seed000-1")
PLANS = CONFIG_DIR / "plans"


def report(report_id: str = "rep-1", filed_by: str = "monitor-chen") -> ReportReceived:
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
        unit_ids=("school-a",),
        filed_by=filed_by,
    )


class Log:
    """An incident's stream, each event at the time given."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.add(T0, *place_report(Routing.OPEN_NEW, report(), "same_url"))

    def add(self, at: datetime, *payloads: EventPayload) -> Log:
        for payload in payloads:
            self.events.append(
                Envelope.new(
                    payload,
                    incident_id="inc-1",
                    stream_id=incident_stream("inc-1"),
                    stream_version=len(self.events) + 1,
                    actor=Actor(type="person", id="leader-zhang"),
                    occurred_at=at,
                )
            )
        return self

    @property
    def incident(self) -> Incident:
        incident = Incident.replay(self.events)
        assert incident is not None
        return incident

    def resolved(self, watch: WatchRule | None = WEEK, at: datetime = RESOLVED_AT) -> Log:
        return self.add(at, *self.incident.resolve("舆情平息", watch, at))


def test_the_resolution_records_the_watch_until_the_end_of_its_period() -> None:
    decided = Log().incident.resolve("舆情平息", WEEK, RESOLVED_AT)

    assert decided == [
        IncidentResolved(reason="舆情平息"),
        IncidentWatchStarted(
            watch_until=RESOLVED_AT + timedelta(days=7),
            on_report="reopen",
            plan_id="school",
            plan_version="2026.12.4-seed000-1",
        ),
    ]
    watched = Log().resolved().incident
    assert watched.status is IncidentStatus.RESOLVED
    assert watched.watch == Watch(RESOLVED_AT + timedelta(days=7), "reopen")


def test_without_a_watch_the_resolution_is_as_before_and_the_window_applies() -> None:
    log = Log().resolved(watch=None)
    assert [e.event_type for e in log.events][-1] == "IncidentResolved"
    assert log.incident.watch is None
    assert route_report(log.incident, RESOLVED_AT + timedelta(hours=72), POLICY) is (
        Routing.REOPEN_AND_ATTACH
    )
    assert route_report(log.incident, RESOLVED_AT + timedelta(hours=73), POLICY) is (
        Routing.OPEN_NEW
    )


def test_a_report_during_a_reopening_watch_reopens_saying_so_and_attaches() -> None:
    log = Log().resolved()
    at = RESOLVED_AT + timedelta(days=5)  # past intake's 72-hour window, within the watch

    routing = route_report(log.incident, at, POLICY)
    placed = place_report(routing, report("rep-2"), "same_url", watch=log.incident.watch)

    assert routing is Routing.REOPEN_DURING_WATCH
    assert placed == [
        IncidentReopened(reason=WATCH_REOPEN_REASON),
        report("rep-2"),
        ReportAttached(report_id="rep-2", match="same_url"),
        WatchReportReceived(
            report_id="rep-2", watch_until=RESOLVED_AT + timedelta(days=7), reopened=True
        ),
    ]
    assert "善后跟踪期内" in WATCH_REOPEN_REASON
    after = log.add(at, *placed).incident
    assert after.status is IncidentStatus.OPEN
    assert after.report_ids == ("rep-1", "rep-2")
    assert after.watch is None  # reopened: the watch is over; the next resolution starts one


def test_a_report_during_an_attaching_watch_joins_the_resolved_incident() -> None:
    log = Log().resolved(WatchRule(timedelta(days=7), "attach"))
    until = RESOLVED_AT + timedelta(days=7)
    for n, at in enumerate((RESOLVED_AT + timedelta(days=1), until), start=2):
        routing = route_report(log.incident, at, POLICY)
        assert routing is Routing.ATTACH_DURING_WATCH
        placed = place_report(routing, report(f"rep-{n}"), "similar_text", 0.91, log.incident.watch)
        assert [type(p) for p in placed] == [ReportReceived, ReportAttached, WatchReportReceived]
        assert placed[-1] == WatchReportReceived(
            report_id=f"rep-{n}", watch_until=until, reopened=False
        )
        log.add(at, *placed)

    incident = log.incident
    assert incident.status is IncidentStatus.RESOLVED  # still resolved, the watch running
    assert incident.report_ids == ("rep-1", "rep-2", "rep-3")
    assert incident.watch == Watch(until, "attach")


@pytest.mark.parametrize("on_report", ["reopen", "attach"])
def test_after_the_watch_a_matching_report_opens_a_new_incident(on_report: str) -> None:
    rule = WatchRule(timedelta(days=7), "reopen" if on_report == "reopen" else "attach")
    assert rule.on_report == on_report
    log = Log().resolved(rule)
    just_after = RESOLVED_AT + timedelta(days=7, seconds=1)
    assert route_report(log.incident, just_after, POLICY) is Routing.OPEN_NEW


def test_a_watch_shorter_than_the_window_ends_sooner_it_replaces_the_window() -> None:
    log = Log().resolved(WatchRule(timedelta(days=1), "reopen"))
    assert route_report(log.incident, RESOLVED_AT + timedelta(hours=24), POLICY) is (
        Routing.REOPEN_DURING_WATCH
    )
    assert route_report(log.incident, RESOLVED_AT + timedelta(hours=25), POLICY) is (
        Routing.OPEN_NEW
    )


def test_a_partner_never_reopens_nor_joins_an_incident_under_watch() -> None:
    # Even a filer of the incident, acting as a partner: the incident is not open, so a
    # partner's report is a referral of its own for the office to merge.
    for mode in ("reopen", "attach"):
        incident = Log().resolved(WatchRule(timedelta(days=7), mode)).incident
        assert incident.watch is not None
        assert not partner_may_join(incident, "monitor-chen", ("school-a",))
        assert not partner_may_join(incident, "partner-wxb", ("school-a",))


def test_a_manual_reopening_ends_the_watch_and_a_new_resolution_starts_one() -> None:
    log = Log().resolved()
    reopened_at = RESOLVED_AT + timedelta(days=1)
    log.add(reopened_at, *log.incident.reopen("再次发酵"))
    assert log.incident.watch is None
    again = RESOLVED_AT + timedelta(days=2)
    log.resolved(at=again)
    assert log.incident.watch == Watch(again + timedelta(days=7), "reopen")
    # Resolved again under a plan without a watch: none runs, the window applies.
    log.add(again, *log.incident.reopen("再次发酵")).resolved(watch=None, at=again)
    assert log.incident.watch is None


def test_a_referral_merged_into_another_incident_is_closed_without_a_watch() -> None:
    referral = Incident.replay(
        Log().events[:0]
        + [
            Envelope.new(
                p,
                incident_id="inc-r",
                stream_id=incident_stream("inc-r"),
                stream_version=v,
                actor=Actor(type="person", id="partner-wxb"),
                occurred_at=T0,
            )
            for v, p in enumerate(
                place_referral(report("rep-p", filed_by="partner-wxb"), ["inc-1"]), start=1
            )
        ]
    )
    assert referral is not None
    closed, _ = referral.merge(Log().incident, "同一事项", "office-li")
    assert [type(p).__name__ for p in closed] == ["ReferralMerged", "IncidentResolved"]


# --------------------------------------------------------------------------- the packs


def test_the_packs_that_carry_a_watch_and_those_that_do_not() -> None:
    school = plan_watch(read_manifest(PLANS / "school"))
    fourtier = plan_watch(read_manifest(PLANS / "fourtier"))
    assert school == WatchRule(timedelta(days=7), "reopen", "school", "2026.12.4-seed000-1")
    assert fourtier == WatchRule(timedelta(days=7), "attach", "fourtier", "2026.12.3-seed000-2")
    assert plan_watch(read_manifest(PLANS / "huaning")) is None
    assert plan_watch(read_manifest(PLANS / "town")) is None


@pytest.mark.parametrize(
    ("watch", "field"),
    [
        ("{period: 7d, on_report: escalate}", "watch.on_report"),
        ("{period: seven days, on_report: reopen}", "watch.period"),
        ("{period: 0d, on_report: reopen}", "watch.period"),
        ("{on_report: reopen}", "watch.period"),
        ("{period: 7d, on_report: reopen, levels: [1]}", "watch.levels"),
    ],
)
def test_a_malformed_watch_stops_the_start_naming_the_file_and_field(
    tmp_path: Path, watch: str, field: str
) -> None:
    manifest = (PLANS / "school" / "plan.yaml").read_text(encoding="utf-8")
    start = manifest.index("\nwatch:") + 1
    end = manifest.index("\narticles:") + 1
    (tmp_path / "plan.yaml").write_text(
        manifest[:start] + f"watch: {watch}\n" + manifest[end:], encoding="utf-8"
    )
    with pytest.raises(PlanError) as err:
        read_manifest(tmp_path)
    assert str(tmp_path / "plan.yaml") in str(err.value)
    assert field in str(err.value)
