"""Deliveries from the notification service to a real local SMTP server and HTTP receivers."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest

from services.notification.channels import (
    DeliveryError,
    Outgoing,
    dingtalk_sign,
    feishu_sign,
    send,
    webhook_signature,
)
from services.notification.delivery import ChannelConfig, Message
from shared.bus import ensure_topics
from shared.events import (
    NotificationAcknowledged,
    NotificationFailed,
    NotificationSent,
)
from shared.settings import Settings
from tests.service.notification_receivers import HttpReceiver, smtp_server
from tests.service.test_notification_service import FakeClock, Service, Start, now_ms
from tests.service.test_notification_service import start as start  # the fixture, shared
from tests.service.upstream_events import bearer, client, feed, graded, opened, wait_for

SECRET_ENV = "YUQING_TEST_WEBHOOK_SECRET"
SECRET = "a-webhook-secret-only-this-test-knows"

DIRECTORY = """\
units:
  - {id: county, name: 县局}
  - {id: school-a, name: 实验小学, parent: county}
people:
  - id: leader-zhang
    name: 张组长
    unit: county
    roles: [leader]
    contacts: {webhook: zhang, email: zhang@example.cn}
  - id: office-li
    name: 李主任
    unit: county
    roles: [office]
    contacts: {webhook: li}
"""


def policy(smtp_port: int, hook: str, fallback_hook: str, **delivery: str) -> str:
    settings = {
        "retry": "{attempts: 5, first: 1s, cap: 2s}",
        "ack_window": "10m",
        "renotify": "1",
        **delivery,
    }
    extra = "".join(f"  {key}: {value}\n" for key, value in settings.items())
    return f"""\
version: test
alert_roles: [leader]
levels:
  1:
    - {{kind: phone_quick_report, title: 一级舆情手机快报, owner_role: office,
       recipients: [leader], within: 30m}}
    - {{kind: written_quick_report, title: 一级舆情纸质快报, owner_role: office,
       recipients: [leader], within: 60m}}
  2:
    - {{kind: online_opinion_bulletin, title: 《网上舆情》上报, owner_role: office,
       recipients: [leader], within: 4h}}
