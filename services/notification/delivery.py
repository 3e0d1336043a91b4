"""How obligations reach people: the `delivery` section of the policy file, messages,
retries and paging.

Not part of the pure domain: endpoints come from that file or from the environment
(`*_env` keys, resolved when the policy is loaded at start), and secrets are only named in
it and read from the environment when a message is sent, so a deployment points the
channels at its own servers without touching code. A channel whose endpoint resolves to
nothing is disabled and never chosen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jinja2
from pydantic import Field, model_validator

from shared.catalogue import Catalogue
from shared.directory import Directory, Person
from shared.events import NO_CHANNEL
from shared.identity import Role
from shared.models import FrozenModel
from shared.plan_rules import ObligationPolicy, split_recipient
from shared.policy import Duration


class ChannelType(str, Enum):
    EMAIL = "email"
    WEBHOOK = "webhook"  # generic, HMAC-signed
    SMS = "sms"  # an SMS gateway reached by a signed webhook
    WECOM = "wecom"
    DINGTALK = "dingtalk"
    FEISHU = "feishu"


# Secrets stay named in the policy and are read from the environment only when used.
_SECRET_KEYS = frozenset({"secret_env", "password_env"})


def _from_env(data: Any) -> Any:
    """`host_env: NAME` stands for `host: $NAME`; an unset variable leaves the key out."""
    if not isinstance(data, dict):
        return data
    resolved = {k: v for k, v in data.items() if not k.endswith("_env") or k in _SECRET_KEYS}
    for key, name in data.items():
        if key.endswith("_env") and key not in _SECRET_KEYS:
            value = os.environ.get(str(name))
            if value:
                resolved.setdefault(key.removesuffix("_env"), value)
    return resolved


class ChannelConfig(FrozenModel):
    """One configured channel. Secrets are only ever named (`secret_env`), never written."""

    type: ChannelType
    url: str | None = None  # webhook, SMS gateway, robot: where to POST
    host: str | None = None  # SMTP
    port: int | None = Field(default=None, ge=1, le=65535)
    sender: str | None = None  # SMTP From:
    use_tls: bool = False  # SMTP over TLS from the start; otherwise STARTTLS if offered
    username: str | None = None
    password_env: str | None = None
    secret_env: str | None = None  # HMAC key (webhook, SMS) or robot signing secret
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="before")
    @classmethod
    def _resolve_env(cls, data: Any) -> Any:
        return _from_env(data)

    @property
    def signed(self) -> bool:
        """Generic webhooks and the SMS gateway are always signed; robots when configured."""
        return self.type in (ChannelType.WEBHOOK, ChannelType.SMS)

    @property
    def enabled(self) -> bool:
        if self.signed and not self.secret():
            return False  # an unsigned call to a gateway would be refused, or worse, obeyed
        if self.type is ChannelType.EMAIL:
            return bool(self.host and self.port and self.sender)
        return bool(self.url)

    def secret(self) -> str | None:
        return os.environ.get(self.secret_env) if self.secret_env else None

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None


class RetryPolicy(FrozenModel):
    attempts: int = Field(default=5, ge=1)
    first: Duration = timedelta(seconds=30)
    cap: Duration = timedelta(minutes=10)

    def backoff(self, failed_attempts: int) -> timedelta:
        """Wait after the n-th failed attempt: first, 2x, 4x ... never more than the cap."""
        wait: timedelta = self.first * 2 ** (failed_attempts - 1)
        return min(wait, self.cap)

    def exhausted(self, failed_attempts: int) -> bool:
        return failed_attempts >= self.attempts


class DeliveryPolicy(FrozenModel):
    # Channel name -> its configuration; names are what contacts and kinds refer to.
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    # Obligation kind -> channels allowed for it; `default` for kinds not listed.
    kinds: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    retry: RetryPolicy = RetryPolicy()
    # Told (over its own address) when a delivery fails for good.
    fallback: str | None = None
    fallback_address: str | None = None
    ack_window: Duration = timedelta(minutes=15)
    renotify: int = Field(default=1, ge=0)
    # After the recipients, who is paged next when nobody acknowledges, step by step.
    escalation_roles: tuple[Role, ...] = ()
    # Relative to the policy file; the shipped templates when not given.
    templates: Path | None = None

    @model_validator(mode="after")
    def _names_known(self) -> DeliveryPolicy:
        named = [c for chans in self.kinds.values() for c in chans]
        if self.fallback is not None:
            named.append(self.fallback)
        unknown = sorted(set(named) - set(self.channels))
        if unknown:
            raise ValueError(f"unknown channels: {', '.join(unknown)}")
        if (self.fallback is None) != (self.fallback_address is None):
            raise ValueError("give fallback and fallback_address together")
        if NO_CHANNEL in self.channels:
            raise ValueError(f"{NO_CHANNEL!r} is not a channel name: it records that none was")
        return self

    def channels_for(self, kind: str, contacts: Mapping[str, str]) -> list[str]:
        """The person's contacts in their order of preference, kept where the kind allows
        the channel and the channel is configured."""
        allowed = self.kinds.get(kind, self.kinds.get("default", ()))
        return [
            name
            for name in contacts
            if name in allowed and name in self.channels and self.channels[name].enabled
        ]


# Why a page tells nobody of a person (no channel for them), as NotificationFailed's
# reason: what staff read.
NOT_IN_DIRECTORY = "没有可送达此人的渠道（通讯录中没有此人）"
NO_CONTACTS = "没有可送达此人的渠道（未配置联系方式）"
NO_USABLE_CONTACT = "没有可送达此人的渠道（其联系方式的渠道均未启用或不用于此类义务）"
# A page with nobody at any step: no one in the incident's units or above holds its roles.
NOBODY_TO_PAGE = "无人可通知（事件所属单位及其上级单位中无人担任应通知的角色）"


def unreachable_reason(person: Person | None) -> str:
    """Why `channels_for` found no channel for this person (or nobody by that id)."""
    if person is None:
        return NOT_IN_DIRECTORY
    return NO_USABLE_CONTACT if person.contacts else NO_CONTACTS


# --------------------------------------------------------------------------- paging


def page_steps(
    directory: Directory,
    roles: Sequence[str],
    escalation_roles: Sequence[Role],
    unit_ids: Sequence[str],
) -> list[list[str]]:
    """Who is paged at each step: everyone holding the target roles, then each escalation
    role in turn; a person appears once, at the first step that reaches them.

    Only people of the incident's units or the units above them are paged: another
    school's head has no business with this incident. A recipient a route added
    (`role@unit`, obligations.yaml `routing`) is that role's holders in that unit, wherever
    it is: the rule named it.
    """
    reach = _units_and_ancestors(directory, unit_ids)
    seen: set[str] = set()
    steps: list[list[str]] = []
    targets: list[tuple[Role, str | None]] = [
        (Role(r), u) for r, u in (split_recipient(r) for r in roles)
    ]
    escalation: list[list[tuple[Role, str | None]]] = [[(r, None)] for r in escalation_roles]
    groups = [targets, *escalation]
    for group in groups:
        people = [
            p.id
            for role, unit in group
            for p in directory.people_with(role, unit)
            if unit is not None or p.unit in reach
        ]
        step = [pid for pid in dict.fromkeys(people) if pid not in seen]
        seen.update(step)
        if step:
            steps.append(step)
    return steps


def _units_and_ancestors(directory: Directory, unit_ids: Sequence[str]) -> set[str]:
    """The units and every unit above them. With no unit known yet (grading seen before
    intake), only the top of the tree, which is above whatever units the incident has."""
    if not unit_ids:
        return {u.id for u in directory.units if u.parent is None}
    return {above for unit_id in unit_ids for above in directory.upward(unit_id)}


class PageMove(str, Enum):
    RENOTIFY = "renotify"
    ESCALATE = "escalate"
    EXHAUSTED = "exhausted"


def next_move(step: int, renotified: int, steps: int, renotify: int) -> PageMove:
    """What an unacknowledged page does when its window ends: tell the same people again
    up to `renotify` times, then move to the next step, until the chain runs out."""
    if renotified < renotify:
        return PageMove.RENOTIFY
    if step + 1 < steps:
        return PageMove.ESCALATE
    return PageMove.EXHAUSTED


# --------------------------------------------------------------------------- messages

Reason = Literal["opened", "missed", "renotify", "escalated", "failed"]


@dataclass(frozen=True)
class Message:
    subject: str
    body: str


class Templates:
    """Messages from jinja2 files a deployment can change: `<reason>.txt.j2`, whose first
    line is the subject (e-mail subject, robot title) and the rest the body. Names staff
    read (`level_name` for `level`) come from the catalogue."""

    def __init__(self, directory: Path, tz: ZoneInfo, catalogue: Catalogue) -> None:
        self.tz = tz
        self.catalogue = catalogue
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly at render
            autoescape=False,  # plain text, not HTML  # noqa: S701
            keep_trailing_newline=False,
        )
        self.env.filters["local"] = self._local

    def _local(self, value: datetime) -> str:
        return value.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")

    def check(self, reasons: Sequence[str]) -> None:
        """Load every template at start-up, so a missing or broken file stops the start."""
        for reason in reasons:
            self.env.get_template(f"{reason}.txt.j2")

    def render(self, template: str, **context: Any) -> Message:
        text = self.env.get_template(f"{template}.txt.j2").render(
            level_name=self.catalogue.level_name(context.get("level")), **context
        )
        subject, _, body = text.strip().partition("\n")
        return Message(subject=subject.strip(), body=body.strip())


class NotificationPolicy(ObligationPolicy):
    """The whole obligations policy file: the duties (the domain's part) and their delivery."""

    delivery: DeliveryPolicy = DeliveryPolicy()
