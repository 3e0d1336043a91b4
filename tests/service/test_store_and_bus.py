"""The shared mechanisms against the real MongoDB-protocol server and Kafka-protocol broker.

The event store's tests are a contract: the in-memory store of the fast test layer
(tests/fakes/mongo.py) passes the same ones, so a rule tested on it holds on the server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import APIRouter

from shared.bus import OutboxRelay, ensure_topics, make_broker
from shared.errors import StillConflicting
from shared.events import (
    DEAD_LETTER_TOPIC,
    INTAKE_TOPIC,
    Actor,
    Envelope,
    IncidentResolved,
)
from shared.handlers import HandlerMap
from shared.incident_context import IncidentChange, IncidentContext
from shared.service import Context, ServiceParts, ServiceRunner
from shared.settings import Settings
from shared.store import (
    EVENTS,
    OUTBOX_ORDER,
    ConcurrencyConflict,
    EventStore,
    Placement,
    Processed,
    UnitOfWork,
    ensure_collection,
)
from tests.fakes.mongo import FakeMongo
from tests.service.upstream_events import escalated, graded, kafka_headers, opened, wait_for
from tests.service.upstream_events import resolved as resolved_event

pytestmark = pytest.mark.asyncio


def resolved(incident: str, version: int, reason: str = "calmed down") -> Envelope:
    return Envelope.new(
        IncidentResolved(reason=reason),
        incident_id=incident,
        stream_id=f"incident-{incident}",
        stream_version=version,
        actor=Actor(type="person", id="leader-zhang"),
    )


@pytest.fixture
async def server_store(settings: Settings, mongo_client) -> AsyncIterator[EventStore]:  # type: ignore[no-untyped-def]
    store = EventStore.on(mongo_client, settings.database_name("probe"), "probe")
    await store.ensure_indexes()
    yield store
    await mongo_client.drop_database(settings.database_name("probe"))


@pytest.fixture(params=["server", "in-memory"])
async def store(
    request: pytest.FixtureRequest, server_store: EventStore
) -> AsyncIterator[EventStore]:
    """The contract's subject: the real server's store, and the fake held to it."""
    if request.param == "server":
        yield server_store
        return
    fake = FakeMongo().store("probe")
    await fake.ensure_indexes()
    yield fake


async def test_two_appends_at_one_version_one_wins_the_other_conflicts(store: EventStore) -> None:
    await store.append([resolved("i1", 1)], expected_version=0)

    results = await asyncio.gather(
        store.append([resolved("i1", 2, "a")], expected_version=1),
        store.append([resolved("i1", 2, "b")], expected_version=1),
        return_exceptions=True,
    )

    conflicts = [r for r in results if isinstance(r, ConcurrencyConflict)]
    assert len(conflicts) == 1, results
    stream = await store.load("incident-i1")
    assert [e.stream_version for e in stream] == [1, 2]
    assert stream[1].payload.reason in {"a", "b"}  # type: ignore[attr-defined]


async def test_a_failed_batch_stores_nothing(store: EventStore) -> None:
    await store.append([resolved("i2", 1)], expected_version=0)

    async def two_streams(uow: UnitOfWork) -> None:
        await uow.append([resolved("i3", 1)], expected_version=0)  # new: would succeed
        await uow.append([resolved("i2", 1)], expected_version=0)  # collides

    with pytest.raises(ConcurrencyConflict):
        await store.transaction(two_streams)
    assert await store.load("incident-i3") == []
    with pytest.raises(ConcurrencyConflict):
        await store.append([resolved("i2", 1), resolved("i2", 2)], expected_version=0)

    assert [e.stream_version for e in await store.load("incident-i2")] == [1]


async def test_events_come_back_as_typed_immutable_models(store: EventStore) -> None:
    event = resolved("i4", 1)
    await store.append([event], expected_version=0)

    (loaded,) = await store.load("incident-i4")

    assert loaded.event_id == event.event_id
    assert isinstance(loaded.payload, IncidentResolved)
    assert loaded.recorded_at is not None
    with pytest.raises(Exception, match="frozen"):
        loaded.payload.reason = "edited"  # type: ignore[misc]


async def test_one_lease_holder_at_a_time_until_it_lets_go_or_expires(store: EventStore) -> None:
    ttl = timedelta(seconds=30)
    assert await store.hold_lease("relay", "a", ttl)
    assert not await store.hold_lease("relay", "b", ttl)
    assert await store.hold_lease("relay", "a", ttl)  # renewing
    await store.release_lease("relay", "a")
    assert await store.hold_lease("relay", "b", ttl)
    assert await store.hold_lease("expiring", "c", timedelta(seconds=-1))  # expired at once
    assert await store.hold_lease("expiring", "d", ttl)


async def test_after_a_wipe_only_what_a_consumer_had_not_processed_is_queued_again(
    store: EventStore,
) -> None:
    events = [resolved(f"w{n}", 1) for n in range(6)]
    for event in events:
        await store.append([event], expected_version=0)
    # Sent in the broker's life 3: four on partition 0 (offsets 0-3), one on partition 1,
    # and one sent before placements were kept.
    placed = [Placement(3, 0, 0), Placement(3, 0, 1), Placement(3, 0, 2), Placement(3, 0, 3)]
    await store.mark_published(events[:4], placed)
    await store.mark_published(events[4:5], [Placement(3, 1, 0)])
    await store.mark_published(events[5:])
    seen = (await store.db["events"].find_one({"_id": str(events[4].event_id)}))["published_at"]
    later = seen + timedelta(seconds=1)
    # Every group had committed up to offset 2 on partition 0 and nothing on partition 1.
    await store.republish_unprocessed(
        [Processed(INTAKE_TOPIC, epoch=3, below={0: 2, 1: 0}, seen_at=later)]
    )

    queued = {e.event_id for e in await store.unpublished(10)}
    assert queued == {e.event_id for e in events[2:]}

    # Marks of another broker's life, or taken before the events were sent, count for none.
    for mark in (
        Processed(INTAKE_TOPIC, epoch=2, below={0: 4}, seen_at=later),
        Processed(INTAKE_TOPIC, epoch=3, below={0: 4}, seen_at=seen - timedelta(seconds=1)),
    ):
        await store.mark_published(events[:2], placed[:2])
        await store.republish_unprocessed([mark])
        assert {e.event_id for e in await store.unpublished(10)} >= {e.event_id for e in events[:2]}


async def test_an_incident_snapshot_after_each_change_is_what_the_server_stored(
    store: EventStore,
) -> None:
    incidents = IncidentContext(store.db)
    changes = [
        opened("s1", ("school-a",)),
        graded("s1", 2),
        opened("s1", ("school-a", "school-b")),  # a unit added, one already there kept once
        escalated("s1", 2, 1, version=3),
        resolved_event("s1", version=4),
    ]
    seen = []
    for event in changes:
        change = await incidents.apply(event, None)
        assert change.after == await incidents.get("s1"), event.event_type
        seen.append(change)
    assert seen[0].before is None
    assert [c.before.level if c.before else None for c in seen] == [None, None, 2, 2, 1]
    assert seen[-1].after.status == "resolved"
    assert seen[-1].after.unit_ids == ("school-a", "school-b")


async def test_an_incident_changed_several_times_in_one_unit_of_work_is_what_the_server_stored(
    store: EventStore,
) -> None:
    """A consumer's batch applies an incident's events in one transaction, reading the
    incident once: each change's before and after are still what the server held."""
    incidents = IncidentContext(store.db)
    changes = [
        opened("s2", ("school-a",)),
        graded("s2", 2),
        opened("s2", ("school-a", "school-b")),
        escalated("s2", 2, 1, version=3),
    ]

    async def batch(uow: UnitOfWork) -> list[IncidentChange]:
        return [await incidents.apply(event, uow.session, uow.memo) for event in changes]

    seen = await store.transaction(batch)
    assert [c.before.level if c.before else None for c in seen] == [None, None, 2, 2]
    assert [c.before.unit_ids if c.before else () for c in seen][2] == ("school-a",)
    assert seen[-1].after == await incidents.get("s2")
    assert seen[-1].after.level == 1
    assert seen[-1].after.unit_ids == ("school-a", "school-b")


