"""The notification service against the real embedded broker and database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.notification.bootstrap import NotificationParts, build
from shared.bus import ensure_topics
from shared.clock import Clock, utcnow
from shared.events import (
    Actor,
    DeadlineMissed,
    Envelope,
    IncidentReopened,
    ObligationOpened,
)
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.paging import every_page
from tests.service.upstream_events import (
    bearer,
    client,
    escalated,
    feed,
    graded,
    opened,
    resolved,
    wait_for,
)

POLICY = """\
version: test
alert_roles: [leader]
levels:
  1:
    - {kind: phone_quick_report, title: 手机快报, owner_role: office, recipients: [leader],
       within: 3s}
    - {kind: written_quick_report, title: 纸质快报, owner_role: office, recipients: [leader],
       within: 60m}
  2:
    - {kind: online_opinion_bulletin, title: 《网上舆情》上报, owner_role: office,
       recipients: [leader], within: 4h}
  3:
    - {kind: direct_handling, title: 直办, owner_role: dept_head, recipients: [office],
       within: 24h}
"""


def now_ms() -> datetime:
    """Now, at the millisecond precision MongoDB keeps, so read-back times compare equal."""
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def fast_settings(settings: Settings, tmp_path: Path) -> Settings:
    path = tmp_path / "obligations.yaml"
    path.write_text(POLICY, encoding="utf-8")
    await ensure_topics(settings)
    return settings.model_copy(
        update={"obligations_policy_path": path, "deadline_poll_seconds": 0.2}
    )


Service = ServiceRunner[NotificationParts]
Start = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Service] = []

    async def run(settings: Settings, clock: Clock = utcnow) -> Service:
        runner = ServiceRunner.connect(
            "notification", build, Context.from_settings(settings), clock=clock
        )
        await runner.start()
        started.append(runner)
        return runner

    yield run
    for runner in started:
        if runner.started:
            await runner.stop()


async def stored(service: Service, event_type: str) -> list[dict[str, Any]]:
    cursor = service.db["events"].find({"event_type": event_type})
    return [doc async for doc in cursor]


async def test_level_one_opens_both_quick_reports_and_the_short_deadline_is_missed_once(
    fast_settings: Settings, start: Start
) -> None:
    service = await start(fast_settings)
    graded_at = now_ms()
    await feed(fast_settings, opened("inc-1"), graded("inc-1", 1, at=graded_at))
    office = bearer(fast_settings, "office-li", "county", "office")

    async with client(service) as http:

        async def two_open() -> bool:
            r = await http.get("/notifications/v1/obligations?incident_id=inc-1", headers=office)
            return r.status_code == 200 and r.json()["count"] == 2

        await wait_for(two_open)
        body = (await http.get("/notifications/v1/obligations", headers=office)).json()
        by_kind = {o["kind"]: o for o in body["obligations"]}
        written = by_kind["written_quick_report"]
        assert datetime.fromisoformat(written["deadline"]) == graded_at + timedelta(minutes=60)
        assert written["unit_ids"] == ["school-a"]
        assert 3500 < written["seconds_left"] <= 3600
        assert written["time_left"].startswith("剩余")

        async def phone_missed() -> bool:
            return len(await stored(service, "DeadlineMissed")) > 0

        await wait_for(phone_missed)
        await asyncio.sleep(1.0)  # five more passes of the watch: none may record it again
        (missed,) = await stored(service, "DeadlineMissed")
        payload = DeadlineMissed.model_validate(missed["payload"])
        assert payload.kind == "phone_quick_report"
        assert payload.deadline == graded_at + timedelta(seconds=3)
        assert payload.alerted_roles == ("leader",)

        overdue = await http.get("/notifications/v1/obligations?overdue=true", headers=office)
        assert [o["kind"] for o in overdue.json()["obligations"]] == ["phone_quick_report"]
        assert overdue.json()["obligations"][0]["state"] == "missed"
        assert overdue.json()["obligations"][0]["time_left"].startswith("已超时")


async def test_a_deadline_passed_while_down_is_recorded_once_on_restart(
    fast_settings: Settings, start: Start
) -> None:
    graded_at = now_ms()
    clock = FakeClock(graded_at)
    first = await start(fast_settings, clock=clock)
    await feed(fast_settings, opened("inc-2"), graded("inc-2", 1, at=graded_at))

    async def opened_both() -> bool:
        return len(await stored(first, "ObligationOpened")) == 2

    await wait_for(opened_both)
    await first.stop()

    later = FakeClock(graded_at + timedelta(hours=2))
    second = await start(fast_settings, clock=later)

    async def both_missed() -> bool:
        return len(await stored(second, "DeadlineMissed")) == 2

    await wait_for(both_missed)
    # Two more deciders at once (another replica, say) find nothing left to record.
    recorded = await asyncio.gather(
        second.parts.workflow.record_missed(later(), 10),
        second.parts.workflow.record_missed(later(), 10),
    )
    assert list(recorded) == [0, 0]
    missed = [
        DeadlineMissed.model_validate(d["payload"]) for d in await stored(second, "DeadlineMissed")
    ]
    opened_events = [
        ObligationOpened.model_validate(d["payload"])
        for d in await stored(second, "ObligationOpened")
    ]
    assert sorted(m.deadline for m in missed) == sorted(o.deadline for o in opened_events)


async def test_fulfilling_is_recorded_once_and_only_by_those_who_may(
    fast_settings: Settings, start: Start
) -> None:
    service = await start(fast_settings)
    await feed(fast_settings, opened("inc-3"), graded("inc-3", 2))
    office = bearer(fast_settings, "office-li", "county", "office")
    monitor = bearer(fast_settings, "monitor-chen", "school-a", "monitor")
    other_school = bearer(fast_settings, "office-b", "school-b", "office")

    async with client(service) as http:

        async def bulletin() -> list[dict[str, Any]]:
            r = await http.get("/notifications/v1/obligations?incident_id=inc-3", headers=office)
            found: list[dict[str, Any]] = r.json()["obligations"]
            return found

        async def exists() -> bool:
            return len(await bulletin()) == 1

        await wait_for(exists)
        (duty,) = await bulletin()
        url = f"/notifications/v1/obligations/{duty['obligation_id']}/fulfil"

        assert (await http.get("/notifications/v1/obligations")).status_code == 401
        hidden = await http.get("/notifications/v1/obligations", headers=other_school)
        assert hidden.json()["count"] == 0
        # Another unit's duty answers like one that does not exist.
        assert (await http.post(url, json={}, headers=other_school)).status_code == 404
        assert (await http.post(url, json={}, headers=monitor)).status_code == 403

        done = await http.post(url, json={"reference": "网上舆情第3期"}, headers=office)
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "fulfilled"
        assert done.json()["fulfilled_by"] == "office-li"
        assert done.json()["reference"] == "网上舆情第3期"
        assert done.json()["late"] is False
        assert done.json()["seconds_left"] is None

        again = await http.post(url, json={"reference": "重复"}, headers=office)
        assert again.status_code == 409
        assert "不能重复报送" in again.json()["error"]["message"]
        assert len(await stored(service, "ObligationFulfilled")) == 1

        ack = await http.post("/notifications/v1/notifications/n-1/ack", headers=office)
        assert ack.status_code == 404


async def test_the_list_pages_by_cursor_through_every_duty_once_on_the_real_database(
    fast_settings: Settings, start: Start
) -> None:
    service = await start(fast_settings.model_copy(update={"max_page_size": 2}))
    # Five bulletins due at the same moment (ties broken by id) and a later duty.
    at = now_ms()
    incidents = [f"inc-p{n}" for n in range(5)]
    events = [e for i in incidents for e in (opened(i), graded(i, 2, at=at))]
    await feed(fast_settings, *events, opened("inc-p9"), graded("inc-p9", 3, at=at))
    office = bearer(fast_settings, "office-li", "county", "office")

    async with client(service) as http:

        async def all_in() -> bool:
            r = await http.get("/notifications/v1/obligations", headers=office)
            return r.status_code == 200 and r.json()["count"] == 6

        await wait_for(all_in)
        pages = await every_page(http, "/notifications/v1/obligations", office)
        too_many = await http.get("/notifications/v1/obligations?limit=3", headers=office)

    assert [len(p["obligations"]) for p in pages] == [2, 2, 2]
    listed = [o for p in pages for o in p["obligations"]]
    assert len({o["obligation_id"] for o in listed}) == 6
    assert {o["incident_id"] for o in listed} == {*incidents, "inc-p9"}
    assert listed[-1]["kind"] == "direct_handling"  # the latest deadline comes last
    tied = [o["obligation_id"] for o in listed[:5]]
    assert tied == sorted(tied)
    assert too_many.status_code == 422
    assert too_many.json()["error"]["details"][0]["field"] == "limit"


async def test_escalation_adds_duties_and_resolving_closes_what_is_pending(
    fast_settings: Settings, start: Start
) -> None:
    service = await start(fast_settings)
    await feed(fast_settings, opened("inc-4"), graded("inc-4", 3))
    office = bearer(fast_settings, "office-li", "county", "office")
    head = bearer(fast_settings, "head-liu", "school-a", "dept_head")

    async with client(service) as http:

        async def duties() -> dict[str, dict[str, Any]]:
            r = await http.get("/notifications/v1/obligations?incident_id=inc-4", headers=office)
            return {o["kind"]: o for o in r.json()["obligations"]}

        def count_is(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return len(await duties()) == n

            return check

        await wait_for(count_is(1))
        direct = (await duties())["direct_handling"]
        r = await http.post(
            f"/notifications/v1/obligations/{direct['obligation_id']}/fulfil", json={}, headers=head
        )
        assert r.status_code == 200, r.text

        await feed(fast_settings, escalated("inc-4", 3, 2))
        await wait_for(count_is(2))
        await feed(fast_settings, resolved("inc-4"))

        async def closed() -> bool:
            state: str = (await duties())["online_opinion_bulletin"]["state"]
            return state == "closed"

        await wait_for(closed)
        after = await duties()
        assert after["direct_handling"]["state"] == "fulfilled"
        assert after["online_opinion_bulletin"]["closed_reason"] == "事件已办结：舆情平息"
        assert (
            await http.get(
                "/notifications/v1/obligations?incident_id=inc-4&state=open", headers=office
            )
        ).json()["count"] == 0


async def test_a_reopened_incident_owes_its_duties_again_and_none_before_they_were_owed(
    fast_settings: Settings, start: Start
) -> None:
    service = await start(fast_settings)
    # Intake's and grading's events travel on two topics: the grade must be in before the
    # resolution, or (rightly) nothing is owed at all.
    await feed(fast_settings, opened("inc-r"), graded("inc-r", 2))
    office = bearer(fast_settings, "office-li", "county", "office")
    url = "/notifications/v1/obligations?incident_id=inc-r"

    async with client(service) as http:

        async def bulletins() -> list[dict[str, Any]]:
            r = await http.get(url, headers=office)
            return [o for o in r.json()["obligations"] if o["kind"] == "online_opinion_bulletin"]

        async def states(*wanted: str) -> bool:
            return [b["state"] for b in await bulletins()] == list(wanted)

        await wait_for(lambda: states("open"))
        await feed(fast_settings, resolved("inc-r"))
        await wait_for(lambda: states("closed"))
        reopened_at = now_ms()
        reopen = Envelope.new(
            IncidentReopened(reason="舆情反弹"),
            incident_id="inc-r",
            stream_id="incident-inc-r",
            stream_version=3,
            actor=Actor(type="person", id="office-li", unit_id="county"),
            occurred_at=reopened_at,
        )
        await feed(fast_settings, reopen)

        async def owed_again() -> bool:
            return len(await bulletins()) == 2

        await wait_for(owed_again)
        (again,) = [b for b in await bulletins() if b["state"] == "open"]
        assert datetime.fromisoformat(again["counted_from"]) == reopened_at

        early = await http.post(
            f"/notifications/v1/obligations/{again['obligation_id']}/fulfil",
            json={"fulfilled_at": (reopened_at - timedelta(minutes=1)).isoformat()},
            headers=office,
        )
        assert early.status_code == 422, early.text
        assert early.json()["error"]["details"][0]["field"] == "fulfilled_at"


TRACKING_POLICY = """\
version: test
alert_roles: [leader]
levels:
  1:
    - {kind: tracking_update, title: 动态跟踪, owner_role: office, recipients: [leader],
       within: 1h, every: 1h}
