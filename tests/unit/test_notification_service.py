"""The notification service built through its composition root on the in-memory fakes:
intake and grading events in through the consumer, duties and their record out through
the outbox and the API, the deadline watch and the delivery loop driven by hand with a
clock the test holds, messages sent to local HTTP receivers, and who may see what."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.notification.bootstrap import NotificationParts, build
from services.notification.domain import Ledger
from shared.events import (
    Actor,
    Category,
    DeadlineMissed,
    Envelope,
    EventPayload,
    FiredRule,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentResolved,
    Level,
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
    ObligationOpened,
)
from shared.service import Context, Dependencies
from shared.settings import CONFIG_DIR
from shared.store import UnitOfWork
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.mongo import FakeMongo
from tests.paging import every_page
from tests.service.notification_receivers import HttpReceiver

T0 = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
SECRET_ENV = "YUQING_FAST_WEBHOOK_SECRET"
LIST = "/notifications/v1/obligations"
FULFIL = "/notifications/v1/obligations/{}/fulfil"
ACK = "/notifications/v1/notifications/{}/ack"

POLICY = """\
version: fast
alert_roles: [leader]
levels:
  1:
    - {{kind: phone_quick_report, title: 手机快报, owner_role: office, recipients: [leader],
       within: 30m}}
    - {{kind: tracking_update, title: 动态跟踪, owner_role: office, recipients: [leader],
       within: 24h, every: 24h}}
  2:
    - {{kind: online_opinion_bulletin, title: 《网上舆情》上报, owner_role: office,
       recipients: [leader], within: 4h}}
  3:
    - {{kind: direct_handling, title: 直办, owner_role: dept_head, recipients: [office],
       within: 24h}}
delivery:
  channels:
    webhook: {{type: webhook, url: "{hook}", secret_env: {secret_env}}}
    ops: {{type: wecom, url: "{ops}"}}
  kinds:
    default: [webhook]
  retry: {{attempts: 1, first: 1s, cap: 1s}}
  fallback: ops
  fallback_address: office-group
  ack_window: 10m
  escalation_roles: [office]
"""


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Upstream:
    """Plays intake and grading: events about incidents, as those services publish them."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    def event(
        self, incident_id: str, payload: EventPayload, stream: str, at: datetime = T0
    ) -> Envelope:
        key = f"{stream}-{incident_id}"
        self.versions[key] = self.versions.get(key, 0) + 1
        return Envelope.new(
            payload,
            incident_id=incident_id,
            stream_id=key,
            stream_version=self.versions[key],
            actor=Actor.rule("rulebook"),
            occurred_at=at,
        )

    def opened(self, incident_id: str, unit: str = "school-a") -> Envelope:
        payload = IncidentOpened(title="网传某校食堂问题", unit_ids=(unit,), first_report_id="r1")
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: Level, category: Category = "hype") -> Envelope:
        payload = IncidentGraded(
            level=level,
            category=category,
            rules_fired=(FiredRule(rule_id="media-tier", reason="test"),),
            rulebook_version="test",
        )
        return self.event(incident_id, payload, "grade")

    def escalated(
        self, incident_id: str, from_level: Level, to_level: Level, at: datetime = T0
    ) -> Envelope:
        payload = IncidentEscalated(
            from_level=from_level,
            to_level=to_level,
            category="hype",
            reason="传播扩大",
            rules_fired=(FiredRule(rule_id="reach", reason="test"),),
            rulebook_version="test",
        )
        return self.event(incident_id, payload, "grade", at)

    def resolved(self, incident_id: str) -> Envelope:
        return self.event(incident_id, IncidentResolved(reason="舆情平息"), "incident")


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    with HttpReceiver().running() as receiver:
        yield receiver


@pytest.fixture
def ops() -> Iterator[HttpReceiver]:
    with HttpReceiver().running() as receiver:
        yield receiver


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, hook: HttpReceiver, ops: HttpReceiver, clock: Clock, **overrides: Any
) -> AsyncIterator[FakeService]:
    path = tmp_path / "obligations.yaml"
    path.write_text(
        POLICY.format(hook=hook.url, ops=ops.url, secret_env=SECRET_ENV), encoding="utf-8"
    )
    settings = fake_settings(tmp_path, obligations_policy_path=path, **overrides)
    async with fake_service("notification", build, settings=settings, clock=clock) as service:
        yield service


@pytest.fixture
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "fast-layer-webhook-secret")


@pytest.fixture
async def notification(
    tmp_path: Path, webhook_secret: None, hook: HttpReceiver, ops: HttpReceiver, clock: Clock
) -> AsyncIterator[FakeService]:
    async with running(tmp_path, hook, ops, clock) as service:
        yield service