async def test_an_incidents_events_take_consecutive_increasing_seqs_even_past_the_clock(
    store: EventStore,
) -> None:
    """The relay's order for one incident: each append's events take consecutive seqs
    after every earlier one's, including when the incident's last seq is ahead of this
    writer's clock (a replica whose clock is behind)."""

    def on_stream(stream: str, first: int, count: int) -> list[Envelope]:
        return [
            Envelope.new(
                IncidentResolved(reason="calmed down"),
                incident_id="i-seq",
                stream_id=stream,
                stream_version=version,
                actor=Actor(type="person", id="leader-zhang"),
            )
            for version in range(first, first + count)
        ]

    async def seqs(stream: str) -> list[int]:
        found = store.db[EVENTS].find({"stream_id": stream}, sort=[("stream_version", 1)])
        return [int(doc["seq"]) async for doc in found]

    # Appends of one and of three events, side by side on the one incident.
    await asyncio.gather(
        *(store.append(on_stream(f"s-{n}", 1, 1 + 2 * (n % 2)), 0) for n in range(6))
    )
    taken = {f"s-{n}": await seqs(f"s-{n}") for n in range(6)}
    for stream, numbers in taken.items():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), stream
    everything = sorted(n for numbers in taken.values() for n in numbers)
    assert len(set(everything)) == len(everything) == 12

    ahead = everything[-1] + 3_600 * 10**6  # an hour ahead of this writer's clock
    await store.db[OUTBOX_ORDER].update_one({"_id": "i-seq"}, {"$set": {"seq": ahead}})
    await store.append(on_stream("s-0", 2, 1), 1)
    await store.append(on_stream("s-1", 4, 3), 3)
    assert (await seqs("s-0"))[1:] == [ahead + 1]
    assert (await seqs("s-1"))[3:] == [ahead + 2, ahead + 3, ahead + 4]


