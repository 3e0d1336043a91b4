"""A duty's clock starts at a named instant (`counted_from` in obligations.yaml): the
grading (the default), the first report's publication (舆情发生, seed 003 第十三条) or its
observation. The grade events carry the first report's instants, so the clock holds
whatever order the topics arrive in; a deadline already past when the duty opens is missed
as any other. Notification runs on the fakes through its composition root."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import ValidationError

from services.grading.bootstrap import load_rulebook
from services.grading.domain import ReportFacts, on_report
from services.notification.bootstrap import build as build_notification
from services.notification.domain import Ledger
from shared.events import (
    Actor,
    DeadlineMissed,
    Envelope,
    FiredRule,
    IncidentGraded,
    IncidentGradeProposed,
    IncidentOpened,
    ObligationOpened,
    ReportOrigin,
    SourceType,
)
from shared.plan_rules import Instants, ObligationPolicy
from shared.policy import PolicyError, load_policy
from shared.settings import CONFIG_DIR
from tests.fakes.duties import ACTIONS_POLICY, report
from tests.fakes.duties import duties_by_kind as owed
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
TZ = ZoneInfo("Asia/Shanghai")
RULE = (FiredRule(rule_id="tier-central", reason="中央媒体"),)


def policy(text: str = ACTIONS_POLICY) -> ObligationPolicy:
    return ObligationPolicy.model_validate(yaml.safe_load(text))


# --------------------------------------------------------------------------- the rules


def test_a_duty_counts_from_the_instant_it_names_and_by_default_from_the_grading() -> None:
    published, observed = T0 - timedelta(hours=3), T0 - timedelta(hours=1)
    first = Instants(T0, published, observed)
    level_one = Ledger("inc-1").open_for_grade(
        policy(), level=1, category=None, graded_at=T0, tz=TZ,
        include_level_duties=True, first_report=first,
    )  # fmt: skip
    by_kind = {o.kind: o for o in level_one}
    assert by_kind["phone_quick_report"].counted_from == published
    assert by_kind["phone_quick_report"].deadline == published + timedelta(minutes=30)
    assert by_kind["written_quick_report"].counted_from == T0  # counted_from left out
    (seen,) = Ledger("inc-2").open_for_grade(
        policy(), level=2, category=None, graded_at=T0, tz=TZ,
        include_level_duties=True, first_report=first,
    )  # fmt: skip
    assert (seen.counted_from, seen.deadline) == (observed, observed + timedelta(hours=2))


def test_a_first_report_not_known_counts_from_the_grading() -> None:
    opened = Ledger("inc-1").open_for_grade(
        policy(), level=1, category=None, graded_at=T0, tz=TZ, include_level_duties=True
    )
    assert {o.counted_from for o in opened} == {T0}


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"counted_from": "arisen"}, "levels.1 (phone_quick_report).counted_from: 'arisen'"),
        (
            {"counted_from": "published", "opens_on": "resolved"},
            "levels.1 (phone_quick_report).counted_from: 'published' is for a duty",
        ),
        (
            {"counted_from": "observed", "after": "written_quick_report"},
            "levels.1 (phone_quick_report).counted_from: 'observed' is for a duty",
        ),
    ],
)
def test_a_clock_the_duty_cannot_have_stops_the_start_naming_file_entry_and_field(
    tmp_path: Path, entry: dict[str, str], said: str
) -> None:
    data = yaml.safe_load(ACTIONS_POLICY)
    data["levels"][1][0].update(entry)
    path = tmp_path / "obligations.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path, ObligationPolicy)
    assert str(path) in str(err.value)
    assert said in str(err.value)


def test_grading_carries_the_first_reports_instants_on_the_grade_and_the_proposal() -> None:
    rulebook = load_rulebook(CONFIG_DIR / "rulebook.yaml")
    first = ReportFacts.of(
        report("inc-1", published_at=T0 - timedelta(hours=2), observed_at=T0 - timedelta(hours=1))
    )
    later = ReportFacts.of(report("inc-1", published_at=T0, observed_at=T0, report_id="r2"))
    graded = on_report(rulebook, None, [first], later, False)
    assert isinstance(graded, IncidentGraded)
    assert graded.first_report == ReportOrigin(
        report_id="r1",
        source_type=SourceType.WEIBO,
        source_name="微博",
        published_at=T0 - timedelta(hours=2),
        observed_at=T0 - timedelta(hours=1),
    )
    proposed = on_report(rulebook, None, [], first, False, confirm_role="leader")
    assert isinstance(proposed, IncidentGradeProposed)
    assert proposed.first_report == graded.first_report


def test_grade_events_of_earlier_versions_read_with_the_first_report_not_known() -> None:
    payload = IncidentGraded(level=1, category="hype", rules_fired=RULE, rulebook_version="t")
    event = Envelope.new(payload, incident_id="x", stream_id="grade-x", stream_version=1,
                         actor=Actor.rule("rulebook"))  # fmt: skip
    stored = json.loads(event.to_json())
    stored["schema_version"] = 2
    del stored["payload"]["first_report"]
    old = Envelope.model_validate(stored)
    assert isinstance(old.payload, IncidentGraded)
    assert old.schema_version == IncidentGraded.SCHEMA_VERSION == 3
    assert old.payload.first_report is None
    with pytest.raises(ValidationError):
        IncidentGraded.model_validate({**stored["payload"], "first_report": {"report_id": "r1"}})


# --------------------------------------------------------------------------- the service


class Upstream(Streams):
    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(title="道路积水", unit_ids=("school-a",), first_report_id="r1")
        return self.event(incident_id, payload, "incident")

    def graded(
        self, incident_id: str, level: int, published: datetime | None = None,
        observed: datetime | None = None,
    ) -> Envelope:  # fmt: skip
        payload = IncidentGraded(
            level=level,
            category="hype",
            rules_fired=RULE,
            rulebook_version="test",
            first_report=None
            if published is None or observed is None
            else ReportOrigin(
                report_id="r1",
                source_type=SourceType.WEIBO,
                source_name="微博",
                published_at=published,
                observed_at=observed,
            ),
        )
        return self.event(incident_id, payload, "grade")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def notification(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeService]:
    path = tmp_path / "obligations.yaml"
    path.write_text(ACTIONS_POLICY, encoding="utf-8")
    settings = fake_settings(tmp_path, obligations_policy_path=path)
    async with fake_service(
        "notification", build_notification, settings=settings, clock=clock
    ) as service:
        yield service


async def test_the_quick_report_counts_from_when_the_opinion_arose_as_the_grade_says(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    arose = T0 - timedelta(minutes=10)
    # The grade is seen before intake's report: it carries the first report's instants.
    await notification.consume(
        up.opened("inc-1"), up.graded("inc-1", 1, published=arose, observed=T0)
    )
    duties = await owed(notification, "inc-1")
    phone = duties["phone_quick_report"]
    assert datetime.fromisoformat(phone["counted_from"]) == arose
    assert datetime.fromisoformat(phone["deadline"]) == arose + timedelta(minutes=30)
    assert phone["seconds_left"] == 20 * 60
    assert datetime.fromisoformat(duties["written_quick_report"]["counted_from"]) == T0


async def test_a_grade_that_does_not_say_counts_from_intakes_first_report(
    notification: FakeService,
) -> None:
    up = Upstream()
    first = report(
        "inc-1", published_at=T0 - timedelta(hours=5), observed_at=T0 - timedelta(hours=1)
    )
    later = report("inc-1", published_at=T0, observed_at=T0, report_id="r2")
    await notification.consume(
        up.opened("inc-1"),
        up.event("inc-1", first, "incident"),
        up.event("inc-1", later, "incident"),
        up.graded("inc-1", 2),  # an event of before the grade carried them
    )
    seen = (await owed(notification, "inc-1"))["seen_report"]
    assert datetime.fromisoformat(seen["counted_from"]) == T0 - timedelta(hours=1)
    assert datetime.fromisoformat(seen["deadline"]) == T0 + timedelta(hours=1)


async def test_a_deadline_already_past_when_the_duty_opens_is_missed_at_its_deadline(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    arose = T0 - timedelta(hours=2)  # the report was filed long after it was published
    await notification.consume(
        up.opened("inc-1"), up.graded("inc-1", 1, published=arose, observed=T0)
    )
    workflow = notification.parts.workflow
    assert await workflow.record_missed(clock(), 10) == 1
    (missed,) = await notification.published("DeadlineMissed")
    assert isinstance(missed.payload, DeadlineMissed)
    assert missed.payload.kind == "phone_quick_report"
    assert missed.payload.deadline == missed.occurred_at == arose + timedelta(minutes=30)
    duties = await owed(notification, "inc-1")
    assert duties["phone_quick_report"]["state"] == "missed"
    assert duties["written_quick_report"]["state"] == "open"
    opened = [e.payload for e in await notification.published("ObligationOpened")]
    assert all(isinstance(p, ObligationOpened) for p in opened)
