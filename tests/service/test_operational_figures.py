"""What an operator's Prometheus scrape reads of a consumer that falls behind: its lag per
topic and partition while messages wait, and none once it has caught up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from fastapi import APIRouter
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.bus import ensure_topics
from shared.events import INTAKE_TOPIC, Actor, Envelope, IncidentResolved
from shared.handlers import HandlerMap
from shared.service import Context, ServiceParts, ServiceRunner
from shared.settings import Settings
from shared.store import EventStore, UnitOfWork
from tests.service.upstream_events import wait_for

WAITING = 6


@dataclass
class Gate:
    """Holds every consumed event until the test lets them through."""

    open: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    handled: int = 0


def slow_parts(store: EventStore, gate: Gate) -> ServiceParts:
    async def held(event: Envelope, payload: IncidentResolved, uow: UnitOfWork) -> None:
        gate.entered.set()
        await gate.open.wait()
        gate.handled += 1

    # Named as intake, whose topic it publishes to, so its events carry intake's signature.
    return ServiceParts(
        name="intake",
        prefix="/laggard/v1",
        title="laggard",
        description="consumes only when let through",
        store=store,
        router=APIRouter(),
        handlers=HandlerMap().on(IncidentResolved, held),
        consumes=(INTAKE_TOPIC,),
    )


@pytest.fixture
async def laggard(settings: Settings) -> AsyncIterator[tuple[ServiceRunner[ServiceParts], Gate]]:
    await ensure_topics(settings)
    gate = Gate()
    service = ServiceRunner.connect(
        "intake", lambda deps: slow_parts(deps.store, gate), Context.from_settings(settings)
    )
    await service.start()
    yield service, gate
    gate.open.set()
    await service.stop()


def lag_of(topic: str) -> float:
    """The lag a scrape shows for the laggard's group on `topic`, summed over partitions."""
    total = 0.0
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            if (
                sample.name == "yuqing_consumer_lag"
                and sample.labels.get("service") == "intake"
                and sample.labels.get("topic") == topic
            ):
                total += sample.value
    return total


async def test_a_scrape_shows_a_consumers_lag_while_it_is_behind_and_none_once_caught_up(
    laggard: tuple[ServiceRunner[ServiceParts], Gate], settings: Settings
) -> None:
    service, gate = laggard
    events = [
        Envelope.new(
            IncidentResolved(reason="舆情平息"),
            incident_id=f"lag-{n}",
            stream_id=f"incident-lag-{n}",
            stream_version=1,
            actor=Actor.system("intake"),
        )
        for n in range(WAITING)
    ]
    for event in events:
        await service.store.append([event], expected_version=0)
    await asyncio.wait_for(gate.entered.wait(), timeout=30)
    topic = settings.topic(INTAKE_TOPIC)

    async def behind_by_all() -> bool:
        await service.sample_metrics()
        return lag_of(topic) == WAITING

    await wait_for(behind_by_all)

    gate.open.set()

    async def caught_up() -> bool:
        await service.sample_metrics()
        return gate.handled == WAITING and lag_of(topic) == 0

    await wait_for(caught_up)