async def test_a_redelivered_event_is_marked_once(store: EventStore) -> None:
    async def mark(uow: UnitOfWork) -> bool:
        return await uow.mark_processed("probe-consumer", "e-1")

    assert await store.transaction(mark) is True
    assert await store.transaction(mark) is False


async def test_appends_to_other_incidents_commit_while_one_incident_is_mid_transaction(
    server_store: EventStore,
) -> None:
    # No shared counter: a transaction open on one incident holds up no other incident,
    # and no transaction is run again; the outbox keeps each incident's order.
    runs: dict[str, int] = {}
    holding, release = asyncio.Event(), asyncio.Event()

    def appending(incident: str, hold: bool = False) -> Callable[[UnitOfWork], Awaitable[None]]:
        async def work(uow: UnitOfWork) -> None:
            runs[incident] = runs.get(incident, 0) + 1
            await uow.append([resolved(incident, 1), resolved(incident, 2)], expected_version=0)
            if hold:
                holding.set()
                await release.wait()

        return work

    held = asyncio.create_task(server_store.transaction(appending("held", hold=True)))
    await holding.wait()
    others = [f"other-{n}" for n in range(8)]
    async with asyncio.timeout(30):
        await asyncio.gather(*(server_store.transaction(appending(i)) for i in others))
    release.set()
    await held

    assert runs == dict.fromkeys(["held", *others], 1)
    queued = await server_store.unpublished(100)
    for incident in ["held", *others]:
        assert [e.stream_version for e in queued if e.incident_id == incident] == [1, 2]


Recorder = ServiceRunner[ServiceParts]


def recorder_parts(store: EventStore) -> ServiceParts:
    """A minimal service that counts the events it consumes in a projection. It stands in
    for intake: its outbox relays IncidentResolved onto intake.events, which only intake's
    signature gets past the consumer."""

    async def count(event: Envelope, payload: IncidentResolved, uow: UnitOfWork) -> None:
        if payload.reason == "poison":
            raise ValueError("this reason cannot be handled")
        await uow.db["seen"].update_one(
            {"_id": event.incident_id},
            {"$inc": {"count": 1}, "$push": {"versions": event.stream_version}},
            upsert=True,
            session=uow.session,
        )

    return ServiceParts(
        name="intake",
        prefix="/recorder/v1",
        title="recorder",
        description="counts what it consumes",
        store=store,
        router=APIRouter(),
        handlers=HandlerMap().on(IncidentResolved, count),
        consumes=(INTAKE_TOPIC,),
    )


@pytest.fixture
async def recorder(settings: Settings) -> AsyncIterator[Recorder]:
    await ensure_topics(settings)
    service = ServiceRunner.connect(
        "intake", lambda deps: recorder_parts(deps.store), Context.from_settings(settings)
    )
    await service.start()
    yield service
    await service.stop()


async def test_outbox_relays_in_order_and_a_redelivered_event_changes_nothing(
    recorder: Recorder, settings: Settings
) -> None:
    events = [resolved("i5", v) for v in range(1, 6)]
    await recorder.store.append(events, expected_version=0)

    async def all_seen() -> bool:
        doc = await recorder.db["seen"].find_one({"_id": "i5"})
        return doc is not None and doc["count"] == 5

    await wait_for(all_seen)
    assert await recorder.store.unpublished(10) == []
    # A relayed stream still loads: the outbox's bookkeeping stays out of the events.
    relayed = await recorder.store.load("incident-i5")
    assert [e.event_id for e in relayed] == [e.event_id for e in events]

    # The same event delivered again, as at-least-once delivery may do.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic(INTAKE_TOPIC),
            events[2].to_json(),
            key=b"i5",
            headers=kafka_headers(settings, events[2]),  # signed, as intake published it
        )
    finally:
        await producer.stop()
    # A later event on the same key lands behind the duplicate in the partition: once it
    # is handled, so is the duplicate.
    await recorder.store.append([resolved("i5", 6)], expected_version=5)

    async def sentinel_seen() -> bool:
        doc = await recorder.db["seen"].find_one({"_id": "i5"})
        return doc is not None and 6 in doc["versions"]

    await wait_for(sentinel_seen)
    doc = await recorder.db["seen"].find_one({"_id": "i5"})
    assert doc is not None
    assert doc["count"] == 6
    assert doc["versions"] == [1, 2, 3, 4, 5, 6]


