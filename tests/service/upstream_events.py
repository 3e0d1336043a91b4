"""Intake and grading events as those services publish them, fed to a service under test
through the real broker, plus small helpers the notification and statement tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from shared.bus import bus_keys, signed_headers
from shared.events import (
    Actor,
    Category,
    Envelope,
    EventPayload,
    FiredRule,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentResolved,
    Level,
    utcnow,
)
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from shared.signing import TOPIC_OWNERS

GRADER = Actor.rule("rulebook")
RULE = (FiredRule(rule_id="media-tier", reason="test"),)


def _event(
    payload: EventPayload, incident: str, stream: str, version: int, at: datetime | None
) -> Envelope:
    return Envelope.new(
        payload,
        incident_id=incident,
        stream_id=f"{stream}-{incident}",
        stream_version=version,
        actor=GRADER,
        occurred_at=at or utcnow(),
    )


def opened(incident: str, units: tuple[str, ...] = ("school-a",)) -> Envelope:
    payload = IncidentOpened(title="网传某校食堂问题", unit_ids=units, first_report_id="r1")
    return _event(payload, incident, "incident", 1, None)


def resolved(incident: str, version: int = 2) -> Envelope:
    return _event(IncidentResolved(reason="舆情平息"), incident, "incident", version, None)


def graded(
    incident: str,
    level: Level,
    category: Category = "hype",
    at: datetime | None = None,
) -> Envelope:
    payload = IncidentGraded(
        level=level, category=category, rules_fired=RULE, rulebook_version="test"
    )
    return _event(payload, incident, "grade", 1, at)


def escalated(incident: str, from_level: Level, to_level: Level, version: int = 2) -> Envelope:
    payload = IncidentEscalated(
        from_level=from_level,
        to_level=to_level,
        category="hype",
        reason="传播扩大",
        rules_fired=RULE,
        rulebook_version="test",
    )
    return _event(payload, incident, "grade", version, None)


def overridden(incident: str, from_level: Level, to_level: Level, version: int) -> Envelope:
    payload = GradeOverridden(
        from_level=from_level, to_level=to_level, category="hype", reason="人工调整"
    )
    return _event(payload, incident, "grade", version, None)


def kafka_headers(settings: Settings, event: Envelope) -> list[tuple[str, bytes]]:
    """The headers the event's own service would publish it with: its producer and its
    signature with that service's key (the deployment's bus secret)."""
    headers = signed_headers(event, TOPIC_OWNERS[event.topic], bus_keys(settings))
    return [(name, value.encode()) for name, value in headers.items()]


async def feed(settings: Settings, *events: Envelope) -> None:
    """Put events on their topics as their own services' outbox relays would, signed."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                settings.topic(event.topic),
                event.to_json(),
                key=event.incident_id.encode(),
                headers=kafka_headers(settings, event),
            )
    finally:
        await producer.stop()


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    try:
        async with asyncio.timeout(within):
            while not await predicate():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"condition not met within {within}s") from None


def client(service: ServiceRunner[Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url="http://test")


def bearer(settings: Settings, sub: str, unit: str, *roles: str) -> dict[str, str]:
    token = Context.from_settings(settings).tokens.issue(sub, unit, list(roles))
    return {"Authorization": f"Bearer {token}"}
