"""A consumer that lives through a broker wipe reads the topic again from its beginning.

The relay numbers the times it found the broker had lost what it had sent (its epoch) and
sends it with every record. A consumer holding positions from before the wipe would read
the refilled log from there and skip whatever was sent since the wipe below them; when it
sees the epoch of a topic grow, it seeks that topic's partitions to their beginning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition

from services.cli import composition_root
from shared.bus import (
    EPOCH_HEADER,
    RELAY_PROCESSED,
    OutboxRelay,
    marker_epoch,
    marker_headers,
    relay_headers,
    signed_headers,
)
from shared.clock import utcnow
from shared.events import Envelope
from shared.signing import MARKER_HEADER, BusKeys
from tests.fakes.harness import FakeService, fake_service
from tests.service.upstream_events import opened, resolved
from tests.unit.test_archive_service import NOW, Story

pytestmark = pytest.mark.asyncio

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Consumer:
    """What the consumer asks of aiokafka's: its partitions, and a seek to their start."""

    partitions: set[TopicPartition]
    rewound: list[TopicPartition] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return self.partitions

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool:
        self.rewound.extend(partitions)
        return True


@dataclass
class Message:
    """A consumed record as FastStream hands it over."""

    body: bytes
    headers: dict[str, str]
    raw_message: Any
    consumer: Consumer


@dataclass(frozen=True)
class Record:
    topic: str


@pytest.fixture
async def archive() -> AsyncIterator[FakeService]:
    async with fake_service("archive", composition_root("archive"), clock=lambda: NOW) as built:
        yield built


def events(incident: str) -> list[Envelope]:
    """Two of the incident's events on intake's topic: its opening and its resolution."""
    told = Story(incident, "school-a").opened()
    told.resolved()
    own = [e for e in told.events if e.topic == "intake.events"]
    return [own[0], own[-1]]


async def deliver(
    service: FakeService, event: Envelope, epoch: int | None, consumer: Consumer, **extra: str
) -> None:
    runner = service.runner
    assert runner.consumer is not None
    producer, keys = event.topic.removesuffix(".events"), runner.consumer.keys
    headers = (
        signed_headers(event, producer, keys)
        if epoch is None
        else relay_headers(event, producer, keys, epoch=epoch, span=TRACEPARENT)
    )
    headers.update(extra)
    topic = runner.settings.topic(event.topic)
    message = Message(event.to_json(), headers, Record(topic), consumer)
    await runner.consumer.on_message(message)  # type: ignore[arg-type]


async def test_a_grown_epoch_rewinds_that_topics_partitions_once(archive: FakeService) -> None:
    intake = archive.runner.settings.topic("intake.events")
    grading = archive.runner.settings.topic("grading.events")
    consumer = Consumer({TopicPartition(intake, 0), TopicPartition(intake, 1)})
    consumer.partitions.add(TopicPartition(grading, 0))
    first, second = events("inc-e1"), events("inc-e2")

    await deliver(archive, first[0], 0, consumer)
    await deliver(archive, first[1], 0, consumer)
    assert consumer.rewound == [], "the epoch first seen is where the consumer stands"

    await deliver(archive, second[0], 1, consumer)
    assert sorted(consumer.rewound) == [TopicPartition(intake, 0), TopicPartition(intake, 1)]

    await deliver(archive, second[1], 1, consumer)
    await deliver(archive, first[0], 0, consumer)  # read again after the rewind: older epoch
    assert len(consumer.rewound) == 2, "the same epoch again rewinds nothing"
    # Every event handled once, the re-read ones as duplicates.
    logged = [d["_id"] async for d in archive.db["log"].find({})]
    assert sorted(logged) == sorted(str(e.event_id) for e in first + second)


async def test_an_unsigned_record_cannot_make_a_consumer_read_again(archive: FakeService) -> None:
    intake = archive.runner.settings.topic("intake.events")
    consumer = Consumer({TopicPartition(intake, 0)})
    event, forged = events("inc-e3")
    await deliver(archive, event, 0, consumer)

    await deliver(archive, forged, 7, consumer, **{"yuqing-signature": "sha256=" + "0" * 64})
    assert consumer.rewound == []
    assert [reason for _, reason in archive.dead_letters if "signature" in reason]