async def test_bad_messages_are_dead_lettered_with_the_reason_and_the_consumer_goes_on(
    recorder: Recorder, settings: Settings
) -> None:
    dlq = AIOKafkaConsumer(
        settings.topic(DEAD_LETTER_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"{settings.db_prefix}-dlq-reader",
    )
    await dlq.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        topic = settings.topic(INTAKE_TOPIC)
        await producer.send_and_wait(topic, b"{not json", key=b"i6")
        await recorder.store.append([resolved("i6", 1, "poison")], expected_version=0)
        await recorder.store.append([resolved("i7", 1)], expected_version=0)

        async def good_one_seen() -> bool:
            return await recorder.db["seen"].find_one({"_id": "i7"}) is not None

        await wait_for(good_one_seen)

        reasons = []
        async with asyncio.timeout(15):
            while len(reasons) < 2:
                batch = await dlq.getmany(timeout_ms=500)
                for records in batch.values():
                    reasons += [json.loads(r.value)["reason"] for r in records]
    finally:
        await producer.stop()
        await dlq.stop()

    assert any("malformed event" in r for r in reasons), reasons
    assert any("this reason cannot be handled" in r for r in reasons), reasons
    # The poisoned event left no trace in the projection.
    assert await recorder.db["seen"].find_one({"_id": "i6"}) is None


async def _topic_messages(settings: Settings, expected: int) -> list[bytes]:
    """Everything on the intake topic, read until `expected` arrived and a moment after."""
    reader = AIOKafkaConsumer(
        settings.topic(INTAKE_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"{settings.db_prefix}-topic-reader-{expected}",
    )
    await reader.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while len(values) < expected:
                for records in (await reader.getmany(timeout_ms=300)).values():
                    values += [r.value for r in records]
        for records in (await reader.getmany(timeout_ms=1500)).values():
            values += [r.value for r in records]  # anything published twice shows up here
    finally:
        await reader.stop()
    return values


async def test_two_replicas_relay_each_event_once_and_a_standby_takes_over(
    settings: Settings, server_store: EventStore
) -> None:
    store = server_store
    await ensure_topics(settings)
    brokers = [make_broker(settings, "probe"), make_broker(settings, "probe")]
    relays = [OutboxRelay("probe", store, b, settings) for b in brokers]
    for broker in brokers:
        await broker.connect()
    for relay in relays:
        relay.start()
    try:
        for n in range(20):
            await store.append([resolved(f"r{n}", 1)], expected_version=0)

        first = await _topic_messages(settings, 20)
        assert len(first) == 20, "each stored event is published exactly once"
        assert sum(r.active for r in relays) == 1

        holder = next(r for r in relays if r.active)
        standby = next(r for r in relays if not r.active)
        await holder.stop()
        for n in range(20, 25):
            await store.append([resolved(f"r{n}", 1)], expected_version=0)
        # The stopped relay gave the lease up, so the standby relays without waiting it out.
        everything = await _topic_messages(settings, 25)
        assert len(everything) == 25
        assert standby.active
    finally:
        for relay in relays:
            await relay.stop()
        for broker in brokers:
            await broker.stop()


async def test_a_write_held_by_another_transaction_past_the_budget_is_a_conflict_not_an_outage(
    settings: Settings,
    mongo_client,  # type: ignore[no-untyped-def]
) -> None:
    # Filings onto one incident write the same documents: a writer that keeps losing to
    # another transaction until its budget runs out must hear "conflict, try again" (409,
    # a consumer's backoff), not "the database is not reachable" (503).
    store = EventStore.on(mongo_client, settings.database_name("probe"), "probe", 1.0)
    patient = EventStore.on(mongo_client, settings.database_name("probe"), "probe", 60.0)
    await store.ensure_indexes()
    holding, release = asyncio.Event(), asyncio.Event()

    async def holder(uow: UnitOfWork) -> None:
        await uow.db["probe_heads"].update_one(
            {"_id": "inc-1"}, {"$inc": {"n": 1}}, upsert=True, session=uow.session
        )
        holding.set()
        await release.wait()

    async def loser(uow: UnitOfWork) -> None:
        await uow.db["probe_heads"].update_one(
            {"_id": "inc-1"}, {"$inc": {"n": 10}}, upsert=True, session=uow.session
        )

    await ensure_collection(store.db, "probe_heads")
    held = asyncio.create_task(patient.transaction(holder))
    await holding.wait()
    try:
        with pytest.raises(StillConflicting):
            await store.transaction(loser)
    finally:
        release.set()
        await held
    await store.transaction(loser)  # the other writer done, it goes through
    doc = await store.db["probe_heads"].find_one({"_id": "inc-1"})
    assert doc is not None
    assert doc["n"] == 11
    await mongo_client.drop_database(settings.database_name("probe"))