"""


async def test_tracking_updates_recur_every_period_while_open_and_stop_when_resolved(
    settings: Settings, tmp_path: Path, start: Start
) -> None:
    path = tmp_path / "tracking.yaml"
    path.write_text(TRACKING_POLICY, encoding="utf-8")
    await ensure_topics(settings)
    tracking = settings.model_copy(
        update={"obligations_policy_path": path, "deadline_poll_seconds": 0.2}
    )
    graded_at = now_ms()
    clock = FakeClock(graded_at)
    service = await start(tracking, clock=clock)
    await feed(tracking, opened("inc-t"), graded("inc-t", 1, at=graded_at))
    office = bearer(tracking, "office-li", "county", "office")

    async with client(service) as http:

        async def rounds() -> list[tuple[str, timedelta]]:
            r = await http.get("/notifications/v1/obligations?incident_id=inc-t", headers=office)
            return [
                (o["state"], datetime.fromisoformat(o["deadline"]) - graded_at)
                for o in r.json()["obligations"]
            ]

        async def first_open() -> bool:
            return await rounds() == [("open", timedelta(hours=1))]

        await wait_for(first_open)
        # Down or idle for two and a half hours: both rounds due meanwhile are missed.
        clock.now = graded_at + timedelta(hours=2, minutes=30)

        async def caught_up() -> bool:
            return len(await rounds()) == 3

        await wait_for(caught_up)
        assert await rounds() == [
            ("missed", timedelta(hours=1)),
            ("missed", timedelta(hours=2)),
            ("open", timedelta(hours=3)),
        ]

        await feed(tracking, resolved("inc-t"))

        async def closed() -> bool:
            return (await rounds())[-1][0] == "closed"

        await wait_for(closed)
        clock.now = graded_at + timedelta(hours=5)
        await asyncio.sleep(1.0)  # five passes of the watch: a resolved incident owes no more
        assert len(await rounds()) == 3
