"""A stop sends what the outbox holds, within the drain bound, before letting go of the
broker: what was stored but not yet relayed reaches Kafka at the stop, not at the next
start (and what the bound does not allow stays stored, unsent, for the next start)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient

from shared.bus import OUTBOX_LEASE, OutboxRelay, ensure_topics, make_broker
from shared.events import INTAKE_TOPIC, Actor, Envelope, IncidentResolved
from shared.settings import Settings
from shared.store import Document, EventStore

pytestmark = pytest.mark.asyncio


def resolved(n: int) -> Envelope:
    return Envelope.new(
        IncidentResolved(reason="舆情平息"),
        incident_id=f"inc-stop-{n}",
        stream_id=f"incident-inc-stop-{n}",
        stream_version=1,
        actor=Actor(type="person", id="leader-zhang"),
    )


@pytest.fixture
async def store(
    settings: Settings, mongo_client: AsyncMongoClient[Document]
) -> AsyncIterator[EventStore]:
    store = EventStore.on(mongo_client, settings.database_name("intake"), "intake")
    await store.ensure_indexes()
    yield store
    await mongo_client.drop_database(settings.database_name("intake"))


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[KafkaBroker]:
    await ensure_topics(settings)
    broker = make_broker(settings, "intake")
    await broker.start()
    yield broker
    await broker.stop()


async def on_the_topic(settings: Settings, expected: int) -> list[str]:
    reader = AIOKafkaConsumer(
        settings.topic(INTAKE_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"{settings.db_prefix}-stop-reader",
    )
    await reader.start()
    ids: list[str] = []
    try:
        async with asyncio.timeout(20):
            while len(ids) < expected:
                for records in (await reader.getmany(timeout_ms=300)).values():
                    ids += [Envelope.from_json(r.value).event_id.hex for r in records]
    finally:
        await reader.stop()
    return ids


async def test_a_stop_relays_what_is_stored_and_unsent(
    settings: Settings, store: EventStore, broker: KafkaBroker
) -> None:
    relay = OutboxRelay("intake", store, broker, settings)
    # The relay holds the lease and has not yet sent what was just stored.
    relay.active = await store.hold_lease(OUTBOX_LEASE, relay._owner, timedelta(seconds=15))
    assert relay.active
    events = [resolved(n) for n in range(5)]
    for event in events:
        await store.append([event], expected_version=0)

    await relay.stop(drain=settings.shutdown_drain_seconds)

    print(f"injected: a stop with {len(events)} events stored and not yet relayed")
    assert await store.unpublished(10) == []
    assert sorted(await on_the_topic(settings, len(events))) == sorted(
        e.event_id.hex for e in events
    )
    assert relay.active is False  # and the lease let go, for a standby to take at once
    assert await store.hold_lease(OUTBOX_LEASE, "a standby", timedelta(seconds=15))
    print("checked: all relayed at the stop; the lease released")


async def test_a_stop_without_drain_leaves_them_stored_for_the_next_start(
    settings: Settings, store: EventStore, broker: KafkaBroker
) -> None:
    relay = OutboxRelay("intake", store, broker, settings)
    relay.active = await store.hold_lease(OUTBOX_LEASE, relay._owner, timedelta(seconds=15))
    await store.append([resolved(9)], expected_version=0)

    await relay.stop(drain=0)

    assert [e.stream_id for e in await store.unpublished(10)] == ["incident-inc-stop-9"]
