"""The compose deployment's configuration pages people: `.env` written from `.env.example`
with every channel variable pointing at a local receiver (a real SMTP server, HTTP
receivers answering as the robots and gateways do), the policy directory "mounted" as
compose mounts it (a copy of `config/` in place of its mount point), and what
docker-compose.yml itself passes (its `env_file:` and `environment:`, read from the file
and interpolated from `.env` as compose does). A level-1 report then pages the leading
group on every channel, each message in its channel's format.

No Docker engine is here, so the services run in one `yuqing up` process with exactly the
environment compose would give each container (the five containers get the same one);
only where a container listens and keeps its data differ on this host. Every channel
variable the code reads (the shipped obligations policy's `*_env` keys) must reach the
containers with the value `.env` gives it."""

from __future__ import annotations

import hashlib
import hmac
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.notification.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER
from shared.settings import SERVICE_NAMES
from tests.conftest import Infra
from tests.deploy.test_files import channel_variables
from tests.e2e.conftest import RunningSystem, system_env
from tests.e2e.test_walking_skeleton import report
from tests.service.notification_receivers import HttpReceiver, Received, smtp_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
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


# Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
# ${VAR?error}, ${VAR:+other}, ${VAR+other} and $VAR.
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, source: Mapping[str, str]) -> str:
    """`value` as compose interpolates it from `source` (the project's .env, nothing set in
    the shell); a required variable unset stops compose, and so the test."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg, have = match.group("op"), match.group("arg") or "", source.get(name)
        unset = have is None or (have == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset else str(have)
        if op in (":?", "?"):
            assert not unset, f"docker compose refuses to start: {name}: {arg}"
            return str(have)
        if op in (":+", "+"):
            return "" if unset else arg
        return have or ""

    return INTERPOLATION.sub(one, value)


def scalar(value: Any) -> str:
    """A YAML value as compose passes it to a container (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def compose_service(name: str) -> dict[str, Any]:
    """One service of docker-compose.yml, its `<<:` merges resolved (the loader does)."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert name in services, f"docker-compose.yml has no service {name}"
    service: dict[str, Any] = services[name]
    return service


def container_env(name: str, dotenv_file: Mapping[str, str]) -> dict[str, str]:
    """The environment compose gives service `name`'s container: its `env_file:` entries in
    order (`.env` is `dotenv_file`, others read beside the compose file), then its
    `environment:` over them, interpolated from `.env`."""
    service = compose_service(name)
    env: dict[str, str] = {}
    entries = service.get("env_file") or []
    for entry in [entries] if isinstance(entries, (str, dict)) else entries:
        path = entry if isinstance(entry, str) else entry["path"]
        required = True if isinstance(entry, str) else entry.get("required", True)
        if path == ".env":
            env.update(dotenv_file)
        elif (ROOT / path).is_file():
            env.update(dotenv(ROOT / path))
        else:
            assert not required, f"{name}: env_file {path} is missing"
    overrides = service.get("environment") or {}
    if isinstance(overrides, list):
        pairs = [item.split("=", 1) if "=" in item else [item, None] for item in overrides]
        overrides = dict(pairs)
    for key, value in overrides.items():
        if value is None:  # `KEY` alone: the value compose finds for KEY
            if key in dotenv_file:
                env[key] = dotenv_file[key]
            continue
        env[key] = interpolate(scalar(value), dotenv_file)
    return env


def config_mount(name: str, dotenv_file: Mapping[str, str]) -> tuple[Path, str]:
    """The policy volume of service `name`: the host directory, the path in the container."""
    for volume in compose_service(name).get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target", "")
        else:  # source:target[:mode], split once interpolated (${VAR:-...} has a colon)
            source, target = volume, ""
        if "YUQING_CONFIG_HOST_DIR" in source:
            if not target:
                source, target, *_ = interpolate(source, dotenv_file).split(":")
            host = Path(interpolate(source, dotenv_file))
            return (host if host.is_absolute() else ROOT / host), target
    raise AssertionError(f"{name} mounts no ${{YUQING_CONFIG_HOST_DIR}}")


def not_passed(env: Mapping[str, str], dotenv_file: Mapping[str, str]) -> list[str]:
    """The channel variables a container does not get as `.env` sets them."""
    return sorted(v for v in channel_variables() if env.get(v) != dotenv_file.get(v))


def test_compose_passes_every_channel_variable_the_code_reads_to_the_services() -> None:
    """Each of the 14 channel variables set in .env (to a value of its own) reaches every
    service's container unchanged: not dropped, not overridden by `environment:`."""
    channels = channel_variables()
    assert len(channels) == 14  # SMTP (5), webhook (2), SMS (2), WeCom, DingTalk (2), Feishu (2)
    operator = dotenv(ROOT / ".env.example")
    operator.update(YUQING_SECRET="s" * 48, YUQING_BUS_SECRET="b" * 48)
    operator.update({v: f"set-in-dotenv-{v.lower()}" for v in channels})
    for name in SERVICE_NAMES:
        lost = not_passed(container_env(name, operator), operator)
        assert lost == [], f"docker-compose.yml does not pass {lost} from .env to {name}"


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
    run = uuid.uuid4().hex[:8]
    env_file = dotenv(ROOT / ".env.example")
    # What the operator sets in .env: the secret, the channels, the servers (compose's own
    # defaults name its containers; here the session's), this run's names and the policy
    # directory mounted.
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
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_DB_PREFIX=f"compose{run}",
        YUQING_TOPIC_PREFIX=f"compose{run}.",
        YUQING_RATE_LIMIT="100000/minute",
        YUQING_DEMO_PASSWORDS="false",
        YUQING_CONFIG_HOST_DIR=str(config),
    )
    # What compose gives each container, from docker-compose.yml: the one process stands
    # for five containers with one environment.
    containers = {name: container_env(name, env_file) for name in SERVICE_NAMES}
    container = containers["notification"]
    assert all(c == container for c in containers.values()), "the services' environments differ"
    assert not_passed(container, env_file) == [], "compose drops channel variables"
    # The volume: the host directory in place of its mount point in the container.
    source, target = config_mount("notification", env_file)
    assert source == config
    env = system_env(tmp_path / "data")
    env.update({k: v.replace(target, str(source)) for k, v in container.items()})
    # Only where a container listens and keeps its data are the container's own.
    env.update(
        YUQING_HTTP_HOST="127.0.0.1",
        YUQING_HTTP_PORT=system_env(tmp_path)["YUQING_HTTP_PORT"],
        YUQING_DATA_DIR=str(tmp_path / "data"),
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