delivery:
  channels:
    email: {{type: email, host: 127.0.0.1, port: {smtp_port}, sender: yuqing@example.cn}}
    webhook: {{type: webhook, url: "{hook}", secret_env: {SECRET_ENV}}}
    ops: {{type: wecom, url: "{fallback_hook}"}}
  kinds:
    phone_quick_report: [webhook]
    written_quick_report: [email]
    default: [webhook]
  fallback: ops
  fallback_address: office-group
  escalation_roles: [office]
{extra}"""


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    with HttpReceiver().running() as receiver:
        yield receiver


@pytest.fixture
def ops_group() -> Iterator[HttpReceiver]:
    with HttpReceiver().running() as receiver:
        yield receiver


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[Any]]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
async def make_settings(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Awaitable[Settings]]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    await ensure_topics(settings)
    directory = tmp_path / "directory.yaml"
    directory.write_text(DIRECTORY, encoding="utf-8")

    async def make(policy_text: str) -> Settings:
        path = tmp_path / "obligations.yaml"
        path.write_text(policy_text, encoding="utf-8")
        return settings.model_copy(
            update={
                "obligations_policy_path": path,
                "directory_path": directory,
                "deadline_poll_seconds": 0.2,
            }
        )

    return make


async def events(service: Service, event_type: str) -> list[dict[str, Any]]:
    return [d["payload"] async for d in service.db["events"].find({"event_type": event_type})]


async def test_level_one_reaches_the_leader_by_signed_webhook_and_email_in_chinese(
    make_settings: Callable[[str], Awaitable[Settings]],
    start: Start,
    hook: HttpReceiver,
    ops_group: HttpReceiver,
    smtp: tuple[int, list[Any]],
) -> None:
    port, mailbox = smtp
    settings = await make_settings(policy(port, hook.url, ops_group.url))
    service = await start(settings)
    await feed(settings, opened("inc-d1"))

    async def known() -> bool:
        return await service.parts.projections.incidents.get("inc-d1") is not None

    await wait_for(known)
    await feed(settings, graded("inc-d1", 1))

    async def both_sent() -> bool:
        return len(await events(service, "NotificationSent")) == 2

    await wait_for(both_sent)

    (call,) = hook.requests
    body = call.json()
    assert body["to"] == "zhang"
    assert body["subject"].startswith("【一级舆情】")
    assert "一级舆情手机快报" in body["subject"]
    assert "网传某校食堂问题" in body["text"]
    assert "涉及单位：实验小学" in body["text"]
    # The links open console pages (the incident; the acknowledgement page), not the API.
    assert body["incident_url"] == f"{settings.base_url}/incidents/inc-d1"
    assert body["ack_url"] == f"{settings.base_url}/ack/{body['notification_id']}"
    timestamp = call.headers["X-Yuqing-Timestamp"]
    assert call.headers["X-Yuqing-Signature"] == webhook_signature(SECRET, timestamp, call.body)

    (mail,) = mailbox
    assert mail["To"] == "zhang@example.cn"
    assert "一级舆情纸质快报" in mail["Subject"]
    text = mail.get_content()
    assert "张组长" in text
    assert f"{settings.base_url}/incidents/inc-d1" in text
    assert f"{settings.base_url}/ack/" in text  # the acknowledgement page

    sent = {e["channel"]: e for e in await events(service, "NotificationSent")}
    assert sent["webhook"]["notification_id"] == body["notification_id"]
    assert sent["webhook"]["recipient"] == "leader-zhang"
    assert sent["email"]["attempt"] == 1

    leader = bearer(settings, "leader-zhang", "county", "leader")
    office = bearer(settings, "office-li", "county", "office")
    ack = f"/notifications/v1/notifications/{body['notification_id']}/ack"
    read = f"/notifications/v1/notifications/{body['notification_id']}"
    async with client(service) as http:
        # What the acknowledgement page shows: the message as sent and what it asks.
        shown = await http.get(read, headers=leader)
        assert shown.status_code == 200, shown.text
        assert shown.json()["state"] == "sent"
        assert shown.json()["obligation_title"] == "一级舆情手机快报"
        assert shown.json()["text"] == body["text"]
        assert (await http.get(f"{read}-nope", headers=leader)).status_code == 404
        assert (await http.post(ack, headers=office)).status_code == 403
        first = await http.post(ack, headers=leader)
        assert first.status_code == 200, first.text
        assert first.json()["state"] == "acknowledged"
        assert (await http.get(read, headers=leader)).json()["state"] == "acknowledged"
        assert (await http.post(ack, headers=leader)).status_code == 409
        missing = "/notifications/v1/notifications/nope/ack"
        assert (await http.post(missing, headers=leader)).status_code == 404
    (acked,) = await events(service, "NotificationAcknowledged")
    assert NotificationAcknowledged.model_validate(acked).acknowledged_by == "leader-zhang"


async def queued_for_passes(
    start: Start, settings: Settings, incident: str, *, level: int, pending: int
) -> Service:
    """The service once `incident`, graded at `level`, has queued `pending` deliveries,
    with its own delivery loop idle after its first pass: the test runs the passes."""
    service = await start(settings.model_copy(update={"delivery_poll_seconds": 3600.0}))
    await feed(settings, opened(incident), graded(incident, level))

    async def queued() -> bool:
        return await service.db["deliveries"].count_documents({"state": "pending"}) == pending

    await wait_for(queued)
    return service


async def test_two_replicas_passing_at_once_send_each_message_once(
    make_settings: Callable[[str], Awaitable[Settings]],
    start: Start,
    hook: HttpReceiver,
    ops_group: HttpReceiver,
    smtp: tuple[int, list[Any]],
) -> None:
    port, mailbox = smtp
    settings = await make_settings(policy(port, hook.url, ops_group.url))
    service = await queued_for_passes(start, settings, "inc-d5", level=1, pending=2)
    deliveries = service.db["deliveries"]
    dispatcher = service.parts.dispatcher
    now = datetime.now(UTC)
    # Two replicas' passes at once (their clocks a little apart): both see the same two
    # deliveries due.
    later = now + timedelta(milliseconds=7)
    await asyncio.gather(dispatcher.run_once(now, 10), dispatcher.run_once(later, 10))

    assert len(hook.requests) == 1
    assert len(mailbox) == 1
    sent = await events(service, "NotificationSent")
    assert sorted(e["channel"] for e in sent) == ["email", "webhook"]
    assert await deliveries.count_documents({"state": "sent"}) == 2


async def test_a_message_sent_again_after_a_lost_lease_is_on_record_once(
    make_settings: Callable[[str], Awaitable[Settings]],
    start: Start,
    ops_group: HttpReceiver,
    smtp: tuple[int, list[Any]],
) -> None:
    slow = threading.Event()
    with HttpReceiver(hold_first=slow).running() as hook:
        settings = await make_settings(policy(smtp[0], hook.url, ops_group.url))
        service = await queued_for_passes(start, settings, "inc-d6", level=2, pending=1)
        deliveries = service.db["deliveries"]
        dispatcher = service.parts.dispatcher
        now = datetime.now(UTC)
        # A sender whose receiver is slow, and, once its lease ran out, a second sender.
        first = asyncio.create_task(dispatcher.run_once(now, 10))

        async def reached() -> bool:
            return len(hook.requests) == 1

        await wait_for(reached)
        await dispatcher.run_once(now + dispatcher.lease + timedelta(seconds=1), 10)
        (sent,) = await events(service, "NotificationSent")
        slow.set()
        await first

        ids = {r.headers["X-Yuqing-Notification-Id"] for r in hook.requests}
        assert len(hook.requests) == 2  # at least once to the receiver: twice here
        assert ids == {sent["notification_id"]}  # the one notification
        assert await events(service, "NotificationSent") == [sent]  # once on the record
        row = await deliveries.find_one({"_id": sent["notification_id"]})
        assert (row or {}).get("state") == "sent"


async def test_a_receiver_failing_three_times_gets_one_delivery_recorded_after_retries(
    make_settings: Callable[[str], Awaitable[Settings]],
    start: Start,
    ops_group: HttpReceiver,
    smtp: tuple[int, list[Any]],
) -> None:
    with HttpReceiver(fail_first=3).running() as flaky:
        settings = await make_settings(policy(smtp[0], flaky.url, ops_group.url))
        service = await start(settings)
        await feed(settings, opened("inc-d2"), graded("inc-d2", 2))

        async def sent() -> bool:
            return len(await events(service, "NotificationSent")) == 1

        await wait_for(sent)
        (record,) = await events(service, "NotificationSent")
        assert NotificationSent.model_validate(record).attempt == 4
        assert await events(service, "NotificationFailed") == []
        ids = {r.headers["X-Yuqing-Notification-Id"] for r in flaky.requests}
        assert ids == {record["notification_id"]}  # the same notification, tried four times
        assert len(flaky.requests) == 4
        assert ops_group.requests == []


async def test_a_delivery_failing_every_try_is_recorded_and_alerts_the_fallback_group(
    make_settings: Callable[[str], Awaitable[Settings]],
    start: Start,
    ops_group: HttpReceiver,
    smtp: tuple[int, list[Any]],
) -> None:
    with HttpReceiver(fail_first=100).running() as dead:
        text = policy(smtp[0], dead.url, ops_group.url, retry="{attempts: 2, first: 1s, cap: 1s}")
        settings = await make_settings(text)
        service = await start(settings)
        await feed(settings, opened("inc-d3"), graded("inc-d3", 2))

        async def alerted() -> bool:
            return len(ops_group.requests) == 1

        await wait_for(alerted)
        (failed,) = await events(service, "NotificationFailed")
        assert NotificationFailed.model_validate(failed).attempts == 2
        assert "503" in failed["reason"]
        assert len(dead.requests) == 2
        robot = ops_group.requests[0].json()
        assert robot["msgtype"] == "text"  # the WeCom robot's format
        assert "通知发送失败" in robot["text"]["content"]
        assert "张组长" in robot["text"]["content"]


async def test_an_unacknowledged_page_is_sent_again_then_goes_to_the_next_in_the_chain(
    make_settings: Callable[[str], Awaitable[Settings]],
    start: Start,
    hook: HttpReceiver,
    ops_group: HttpReceiver,
    smtp: tuple[int, list[Any]],
) -> None:
    clock = FakeClock(now_ms())
    settings = await make_settings(policy(smtp[0], hook.url, ops_group.url))
    service = await start(settings, clock=clock)
    await feed(settings, opened("inc-d4"), graded("inc-d4", 2, at=clock.now))

    def delivered(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(await events(service, "NotificationSent")) >= n

        return check

    await wait_for(delivered(1))
    clock.now += timedelta(minutes=11)  # past the 10-minute window, nobody acknowledged
    await wait_for(delivered(2))
    clock.now += timedelta(minutes=11)
    await wait_for(delivered(3))
    pages = [(r.json()["to"], r.json()["subject"]) for r in hook.requests]
    assert pages[0][0] == "zhang"
    assert pages[1][0] == "zhang"
    assert pages[1][1].startswith("【再次提醒")
    assert pages[2][0] == "li"
    assert pages[2][1].startswith("【升级提醒")

    office = bearer(settings, "office-li", "county", "office")
    escalated_id = hook.requests[2].json()["notification_id"]
    async with client(service) as http:
        r = await http.post(f"/notifications/v1/notifications/{escalated_id}/ack", headers=office)
        assert r.status_code == 200, r.text
    clock.now += timedelta(minutes=11)
    # Passes past the acknowledged page's window, run here (the loop may run its own
    # beside them): an acknowledged page stays quiet.
    dispatcher = service.parts.dispatcher
    for _ in range(3):
        await dispatcher.run_once(clock(), 10)
    assert len(hook.requests) == 3
    assert json.loads(hook.requests[2].body)["recipient"] == "office-li"


ROBOT_MESSAGE = Message(
    subject="【一级舆情】请于10:30前完成：手机快报", body="事件：网传某校食堂问题"
)


def outgoing(address: str) -> Outgoing:
    return Outgoing(
        notification_id="n-1",
        incident_id="inc-1",
        obligation_id="o-1",
        recipient="leader-zhang",
        address=address,
        message=ROBOT_MESSAGE,
        incident_url="http://127.0.0.1/archive/v1/incidents/inc-1",
        ack_url="http://127.0.0.1/notifications/v1/notifications/n-1/ack",
    )


@pytest.fixture
def robots() -> Iterator[HttpReceiver]:
    # Every robot's success field at once: errcode (WeCom, DingTalk), code (Feishu).
    with HttpReceiver(answer=b'{"errcode": 0, "code": 0, "msg": "ok"}').running() as receiver:
        yield receiver


async def test_group_robots_get_their_own_formats_and_signatures(
    robots: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBOT_SECRET", "SECdemo")
    now = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)

    def robot(kind: str) -> ChannelConfig:
        return ChannelConfig.model_validate(
            {"type": kind, "url": f"{robots.url}?access_token=t", "secret_env": "ROBOT_SECRET"}
        )

    await send(robot("wecom"), outgoing("13800000001"), now)
    await send(robot("dingtalk"), outgoing("13800000001"), now)
    await send(robot("feishu"), outgoing("ou_zhang"), now)
    wecom, dingtalk, feishu = robots.requests

    assert wecom.json()["msgtype"] == "text"
    assert wecom.json()["text"]["mentioned_mobile_list"] == ["13800000001"]
    assert wecom.json()["text"]["content"].startswith("【一级舆情】")

    query = parse_qs(urlsplit(dingtalk.path).query)
    ms = str(int(now.timestamp() * 1000))
    assert query["timestamp"] == [ms]
    assert query["sign"] == [unquote_plus(dingtalk_sign("SECdemo", ms))]
    assert dingtalk.json()["at"]["atMobiles"] == ["13800000001"]
    assert "网传某校食堂问题" in dingtalk.json()["text"]["content"]

    body = feishu.json()
    assert body["msg_type"] == "text"
    assert body["sign"] == feishu_sign("SECdemo", body["timestamp"])
    assert '<at user_id="ou_zhang"></at>' in body["content"]["text"]


async def test_a_robot_refusing_in_its_answer_is_a_failed_delivery(
    ops_group: HttpReceiver,
) -> None:
    # The receiver answers {"errcode": 0}: Feishu's status field is missing, so unproven.
    feishu = ChannelConfig.model_validate({"type": "feishu", "url": ops_group.url})
    with pytest.raises(DeliveryError, match="without a status"):
        await send(feishu, outgoing("ou_zhang"), datetime(2026, 11, 21, tzinfo=UTC))
