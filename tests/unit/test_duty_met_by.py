"""A duty met by an action (`met_by: {statement_published: <kind>}` in obligations.yaml):
the school plan's inquiry reply is met when an online reply is published (seed 000 预案1).
Notification reads the statement topic: publishing a statement of the kind fulfils the duty
still owed, recorded as met by that statement, and what waits on the duty opens; a person
may still file it by hand. Notification runs on the fakes through its composition root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from services.archive.domain.ordering import Logged
from services.archive.domain.timeline import timeline
from services.notification.bootstrap import build as build_notification
from shared.catalogue import Catalogue
from shared.events import (
    STATEMENT_TOPIC,
    SUBSCRIPTIONS,
    Actor,
    Envelope,
    FiredRule,
    IncidentGraded,
    IncidentOpened,
    ObligationFulfilled,
    StatementDrafted,
    StatementPublished,
)
from shared.policy import PolicyError
from shared.settings import CONFIG_DIR
from tests.fakes.duties import ACTIONS_POLICY, fulfil
from tests.fakes.duties import duties_by_kind as owed
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock, Streams

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
CATALOGUE = Catalogue.load(CONFIG_DIR / "catalogue.yaml")
RULE = (FiredRule(rule_id="category-inquiry", reason="询问"),)


class Upstream(Streams):
    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(title="家长询问校车", unit_ids=("school-a",), first_report_id="r1")
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str) -> Envelope:
        payload = IncidentGraded(
            level=3, category="inquiry", rules_fired=RULE, rulebook_version="test"
        )
        return self.event(incident_id, payload, "grade")

    def drafted(self, incident_id: str, statement_id: str, kind: str) -> Envelope:
        payload = StatementDrafted(
            statement_id=statement_id,
            kind=kind,
            version=1,
            title="关于校车问题的回复",
            body="校车已于今日恢复运行。",
            author="spokesperson-sun",
        )
        return self.event(incident_id, payload, f"statement-{statement_id}")

    def published(self, incident_id: str, statement_id: str, at: datetime) -> Envelope:
        payload = StatementPublished(
            statement_id=statement_id,
            version=1,
            outlet="官方微博",
            url=f"https://weibo.example/{statement_id}",
            published_by="spokesperson-sun",
        )
        return self.event(incident_id, payload, f"statement-{statement_id}", at=at)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def policy_file(tmp_path: Path, text: str = ACTIONS_POLICY) -> Path:
    path = tmp_path / "obligations.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
async def notification(tmp_path: Path, clock: Clock) -> AsyncIterator[FakeService]:
    settings = fake_settings(tmp_path, obligations_policy_path=policy_file(tmp_path))
    async with fake_service(
        "notification", build_notification, settings=settings, clock=clock
    ) as service:
        yield service


async def fulfilments(service: FakeService) -> list[ObligationFulfilled]:
    found = [e.payload for e in await service.published("ObligationFulfilled")]
    return [p for p in found if isinstance(p, ObligationFulfilled)]


def test_notification_reads_the_statement_topic() -> None:
    assert STATEMENT_TOPIC in SUBSCRIPTIONS["notification"]


async def test_publishing_an_online_reply_meets_the_answer_and_opens_what_waits_on_it(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-1"), up.graded("inc-1"))
    answer = (await owed(notification, "inc-1"))["online_answer"]
    assert answer["state"] == "open"

    at = T0 + timedelta(hours=3)
    clock.now = at + timedelta(minutes=1)
    await notification.consume(
        up.drafted("inc-1", "st-1", "online_reply"), up.published("inc-1", "st-1", at)
    )
    (met,) = await fulfilments(notification)
    assert met.obligation_id == answer["obligation_id"]
    assert (met.met_by, met.statement_id) == ("statement_published", "st-1")
    assert (met.fulfilled_by, met.fulfilled_at, met.late) == ("spokesperson-sun", at, False)
    assert met.reference == "https://weibo.example/st-1"

    duties = await owed(notification, "inc-1")
    assert duties["online_answer"]["state"] == "fulfilled"
    followup = duties["answer_followup"]  # `after: online_answer`, counted from the reply
    assert followup["state"] == "open"
    assert datetime.fromisoformat(followup["deadline"]) == at + timedelta(hours=4)


async def test_a_statement_of_another_kind_meets_nothing(notification: FakeService) -> None:
    up = Upstream()
    await notification.consume(
        up.opened("inc-1"),
        up.graded("inc-1"),
        up.drafted("inc-1", "st-1", "press_release"),
        up.published("inc-1", "st-1", T0 + timedelta(hours=1)),
    )
    assert await fulfilments(notification) == []
    assert (await owed(notification, "inc-1"))["online_answer"]["state"] == "open"


async def test_a_reply_filed_by_hand_is_not_met_again_by_the_publication(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-1"), up.graded("inc-1"))
    answer = (await owed(notification, "inc-1"))["online_answer"]
    clock.now = T0 + timedelta(hours=1)
    r = await fulfil(notification, answer["obligation_id"])
    assert r.status_code == 200, r.text
    await notification.consume(
        up.drafted("inc-1", "st-1", "online_reply"),
        up.published("inc-1", "st-1", T0 + timedelta(hours=2)),
    )
    (by_hand,) = await fulfilments(notification)
    assert (by_hand.fulfilled_by, by_hand.met_by, by_hand.statement_id) == (
        "leader-zhang",
        None,
        None,
    )


async def test_a_reply_published_after_the_deadline_was_missed_meets_it_late(
    notification: FakeService, clock: Clock
) -> None:
    up = Upstream()
    await notification.consume(up.opened("inc-1"), up.graded("inc-1"))
    clock.now = T0 + timedelta(days=1, minutes=1)
    assert await notification.parts.workflow.record_missed(clock(), 10) >= 1
    assert (await owed(notification, "inc-1"))["online_answer"]["state"] == "missed"
    at = T0 + timedelta(days=1, hours=2)
    await notification.consume(
        up.drafted("inc-1", "st-1", "online_reply"), up.published("inc-1", "st-1", at)
    )
    (met,) = await fulfilments(notification)
    assert (met.statement_id, met.late) == ("st-1", True)


async def test_met_by_a_statement_kind_the_plan_does_not_have_stops_the_start(
    tmp_path: Path,
) -> None:
    data = yaml.safe_load(ACTIONS_POLICY)
    data["categories"]["inquiry"][0]["met_by"] = {"statement_published": "tweet"}
    path = policy_file(tmp_path, yaml.safe_dump(data, allow_unicode=True))
    settings = fake_settings(tmp_path, obligations_policy_path=path)
    with pytest.raises(PolicyError) as err:
        async with fake_service("notification", build_notification, settings=settings):
            pass
    said = str(err.value)
    assert str(path) in said
    assert "categories.inquiry (online_answer).met_by.statement_published: 'tweet'" in said


def test_the_archive_timeline_says_the_duty_was_met_by_the_statement() -> None:
    met = ObligationFulfilled(
        obligation_id="o1",
        fulfilled_by="spokesperson-sun",
        fulfilled_at=T0,
        met_by="statement_published",
        statement_id="st-1",
    )
    event = Envelope.new(
        met, incident_id="inc-1", stream_id="obligations-inc-1", stream_version=2,
        actor=Actor.system("notification"), occurred_at=T0,
    )  # fmt: skip
    people = {"spokesperson-sun": "孙老师"}
    (entry,) = timeline([Logged(1, event)], ZoneInfo("Asia/Shanghai"), CATALOGUE, (), people)
    assert entry.summary.endswith("孙老师（发布稿件 st-1 即完成）")


async def test_the_school_packs_same_day_reply_is_met_by_publishing_the_online_reply(
    tmp_path: Path, clock: Clock
) -> None:
    """The shipped school pack (seed 000 预案1 四（三）1): an inquiry's same-day reply is
    met by the online reply published."""
    settings = fake_settings(tmp_path, plan=CONFIG_DIR / "plans" / "school")
    async with fake_service(
        "notification", build_notification, settings=settings, clock=clock
    ) as school:
        up = Upstream()
        await school.consume(up.opened("inc-s"), up.graded("inc-s"))
        reply = (await owed(school, "inc-s"))["same_day_reply"]
        assert reply["state"] == "open"

        at = T0 + timedelta(hours=1)
        clock.now = at
        await school.consume(
            up.drafted("inc-s", "st-s", "online_reply"), up.published("inc-s", "st-s", at)
        )
        (met,) = await fulfilments(school)
        assert (met.obligation_id, met.statement_id, met.late) == (
            reply["obligation_id"],
            "st-s",
            False,
        )
        assert (await owed(school, "inc-s"))["same_day_reply"]["state"] == "fulfilled"
