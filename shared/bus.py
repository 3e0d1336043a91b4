"""Kafka transport: the broker, the topics, the outbox relay and the idempotent consumer.

Delivery is at-least-once. Events reach Kafka only from the store (the outbox), in the
order they were stored, keyed by incident so one incident stays in order on every topic.
A consumer remembers what it processed in the same transaction as what it did about it,
so a redelivered event changes nothing; a message it cannot handle goes to the
dead-letter topic with the reason, and the consumer carries on.

Every event is signed by the service whose outbox relays it (shared/signing.py; the
producer and the signature travel in headers), and a consumer handles only an event of
its topic's type, from its topic's owner, whose signature holds: anything else is
dead-lettered with the reason and changes nothing. The connection's TLS and SASL, and the
topics' partitions and replicas, come from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faststream import AckPolicy
from faststream.exceptions import NackMessage
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from opentelemetry.trace import Status, StatusCode
from pydantic import ValidationError
from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from shared.errors import StillConflicting
from shared.events import (
    ALL_TOPICS,
    DEAD_LETTER_TOPIC,
    Envelope,
    EventError,
    consumers_of,
    utcnow,
)
from shared.handlers import Delivery, Handler, HandlerMap
from shared.metrics import (
    CONSUME_SECONDS,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    EVENTS_PUBLISHED,
    OUTBOX_ERRORS,
    UNTRUSTED_RELAY_HEADERS,
    kafka_metrics,
)
from shared.settings import Settings
from shared.signing import (
    EPOCH_MARKER,
    MARKER_HEADER,
    PRODUCER_HEADER,
    RELAY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TOPIC_OWNERS,
    BusKeys,
    check_signed,
    marker_binding,
    secret_problem,
)
from shared.store import (
    EVENTS,
    INBOX,
    DecideAgain,
    EventStore,
    Placement,
    Processed,
    UnitOfWork,
)
from shared.tracing import consumer_span, parent_span_of, publish_span, traceparent_of

log = structlog.get_logger("yuqing.bus")

OUTBOX_LEASE = "outbox-relay"
# The longest a stop waits for a cancelled background task before it goes on without it.
STOP_WAIT_SECONDS = 5.0
# In each service's database: per topic, for each partition, an offset the broker's end was
# seen at or past ({"_id": topic, "ends": {"<partition>": offset}}): an end below it means
# the broker lost what the relay had sent it.
RELAY_HEADS = "relay_heads"
# In each service's database, one document: how many times the relay found the broker had
# lost what it had sent ({"_id": "epoch", "value": n}). Every record carries it in
# EPOCH_HEADER, so a consumer that sees it grow knows its positions on that topic point
# into a broker that is not the one it read before.
RELAY_EPOCH = "relay_epoch"
EPOCH_HEADER = "yuqing-epoch"
# In each service's database, per topic it sends to: what every consumer group of the
# topic had committed, per partition, at the relay's last look at the broker, in the epoch
# it looked in ({"_id": topic, "base": name, "epoch": n, "below": {"<partition>": offset}}).
# After a wipe only what lies at or past it is sent again.
RELAY_PROCESSED = "relay_processed"
# Epoch markers sent at once, then waited for, after a wipe (OutboxRelay._mark_epoch).
MARKER_BATCH = 500
# The span that published the event (W3C trace context): its consumers' spans are children.
TRACEPARENT_HEADER = "traceparent"


class Rejected(Exception):
    """A consumed event that this service cannot act on: it goes to the dead-letter topic."""


class BusMisconfigured(SystemExit):
    """The bus cannot be used as configured (no signing secret in production, a weak one,
    SASL without credentials): the process stops with this message, not a traceback."""


def bus_keys(settings: Settings) -> BusKeys:
    """Every service's event signing key, from YUQING_BUS_SECRET. Production does not start
    without one, or with one shorter than 32 bytes; development is warned of a weak one."""
    secret = settings.bus_secret_value
    production = settings.environment == "production"
    if secret is None:
        raise BusMisconfigured(
            "error: YUQING_BUS_SECRET is not set; production does not start without the "
            "secret the services sign their events with (`openssl rand -base64 48`, the same "
            "for every service)"
        )
    problem = secret_problem(secret)
    if problem and production:
        raise BusMisconfigured(f"error: {problem}; production does not start with a weak key")
    if problem:
        log.warning("weak_bus_secret", problem=problem)
    return BusKeys(secret, settings.bus_secrets_previous)


_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def kafka_security(settings: Settings) -> BaseSecurity | None:
    """FastStream's security object for the configured protocol (None: plaintext)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    tls = protocol in ("SSL", "SASL_SSL")
    context = None
    if tls:
        password = settings.kafka_ssl_key_password
        context = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=password.get_secret_value() if password else None,
        )
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username, password = settings.kafka_sasl_username, settings.kafka_sasl_password
    if not username or password is None:
        raise BusMisconfigured(
            f"error: YUQING_KAFKA_SECURITY_PROTOCOL={protocol} needs "
            "YUQING_KAFKA_SASL_USERNAME and YUQING_KAFKA_SASL_PASSWORD"
        )
    sasl = _SASL[settings.kafka_sasl_mechanism]
    return sasl(username, password.get_secret_value(), ssl_context=context, use_ssl=tls)


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """The same security as aiokafka client arguments (for the admin client)."""
    return parse_security(kafka_security(settings))


