"""A consumer handles what one poll brought in one transaction, with the same outcome as
handling each record alone.

The records go through the consumer's real `on_batch` (parsing, signature, topic and
producer checks, the inbox) on the in-memory fakes. The archive records a batch with its
own batch handler (one read of the logs, one write of the log, one of the views); the
other services run each event's handler in turn in the same transaction. Whatever fails
in a batch is handled again one record at a time, so a bad record is dead-lettered alone.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from pymongo.errors import ConnectionFailure

from services.archive.projections import CHAINS, LOG, VIEWS
from services.cli import composition_root
from shared.bus import Rejected, signed_headers
from shared.events import Envelope, ReviewRecorded, event_types
from shared.handlers import HandlerMap
from shared.store import INBOX, UnitOfWork
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.mongo import FakeCollection
from tests.unit.test_archive_service import NOW, REVIEW, T0, Story

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, as aiokafka hands it to FastStream."""

    topic: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class Consumer:
    def assignment(self) -> set[TopicPartition]:
        return set()


@dataclass
class Message:
    raw_message: tuple[Record, ...]
    consumer: Consumer


def stories(count: int) -> list[Envelope]:
    """`count` incidents on all five topics, interleaved (each incident's own order kept)."""
    told = []
    for n in range(count):
        story = Story(f"inc-b{n}", "school-a").opened()
        story.resolved()
        story.add(
            ReviewRecorded(**REVIEW, reviewed_by="office-li"), "review", T0 + timedelta(hours=3)
        )
        told.append(list(story.events))
    rng = random.Random(7)
    merged: list[Envelope] = []
    while any(told):
        merged.append(rng.choice([t for t in told if t]).pop(0))
    return merged


def record(service: FakeService, event: Envelope, **headers: str) -> Record:
    consumer = service.runner.consumer
    assert consumer is not None
    signed = signed_headers(event, event.topic.removesuffix(".events"), consumer.keys)
    signed.update(headers)
    return Record(
        service.runner.settings.topic(event.topic),
        event.to_json(),
        tuple((k, v.encode()) for k, v in signed.items()),
    )


async def in_batches(service: FakeService, records: Sequence[Record], size: int) -> None:
    consumer = service.runner.consumer
    assert consumer is not None
    for start in range(0, len(records), size):
        batch = tuple(records[start : start + size])
        await consumer.on_batch(Message(batch, Consumer()))  # type: ignore[arg-type]


async def documents(service: FakeService, collection: str, *drop: str) -> list[dict[str, Any]]:
    found = service.db[collection].find({}, sort=[("_id", 1)])
    return [{k: v for k, v in doc.items() if k not in drop} async for doc in found]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeService, FakeService]]:
    build = composition_root("archive")
    async with (
        fake_service("archive", build, clock=lambda: NOW) as alone,
        fake_service("archive", build, clock=lambda: NOW) as together,
    ):
        yield alone, together


async def test_the_archive_logs_and_folds_a_batch_as_it_does_one_by_one(
    pair: tuple[FakeService, FakeService],
) -> None:
    alone, together = pair
    events = stories(4)
    await alone.consume(*events)
    await in_batches(together, [record(together, e) for e in events], size=9)

    assert len(await documents(together, LOG)) == len(events)
    # The same chain, link for link (the ingest order is the same), and the same views.
    assert await documents(together, LOG, "ingested_at") == await documents(
        alone, LOG, "ingested_at"
    )
    assert await documents(together, CHAINS) == await documents(alone, CHAINS)
    assert await documents(together, VIEWS) == await documents(alone, VIEWS)
    assert await documents(together, "cases") == await documents(alone, "cases")
    assert together.dead_letters == []


async def test_a_batch_leaves_out_what_was_handled_and_copies_within_it(
    pair: tuple[FakeService, FakeService],
) -> None:
    _, archive = pair
    events = stories(2)
    half = len(events) // 2
    await in_batches(archive, [record(archive, e) for e in events[:half]], size=50)
    # Redelivered from the start, the second half twice over, in one poll.
    again = [record(archive, e) for e in events + events[half:]]
    await in_batches(archive, again, size=len(again))

    log = await documents(archive, LOG)
    assert sorted(d["_id"] for d in log) == sorted(str(e.event_id) for e in events)
    positions = [(d["incident_id"], d["position"]) for d in log]
    assert len(set(positions)) == len(events)
    marks = await documents(archive, INBOX)
    assert len(marks) == len(events)