async def test_an_epoch_its_producer_did_not_sign_makes_no_consumer_read_again(
    archive: FakeService,
) -> None:
    """The event itself is the producer's and is handled; only the epoch beside it was
    written or changed by someone else, so it counts for nothing."""
    intake = archive.runner.settings.topic("intake.events")
    consumer = Consumer({TopicPartition(intake, 0)})
    first, second = events("inc-e5")
    await deliver(archive, first, 0, consumer)

    await deliver(archive, second, 0, consumer, **{EPOCH_HEADER: "9"})  # raised after signing
    assert consumer.rewound == []
    runner = archive.runner
    assert runner.consumer is not None
    bare = signed_headers(second, "intake", runner.consumer.keys)
    message = Message(second.to_json(), {**bare, EPOCH_HEADER: "9"}, Record(intake), consumer)
    await runner.consumer.on_message(message)  # type: ignore[arg-type]
    assert consumer.rewound == [], "an epoch with no relay signature at all is ignored too"
    assert await archive.db["log"].count_documents({}) == 2, "both events were handled"
    assert archive.dead_letters == []


async def test_records_of_a_relay_before_the_epoch_are_handled_as_ever(
    archive: FakeService,
) -> None:
    intake = archive.runner.settings.topic("intake.events")
    consumer = Consumer({TopicPartition(intake, 0)})
    for event in events("inc-e4"):
        await deliver(archive, event, None, consumer)
    assert consumer.rewound == []
    assert await archive.db["log"].count_documents({}) == 2


@dataclass
class Sent:
    headers: dict[str, str]


@dataclass
class Broker:
    """Takes the relay's sends and gives each an offset, as Kafka's producer would."""

    sent: list[Sent] = field(default_factory=list)

    async def publish(self, body: bytes, topic: str, **kwargs: Any) -> Any:
        self.sent.append(Sent(kwargs["headers"]))
        offset = len(self.sent) - 1

        async def ack() -> Any:
            return type("Meta", (), {"topic": topic, "partition": 0, "offset": offset})()

        return ack()


async def test_the_relay_sends_a_grown_epoch_after_it_finds_a_loss() -> None:
    async with fake_service("intake", composition_root("intake"), clock=lambda: NOW) as intake:
        broker = Broker()
        relay = OutboxRelay("intake", intake.store, broker, intake.runner.settings)  # type: ignore[arg-type]

        async def append(incident: str) -> None:
            async def work(uow: Any) -> None:
                await uow.append([opened(incident), resolved(incident)], 0)

            await intake.store.transaction(work)

        await append("inc-r1")
        assert await relay.relay_once() == 2
        assert {s.headers[EPOCH_HEADER] for s in broker.sent} == {"0"}

        queued = await relay._requeue(["intake.events[0]: offset 0 < 2"])
        assert queued == 2
        await append("inc-r2")
        assert await relay.relay_once() == 4
        assert [s.headers[EPOCH_HEADER] for s in broker.sent[2:]] == ["1"] * 4

        # Another relay of the same service (a restart, a standby taking the lease) reads it.
        again = OutboxRelay("intake", intake.store, broker, intake.runner.settings)  # type: ignore[arg-type]
        await append("inc-r3")
        assert await again.relay_once() == 2
        assert [s.headers[EPOCH_HEADER] for s in broker.sent[6:]] == ["1"] * 2


async def relay_with_two_sent(intake: FakeService, incident: str) -> tuple[Broker, OutboxRelay]:
    """Intake's relay on a fake broker, having sent an incident's opening and resolution
    (offsets 0 and 1 of partition 0, epoch 0)."""
    broker = Broker()
    relay = OutboxRelay("intake", intake.store, broker, intake.runner.settings)  # type: ignore[arg-type]

    async def work(uow: Any) -> None:
        await uow.append([opened(incident), resolved(incident)], 0)

    await intake.store.transaction(work)
    assert await relay.relay_once() == 2
    return broker, relay