def make_broker(settings: Settings, service: str) -> KafkaBroker:
    """One broker connection per service. No idempotent producer and no transactions:
    the embedded broker has neither, and the outbox plus idempotent consumers do not need them.
    """
    assert settings.kafka_bootstrap_servers, "Kafka bootstrap servers must be resolved first"
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        security=kafka_security(settings),
        client_id=f"yuqing-{service}",
        enable_idempotence=False,
        acks="all",
        graceful_timeout=10.0,
        description=f"yuqing {service} service",
        # Through the process's structlog handler (JSON in production); one line per
        # consumed message belongs at DEBUG, the handlers log what they decide.
        logger=logging.getLogger(f"yuqing.{service}.kafka"),
        log_level=logging.DEBUG,
        # FastStream's Prometheus middleware: what it received, processed and published.
        middlewares=(kafka_metrics(service),),
    )


def topic_configs(settings: Settings) -> dict[str, str]:
    """What the topics are created with beyond partitions and replicas: the retention, when
    configured (else the broker's default). The archive is the long-term record, so
    retention need only cover the longest time a consumer may be down."""
    hours = settings.topic_retention_hours
    return {} if hours is None else {"retention.ms": str(int(hours * 3_600_000))}


async def ensure_topics(settings: Settings, names: Iterable[str] = ALL_TOPICS) -> bool:
    """Create the topics before anyone subscribes, so consumers never wait on auto-creation.

    Returns True when none of them existed: a fresh broker, which has none of the history.
    """
    assert settings.kafka_bootstrap_servers
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        wanted = {settings.topic(n) for n in (*names, DEAD_LETTER_TOPIC)}
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=n,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs=topic_configs(settings),
            )
            for n in sorted(wanted - existing)
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return len(missing) == len(wanted)
    finally:
        await admin.close()


Ends = dict[str, dict[int, int]]  # topic (the deployment's name) -> partition -> end offset


async def topic_ends(settings: Settings, topics: Iterable[str]) -> Ends:
    """The broker's end offset (the next offset it would give) of every partition of
    `topics`, the deployment's names; the deployment's topics are created first if one of
    them is missing (a broker that lost everything), so their partitions start at 0."""
    assert settings.kafka_bootstrap_servers
    wanted = sorted(set(topics))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        if not set(wanted) <= set(await admin.list_topics()):
            await ensure_topics(settings)
        described = await admin.describe_topics(wanted)
    finally:
        await admin.close()
    partitions = [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["topic"] in wanted
        for p in t["partitions"]
    ]
    if len({tp.topic for tp in partitions}) < len(wanted):
        raise KafkaError(f"the broker does not describe every one of {wanted} yet")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        **kafka_client_options(settings),
    )
    await consumer.start()
    try:
        found = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    ends: Ends = {t: {} for t in wanted}
    for tp, end in found.items():
        ends[tp.topic][tp.partition] = int(end)
    return ends


def lost_partitions(heads: Ends, ends: Ends) -> list[str]:
    """The partitions whose end on the broker is below what the broker once acknowledged:
    it lost what it had been sent there (a wipe, a broker that keeps nothing)."""
    return [
        f"{topic}[{partition}]: {ends.get(topic, {}).get(partition, 0)} < {end}"
        for topic, partitions in sorted(heads.items())
        for partition, end in sorted(partitions.items())
        if ends.get(topic, {}).get(partition, 0) < end
    ]


async def processed_by_all(
    settings: Settings, topic: str, ends: Mapping[int, int]
) -> dict[int, int]:
    """Per partition of `topic` (a base name; `ends` its partitions' end offsets), the
    lowest offset committed by the consumer groups of the services that read it: below it,
    every one of them has processed (a group with no commit there counts as 0)."""
    name = settings.topic(topic)
    partitions = [TopicPartition(name, p) for p in sorted(ends)]
    below = dict.fromkeys(ends, -1)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        for service in consumers_of(topic):
            found = await admin.list_consumer_group_offsets(
                group_id(settings, service), partitions=partitions
            )
            for tp in partitions:
                mark = found.get(tp)
                offset = max(mark.offset, 0) if mark is not None else 0
                low = below[tp.partition]
                below[tp.partition] = offset if low < 0 else min(low, offset)
    finally:
        await admin.close()
    # Never past what the broker holds (a commit from a broker that is not this one).
    return {p: min(max(low, 0), ends[p]) for p, low in below.items()}


