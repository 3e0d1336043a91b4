"""Sending one message over one channel: SMTP, signed webhooks, and the group robots of
WeCom (企业微信), DingTalk (钉钉) and Feishu (飞书) in their documented webhook formats.

A send either returns or raises DeliveryError; retrying is the dispatcher's business.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote_plus

import aiosmtplib
import httpx

from services.notification.delivery import ChannelConfig, ChannelType, Message

TIMESTAMP_HEADER = "X-Yuqing-Timestamp"
SIGNATURE_HEADER = "X-Yuqing-Signature"
ID_HEADER = "X-Yuqing-Notification-Id"


class DeliveryError(Exception):
    """The channel did not take the message; the reason is kept on the record."""


@dataclass(frozen=True)
class Outgoing:
    notification_id: str
    incident_id: str
    obligation_id: str
    recipient: str
    address: str  # the recipient's contact on this channel
    message: Message
    incident_url: str
    ack_url: str


# --------------------------------------------------------------------------- signatures


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>": the timestamp is signed too, so a receiver
    can refuse replays of an old message."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    """DingTalk robot 加签: base64(HMAC-SHA256(secret, "<ms>\\n<secret>")), URL-encoded."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return quote_plus(base64.b64encode(digest.digest()).decode())


def feishu_sign(secret: str, timestamp_s: str) -> str:
    """Feishu robot 签名校验: base64(HMAC-SHA256 keyed by "<s>\\n<secret>" over nothing)."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


# --------------------------------------------------------------------------- senders


def _text(out: Outgoing) -> str:
    return f"{out.message.subject}\n{out.message.body}"


# The robots' text messages read markup of their own in what they show: Feishu turns
# `<at user_id="all"></at>` into a mention of the whole group, WeCom `<@userid>`. Text that
# comes from people (titles, excerpts, names) must never mention or format anything: its
# angle brackets are shown as the full-width ones, which no robot reads as a tag.
_ROBOT_MARKUP = str.maketrans({"<": "＜", ">": "＞"})


def robot_text(text: str) -> str:
    """`text` as a robot shows it and never reads as a mention or a tag."""
    return text.translate(_ROBOT_MARKUP)


def robot_body(kind: ChannelType, out: Outgoing) -> dict[str, Any]:
    """The webhook body of a group robot (WeCom, DingTalk, Feishu), in its documented
    text format; the recipient is mentioned by the robot's own field or tag only."""
    text = robot_text(_text(out))
    if kind is ChannelType.WECOM:
        return {
            "msgtype": "text",
            "text": {"content": text, "mentioned_mobile_list": [out.address]},
        }
    if kind is ChannelType.DINGTALK:
        return {
            "msgtype": "text",
            "text": {"content": text},
            "at": {"atMobiles": [out.address], "isAtAll": False},
        }
    if kind is ChannelType.FEISHU:
        who = out.address.replace('"', "").translate(_ROBOT_MARKUP)
        return {"msg_type": "text", "content": {"text": f'<at user_id="{who}"></at> {text}'}}
    raise ValueError(f"{kind} is not a group robot")


async def _post(
    channel: ChannelConfig, url: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    try:
        async with httpx.AsyncClient(timeout=channel.timeout.total_seconds()) as http:
            response = await http.post(
                url, content=body, headers={"Content-Type": "application/json", **headers}
            )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code >= 300:
        raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]}")
    return response


def _robot_ok(response: httpx.Response, *codes: str) -> None:
    """Robots answer HTTP 200 with an error code in the body when they refuse."""
    try:
        data = response.json()
    except ValueError as exc:
        raise DeliveryError(f"robot answered something other than JSON: {exc}") from exc
    for code in codes:
        if code in data:
            if data[code] != 0:
                raise DeliveryError(f"robot refused: {json.dumps(data, ensure_ascii=False)}")
            return
    raise DeliveryError(f"robot answered without a status: {data}")


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


async def _signed_webhook(channel: ChannelConfig, out: Outgoing, now: datetime) -> None:
    assert channel.url is not None
    secret = channel.secret()
    if not secret:
        raise DeliveryError(f"secret {channel.secret_env} is not set")
    body = _json(
        {
            "notification_id": out.notification_id,
            "incident_id": out.incident_id,
            "obligation_id": out.obligation_id,
            "recipient": out.recipient,
            "to": out.address,
            "subject": out.message.subject,
            "text": out.message.body,
            "incident_url": out.incident_url,
            "ack_url": out.ack_url,
        }
    )
    timestamp = str(int(now.timestamp()))
    headers = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: webhook_signature(secret, timestamp, body),
        # Delivery is at-least-once: the receiver drops a repeat by this id.
        ID_HEADER: out.notification_id,
    }
    await _post(channel, channel.url, body, headers)


async def _wecom(channel: ChannelConfig, out: Outgoing, now: datetime) -> None:
    assert channel.url is not None
    body = robot_body(ChannelType.WECOM, out)
    _robot_ok(await _post(channel, channel.url, _json(body), {}), "errcode")


async def _dingtalk(channel: ChannelConfig, out: Outgoing, now: datetime) -> None:
    assert channel.url is not None
    url = channel.url
    secret = channel.secret()
    if secret:
        ms = str(int(now.timestamp() * 1000))
        url += ("&" if "?" in url else "?") + f"timestamp={ms}&sign={dingtalk_sign(secret, ms)}"
    body = robot_body(ChannelType.DINGTALK, out)
    _robot_ok(await _post(channel, url, _json(body), {}), "errcode")


async def _feishu(channel: ChannelConfig, out: Outgoing, now: datetime) -> None:
    assert channel.url is not None
    body = robot_body(ChannelType.FEISHU, out)
    secret = channel.secret()
    if secret:
        seconds = str(int(now.timestamp()))
        body.update(timestamp=seconds, sign=feishu_sign(secret, seconds))
    # Feishu answers {"code": 0} now and {"StatusCode": 0} in older versions.
    _robot_ok(await _post(channel, channel.url, _json(body), {}), "code", "StatusCode")


async def _email(channel: ChannelConfig, out: Outgoing, now: datetime) -> None:
    assert channel.host is not None
    assert channel.sender is not None
    mail = EmailMessage()
    mail["From"] = channel.sender
    mail["To"] = out.address
    mail["Subject"] = out.message.subject
    mail["Message-ID"] = f"<{out.notification_id}@{channel.sender.rpartition('@')[2]}>"
    mail.set_content(out.message.body)
    try:
        await aiosmtplib.send(
            mail,
            hostname=channel.host,
            port=channel.port,
            use_tls=channel.use_tls,
            username=channel.username,
            password=channel.password(),
            timeout=channel.timeout.total_seconds(),
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc


_SENDERS = {
    ChannelType.EMAIL: _email,
    ChannelType.WEBHOOK: _signed_webhook,
    ChannelType.SMS: _signed_webhook,
    ChannelType.WECOM: _wecom,
    ChannelType.DINGTALK: _dingtalk,
    ChannelType.FEISHU: _feishu,
}


async def send(channel: ChannelConfig, out: Outgoing, now: datetime) -> None:
    await _SENDERS[channel.type](channel, out, now)
