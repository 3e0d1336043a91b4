"""Poison on every topic, and every event delivered twice and out of order across topics.

Fast: the four consuming services (grading, notification, statement, archive) built
through their composition roots on the in-memory fakes, each message handed to the
consumer's `receive` as it would come off Kafka (raw bytes, the topic, the headers), so
the parsing, signature, topic and producer checks and the dead-lettering are the real
ones. Each test prints what it injected and what it checked.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.archive.projections import LOG
from services.cli import composition_root
from shared.bus import signed_headers
from shared.events import ALL_TOPICS, Envelope, ReviewRecorded
from shared.signing import PRODUCER_HEADER, SIGNATURE_HEADER
from shared.store import INBOX
from tests.fakes.harness import FakeService, fake_service
from tests.unit.test_archive_service import NOW, REVIEW, T0, Story, until

pytestmark = pytest.mark.asyncio

CONSUMERS = ("grading", "notification", "statement", "archive")


@pytest.fixture
async def services() -> AsyncIterator[dict[str, FakeService]]:
    async with AsyncExitStack() as stack:
        built = {
            name: await stack.enter_async_context(
                fake_service(name, composition_root(name), clock=lambda: NOW)
            )
            for name in CONSUMERS
        }
        yield built


def consumers_of(services: dict[str, FakeService], topic: str) -> list[FakeService]:
    return [s for s in services.values() if topic in s.parts.consumes]


def story(incident: str) -> list[Envelope]:
    """One incident's events on all five topics (the archive's own: its review)."""
    told = Story(incident, "school-a").opened()
    told.resolved()
    told.add(ReviewRecorded(**REVIEW, reviewed_by="office-li"), "review", T0 + timedelta(hours=3))
    return told.events


def poisons(good: Envelope) -> list[tuple[str, bytes, str]]:
    """(what, the raw value, a fragment its dead-letter reason names) for one topic, each
    JSON one signed by the topic's owner over what it carries, as a relay would sign it."""
    envelope = good.model_dump(mode="json")
    unknown_type = {**envelope, "event_id": str(uuid.uuid4()), "event_type": "NoSuchEvent"}
    newer = {**envelope, "event_id": str(uuid.uuid4()), "schema_version": 99}
    no_incident = {k: v for k, v in envelope.items() if k != "incident_id"}
    no_incident["event_id"] = str(uuid.uuid4())
    return [
        ("garbage bytes", b"\x00\xff\xfe not json at all", "malformed event"),
        ("an empty value", b"", "malformed event"),
        ("a null value", b"null", "malformed event"),
        ("a JSON that is no envelope", b'{"hello": "world"}', "malformed event"),
        ("an unknown event type", json.dumps(unknown_type).encode(), "NoSuchEvent"),
        ("an unknown schema version", json.dumps(newer).encode(), "schema_version 99"),
        ("a missing field", json.dumps(no_incident).encode(), "incident_id"),
    ]


def forged(good: Envelope, service: FakeService) -> list[tuple[str, bytes, dict[str, str], str]]:
    """Well-formed events the signature check refuses: unsigned, signed by a service that
    does not own the topic, signed by its owner for another topic."""
    assert service.runner.consumer is not None
    keys = service.runner.consumer.keys
    copy = good.model_copy(update={"event_id": uuid.uuid4()})
    owner = good.topic.removesuffix(".events")
    other = next(t for t in ALL_TOPICS if t != good.topic).removesuffix(".events")
    body = copy.model_dump(mode="json")
    return [
        ("a valid event, unsigned", copy.to_json(), {PRODUCER_HEADER: owner}, "unsigned event"),
        (
            f"a valid event signed by {other}",
            copy.to_json(),
            signed_headers(copy, other, keys),
            "wrong producer",
        ),
        (
            "a valid event with another event's signature",
            copy.to_json(),
            {
                PRODUCER_HEADER: owner,
                SIGNATURE_HEADER: keys.sign(
                    {**body, "event_id": str(uuid.uuid4())}, topic=good.topic, producer=owner
                ),
            },
            "bad signature",
        ),
    ]


def signed(raw: bytes, topic: str, service: FakeService) -> dict[str, str]:
    """The headers of `raw` signed by `topic`'s owner (where it is JSON of an object)."""
    producer = topic.removesuffix(".events")
    assert service.runner.consumer is not None
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {PRODUCER_HEADER: producer}
    signature = service.runner.consumer.keys.sign(body, topic=topic, producer=producer)
    return {PRODUCER_HEADER: producer, SIGNATURE_HEADER: signature}


async def processed(service: FakeService, event: Envelope) -> bool:
    key = f"{service.runner.name}-consumer:{event.event_id}"
    return await service.db[INBOX].find_one({"_id": key}) is not None