class OutboxRelay:
    """Moves stored events to Kafka in store order, marking each batch once it is sent."""

    def __init__(
        self, service: str, store: EventStore, broker: KafkaBroker, settings: Settings
    ) -> None:
        self.service = service
        self.store = store
        self.broker = broker
        self.settings = settings
        self.keys = bus_keys(settings)  # signs what it publishes as `service`
        self.last_error: str | None = None
        # The last failure to reach the broker (a database that is away is not one).
        self.broker_error: str | None = None
        self.active = False  # holds the lease: the one relay of this service that publishes
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = timedelta(seconds=settings.outbox_lease_seconds)
        self._task: asyncio.Task[None] | None = None
        # Set at a stop, beside the cancel: a cancel that a client library's wait swallows
        # (Python 3.11's wait_for can) must not keep the relay looping.
        self._stopping = False
        # What the broker acknowledged per partition (loaded when the lease is taken), and
        # whether to ask the broker at once if it still has it (at start, after an error).
        self._heads: Ends | None = None
        self._check_due = True
        self._checked_at = float("-inf")
        self.requeued = 0  # events queued again because the broker had lost them
        # A loss was found and the epoch markers are not yet sent (the next check sends them).
        self._markers_owed = False
        self._epoch: int | None = None  # loaded with the first batch
        self._processed: dict[str, dict[str, Any]] = {}  # what RELAY_PROCESSED holds

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"outbox-{self.service}")

    async def stop(self, drain: float = 0.0) -> None:
        """Stop relaying; first, for up to `drain` seconds, send what is still unsent."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            try:
                # Bounded: a broker check cancelled inside a client's start or close must
                # not hold the stop for ever (the relay's state is in the store).
                async with asyncio.timeout(STOP_WAIT_SECONDS):
                    await self._task
            except asyncio.CancelledError:
                pass
            except TimeoutError:
                log.warning("outbox relay did not stop in time", service=self.service)
        if self.active and drain > 0:
            # What is not sent now stays stored, unsent, for the next start to send.
            with contextlib.suppress(TimeoutError, KafkaError, PyMongoError, OSError):
                async with asyncio.timeout(drain):
                    while await self.relay_once():
                        pass
        if self.active:
            # A standby replica takes over at once instead of after the lease expires.
            with contextlib.suppress(PyMongoError):
                await self.store.release_lease(OUTBOX_LEASE, self._owner)
            self.active = False

    @property
    def healthy(self) -> bool:
        """Whether the broker took what the relay last sent it."""
        return self.broker_error is None

    async def _run(self) -> None:
        backoff = self.settings.outbox_poll_seconds
        # Renew well before expiry, however long the relay waits between batches.
        renew_every = self._lease.total_seconds() / 3
        renewed_at = float("-inf")
        while not self._stopping:
            try:
                # The lease is written only when due: an idle relay writes nothing else (a
                # retryable write the embedded server would remember for 30 minutes).
                if not self.active or time.monotonic() - renewed_at >= renew_every:
                    asked_at = time.monotonic()
                    was_active = self.active
                    self.active = await self.store.hold_lease(
                        OUTBOX_LEASE, self._owner, self._lease
                    )
                    renewed_at = asked_at
                    if self.active and not was_active:
                        # Another replica may have sent, and found a loss, meanwhile.
                        self._heads, self._epoch, self._check_due = None, None, True
                        self._processed = {}
                check_every = self.settings.outbox_check_seconds
                if self.active and (
                    self._check_due or time.monotonic() - self._checked_at >= check_every
                ):
                    await self._check_broker_or_carry_on()
                # Cleared before the read: what is appended after it wakes the wait below.
                self.store.appended_signal.clear()
                sent = await self.relay_once() if self.active else 0
                self.last_error = self.broker_error = None
                backoff = self.settings.outbox_poll_seconds
                if sent >= self.settings.outbox_batch_size:
                    continue  # more are waiting
            except (KafkaError, PyMongoError, OSError) as exc:
                OUTBOX_ERRORS.labels(self.service).inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, PyMongoError):
                    self.broker_error = self.last_error
                log.warning("outbox relay failed", service=self.service, error=self.last_error)
                backoff = min(backoff * 2, 10.0)
                self._check_due = True  # the broker may come back without what it had
                self.store.appended_signal.clear()  # back off, however much is appended
            wait = (
                min(backoff, renew_every, self.settings.outbox_check_seconds)
                if self.active
                else renew_every
            )
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
            # that arrives as the signal is set, and stop() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.store.appended_signal.wait()

    async def relay_once(self) -> int:
        """Send one batch of the outbox, pipelined: every send is handed to the producer
        before any is awaited (it keeps each partition's order, one request in flight per
        broker), then the batch is marked sent and the broker's offsets recorded."""
        events = await self.store.unpublished(self.settings.outbox_batch_size)
        if not events:
            return 0
        epoch = await self._current_epoch()
        sends = []
        spans = []
        for event in events:
            topic = self.settings.topic(event.topic)
            span = publish_span(
                self.service,
                topic,
                event_type=event.event_type,
                event_id=str(event.event_id),
                incident_id=event.incident_id,
                correlation=event.correlation_id,
            )
            spans.append(span)
            sends.append(
                await self.broker.publish(
                    event.to_json(),
                    topic,
                    key=event.incident_id.encode(),
                    headers=relay_headers(
                        event, self.service, self.keys, epoch=epoch, span=traceparent_of(span)
                    ),
                    correlation_id=str(event.correlation_id),
                    no_confirm=True,
                )
            )
        results = await asyncio.gather(*sends, return_exceptions=True)
        for span, result in zip(spans, results, strict=True):
            if isinstance(result, BaseException):
                span.record_exception(result)
                span.set_status(Status(StatusCode.ERROR, str(result)))
            else:
                span.set_attribute("messaging.destination.partition.id", str(result.partition))
                span.set_attribute("messaging.kafka.offset", result.offset)
            span.end()
        sent = [e for e, r in zip(events, results, strict=True) if not isinstance(r, BaseException)]
        placed = [
            Placement(epoch, r.partition, r.offset)
            for r in results
            if not isinstance(r, BaseException)
        ]
        first: Ends = {}  # per partition, the lowest offset the broker gave this batch
        for result in results:
            if not isinstance(result, BaseException):
                EVENTS_PUBLISHED.labels(self.service, result.topic).inc()
                low = first.setdefault(result.topic, {})
                low[result.partition] = min(low.get(result.partition, result.offset), result.offset)
        if sent:
            await self.store.mark_published(sent, placed)
            await self._record_heads(first)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        return len(events)

    async def _record_heads(self, first: Ends) -> None:
        """Keep, per partition, a mark the broker's end offset can never again be below: one
        past the lowest offset it gave the batch. (Not the batch's end: Tansu reports the
        end of a partition as one past the first record of its last request.) A send given
        an offset below the mark means the broker lost what it had: everything is queued
        to be sent again, and the mark starts over from what the broker has now."""
        if self._heads is None:
            self._heads = await self._load_heads()
        heads = self._heads
        lost = [
            f"{topic}[{p}]: offset {offset} < {heads.get(topic, {}).get(p, 0)}"
            for topic, partitions in first.items()
            for p, offset in partitions.items()
            if offset < heads.get(topic, {}).get(p, 0)
        ]
        if lost:
            # Everything is queued again, whatever else the broker lost: the marks start
            # over from this batch's offsets, with nothing known of the other partitions.
            await self._requeue(lost)
            for topic in [t for t in heads if t not in first]:
                await self.store.db[RELAY_HEADS].update_one(
                    {"_id": topic}, {"$set": {"ends": {}}}, upsert=True
                )
                heads[topic] = {}
        for topic, partitions in first.items():
            marks = {p: offset + 1 for p, offset in partitions.items()}
            change: dict[str, Any]
            if lost:
                change = {"$set": {"ends": {str(p): mark for p, mark in marks.items()}}}
                heads[topic] = dict(marks)
            else:
                change = {"$max": {f"ends.{p}": mark for p, mark in marks.items()}}
                known = heads.setdefault(topic, {})
                for p, mark in marks.items():
                    known[p] = max(known.get(p, 0), mark)
            await self.store.db[RELAY_HEADS].update_one({"_id": topic}, change, upsert=True)

    async def _current_epoch(self) -> int:
        if self._epoch is None:
            doc = await self.store.db[RELAY_EPOCH].find_one({"_id": "epoch"})
            self._epoch = int(doc["value"]) if doc else 0
        return self._epoch

    async def _requeue(self, lost: list[str]) -> int:
        # What every consumer had processed in a broker's life (the relay's last look at each
        # topic, in whichever epoch it was taken) is not sent again: their inbox marks keep it
        # handled whatever the broker lost since, and a loss found twice in one life (a check
        # cut short) does not make the second look find nothing processed.
        processed = [
            Processed(
                topic=str(mark["base"]),
                epoch=int(mark["epoch"]),
                below={int(p): int(o) for p, o in mark.get("below", {}).items()},
                seen_at=mark["at"],
            )
            async for mark in self.store.db[RELAY_PROCESSED].find({})
        ]
        # The epoch first: what is sent again tells every consumer of the topic that the
        # broker is a new one, wherever their positions point (EventConsumer._follow_epoch).
        doc = await self.store.db[RELAY_EPOCH].find_one_and_update(
            {"_id": "epoch"},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        self._epoch = int(doc["value"]) if doc else 1
        self._markers_owed = self._check_due = True
        await self.store.republish_unprocessed(processed)
        queued = await self.store.count_unpublished()
        self.requeued += queued
        log.warning(
            "the broker lost events this service had sent: sending them again",
            service=self.service,
            lost=lost,
            queued=queued,
        )
        self.store.appended_signal.set()
        return queued

    async def _mark_epoch(self, topic: str, ends: Mapping[int, int]) -> None:
        """Make every partition of this relay's topic reach past where a consumer of the
        broker's life that ended can stand (one past the last offset the broker gave then),
        with markers that carry only the new epoch. A consumer holding a position at the
        refilled log's end would otherwise read nothing there, never see the epoch grow and
        never read again what was sent below its position (EventConsumer._follow_epoch)."""
        epoch = await self._current_epoch()
        logical = topic.removeprefix(self.settings.topic_prefix)
        value = json.dumps({"marker": EPOCH_MARKER, "producer": self.service, "epoch": epoch})
        headers = marker_headers(self.service, logical, epoch, self.keys)
        sent = 0
        for partition, end in sorted(ends.items()):
            stood = await self.store.placed_end_before(epoch, partition)
            count = stood + 1 - end if stood else 0  # no consumer stood past 0 there
            for start in range(0, max(count, 0), MARKER_BATCH):
                sends = [
                    await self.broker.publish(
                        value.encode(), topic, partition=partition, headers=headers, no_confirm=True
                    )
                    for _ in range(min(MARKER_BATCH, count - start))
                ]
                await asyncio.gather(*sends)
                sent += len(sends)
        if sent:
            log.warning(
                "marked the new epoch past where consumers of the lost broker stood",
                service=self.service,
                topic=topic,
                markers=sent,
                epoch=epoch,
            )

    async def _load_heads(self) -> Ends:
        heads: Ends = {}
        async for doc in self.store.db[RELAY_HEADS].find({}):
            heads[str(doc["_id"])] = {int(p): int(e) for p, e in doc.get("ends", {}).items()}
        return heads

    async def _check_broker_or_carry_on(self) -> None:
        """A check that fails does not hold the outbox back: a send the broker numbers below
        the mark finds a loss as well. It is asked again after the check interval."""
        try:
            await self.check_broker()
        except KafkaError as exc:
            log.warning(
                "could not ask the broker what it holds", service=self.service, error=str(exc)
            )
            self._check_due = False
            self._checked_at = time.monotonic()

    async def check_broker(self) -> int:
        """Ask the broker whether it still holds what this relay sent it. When it lost any
        of it (a wipe; the embedded broker keeps nothing), every event of this service is
        queued to be sent again: the consumers' group offsets went with it, and their inbox
        marks drop what they had already handled. Returns how many were queued."""
        if self._heads is None:
            self._heads = await self._load_heads()
        own = self.settings.topic(f"{self.service}.events")
        topics = set(self._heads)
        if f"{self.service}.events" in ALL_TOPICS:
            topics.add(own)
        ends = await topic_ends(self.settings, topics) if topics else {}
        lost = lost_partitions(self._heads, ends)
        # Nothing recorded yet (a store older than this record) and an empty topic:
        # whatever the store marked sent, the broker does not have.
        if (
            own in ends
            and not self._heads.get(own)
            and not any(ends[own].values())
            and await self.store.db[EVENTS].find_one({"published": True}, {"_id": 1})
        ):
            lost.append(f"{own}: empty, with events of this store marked sent")
        queued = await self._requeue(lost) if lost else 0
        # From now on, what the broker has is the mark (what it lost is queued again).
        # Written only then, or the first time: an idle relay's checks write nothing. Written
        # before the markers: a send that fails now must not find the same loss again.
        for topic, partitions in ends.items():
            if not lost and topic in self._heads:
                continue
            await self.store.db[RELAY_HEADS].update_one(
                {"_id": topic},
                {"$set": {"ends": {str(p): end for p, end in partitions.items()}}},
                upsert=True,
            )
        self._heads = ends
        if self._markers_owed and own in ends:
            await self._mark_epoch(own, ends[own])
            self._markers_owed = False
        if not lost:
            await self._record_processed(ends)
        self._check_due = False
        self._checked_at = time.monotonic()
        return queued

    async def _record_processed(self, ends: Ends) -> None:
        """Keep what every consumer of each topic this relay sends to had processed, in
        this broker's life; written only when it moved (an idle relay writes nothing)."""
        bases = {self.settings.topic(base): base for base in ALL_TOPICS}
        epoch = await self._current_epoch()
        for name, partitions in ends.items():
            base = bases.get(name)
            if base is None or not consumers_of(base) or not partitions:
                continue
            # The time is taken first: what is sent after it is never counted as processed.
            seen_at = utcnow()
            found = await processed_by_all(self.settings, base, partitions)
            below = {str(p): o for p, o in sorted(found.items())}
            known = self._processed.get(name)
            if known is not None and (known["epoch"], known["below"]) == (epoch, below):
                continue
            mark = {"base": base, "epoch": epoch, "below": below, "at": seen_at}
            await self.store.db[RELAY_PROCESSED].replace_one({"_id": name}, mark, upsert=True)
            self._processed[name] = mark


def signed_headers(event: Envelope, producer: str, keys: BusKeys) -> dict[str, str]:
    """The headers an event is published with: its type and id, and `producer`'s signature
    over it as published on its topic (shared/signing.py)."""
    signature = keys.sign(event.model_dump(mode="json"), topic=event.topic, producer=producer)
    return {
        "event_type": event.event_type,
        "event_id": str(event.event_id),
        "content-type": "application/json",
        PRODUCER_HEADER: producer,
        SIGNATURE_HEADER: signature,
    }


def marker_headers(producer: str, topic: str, epoch: int, keys: BusKeys) -> dict[str, str]:
    """The headers of an epoch marker on `topic` (logical), signed by `producer`."""
    values = {EPOCH_HEADER: str(epoch)}
    relay = keys.sign_relay(values, event_signature=marker_binding(topic), producer=producer)
    return {
        MARKER_HEADER: EPOCH_MARKER,
        PRODUCER_HEADER: producer,
        **values,
        RELAY_SIGNATURE_HEADER: relay,
    }


def marker_epoch(
    keys: BusKeys, settings: Settings, topic: str, headers: Mapping[str, Any]
) -> int | str | None:
    """The epoch an epoch marker on `topic` (the deployment's name) carries, when its
    topic's owner signed it; why not otherwise (str); None for a record that is no marker."""
    if headers.get(MARKER_HEADER) != EPOCH_MARKER:
        return None
    logical = topic.removeprefix(settings.topic_prefix)
    producer = str(headers.get(PRODUCER_HEADER) or "")
    if TOPIC_OWNERS.get(logical) != producer:
        return f"wrong producer: {logical} carries only its owner's markers, not {producer!r}'s"
    values = {EPOCH_HEADER: str(headers.get(EPOCH_HEADER, ""))}
    signature = str(headers.get(RELAY_SIGNATURE_HEADER) or "")
    if not signature or not keys.relay_holds(
        signature, values, event_signature=marker_binding(logical), producer=producer
    ):
        return f"bad signature: the epoch marker is not signed with {producer}'s key"
    try:
        return int(values[EPOCH_HEADER])
    except ValueError:
        return "malformed epoch marker: its epoch is not a number"


def relay_headers(
    event: Envelope, producer: str, keys: BusKeys, *, epoch: int, span: str
) -> dict[str, str]:
    """`signed_headers` and the relay's own (the broker epoch, the publishing span's
    traceparent), which `producer` signs too, bound to the event's signature."""
    headers = signed_headers(event, producer, keys)
    values = {EPOCH_HEADER: str(epoch), TRACEPARENT_HEADER: span}
    relay = keys.sign_relay(values, event_signature=headers[SIGNATURE_HEADER], producer=producer)
    return {**headers, **values, RELAY_SIGNATURE_HEADER: relay}


def trusted_relay_values(
    keys: BusKeys, delivery: Delivery, headers: Mapping[str, Any]
) -> dict[str, str]:
    """The relay's headers of a delivered event when its producer signed them; none when
    they are unsigned or the signature does not hold (a forged epoch or traceparent)."""
    values = {
        name: str(headers[name]) for name in (EPOCH_HEADER, TRACEPARENT_HEADER) if name in headers
    }
    if not values:
        return {}
    signature = str(headers.get(RELAY_SIGNATURE_HEADER) or "")
    if signature and keys.relay_holds(
        signature, values, event_signature=delivery.signature, producer=delivery.producer
    ):
        return values
    UNTRUSTED_RELAY_HEADERS.labels(delivery.producer, delivery.topic).inc()
    log.warning(
        "relay headers not signed by the event's producer: ignored",
        producer=delivery.producer,
        topic=delivery.topic,
        headers=sorted(values),
    )
    return {}


def epoch_of(values: Mapping[str, str]) -> int | None:
    try:
        return int(values.get(EPOCH_HEADER, ""))
    except ValueError:
        return None


_DELIVERY: ContextVar[Delivery | None] = ContextVar("yuqing_delivery", default=None)


def current_delivery() -> Delivery | None:
    """The delivery of the event the consumer is handling now; None outside a handler. The
    archive records it in its chain with the event."""
    return _DELIVERY.get()


@contextlib.contextmanager
def _delivering(delivery: Delivery | None) -> Iterator[None]:
    token = _DELIVERY.set(delivery)
    try:
        yield
    finally:
        _DELIVERY.reset(token)


def group_id(settings: Settings, service: str) -> str:
    """The Kafka consumer group of `service`'s consumer."""
    return f"{settings.db_prefix}.{service}"


def consumer_name(service: str) -> str:
    """The service's consumer, as its inbox marks name it."""
    return f"{service}-consumer"


def checked_delivery(
    keys: BusKeys, settings: Settings, event: Envelope, topic: str, headers: Mapping[str, Any]
) -> Delivery | str:
    """How an event came off `topic` (the deployment's name for it), or why it is not one
    its topic's owner published: a topic not the deployment's, no or a wrong signature."""
    prefix = settings.topic_prefix
    if not topic.startswith(prefix):
        return f"wrong topic: {topic} is not one of this deployment's topics"
    logical = topic[len(prefix) :]
    producer = str(headers.get(PRODUCER_HEADER) or "")
    signature = str(headers.get(SIGNATURE_HEADER) or "")
    problem = check_signed(
        keys, event.model_dump(mode="json"), topic=logical, producer=producer, signature=signature
    )
    if problem is not None:
        return problem
    return Delivery(topic=logical, producer=producer, signature=signature)


_TRANSIENT = (ConnectionFailure, DecideAgain, StillConflicting)


@dataclass(frozen=True)
class Received:
    """A consumed record whose event passed every check, as it came."""

    event: Envelope
    raw: bytes
    topic: str
    delivery: Delivery
    parent_span: int | None = None  # the span that published it, from its traceparent
    epoch: int | None = None  # the producer's broker epoch, when its relay signed it


@dataclass
class EventConsumer:
    """Hands each consumed event to this service's handler for its type, exactly once in effect.

    The inbox mark and the handler's writes commit together. Transient failures (the
    database away, a concurrent writer) are retried with backoff, holding the partition so
    order is kept; anything else dead-letters the message with the reason.
    """

    service: str
    store: EventStore
    broker: KafkaBroker
    settings: Settings
    handlers: HandlerMap
    # Set at a stop: a message held by a transient failure is let go, uncommitted.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # The producers' keys, to check every event's signature before it is handled.
    keys: BusKeys = field(init=False)
    # Per topic, the highest relay epoch seen on it (OutboxRelay._requeue).
    _epochs: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = bus_keys(self.settings)

    @property
    def name(self) -> str:
        return consumer_name(self.service)

    def subscribe(self, topics: Iterable[str]) -> None:
        batch = self.settings.consumer_batch_size
        subscriber = self.broker.subscriber(
            *(self.settings.topic(t) for t in topics),
            group_id=group_id(self.settings, self.service),
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.kafka_session_timeout_seconds * 1000),
            ack_policy=AckPolicy.ACK,
            title=f"{self.service}-consumer",
            # What the broker has in hand at a poll, up to `batch` records (a poll with
            # none waits for the first to come, not for the batch to fill).
            batch=batch > 1,
            max_records=batch if batch > 1 else None,
        )
        subscriber(self.on_batch if batch > 1 else self.on_message)

    async def on_message(self, message: KafkaMessage) -> None:
        record = message.raw_message
        topic = getattr(record, "topic", "?")
        marked = marker_epoch(self.keys, self.settings, topic, message.headers)
        if marked is not None:
            await self._on_marker(message.consumer, topic, message.body, marked)
            return
        received = await self.receive(message.body, topic, message.headers)
        if received is not None:
            await self._follow_epoch(message.consumer, topic, received.epoch)

    async def _on_marker(
        self, consumer: AIOKafkaConsumer, topic: str, raw: bytes, marked: int | str
    ) -> None:
        """An epoch marker carries no event: its epoch is followed when its topic's owner
        signed it, and it is dead-lettered with the reason when not."""
        if isinstance(marked, str):
            await self.dead_letter(raw, topic, marked)
        else:
            await self._follow_epoch(consumer, topic, marked)

    async def on_batch(self, message: KafkaMessage) -> None:
        """The records of one poll, in the broker's order: each checked as `receive` does,
        the ones to handle handled together (`handle_all`), then the epochs followed."""
        raw = message.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        try:
            accepted: list[Received] = []
            markers: list[tuple[str, bytes, int | str]] = []
            for record in records:
                headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
                marked = marker_epoch(self.keys, self.settings, record.topic, headers)
                if marked is not None:
                    markers.append((record.topic, record.value or b"", marked))
                    continue
                received = await self._accepted(record.value or b"", record.topic, headers)
                if received is not None:
                    accepted.append(received)
            await self.handle_all([r for r in accepted if self.handlers.handler_for(r.event)])
        except NackMessage:
            raise
        except Exception as exc:
            # The batch is acknowledged when this returns or raises anything else: what
            # could not be handled comes again (from its earliest record) instead.
            log.exception("a batch failed: it will be delivered again", error=str(exc))
            raise NackMessage() from exc
        for received in accepted:
            await self._follow_epoch(message.consumer, received.topic, received.epoch)
        for topic, raw_marker, marked in markers:
            await self._on_marker(message.consumer, topic, raw_marker, marked)

    async def receive(self, raw: bytes, topic: str, headers: Mapping[str, Any]) -> Received | None:
        """One message as it came off `topic` (the deployment's name for it): parsed, its
        signature, topic and producer checked, then handled. A malformed, unsigned, wrongly
        signed or misplaced event is dead-lettered with the reason and changes nothing.
        The event when it was its topic owner's, handled or not this service's business."""
        received = await self._accepted(raw, topic, headers)
        if received is None:
            return None
        if self.handlers.handler_for(received.event) is not None:
            await self.handle_one(received)
        return received

    async def _accepted(
        self, raw: bytes, topic: str, headers: Mapping[str, Any]
    ) -> Received | None:
        """The event a record carries, its delivery checked; None once it is dead-lettered."""
        try:
            event = Envelope.from_json(raw)
        except (ValidationError, EventError, ValueError) as exc:
            await self.dead_letter(raw, topic, f"malformed event: {exc}")
            return None
        delivery = checked_delivery(self.keys, self.settings, event, topic, headers)
        if isinstance(delivery, str):
            EVENTS_CONSUMED.labels(self.service, event.event_type, "refused").inc()
            await self.dead_letter(raw, topic, delivery)
            return None
        relayed = trusted_relay_values(self.keys, delivery, headers)
        parent = parent_span_of(relayed.get(TRACEPARENT_HEADER), event.correlation_id)
        return Received(event, raw, topic, delivery, parent, epoch_of(relayed))

    async def handle_all(self, batch: Sequence[Received]) -> None:
        """Handle checked events in order, exactly once in effect: the ones this consumer
        has not seen, in one transaction when there are several (the service's batch
        handler, or each event's handler in turn); one by one (`handle`, with its retries
        and dead-lettering) when that transaction fails for any reason."""
        keys = [self._key(r.event) for r in batch]
        seen = set()
        if len(batch) > 1:
            try:
                found = self.store.db[INBOX].find({"_id": {"$in": keys}}, {"_id": 1})
                seen = {doc["_id"] async for doc in found}
            except PyMongoError as exc:  # one by one below, each with its retries
                log.info("the inbox could not be read for a batch", error=str(exc))
                for received in batch:
                    await self.handle_one(received)
                return
        fresh: list[Received] = []
        for received, key in zip(batch, keys, strict=True):
            if key in seen:
                EVENTS_CONSUMED.labels(self.service, received.event.event_type, "duplicate").inc()
            else:
                seen.add(key)  # a second copy in the same batch is a duplicate too
                fresh.append(received)
        while len(fresh) > 1 and not self.stopping.is_set():
            started = time.perf_counter()
            try:
                taken, handled = await self.store.transaction(
                    functools.partial(self._handle_together, fresh)
                )
            except Exception as exc:  # each is tried alone below, with its own outcome
                log.info(
                    "a batch could not be handled together: handling its events one by one",
                    service=self.service,
                    events=len(fresh),
                    error=f"{type(exc).__name__}: {exc}",
                )
                break
            each = (time.perf_counter() - started) / max(taken, 1)
            for received in fresh[:taken]:
                outcome = "handled" if received.event.event_id in handled else "duplicate"
                EVENTS_CONSUMED.labels(self.service, received.event.event_type, outcome).inc()
                CONSUME_SECONDS.labels(self.service).observe(each)
            fresh = fresh[taken:]
        for received in fresh:
            await self.handle_one(received)

    async def handle_one(self, received: Received) -> None:
        """One checked event alone (`handle`), with how it came."""
        await self.handle(
            received.event,
            raw=received.raw,
            topic=received.topic,
            delivery=received.delivery,
            parent_span=received.parent_span,
        )

    async def _handle_together(
        self, batch: Sequence[Received], uow: UnitOfWork
    ) -> tuple[int, set[uuid.UUID]]:
        """The batch, or as much of it as fits the time budget, in one transaction: the
        service's batch handler takes it all; otherwise each event's handler in turn until
        a quarter of the transaction's time limit is spent (a slow database must not make
        the batch outlive it). The inbox marks of what was taken are written at once:
        `handle_all` read them just before, and a replica's mark since fails that write,
        so the batch is then handled one by one. Returns how many of the batch were taken,
        and the ids handled."""
        started = time.perf_counter()
        budget = (self.settings.mongodb_transaction_timeout_seconds or 5.0) / 4
        taken = 0
        handled: list[Received] = []
        with contextlib.ExitStack() as spans:
            if self.handlers.batch is not None:
                handled = list(batch)
                for r in handled:
                    spans.enter_context(self._span(r.event, r.topic, r.parent_span))
                await self.handlers.batch([(r.event, r.delivery) for r in handled], uow)
                taken = len(batch)
            else:
                for r in batch:
                    if taken and time.perf_counter() - started > budget:
                        break
                    taken += 1
                    handler = self.handlers.handler_for(r.event)
                    assert handler is not None
                    with (
                        self._span(r.event, r.topic, r.parent_span),
                        self._bound(r.event),
                        _delivering(r.delivery),
                    ):
                        await handler(r.event, uow)
                    handled.append(r)
        await uow.mark_all_processed(
            self.name, [str(r.event.event_id) for r in handled], unmarked=True
        )
        return taken, {r.event.event_id for r in handled}

    def _key(self, event: Envelope) -> str:
        return f"{self.name}:{event.event_id}"

    def _bound(self, event: Envelope) -> contextlib.AbstractContextManager[Any]:
        return structlog.contextvars.bound_contextvars(
            service=self.service,
            event_id=str(event.event_id),
            event_type=event.event_type,
            correlation_id=str(event.correlation_id),
            incident_id=event.incident_id,
        )

    def _span(
        self, event: Envelope, topic: str, parent_span: int | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        return consumer_span(
            self.service,
            topic,
            event_type=event.event_type,
            event_id=str(event.event_id),
            incident_id=event.incident_id,
            correlation=event.correlation_id,
            parent_span=parent_span,
        )

    async def _follow_epoch(
        self, consumer: AIOKafkaConsumer, topic: str, epoch: int | None
    ) -> None:
        """Read `topic` again from its beginning when its producer's epoch grew: the broker
        lost what it had (a wipe), and the positions this consumer holds (and may have
        committed since) point into a log refilled with other records; read from there,
        what was sent since the wipe below them would be skipped. The inbox makes the
        re-read cost one lookup per event already handled."""
        if epoch is None:
            return  # sent by a relay older than the epoch, or not signed by its producer
        known = self._epochs.get(topic)
        self._epochs[topic] = max(epoch, known or 0)
        if known is None or epoch <= known:
            return
        partitions = [tp for tp in consumer.assignment() if tp.topic == topic]
        log.warning(
            "the broker lost what it had: reading the topic again from its beginning",
            service=self.service,
            topic=topic,
            epoch=epoch,
            partitions=len(partitions),
        )
        if partitions:
            try:
                await consumer.seek_to_beginning(*partitions)
            except Exception as exc:  # reassigned meanwhile: the new owner reads from its start
                log.warning("could not read the topic again", topic=topic, error=str(exc))

    async def handle(
        self,
        event: Envelope,
        *,
        raw: bytes | None = None,
        topic: str = "",
        delivery: Delivery | None = None,
        parent_span: int | None = None,
    ) -> None:
        """Hand an event already checked (`receive`) to its handler, exactly once in effect."""
        handler = self.handlers.handler_for(event)
        if handler is None:
            return
        with self._bound(event), self._span(event, topic, parent_span) as span:
            started = time.perf_counter()
            delay = 0.1
            while True:
                try:
                    with _delivering(delivery):
                        outcome = await self._handle_once(handler, event)
                    break
                except _TRANSIENT as exc:
                    if self.stopping.is_set():
                        # Not processed, so not acknowledged: its offset is not committed
                        # and it comes again after the restart. The stop does not wait.
                        log.info("stopping: message left for redelivery", error=str(exc))
                        raise NackMessage() from exc
                    log.warning("transient failure, retrying", error=str(exc), retry_in=delay)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self.stopping.wait()  # a stop cuts the wait short
                    delay = min(delay * 2, self.settings.consumer_retry_max_seconds)
                except (Rejected, ValidationError, EventError, ValueError, OperationFailure) as exc:
                    await self.dead_letter(raw or event.to_json(), topic, str(exc))
                    outcome = "dead_lettered"
                    break
                except Exception as exc:
                    log.exception("handler failed")
                    reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
                    await self.dead_letter(raw or event.to_json(), topic, reason)
                    outcome = "dead_lettered"
                    break
            span.set_attribute("yuqing.outcome", outcome)
            EVENTS_CONSUMED.labels(self.service, event.event_type, outcome).inc()
            CONSUME_SECONDS.labels(self.service).observe(time.perf_counter() - started)

    async def _handle_once(self, handler: Handler, event: Envelope) -> str:
        # A redelivery (a re-relay after a broker wipe sends a service's whole history) is
        # told by one read, without a transaction; the mark is only ever added, so one seen
        # here is final, and the transaction below still decides every other case.
        if await self.store.db[INBOX].find_one({"_id": self._key(event)}, {"_id": 1}):
            return "duplicate"

        async def work(uow: UnitOfWork) -> str:
            if not await uow.mark_processed(self.name, str(event.event_id)):
                return "duplicate"
            await handler(event, uow)
            return "handled"

        return await self.store.transaction(work)

    async def dead_letter(self, raw: bytes, topic: str, reason: str) -> None:
        DEAD_LETTERS.labels(self.service, topic).inc()
        log.error("dead-lettering message", service=self.service, topic=topic, reason=reason)
        record = {
            "consumer": self.name,
            "source_topic": topic,
            "reason": reason,
            "failed_at": utcnow().isoformat(),
            "message": raw.decode("utf-8", errors="replace"),
        }
        await self.broker.publish(
            json.dumps(record, ensure_ascii=False).encode(),
            self.settings.topic(DEAD_LETTER_TOPIC),
            headers={"reason": reason[:500], "consumer": self.name, "source_topic": topic},
        )