async def test_after_a_loss_markers_reach_past_where_a_consumer_could_stand() -> None:
    """A consumer of the lost broker may stand at the end of what it had read there (2,
    here); the refilled log may end there too (nothing new, or as much as before), and it
    would read nothing, never see the epoch grow, and skip what was sent below its
    position. The relay sends markers until each partition reaches past it."""
    async with fake_service("intake", composition_root("intake"), clock=lambda: NOW) as intake:
        broker, relay = await relay_with_two_sent(intake, "inc-m1")
        await relay._requeue(["intake.events[0]: offset 0 < 2"])
        topic = intake.runner.settings.topic("intake.events")

        await relay._mark_epoch(topic, {0: 0, 1: 0})  # the new broker holds nothing yet

        markers = [s for s in broker.sent if MARKER_HEADER in s.headers]
        assert len(markers) == 3, "offsets 0, 1 and 2: one past where a consumer could stand"
        assert {s.headers[EPOCH_HEADER] for s in markers} == {"1"}
        keys = intake.runner.relay.keys
        assert marker_epoch(keys, intake.runner.settings, topic, markers[0].headers) == 1


async def test_a_signed_marker_rewinds_and_a_forged_one_is_dead_lettered(
    archive: FakeService,
) -> None:
    runner = archive.runner
    assert runner.consumer is not None
    intake = runner.settings.topic("intake.events")
    consumer = Consumer({TopicPartition(intake, 0)})
    event, _ = events("inc-m2")
    await deliver(archive, event, 0, consumer)
    keys = runner.consumer.keys

    forged = marker_headers("intake", "intake.events", 5, BusKeys(b"another-secret" * 4))
    wrong_owner = marker_headers("grading", "intake.events", 5, keys)
    for headers in (forged, wrong_owner):
        message = Message(b'{"marker": "broker-epoch"}', headers, Record(intake), consumer)
        await runner.consumer.on_message(message)  # type: ignore[arg-type]
    assert consumer.rewound == []
    reasons = [reason for _, reason in archive.dead_letters]
    assert any("bad signature" in r for r in reasons)
    assert any("wrong producer" in r for r in reasons)

    signed = marker_headers("intake", "intake.events", 1, keys)
    message = Message(b'{"marker": "broker-epoch"}', signed, Record(intake), consumer)
    await runner.consumer.on_message(message)  # type: ignore[arg-type]
    assert consumer.rewound == [TopicPartition(intake, 0)]
    assert await archive.db["log"].count_documents({}) == 1, "a marker is no event"


async def test_a_loss_found_twice_in_one_broker_life_sends_again_only_what_was_unprocessed() -> (
    None
):
    """A check cut short after it found a loss (the broker dropping the relay's connection
    as it restarts) leaves the next send to find the same loss. What every consumer had
    processed before the wipe must not be sent again then: their inbox marks keep it."""
    async with fake_service("intake", composition_root("intake"), clock=lambda: NOW) as intake:
        _, relay = await relay_with_two_sent(intake, "inc-t1")
        topic = intake.runner.settings.topic("intake.events")
        # Every consumer had processed both, seen a second after they were sent (the store
        # keeps times to the millisecond; a look in the same one counts nothing as seen).
        later = utcnow() + timedelta(seconds=1)
        seen = {"base": "intake.events", "epoch": 0, "below": {"0": 2}, "at": later}
        await intake.store.db[RELAY_PROCESSED].replace_one({"_id": topic}, seen, upsert=True)

        assert await relay._requeue(["intake.events[0]: offset 0 < 2"]) == 0
        assert await relay._requeue(["intake.events[0]: offset 0 < 2"]) == 0, (
            "the second look at the same loss sent again what every consumer had processed"
        )
        assert relay.requeued == 0
        # The epoch markers the cut-short check did not send are still owed.
        assert relay._markers_owed
