"""The compose deployment's configuration pages people: `.env` written from `.env.example`
with every channel variable pointing at a local receiver (a real SMTP server, HTTP
receivers answering as the robots and gateways do), the policy directory "mounted" as
compose mounts it (a copy of `config/` in place of /etc/yuqing), and compose's own
`environment:` overrides. A level-1 report then pages the leading group on every channel,
each message in its channel's format.

No Docker engine is here, so the services run in one `yuqing up` process with exactly the
environment compose would give each container (the five containers read the same `.env`)."""

from __future__ import annotations

import hashlib
import hmac
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.notification.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.conftest import Infra
from tests.e2e.conftest import RunningSystem, system_env
from tests.e2e.test_walking_skeleton import report
from tests.service.notification_receivers import HttpReceiver, Received, smtp_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "compose-webhook-secret-0123456789"
SMS_SECRET = "compose-sms-secret-0123456789abcd"
ROBOTS = ("webhook", "sms", "wecom", "dingtalk", "feishu")
# One leader per channel, each preferring another one, so a level-1 page uses them all.
LEADERS = {
    "leader-sms": ["sms", "wecom"],
    "leader-wecom": ["wecom", "sms"],
    "leader-dingtalk": ["dingtalk", "sms"],
    "leader-feishu": ["feishu", "sms"],
    "leader-webhook": ["webhook", "sms"],
    "leader-email": ["email"],
}


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads an env_file (comments and blanks skipped)."""
    pairs = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", path.read_text(encoding="utf-8"), re.M)
    return dict(pairs)


def address(person: str, channel: str) -> str:
    return f"{person}@example.gov.cn" if channel == "email" else person


def mounted_config(tmp: Path) -> Path:
    """YUQING_CONFIG_HOST_DIR: the shipped config/, with a leading group of six."""
    config = tmp / "etc-yuqing"
    shutil.copytree(ROOT / "config", config)
    directory = yaml.safe_load((config / "directory.yaml").read_text(encoding="utf-8"))
    people = [p for p in directory["people"] if "leader" not in p["roles"]]
    for person, channels in LEADERS.items():
        people.append(
            {
                "id": person,
                "name": f"领导小组成员（{channels[0]}）",
                "unit": "county",
                "roles": ["leader"],
                "contacts": {
                    c: f"{person}@example.gov.cn" if c == "email" else person for c in channels
                },
            }
        )
    directory["people"] = people
    (config / "directory.yaml").write_text(
        yaml.safe_dump(directory, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    return config


@pytest.fixture
def receivers() -> Iterator[tuple[dict[str, HttpReceiver], int, list[EmailMessage]]]:
    with ExitStack() as stack:
        http = {name: stack.enter_context(HttpReceiver().running()) for name in ROBOTS}
        # Feishu answers {"code": 0}; the others as the default receiver does.
        http["feishu"].answer = b'{"code": 0, "msg": "success"}'
        port, mails = stack.enter_context(smtp_server())
        yield http, port, mails


@pytest.fixture
def compose_system(
    infra: Infra,
    tmp_path: Path,
    receivers: tuple[dict[str, HttpReceiver], int, list[EmailMessage]],
) -> Iterator[RunningSystem]:
    http, smtp_port, _ = receivers
    config = mounted_config(tmp_path)
    env_file = dotenv(ROOT / ".env.example")
    # What the operator sets in .env: the secret and the channels.
    env_file.update(
        YUQING_SECRET="compose-secret-key-long-enough-for-hmac-sha256",
        YUQING_BUS_SECRET="compose-bus-secret-long-enough-for-hmac-sha256",
        YUQING_SMTP_HOST="127.0.0.1",
        YUQING_SMTP_PORT=str(smtp_port),
        YUQING_SMTP_SENDER="yuqing@example.gov.cn",
        YUQING_WEBHOOK_URL=http["webhook"].url,
        YUQING_WEBHOOK_SECRET=WEBHOOK_SECRET,
        YUQING_SMS_GATEWAY_URL=http["sms"].url,
        YUQING_SMS_GATEWAY_SECRET=SMS_SECRET,
        YUQING_WECOM_ROBOT_URL=http["wecom"].url,
        YUQING_DINGTALK_ROBOT_URL=http["dingtalk"].url,
        YUQING_DINGTALK_ROBOT_SECRET="SEC-dingtalk-compose",
        YUQING_FEISHU_ROBOT_URL=http["feishu"].url,
        YUQING_FEISHU_ROBOT_SECRET="feishu-compose",
    )
    # The volume: ${YUQING_CONFIG_HOST_DIR}:/etc/yuqing.
    env_file = {k: v.replace("/etc/yuqing", str(config)) for k, v in env_file.items()}
    run = uuid.uuid4().hex[:8]
    env = system_env(tmp_path / "data")
    env.update(env_file)
    # compose's `environment:` wins over .env: here the session's servers and a free port.
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_HTTP_HOST="127.0.0.1",
        YUQING_HTTP_PORT=system_env(tmp_path)["YUQING_HTTP_PORT"],
        YUQING_DATA_DIR=str(tmp_path / "data"),
        YUQING_DB_PREFIX=f"compose{run}",
        YUQING_TOPIC_PREFIX=f"compose{run}.",
        YUQING_RATE_LIMIT="100000/minute",
        YUQING_DEMO_PASSWORDS="false",
    )
    running = RunningSystem(env)
    yield running
    running.stop()


def signed_correctly(request: Received, secret: str) -> bool:
    timestamp = request.headers[TIMESTAMP_HEADER]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256)
    return request.headers[SIGNATURE_HEADER] == "sha256=" + expected.hexdigest()


def wait_until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        time.sleep(0.2)


def test_a_level_one_report_pages_the_leading_group_on_every_configured_channel(
    compose_system: RunningSystem,
    receivers: tuple[dict[str, HttpReceiver], int, list[EmailMessage]],
) -> None:
    http, _, mails = receivers
    with compose_system.client() as api:
        answer = api.post("/intake/v1/reports", json=report(url="https://compose.example.cn/1"))
        assert answer.status_code == 201, answer.text

    def paged_everywhere() -> bool:
        return all(http[name].requests for name in ROBOTS) and bool(mails)

    try:
        wait_until(paged_everywhere, within=60, what="a page on every channel")
    except AssertionError:
        got = {name: len(r.requests) for name, r in http.items()} | {"email": len(mails)}
        raise AssertionError(f"pages per channel: {got}\n{compose_system.log_tail(40)}") from None

    (webhook, *_) = http["webhook"].requests
    assert signed_correctly(webhook, WEBHOOK_SECRET)
    assert webhook.json()["to"] == "leader-webhook"
    assert webhook.json()["subject"].startswith("【一级舆情】")
    (sms, *_) = http["sms"].requests
    assert signed_correctly(sms, SMS_SECRET)
    # Of the leading group only the one who prefers SMS gets it (others are paged too:
    # the school's duties go to its own people).
    assert {r.json()["to"] for r in http["sms"].requests} & set(LEADERS) == {"leader-sms"}

    wecom = http["wecom"].requests[0].json()
    assert wecom["msgtype"] in ("text", "markdown")
    dingtalk = http["dingtalk"].requests[0]
    assert "timestamp=" in dingtalk.path  # 加签
    assert "sign=" in dingtalk.path
    assert dingtalk.json()["msgtype"] in ("text", "markdown")
    feishu = http["feishu"].requests[0].json()
    assert feishu["msg_type"] == "text"
    assert feishu["sign"]
    assert feishu["timestamp"]
    assert '<at user_id="leader-feishu">' in feishu["content"]["text"]

    mail = mails[0]
    assert mail["To"] == "leader-email@example.gov.cn"
    assert "一级" in str(mail["Subject"])
