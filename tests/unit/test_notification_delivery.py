"""Delivery decisions without I/O: templates, signatures, backoff, channel choice, paging."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote_plus
from zoneinfo import ZoneInfo

import jinja2
import pytest
from pydantic import ValidationError

from services.notification.bootstrap import SHIPPED_TEMPLATES
from services.notification.channels import dingtalk_sign, feishu_sign, webhook_signature
from services.notification.delivery import (
    ChannelConfig,
    DeliveryPolicy,
    PageMove,
    RetryPolicy,
    Templates,
    next_move,
    page_steps,
    unreachable_reason,
)
from services.notification.dispatch import TEMPLATE_REASONS
from shared.catalogue import Catalogue
from shared.directory import Directory, Person, Unit
from shared.identity import Role
from shared.settings import CONFIG_DIR

SHANGHAI = ZoneInfo("Asia/Shanghai")
CATALOGUE = Catalogue.load(CONFIG_DIR / "catalogue.yaml")
HOOK = "http://127.0.0.1:9/hook"  # never called: these tests only choose channels


def _context() -> dict[str, object]:
    return {
        "incident_title": "网传某校食堂问题",
        "units": ["实验小学", "第二中学"],
        "level": 1,
        "obligation_title": "一级舆情手机快报",
        "deadline": datetime(2026, 3, 1, 2, 30, tzinfo=UTC),
        "recipient": "张组长",
        "incident_url": "https://yq.example/archive/v1/incidents/inc-1",
        "ack_url": "https://yq.example/notifications/v1/notifications/n-1/ack",
    }


def test_shipped_templates_all_load() -> None:
    Templates(SHIPPED_TEMPLATES, SHANGHAI, CATALOGUE).check(TEMPLATE_REASONS)


def test_opened_message_names_level_title_units_local_deadline_and_links() -> None:
    message = Templates(SHIPPED_TEMPLATES, SHANGHAI, CATALOGUE).render("opened", **_context())
    assert message.subject == "【一级舆情】请于2026-03-01 10:30前完成：一级舆情手机快报"
    assert "网传某校食堂问题" in message.body
    assert "涉及单位：实验小学、第二中学" in message.body
    assert "截止时间：2026-03-01 10:30" in message.body  # Beijing time, not UTC
    assert "https://yq.example/archive/v1/incidents/inc-1" in message.body
    assert "https://yq.example/notifications/v1/notifications/n-1/ack" in message.body


def test_a_deployment_can_replace_a_template(tmp_path: Path) -> None:
    directory = tmp_path
    directory.joinpath("opened.txt.j2").write_text(
        "{{ level_name }}：{{ obligation_title }}\n截止 {{ deadline | local }}", encoding="utf-8"
    )
    message = Templates(directory, SHANGHAI, CATALOGUE).render("opened", **_context())
    assert message.subject == "一级：一级舆情手机快报"
    assert message.body == "截止 2026-03-01 10:30"


def test_level_names_in_messages_come_from_the_catalogue() -> None:
    short = {**CATALOGUE.level_short, 1: "Ⅰ级"}
    renamed = CATALOGUE.model_copy(update={"level_short": short})
    message = Templates(SHIPPED_TEMPLATES, SHANGHAI, renamed).render("opened", **_context())
    assert message.subject.startswith("【Ⅰ级舆情】")
    assert "级别：Ⅰ级舆情" in message.body


def test_a_template_using_an_unknown_name_fails_instead_of_sending_blanks(
    tmp_path: Path,
) -> None:
    tmp_path.joinpath("opened.txt.j2").write_text("{{ no_such_thing }}", encoding="utf-8")
    with pytest.raises(jinja2.UndefinedError):
        Templates(tmp_path, SHANGHAI, CATALOGUE).render("opened", **_context())


def test_webhook_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = '{"text":"一级舆情"}'.encode()
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook_signature("s3cret", "1700000000", body) == "sha256=" + expected
    # Another timestamp, body or secret gives another signature: a replay or edit is seen.
    assert webhook_signature("s3cret", "1700000001", body) != "sha256=" + expected
    assert webhook_signature("other", "1700000000", body) != "sha256=" + expected


def test_dingtalk_sign_follows_the_documented_recipe() -> None:
    secret, ms = "SEC000", "1700000000000"
    raw = hmac.new(secret.encode(), f"{ms}\n{secret}".encode(), hashlib.sha256).digest()
    assert unquote_plus(dingtalk_sign(secret, ms)) == base64.b64encode(raw).decode()


def test_feishu_sign_keys_hmac_with_timestamp_and_secret() -> None:
    raw = hmac.new(b"1700000000\nabc", b"", hashlib.sha256).digest()
    assert feishu_sign("abc", "1700000000") == base64.b64encode(raw).decode()


def test_backoff_doubles_from_the_first_wait_up_to_the_cap() -> None:
    retry = RetryPolicy.model_validate({"attempts": 6, "first": "2s", "cap": "10s"})
    waits = [retry.backoff(n).total_seconds() for n in range(1, 6)]
    assert waits == [2, 4, 8, 10, 10]
    assert not retry.exhausted(5)
    assert retry.exhausted(6)


def test_channels_follow_the_persons_preference_within_what_the_kind_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "x")
    monkeypatch.setenv("ROBOT_URL", HOOK)
    monkeypatch.delenv("UNSET_SMTP_HOST", raising=False)
    policy = DeliveryPolicy.model_validate(
        {
            "channels": {
                "webhook": {"type": "webhook", "url": HOOK, "secret_env": "HOOK_SECRET"},
                "wecom": {"type": "wecom", "url_env": "ROBOT_URL"},
                "email": {"type": "email", "host_env": "UNSET_SMTP_HOST", "sender": "a@b"},
            },
            "kinds": {"phone_quick_report": ["wecom", "webhook"], "default": ["email", "webhook"]},
        }
    )
    contacts = {"email": "z@example.cn", "webhook": "zhang", "wecom": "138"}
    assert policy.channels_for("phone_quick_report", contacts) == ["webhook", "wecom"]
    # E-mail is allowed by default but has no host in this environment: it is disabled.
    assert policy.channels_for("anything_else", contacts) == ["webhook"]


def test_a_signed_channel_without_its_secret_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    channel = ChannelConfig.model_validate(
        {"type": "webhook", "url": HOOK, "secret_env": "NO_SUCH_SECRET"}
    )
    assert not channel.enabled


def test_kinds_naming_an_unknown_channel_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown channels: pager"):
        DeliveryPolicy.model_validate({"kinds": {"default": ["pager"]}})


def test_why_nobody_reaches_a_person_says_what_to_fix_in_chinese(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UNSET_SMTP_HOST", raising=False)
    policy = DeliveryPolicy.model_validate(
        {
            "channels": {"email": {"type": "email", "host_env": "UNSET_SMTP_HOST"}},
            "kinds": {"default": ["email"]},
        }
    )
    bare = Person(id="leader-q", name="钱", unit="county", roles=[Role.LEADER])
    mailed = bare.model_copy(update={"contacts": {"email": "q@example.cn"}})
    assert policy.channels_for("phone_quick_report", mailed.contacts) == []  # no SMTP host

    assert unreachable_reason(bare) == "没有可送达此人的渠道（未配置联系方式）"
    assert unreachable_reason(mailed) == (
        "没有可送达此人的渠道（其联系方式的渠道均未启用或不用于此类义务）"
    )
    assert unreachable_reason(None) == "没有可送达此人的渠道（通讯录中没有此人）"


def test_no_channel_may_be_named_none_which_records_that_no_channel_reached() -> None:
    with pytest.raises(ValidationError, match="'none' is not a channel name"):
        DeliveryPolicy.model_validate({"channels": {"none": {"type": "webhook", "url": HOOK}}})


def _directory() -> Directory:
    people = [
        Person(id="leader-a", name="甲", unit="county", roles=[Role.LEADER]),
        Person(id="leader-b", name="乙", unit="county", roles=[Role.LEADER]),
        Person(id="office-c", name="丙", unit="county", roles=[Role.OFFICE, Role.LEADER]),
        Person(id="admin-d", name="丁", unit="county", roles=[Role.ADMIN]),
    ]
    return Directory(units=[Unit(id="county", name="县局")], people=people)


def test_page_steps_reach_everyone_once_in_the_order_of_the_chain() -> None:
    steps = page_steps(_directory(), ["leader"], [Role.OFFICE, Role.ADMIN], ["county"])
    # office-c already got it as a leader, so the office step is empty and left out.
    assert steps == [["leader-a", "leader-b", "office-c"], ["admin-d"]]


def _schools() -> Directory:
    units = [
        Unit(id="county", name="县局"),
        Unit(id="school-a", name="实验小学", parent="county"),
        Unit(id="school-b", name="第二中学", parent="county"),
    ]
    people = [
        Person(id="head-a", name="甲", unit="school-a", roles=[Role.DEPT_HEAD]),
        Person(id="head-b", name="乙", unit="school-b", roles=[Role.DEPT_HEAD]),
        Person(id="head-county", name="丙", unit="county", roles=[Role.DEPT_HEAD]),
        Person(id="leader-c", name="丁", unit="county", roles=[Role.LEADER]),
        Person(id="leader-b", name="戊", unit="school-b", roles=[Role.LEADER]),
    ]
    return Directory(units=units, people=people)


def test_only_the_incidents_units_and_those_above_them_are_paged() -> None:
    steps = page_steps(_schools(), ["dept_head"], [Role.LEADER], ["school-a"])

    assert steps == [["head-a", "head-county"], ["leader-c"]]


def test_with_no_unit_known_only_the_county_is_paged() -> None:
    steps = page_steps(_schools(), ["dept_head", "leader"], [], [])

    assert steps == [["head-county", "leader-c"]]


def test_an_unacknowledged_page_is_renotified_then_escalated_then_gives_up() -> None:
    moves = []
    step, renotified = 0, 0
    for _ in range(5):
        move = next_move(step, renotified, steps=2, renotify=1)
        moves.append(move)
        if move is PageMove.RENOTIFY:
            renotified += 1
        elif move is PageMove.ESCALATE:
            step, renotified = step + 1, 0
        else:
            break
    assert moves == [
        PageMove.RENOTIFY,
        PageMove.ESCALATE,
        PageMove.RENOTIFY,
        PageMove.EXHAUSTED,
    ]


def test_without_renotification_a_page_escalates_at_once() -> None:
    assert next_move(0, 0, steps=2, renotify=0) is PageMove.ESCALATE
    assert next_move(1, 0, steps=2, renotify=0) is PageMove.EXHAUSTED


def test_ack_window_comes_from_the_policy() -> None:
    policy = DeliveryPolicy.model_validate({"ack_window": "5m"})
    assert policy.ack_window == timedelta(minutes=5)