PAGE = 3  # YUQING_MAX_PAGE_SIZE of `small_pages`


@pytest.fixture
async def small_pages(
    tmp_path: Path, webhook_secret: None, hook: HttpReceiver, ops: HttpReceiver, clock: Clock
) -> AsyncIterator[FakeService]:
    """The service with pages of at most PAGE duties (YUQING_MAX_PAGE_SIZE)."""
    async with running(tmp_path, hook, ops, clock, max_page_size=PAGE) as service:
        yield service


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


def parts(service: FakeService) -> NotificationParts:
    assert isinstance(service.parts, NotificationParts)
    return service.parts


async def duties(
    http: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    r = await http.get(LIST, params=params, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["obligations"])
    found: list[dict[str, Any]] = body["obligations"]
    return found


async def deliveries(service: FakeService, **query: Any) -> list[dict[str, Any]]:
    return [doc async for doc in service.db["deliveries"].find(query, sort=[("created_at", 1)])]


def hidden_body(kind: str, key: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "not_found",
            "message": f"no {kind} {key}",
            "details": {"kind": kind, "id": key},
        }
    }


# --------------------------------------------------------------------------- duties


async def test_grading_opens_the_levels_duties_counted_from_the_grade_with_time_left(
    notification: FakeService, upstream: Upstream, clock: Clock
) -> None:
    graded = upstream.graded("inc-1", 2)
    await notification.consume(upstream.opened("inc-1"), graded)
    clock.now = T0 + timedelta(hours=1)
    office = notification.token("office-li", "county", "office")

    async with notification.http() as http:
        (duty,) = await duties(http, office, incident_id="inc-1")

    assert duty["kind"] == "online_opinion_bulletin"
    assert duty["unit_ids"] == ["school-a"]
    assert datetime.fromisoformat(duty["deadline"]) == T0 + timedelta(hours=4)
    assert duty["seconds_left"] == 3 * 3600
    assert duty["time_left"] == "剩余3小时0分钟"
    (opened,) = await notification.published("ObligationOpened")
    assert opened.stream_id == "obligations-inc-1"
    assert opened.stream_version == 1
    assert opened.causation_id == graded.event_id
    assert opened.actor == Actor.system("notification")
    assert opened.unit_id == "school-a"


async def test_grading_seen_before_intake_gives_the_duty_its_units_when_intake_arrives(
    notification: FakeService, upstream: Upstream
) -> None:
    await notification.consume(upstream.graded("inc-early", 2))
    head = notification.token("head-liu", "school-a", "dept_head")
    admin = notification.token("admin", "county", "admin")

    async with notification.http() as http:
        assert await duties(http, head) == []
        (unplaced,) = await duties(http, admin)
        assert unplaced["unit_ids"] == []
        await notification.consume(upstream.opened("inc-early"))
        (placed,) = await duties(http, head)

    assert placed["unit_ids"] == ["school-a"]