async def test_a_poison_record_in_a_batch_is_dead_lettered_and_the_rest_handled(
    pair: tuple[FakeService, FakeService],
) -> None:
    _, archive = pair
    events = stories(1)
    records = [record(archive, e) for e in events]
    forged = record(archive, events[2], **{"yuqing-signature": "sha256=" + "0" * 64})
    garbage = Record(records[0].topic, b"\x00 not json", ())
    await in_batches(archive, [records[0], garbage, *records[1:], forged], size=100)

    assert len(await documents(archive, LOG)) == len(events)
    reasons = [reason for _, reason in archive.dead_letters]
    assert len(reasons) == 2
    assert any("malformed event" in r for r in reasons)
    assert any("signature" in r for r in reasons)


async def test_a_batch_that_fails_is_handled_one_by_one_and_only_the_bad_event_dead_lettered() -> (
    None
):
    async with fake_service("archive", composition_root("archive"), clock=lambda: NOW) as svc:
        consumer = svc.runner.consumer
        assert consumer is not None
        events = stories(2)
        bad = events[3]
        handled: list[str] = []

        async def handler(event: Envelope, uow: UnitOfWork) -> None:
            if event.event_id == bad.event_id:
                raise Rejected("this one cannot be acted on")
            await uow.db["seen"].insert_one({"_id": str(event.event_id)}, session=uow.session)
            handled.append(str(event.event_id))

        consumer.handlers = HandlerMap().on_each(tuple(event_types().values()), handler)
        await in_batches(svc, [record(svc, e) for e in events], size=len(events))

        expected = [str(e.event_id) for e in events if e.event_id != bad.event_id]
        # The batch's transaction was undone, then each event handled alone, in order.
        assert [d["_id"] async for d in svc.db["seen"].find({})] == expected
        assert handled[-len(expected) :] == expected
        assert [reason for _, reason in svc.dead_letters] == ["this one cannot be acted on"]
        marks = {d["_id"] async for d in svc.db[INBOX].find({})}
        # As when it comes alone: its transaction (with its mark) undone, it is dead-lettered.
        assert marks == {f"{consumer.name}:{event_id}" for event_id in expected}


async def test_a_service_without_a_batch_handler_reaches_the_same_state_in_batches() -> None:
    build = composition_root("notification")
    async with (
        fake_service("notification", build, clock=lambda: NOW) as alone,
        fake_service("notification", build, clock=lambda: NOW) as together,
    ):
        events = [e for e in stories(3) if e.topic in alone.parts.consumes]
        await alone.consume(*events)
        await in_batches(together, [record(together, e) for e in events], size=8)

        def shape(stored: list[Envelope]) -> list[tuple[str, str, str, int]]:
            return [(e.event_type, e.incident_id, e.stream_id, e.stream_version) for e in stored]

        assert shape(await together.published()) == shape(await alone.published())
        assert len(await together.published()) > 0
        assert len(await documents(together, INBOX)) == len(await documents(alone, INBOX))


async def test_a_batch_whose_inbox_cannot_be_read_is_handled_one_by_one_not_lost(
    pair: tuple[FakeService, FakeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, archive = pair
    events = stories(1)
    real_find = FakeCollection.find
    failed: list[str] = []

    def find(self: FakeCollection, *args: Any, **kwargs: Any) -> Any:
        query = args[0] if args else {}
        if not failed and isinstance(query.get("_id"), dict) and "$in" in query["_id"]:
            failed.append("inbox")
            raise ConnectionFailure("the database is away")
        return real_find(self, *args, **kwargs)

    monkeypatch.setattr(FakeCollection, "find", find)
    await in_batches(archive, [record(archive, e) for e in events], size=len(events))

    assert failed == ["inbox"]
    assert len(await documents(archive, LOG)) == len(events)
    assert archive.dead_letters == []


async def test_a_slow_batch_is_cut_into_transactions_that_fit_the_time_limit() -> None:
    build = composition_root("notification")
    # A limit so short that every transaction takes the first event and no more.
    hurried = fake_settings().model_copy(update={"mongodb_transaction_timeout_seconds": 1e-6})
    async with (
        fake_service("notification", build, clock=lambda: NOW) as alone,
        fake_service("notification", build, clock=lambda: NOW, settings=hurried) as cut,
    ):
        events = [e for e in stories(2) if e.topic in alone.parts.consumes]
        await alone.consume(*events)
        transactions = 0
        run = cut.store.transaction

        async def counted(work: Any) -> Any:
            nonlocal transactions
            transactions += 1
            return await run(work)

        cut.store.transaction = counted  # type: ignore[method-assign]
        await in_batches(cut, [record(cut, e) for e in events], size=len(events))

        assert transactions >= len(events) - 1  # one event a transaction, the last alone
        assert len(await cut.published()) == len(await alone.published())
        assert len(await documents(cut, INBOX)) == len(events)