async def test_poison_on_every_topic_is_dead_lettered_by_each_consumer_and_the_rest_processed(
    services: dict[str, FakeService],
) -> None:
    events = story("inc-poison")
    first_of = {topic: next(e for e in events if e.topic == topic) for topic in ALL_TOPICS}
    injected: Counter[str] = Counter()
    expected: dict[str, list[tuple[str, str, str]]] = {name: [] for name in CONSUMERS}
    for event in events:
        for service in consumers_of(services, event.topic):
            if event is first_of[event.topic]:
                # Before the topic's first good event: every kind of poison on it.
                for what, raw, reason in poisons(event):
                    await service.receive(raw, event.topic, signed(raw, event.topic, service))
                    expected[service.runner.name].append((event.topic, what, reason))
                    injected[event.topic] += 1
                for what, raw, headers, reason in forged(event, service):
                    await service.receive(raw, event.topic, headers)
                    expected[service.runner.name].append((event.topic, what, reason))
                    injected[event.topic] += 1
            await service.consume(event)
    print(f"injected: 10 kinds of poison on every topic, to each of its consumers: {injected}")

    for name, service in services.items():
        got = service.dead_letters
        want = expected[name]
        print(f"checked: {name} dead-lettered {len(got)} of {len(want)}, with the reasons")
        assert len(got) == len(want), (name, got)
        for (topic, reason), (want_topic, what, fragment) in zip(got, want, strict=True):
            assert topic == service.runner.settings.topic(want_topic)
            assert fragment in reason, f"{name}, {what} on {want_topic}: {reason}"
        handled = [e for e in events if e.topic in service.parts.consumes]
        handled = [e for e in handled if service.parts.handlers.handler_for(e)]
        done = [e for e in handled if await processed(service, e)]
        print(f"checked: {name} processed all {len(done)} good events after the poison")
        assert done == handled
    logged = await services["archive"].db[LOG].count_documents({})
    print(f"checked: the archive logged {logged} of the {len(events)} good events")
    assert logged == len(events)


async def archive_views(
    api: httpx.AsyncClient, admin: dict[str, str], incidents: list[str]
) -> dict[str, Any]:
    views: dict[str, Any] = {}
    for incident in incidents:
        resp = await api.get(f"/archive/v1/incidents/{incident}", headers=admin)
        assert resp.status_code == 200, resp.text
        timeline = await api.get(f"/archive/v1/incidents/{incident}/timeline", headers=admin)
        verified = await api.get(f"/archive/v1/incidents/{incident}/verify", headers=admin)
        views[incident] = {
            "view": resp.json(),
            "timeline": timeline.json(),
            "verify": verified.json(),
        }
    return views


async def test_every_event_twice_and_out_of_order_across_topics_counts_once(
    services: dict[str, FakeService],
) -> None:
    rng = random.Random(7)
    incidents = [f"inc-twice-{n}" for n in range(3)]
    events = [e for incident in incidents for e in story(incident)]
    # Each topic in its own order (a partition's), the topics interleaved at random and
    # every event delivered twice: the second copy anywhere after the first.
    queues = {topic: [e for e in events if e.topic == topic] for topic in ALL_TOPICS}
    deliveries: list[Envelope] = []
    while any(queues.values()):
        topic = rng.choice([t for t, q in queues.items() if q])
        deliveries.append(queues[topic].pop(0))
    for event in list(deliveries):
        at = deliveries.index(event)
        deliveries.insert(rng.randint(at + 1, len(deliveries)), event)
    order = [e.topic.removesuffix(".events") for e in deliveries]
    print(
        f"injected: {len(events)} events of {len(incidents)} incidents delivered "
        f"{len(deliveries)} times, topics interleaved: {' '.join(order[:24])} ..."
    )
    for event in deliveries:
        for service in consumers_of(services, event.topic):
            await service.consume(event)

    archive = services["archive"]
    logged = Counter([d["_id"] async for d in archive.db[LOG].find({}, {"_id": 1})])
    positions = Counter(
        [(d["stream_id"], d["stream_version"]) async for d in archive.db[LOG].find({})]
    )
    print(f"checked: the archive's log holds {len(logged)} events for {len(events)} sent")
    assert sorted(logged) == sorted(str(e.event_id) for e in events)
    assert set(positions.values()) == {1}
    for name, service in services.items():
        assert service.dead_letters == [], (name, service.dead_letters)
        handled = [e for e in events if e.topic in service.parts.consumes]
        handled = [e for e in handled if service.parts.handlers.handler_for(e)]
        marks = await service.db[INBOX].count_documents({})
        print(f"checked: {name} processed {len(handled)} events once each ({marks} marks)")
        assert marks == len(handled)

    admin = archive.token("admin", "county", "admin")
    async with archive.http() as api:
        before = await archive_views(api, admin, incidents)
        started = await api.post("/archive/v1/replay", headers=admin)
        assert started.status_code == 202, started.text
        job_url = f"/archive/v1/replay/{started.json()['job_id']}"

        async def done() -> bool:
            job = (await api.get(job_url, headers=admin)).json()
            return bool(job["state"] != "running")

        await until(done)
        assert (await api.get(job_url, headers=admin)).json()["state"] == "completed"
        after = await archive_views(api, admin, incidents)
    for incident in incidents:
        assert before[incident]["verify"]["ok"] is True, before[incident]["verify"]
    print(
        f"checked: the views, timelines and chains of {len(incidents)} incidents equal a "
        f"replay of the log ({before == after})"
    )
    assert after == before