async def test_a_grade_seen_before_intake_pages_the_units_own_people(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The grade names the units grading knew: a duty opened before intake's IncidentOpened
    arrives (another topic) is paged to the school's head (the shipped duties: an inquiry's
    same-day reply goes to the unit's dept_head), not past them to the county's office."""
    graded = upstream.graded("inc-first", 3, "inquiry")
    assert isinstance(graded.payload, IncidentGraded)
    payload = graded.payload.model_copy(update={"unit_ids": ("school-a",)})
    async with fake_service("notification", build, settings=fake_settings(tmp_path)) as shipped:
        await shipped.consume(graded.model_copy(update={"payload": payload}))
        pages = [p async for p in shipped.db["pages"].find({"incident_id": "inc-first"})]

    (reply,) = [p for p in pages if p["kind"] == "same_day_reply"]
    assert reply["steps"][0] == ["head-liu"], reply["steps"]


async def test_escalation_opens_the_new_levels_duties_and_resolving_closes_what_is_pending(
    notification: FakeService, upstream: Upstream, clock: Clock
) -> None:
    await notification.consume(upstream.opened("inc-4"), upstream.graded("inc-4", 3))
    head = notification.token("head-liu", "school-a", "dept_head")
    office = notification.token("office-li", "county", "office")
    clock.now = T0 + timedelta(minutes=10)

    async with notification.http() as http:
        (direct,) = await duties(http, office, incident_id="inc-4")
        r = await http.post(FULFIL.format(direct["obligation_id"]), json={}, headers=head)
        assert r.status_code == 200, r.text
        await notification.consume(upstream.escalated("inc-4", 3, 2))
        assert {d["kind"] for d in await duties(http, office)} == {
            "direct_handling",
            "online_opinion_bulletin",
        }
        await notification.consume(upstream.resolved("inc-4"))
        after = {d["kind"]: d for d in await duties(http, office)}

    assert after["direct_handling"]["state"] == "fulfilled"
    assert after["online_opinion_bulletin"]["state"] == "closed"
    assert after["online_opinion_bulletin"]["closed_reason"] == "事件已办结：舆情平息"


async def test_an_escalation_seen_late_counts_the_new_levels_duties_from_when_it_happened(
    notification: FakeService, upstream: Upstream, clock: Clock
) -> None:
    # Grading escalated as of a deadline missed while the system was down; notification
    # hears of it an hour later, after the restart.
    await notification.consume(upstream.opened("inc-late"), upstream.graded("inc-late", 3))
    escalated_at = T0 + timedelta(hours=2)
    clock.now = escalated_at + timedelta(hours=1)
    await notification.consume(upstream.escalated("inc-late", 3, 2, at=escalated_at))

    (bulletin,) = [
        e.payload
        for e in await notification.published("ObligationOpened")
        if getattr(e.payload, "kind", None) == "online_opinion_bulletin"
    ]
    assert bulletin.counted_from == escalated_at
    office = notification.token("office-li", "county", "office")
    async with notification.http() as http:
        listed = {d["kind"]: d for d in await duties(http, office, incident_id="inc-late")}
    assert datetime.fromisoformat(listed["online_opinion_bulletin"]["deadline"]) == (
        escalated_at + timedelta(hours=4)
    )
    assert listed["online_opinion_bulletin"]["seconds_left"] == 3 * 3600


async def test_only_the_owner_role_the_leading_group_or_an_admin_files_a_duty_once(
    notification: FakeService, upstream: Upstream, clock: Clock
) -> None:
    await notification.consume(upstream.opened("inc-3"), upstream.graded("inc-3", 2))
    clock.now = T0 + timedelta(hours=1)
    office = notification.token("office-li", "county", "office")
    monitor = notification.token("monitor-chen", "school-a", "monitor")

    async with notification.http() as http:
        (duty,) = await duties(http, office)
        url = FULFIL.format(duty["obligation_id"])

        refused = await http.post(url, json={}, headers=monitor)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "not_obligation_owner"
        assert "领导小组办公室" in refused.json()["error"]["message"]  # the catalogue's name

        future = await http.post(
            url,
            json={"fulfilled_at": (clock.now + timedelta(minutes=1)).isoformat()},
            headers=office,
        )
        assert future.status_code == 422
        assert future.json()["error"]["details"][0]["field"] == "fulfilled_at"
        early = await http.post(
            url, json={"fulfilled_at": (T0 - timedelta(minutes=1)).isoformat()}, headers=office
        )
        assert early.status_code == 422
        assert early.json()["error"]["details"][0]["type"] == "before_counted_from"

        done = await http.post(url, json={"reference": "网上舆情第3期"}, headers=office)
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "fulfilled"
        assert done.json()["fulfilled_by"] == "office-li"
        assert done.json()["late"] is False
        assert done.json()["seconds_left"] is None

        again = await http.post(url, json={"reference": "重复"}, headers=office)
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "already_fulfilled"
        assert "不能重复报送" in again.json()["error"]["message"]

    (fulfilled,) = await notification.published("ObligationFulfilled")
    assert fulfilled.actor == Actor(type="person", id="office-li", unit_id="county")
    assert fulfilled.occurred_at == clock.now
    assert fulfilled.stream_version == 2
    # The duty is met: nobody is chased about it any more.
    pages = [
        p async for p in notification.db["pages"].find({"obligation_id": duty["obligation_id"]})
    ]
    assert [p["state"] for p in pages] == ["closed"]


async def test_a_tracking_round_met_opens_the_next_counted_from_its_deadline(
    notification: FakeService, upstream: Upstream, clock: Clock
) -> None:
    await notification.consume(upstream.opened("inc-t"), upstream.graded("inc-t", 1))
    clock.now = T0 + timedelta(hours=5)
    office = notification.token("office-li", "county", "office")

    async with notification.http() as http:
        (first,) = [d for d in await duties(http, office) if d["kind"] == "tracking_update"]
        r = await http.post(FULFIL.format(first["obligation_id"]), json={}, headers=office)
        assert r.status_code == 200, r.text
        rounds = [d for d in await duties(http, office) if d["kind"] == "tracking_update"]

    assert [(d["state"], datetime.fromisoformat(d["deadline"]) - T0) for d in rounds] == [
        ("fulfilled", timedelta(hours=24)),
        ("open", timedelta(hours=48)),
    ]
    (fulfilled,) = await notification.published("ObligationFulfilled")
    next_round = (await notification.published("ObligationOpened"))[-1]
    assert next_round.causation_id == fulfilled.event_id
    assert next_round.actor == Actor.system("notification")
    assert next_round.stream_version == fulfilled.stream_version + 1


# --------------------------------------------------------------------------- visibility


async def test_every_id_route_answers_another_units_id_exactly_like_a_random_one(
    notification: FakeService, upstream: Upstream
) -> None:
    await notification.consume(upstream.opened("inc-b", "school-b"), upstream.graded("inc-b", 2))
    admin = notification.token("admin", "county", "admin")
    school_a = notification.token("office-a", "school-a", "office", "leader")
    partner = notification.token("partner-wxb", "county", "partner", "admin")

    async with notification.http() as http:
        (duty,) = await duties(http, admin)
        (delivery,) = await deliveries(notification)
        routes = [
            ("obligation", FULFIL, duty["obligation_id"]),
            ("notification", ACK, delivery["_id"]),
        ]
        for kind, route, real in routes:
            for caller in (school_a, partner):
                for key in (real, uuid.uuid4().hex):
                    r = await http.post(route.format(key), json={}, headers=caller)
                    assert r.status_code == 404, (route, r.text)
                    assert r.json() == hidden_body(kind, key)
        (untouched,) = await duties(http, admin)

    assert untouched["state"] == "open"
    assert await notification.published("ObligationFulfilled") == []
    assert await notification.published("NotificationAcknowledged") == []


async def test_the_list_shows_only_duties_in_full_sight_and_never_refuses_a_filter(
    notification: FakeService, upstream: Upstream
) -> None:
    await notification.consume(
        upstream.opened("inc-a", "school-a"),
        upstream.graded("inc-a", 2),
        upstream.opened("inc-b", "school-b"),
        upstream.graded("inc-b", 2),
    )
    head = notification.token("head-liu", "school-a", "dept_head")

    async with notification.http() as http:
        assert {d["incident_id"] for d in await duties(http, head)} == {"inc-a"}
        # Another unit's duties are not refused (which would say they exist): none are found.
        assert await duties(http, head, unit="school-b") == []
        assert await duties(http, head, incident_id="inc-b") == []
        for who in (("admin", "county", "admin"), ("analyst-zhao", "county", "analyst")):
            seen = await duties(http, notification.token(*who))
            assert {d["incident_id"] for d in seen} == {"inc-a", "inc-b"}
        # A partner sees none of the bureau's duties, whatever else its token carries.
        for roles in (("partner",), ("partner", "admin")):
            assert await duties(http, notification.token("partner-wxb", "county", *roles)) == []
        assert (await http.get(LIST)).status_code == 401


async def test_the_list_pages_soonest_first_and_the_next_pages_hold_the_rest_once(
    small_pages: FakeService, upstream: Upstream
) -> None:
    # Four level-1 incidents (two duties each, their deadlines tied across incidents) and a
    # level-2 one: nine duties, three pages of PAGE.
    for n in range(4):
        await small_pages.consume(upstream.opened(f"inc-{n}"), upstream.graded(f"inc-{n}", 1))
    await small_pages.consume(upstream.opened("inc-2b"), upstream.graded("inc-2b", 2))
    office = small_pages.token("office-li", "county", "office")
    stored = [doc async for doc in small_pages.db["obligations"].find({})]
    assert len(stored) == 9

    async with small_pages.http() as http:
        pages = await every_page(http, LIST, office)
        # An incident's duties come back whole in one page of the default size.
        one = (await http.get(LIST, params={"incident_id": "inc-1"}, headers=office)).json()
        # A page larger than YUQING_MAX_PAGE_SIZE is refused, naming `limit`; a made-up
        # cursor answers 400 naming `cursor`.
        too_many = await http.get(LIST, params={"limit": PAGE + 1}, headers=office)
        forged = await http.get(LIST, params={"cursor": "not-a-cursor"}, headers=office)

    # With no `limit`, a page holds the configured size; `count` counts all nine each time.
    assert [len(p["obligations"]) for p in pages] == [PAGE, PAGE, PAGE]
    assert [p["count"] for p in pages] == [9, 9, 9]
    listed = [o for p in pages for o in p["obligations"]]
    ids = [o["obligation_id"] for o in listed]
    assert len(set(ids)) == len(ids) == 9  # no duplicate
    assert set(ids) == {doc["obligation_id"] for doc in stored}  # nothing missing
    keys = [(datetime.fromisoformat(o["deadline"]), o["obligation_id"]) for o in listed]
    assert keys == sorted(keys)  # soonest deadline first, ties by id, across pages
    assert (one["count"], len(one["obligations"]), one["next_cursor"]) == (2, 2, None)
    assert too_many.status_code == 422, too_many.text
    assert [d["field"] for d in too_many.json()["error"]["details"]] == ["limit"]
    assert "YUQING_MAX_PAGE_SIZE" in too_many.json()["error"]["message"]
    assert forged.status_code == 400, forged.text
    assert forged.json()["error"]["details"]["field"] == "cursor"


async def test_a_page_of_a_filtered_list_resumes_in_that_filter(
    small_pages: FakeService, upstream: Upstream
) -> None:
    for n in range(4):
        await small_pages.consume(upstream.opened(f"inc-{n}"), upstream.graded(f"inc-{n}", 1))
    office = small_pages.token("office-li", "county", "office")

    async with small_pages.http() as http:
        wanted = {"level": 1, "state": "open", "limit": 2}
        first = (await http.get(LIST, params=wanted, headers=office)).json()
        after = {**wanted, "cursor": first["next_cursor"]}
        rest = [(await http.get(LIST, params=after, headers=office)).json()]
        while rest[-1]["next_cursor"]:
            after["cursor"] = rest[-1]["next_cursor"]
            rest.append((await http.get(LIST, params=after, headers=office)).json())

    pages = [first, *rest]
    assert [len(p["obligations"]) for p in pages] == [2, 2, 2, 2]
    assert {p["count"] for p in pages} == {8}
    ids = [o["obligation_id"] for p in pages for o in p["obligations"]]
    assert len(set(ids)) == 8


# --------------------------------------------------------------------------- deadlines


async def test_the_deadline_watch_records_a_miss_once_at_the_true_deadline_and_alerts(
    notification: FakeService, upstream: Upstream, clock: Clock
) -> None:
    await notification.consume(upstream.opened("inc-m"), upstream.graded("inc-m", 2))
    workflow = parts(notification).workflow
    clock.now = T0 + timedelta(hours=4) - timedelta(seconds=1)
    assert await workflow.record_missed(clock(), 10) == 0

    clock.now = T0 + timedelta(hours=9)  # noticed long after, e.g. after a restart
    assert await workflow.record_missed(clock(), 10) == 1
    assert await workflow.record_missed(clock(), 10) == 0

    (missed,) = await notification.published("DeadlineMissed")
    assert missed.occurred_at == T0 + timedelta(hours=4)
    assert missed.actor == Actor.rule("deadline-watch")
    assert isinstance(missed.payload, DeadlineMissed)
    assert missed.payload.alerted_roles == ("leader",)
    alerts = await deliveries(notification, reason="missed")
    assert [d["recipient"] for d in alerts] == ["leader-zhang"]
    office = notification.token("office-li", "county", "office")
    async with notification.http() as http:
        (overdue,) = await duties(http, office, overdue="true")
    assert overdue["state"] == "missed"
    assert overdue["time_left"] == "已超时5小时0分钟"


async def test_a_watch_that_lost_a_race_to_a_filing_decides_again_and_records_no_miss(
    notification: FakeService, upstream: Upstream, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await notification.consume(upstream.opened("inc-r"), upstream.graded("inc-r", 2))
    workflow = parts(notification).workflow
    repository = workflow.obligations

    async def load(uow: UnitOfWork) -> Ledger | None:
        return await repository.get(uow, "inc-r")

    stale = await notification.store.transaction(load)
    assert stale is not None
    (duty,) = stale.obligations.values()
    clock.now = T0 + timedelta(hours=3, minutes=59)
    office = notification.token("office-li", "county", "office")
    async with notification.http() as http:
        r = await http.post(FULFIL.format(duty.obligation_id), json={}, headers=office)
        assert r.status_code == 200, r.text

    # The watch listed the duty and read its ledger before the filing was stored.
    async def listed(now: datetime, limit: int) -> list[tuple[str, str]]:
        return [("inc-r", duty.obligation_id)]

    reads: list[int] = []
    real_get = repository.get

    async def get(uow: UnitOfWork, key: str) -> Ledger | None:
        reads.append(1)
        return stale if len(reads) == 1 else await real_get(uow, key)

    monkeypatch.setattr(workflow.projections, "past_deadline", listed)
    monkeypatch.setattr(repository, "get", get)
    clock.now = T0 + timedelta(hours=5)

    assert await workflow.record_missed(clock(), 10) == 0
    assert len(reads) == 2  # decided again on the stream as it now is
    assert await notification.published("DeadlineMissed") == []


# --------------------------------------------------------------------------- delivery


async def test_a_delivered_page_is_acknowledged_once_and_only_by_its_recipient(
    notification: FakeService, upstream: Upstream, clock: Clock, hook: HttpReceiver
) -> None:
    await notification.consume(upstream.opened("inc-d"), upstream.graded("inc-d", 2))
    await parts(notification).dispatcher.run_once(clock(), 10)

    (call,) = hook.requests
    body = call.json()
    assert body["to"] == "leader-zhang"
    assert body["subject"].startswith("【二级舆情】")  # the catalogue's short level name
    (sent,) = await notification.published("NotificationSent")
    assert sent.stream_id == f"notification-{body['notification_id']}"
    assert sent.stream_version == 1
    assert isinstance(sent.payload, NotificationSent)

    leader = notification.token("leader-zhang", "county", "leader")
    office = notification.token("office-li", "county", "office")
    ack = ACK.format(body["notification_id"])
    async with notification.http() as http:
        refused = await http.post(ack, headers=office)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "not_recipient"
        first = await http.post(ack, headers=leader)
        assert first.status_code == 200, first.text
        assert first.json()["state"] == "acknowledged"
        again = await http.post(ack, headers=leader)
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "already_acknowledged"

        # Another duty's page, queued but not sent yet, cannot have been seen.
        await notification.consume(upstream.opened("inc-e"), upstream.graded("inc-e", 2))
        (pending,) = await deliveries(notification, incident_id="inc-e")
        early = await http.post(ACK.format(pending["_id"]), headers=leader)
        assert early.status_code == 409
        assert early.json()["error"]["code"] == "not_delivered"

    (acked,) = await notification.published("NotificationAcknowledged")
    assert acked.stream_version == 2
    assert acked.actor == Actor(type="person", id="leader-zhang", unit_id="county")
    assert isinstance(acked.payload, NotificationAcknowledged)
    assert acked.payload.acknowledged_by == "leader-zhang"
    (page,) = [p async for p in notification.db["pages"].find({"incident_id": "inc-d"})]
    assert page["state"] == "acknowledged"


async def test_a_delivery_failing_for_good_is_recorded_once_and_the_fallback_told(
    notification: FakeService,
    upstream: Upstream,
    clock: Clock,
    hook: HttpReceiver,
    ops: HttpReceiver,
) -> None:
    hook.fail_first = 100
    await notification.consume(upstream.opened("inc-f"), upstream.graded("inc-f", 2))
    dispatcher = parts(notification).dispatcher
    await dispatcher.run_once(clock(), 10)
    await dispatcher.run_once(clock(), 10)  # the fallback alert queued by the failure

    (failed,) = await notification.published("NotificationFailed")
    assert isinstance(failed.payload, NotificationFailed)
    assert failed.payload.attempts == 1
    assert "503" in failed.payload.reason
    (robot,) = ops.requests
    content = robot.json()["text"]["content"]
    assert "通知发送失败" in content
    assert "张组长" in content
    assert "通过接口推送送达" in content  # the catalogue's name of the webhook channel
    assert len(hook.requests) == 1


@pytest.fixture
async def with_unreachable_leader(
    tmp_path: Path, webhook_secret: None, hook: HttpReceiver, ops: HttpReceiver, clock: Clock
) -> AsyncIterator[FakeService]:
    """The shipped directory with a second leader, 钱副组长, who has no contacts at all."""
    directory = shipped_directory()
    directory["people"].append(
        {"id": "leader-qian", "name": "钱副组长", "unit": "county", "roles": ["leader"]}
    )
    path = written(tmp_path, directory)
    async with running(tmp_path, hook, ops, clock, directory_path=path) as service:
        yield service


def shipped_directory() -> dict[str, Any]:
    return dict(yaml.safe_load((CONFIG_DIR / "directory.yaml").read_text(encoding="utf-8")))


def written(tmp_path: Path, directory: dict[str, Any]) -> Path:
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(directory, allow_unicode=True), encoding="utf-8")
    return path


async def paged_at_level_1(
    service: FakeService, upstream: Upstream, clock: Clock, incident: str
) -> set[str]:
    """The duties a level-1 grade of `incident` opened, once a delivery pass has run."""
    await service.consume(upstream.opened(incident), upstream.graded(incident, 1))
    await parts(service).dispatcher.run_once(clock(), 10)
    return {
        e.payload.obligation_id
        for e in await service.published("ObligationOpened")
        if isinstance(e.payload, ObligationOpened)
    }


async def test_a_person_no_channel_reaches_is_recorded_once_a_page_and_the_others_told(
    with_unreachable_leader: FakeService,
    upstream: Upstream,
    clock: Clock,
    hook: HttpReceiver,
    ops: HttpReceiver,
) -> None:
    """A level-1 grade pages both leaders about its two duties: 张组长 is told of each, and
    钱副组长, with no contact, is recorded once a duty as not reachable and counted, not again
    when the page is sent again and not when it escalates."""
    service = with_unreachable_leader
    counted_before = scraped("yuqing_notifications_unreachable_total", level="1")
    opened = await paged_at_level_1(service, upstream, clock, "inc-u")
    dispatcher = parts(service).dispatcher
    assert len(opened) == 2  # 手机快报 and 动态跟踪
    told = [c.json() for c in hook.requests]
    assert sorted((b["to"], b["obligation_id"]) for b in told) == [
        ("leader-zhang", d) for d in sorted(opened)
    ]
    failed = [
        e.payload
        for e in await service.published("NotificationFailed")
        if isinstance(e.payload, NotificationFailed)
    ]
    assert sorted(
        (f.obligation_id, f.recipient, f.channel, f.attempts, f.reason) for f in failed
    ) == [
        (d, "leader-qian", "none", 0, "没有可送达此人的渠道（未配置联系方式）")
        for d in sorted(opened)
    ]
    assert scraped("yuqing_notifications_unreachable_total", level="1") == counted_before + 2
    # Nothing was tried, so there is no failing channel for the fallback group to hear of.
    assert ops.requests == []
    assert scraped("yuqing_deliveries_failed_total", channel="none") == 0

    clock.now = T0 + timedelta(minutes=11)  # nobody acknowledged: the leaders told again
    await dispatcher.run_once(clock(), 10)
    await dispatcher.run_once(clock(), 10)
    clock.now = T0 + timedelta(minutes=22)  # still nobody: escalated to the office
    await dispatcher.run_once(clock(), 10)
    await dispatcher.run_once(clock(), 10)

    recipients = sorted(c.json()["to"] for c in hook.requests)
    assert recipients == ["leader-zhang"] * 4 + ["office-li"] * 2
    assert len(await service.published("NotificationFailed")) == 2
    assert scraped("yuqing_notifications_unreachable_total", level="1") == counted_before + 2


@pytest.fixture
async def with_nobody_above_school_a(
    tmp_path: Path, webhook_secret: None, hook: HttpReceiver, ops: HttpReceiver, clock: Clock
) -> AsyncIterator[FakeService]:
    """The shipped directory with the leader and the office moved to 第二中学: nobody in
    实验小学 or above it holds a role a level-1 duty pages."""
    directory = shipped_directory()
    for person in directory["people"]:
        if person["id"] in {"leader-zhang", "office-li"}:
            person["unit"] = "school-b"
    path = written(tmp_path, directory)
    async with running(tmp_path, hook, ops, clock, directory_path=path) as service:
        yield service


async def test_a_duty_whose_page_reaches_nobody_is_recorded_once_and_counted(
    with_nobody_above_school_a: FakeService, upstream: Upstream, clock: Clock, hook: HttpReceiver
) -> None:
    """A level-1 grade of 实验小学's incident owes two duties nobody may be paged about: each
    is on record once as told to no one, with the reason, and counted; telling again and
    the end of the chain add nothing, and no other school's people are told."""
    service = with_nobody_above_school_a
    counted_before = scraped("yuqing_notifications_unreachable_total", level="1")
    opened = await paged_at_level_1(service, upstream, clock, "inc-n")
    dispatcher = parts(service).dispatcher
    assert len(opened) == 2
    failed = [
        e.payload
        for e in await service.published("NotificationFailed")
        if isinstance(e.payload, NotificationFailed)
    ]
    assert sorted((f.obligation_id, f.recipient, f.channel, f.attempts) for f in failed) == [
        (d, "", "none", 0) for d in sorted(opened)
    ]
    assert {f.reason for f in failed} == {
        "无人可通知（事件所属单位及其上级单位中无人担任应通知的角色）"
    }
    assert scraped("yuqing_notifications_unreachable_total", level="1") == counted_before + 2

    for minutes in (11, 22, 33):  # windows pass unacknowledged: told again, then the end
        clock.now = T0 + timedelta(minutes=minutes)
        await dispatcher.run_once(clock(), 10)
        await dispatcher.run_once(clock(), 10)
    assert len(await service.published("NotificationFailed")) == 2
    assert scraped("yuqing_notifications_unreachable_total", level="1") == counted_before + 2
    assert hook.requests == []


# --------------------------------------------------------------------------- start-up


def test_a_bad_policy_stops_the_start_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "obligations.yaml"
    text = POLICY.format(hook="http://127.0.0.1:9/", ops="http://127.0.0.1:9/", secret_env="X")
    path.write_text(text.replace("within: 4h", "within: soon"), encoding="utf-8")

    with pytest.raises(ValueError, match=r"levels\.2\.0\.within"):
        fake_build(tmp_path, path)


def fake_build(tmp_path: Path, policy: Path) -> NotificationParts:
    settings = fake_settings(tmp_path, obligations_policy_path=policy)
    ctx = Context.from_settings(settings)
    store = FakeMongo().store("notification")
    return build(Dependencies(settings, ctx.directory, ctx.catalogue, store))


# --------------------------------------------------------------------------- figures


def scraped(name: str, **labels: str) -> float:
    """A sample as a Prometheus scrape of /metrics reads it (0 when absent)."""
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


OVERDUE = ("false", "true")


async def test_a_scrape_shows_duties_owed_by_level_and_those_past_their_deadline(
    notification: FakeService, upstream: Upstream, clock: Clock
) -> None:
    await notification.consume(upstream.opened("inc-m"), upstream.graded("inc-m", 2))
    await notification.runner.sample_metrics()
    assert scraped("yuqing_obligations_owed", level="2", overdue="false") == 1
    assert scraped("yuqing_obligations_owed", level="2", overdue="true") == 0

    clock.now = T0 + timedelta(hours=5)  # the 4-hour bulletin is now late
    await notification.runner.sample_metrics()
    assert scraped("yuqing_obligations_owed", level="2", overdue="false") == 0
    assert scraped("yuqing_obligations_owed", level="2", overdue="true") == 1

    # Counted at most once a minute (YUQING_OWED_COUNT_SECONDS): a duty owed since shows
    # at the first sample a minute after the last count, not before.
    await notification.consume(upstream.opened("inc-m2"), upstream.graded("inc-m2", 2))

    def owed() -> float:
        return sum(scraped("yuqing_obligations_owed", level="2", overdue=o) for o in OVERDUE)

    clock.now += timedelta(seconds=30)
    await notification.runner.sample_metrics()
    assert owed() == 1
    clock.now += timedelta(seconds=30)
    await notification.runner.sample_metrics()
    assert owed() == 2


async def test_a_scrape_shows_the_whole_outbox_backlog_not_one_batch_of_it(
    notification: FakeService,
) -> None:
    waiting = [
        Envelope.new(
            IncidentResolved(reason="舆情平息"),
            incident_id="inc-backlog",
            stream_id="backlog",
            stream_version=n,
            actor=Actor.system("notification"),
        )
        for n in range(1, 252)
    ]
    await notification.store.append(waiting, expected_version=0)
    await notification.runner.sample_metrics()
    assert notification.runner.settings.outbox_batch_size < 251
    assert scraped("yuqing_outbox_backlog", service="notification") == 251


async def test_a_scrape_counts_failed_deliveries_and_times_acknowledgements(
    notification: FakeService, upstream: Upstream, clock: Clock, hook: HttpReceiver
) -> None:
    failed_before = scraped("yuqing_deliveries_failed_total", channel="webhook")
    acks_before = scraped("yuqing_acknowledge_seconds_count")
    within_5m = scraped("yuqing_acknowledge_seconds_bucket", le="300.0")
    within_10m = scraped("yuqing_acknowledge_seconds_bucket", le="600.0")
    hook.fail_first = 1
    await notification.consume(upstream.opened("inc-n"), upstream.graded("inc-n", 2))
    dispatcher = parts(notification).dispatcher
    await dispatcher.run_once(clock(), 10)
    assert scraped("yuqing_deliveries_failed_total", channel="webhook") == failed_before + 1

    await notification.consume(upstream.opened("inc-o"), upstream.graded("inc-o", 2))
    await dispatcher.run_once(clock(), 10)
    (sent,) = [c.json() for c in hook.requests[1:] if c.json().get("to") == "leader-zhang"]
    clock.now = T0 + timedelta(minutes=7)
    leader = notification.token("leader-zhang", "county", "leader")
    async with notification.http() as http:
        r = await http.post(ACK.format(sent["notification_id"]), headers=leader)
        assert r.status_code == 200, r.text
    assert scraped("yuqing_acknowledge_seconds_count") == acks_before + 1
    # Seven minutes after it was sent: counted within ten minutes, not within five.
    assert scraped("yuqing_acknowledge_seconds_bucket", le="600.0") == within_10m + 1
    assert scraped("yuqing_acknowledge_seconds_bucket", le="300.0") == within_5m
