"""Kafka transport: the broker, the topics, the outbox relay and the idempotent consumer.

Delivery is at-least-once. Events reach Kafka only from the store (the outbox), in the
order they were stored, keyed by incident so one incident stays in order on every topic.
A consumer remembers what it processed in the same transaction as what it did about it,
so a redelivered event changes nothing; a message it cannot handle goes to the
dead-letter topic with the reason, and the consumer carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.exceptions import NackMessage
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from shared.errors import StillConflicting
from shared.events import ALL_TOPICS, DEAD_LETTER_TOPIC, Envelope, EventError, utcnow
from shared.handlers import Handler, HandlerMap
from shared.metrics import (
    CONSUME_SECONDS,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    EVENTS_PUBLISHED,
    OUTBOX_BACKLOG,
    OUTBOX_ERRORS,
)
from shared.settings import Settings
from shared.store import DecideAgain, EventStore, UnitOfWork

log = structlog.get_logger("yuqing.bus")

OUTBOX_LEASE = "outbox-relay"


class Rejected(Exception):
    """A consumed event that this service cannot act on: it goes to the dead-letter topic."""


def make_broker(settings: Settings, service: str) -> KafkaBroker:
    """One broker connection per service. No idempotent producer and no transactions:
    the embedded broker has neither, and the outbox plus idempotent consumers do not need them.
    """
    assert settings.kafka_bootstrap_servers, "Kafka bootstrap servers must be resolved first"
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"yuqing-{service}",
        enable_idempotence=False,
        acks="all",
        graceful_timeout=10.0,
        description=f"yuqing {service} service",
        # Through the process's structlog handler (JSON in production); one line per
        # consumed message belongs at DEBUG, the handlers log what they decide.
        logger=logging.getLogger(f"yuqing.{service}.kafka"),
        log_level=logging.DEBUG,
    )


async def ensure_topics(settings: Settings, names: Iterable[str] = ALL_TOPICS) -> bool:
    """Create the topics before anyone subscribes, so consumers never wait on auto-creation.

    Returns True when none of them existed: a fresh broker, which has none of the history.
    """
    assert settings.kafka_bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        wanted = {settings.topic(n) for n in (*names, DEAD_LETTER_TOPIC)}
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name=n, num_partitions=settings.topic_partitions, replication_factor=1)
            for n in sorted(wanted - existing)
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        return len(missing) == len(wanted)
    finally:
        await admin.close()


class OutboxRelay:
    """Moves stored events to Kafka in store order, marking each batch once it is sent."""

    def __init__(
        self, service: str, store: EventStore, broker: KafkaBroker, settings: Settings
    ) -> None:
        self.service = service
        self.store = store
        self.broker = broker
        self.settings = settings
        self.last_error: str | None = None
        # The last failure to reach the broker (a database that is away is not one).
        self.broker_error: str | None = None
        self.active = False  # holds the lease: the one relay of this service that publishes
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = timedelta(seconds=settings.outbox_lease_seconds)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-{self.service}")

    async def stop(self, drain: float = 0.0) -> None:
        """Stop relaying; first, for up to `drain` seconds, send what is still unsent."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        while True:
            try:
                # The lease is written only when due: an idle relay writes nothing else (a
                # retryable write the embedded server would remember for 30 minutes).
                if not self.active or time.monotonic() - renewed_at >= renew_every:
                    asked_at = time.monotonic()
                    self.active = await self.store.hold_lease(
                        OUTBOX_LEASE, self._owner, self._lease
                    )
                    renewed_at = asked_at
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
                self.store.appended_signal.clear()  # back off, however much is appended
            wait = min(backoff, renew_every) if self.active else renew_every
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
            # that arrives as the signal is set, and stop() would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.store.appended_signal.wait()

    async def relay_once(self) -> int:
        events = await self.store.unpublished(self.settings.outbox_batch_size)
        OUTBOX_BACKLOG.labels(self.service).set(len(events))
        for event in events:
            topic = self.settings.topic(event.topic)
            await self.broker.publish(
                event.to_json(),
                topic,
                key=event.incident_id.encode(),
                headers={
                    "event_type": event.event_type,
                    "event_id": str(event.event_id),
                    "content-type": "application/json",
                },
                correlation_id=str(event.correlation_id),
            )
            EVENTS_PUBLISHED.labels(self.service, topic).inc()
        if events:
            await self.store.mark_published(events)
        return len(events)


_TRANSIENT = (ConnectionFailure, DecideAgain, StillConflicting)


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

    @property
    def name(self) -> str:
        return f"{self.service}-consumer"

    def subscribe(self, topics: Iterable[str]) -> None:
        subscriber = self.broker.subscriber(
            *(self.settings.topic(t) for t in topics),
            group_id=f"{self.settings.db_prefix}.{self.service}",
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            title=f"{self.service}-consumer",
        )
        subscriber(self.on_message)

    async def on_message(self, message: KafkaMessage) -> None:
        record = message.raw_message
        topic = getattr(record, "topic", "?")
        try:
            event = Envelope.from_json(message.body)
        except (ValidationError, EventError, ValueError) as exc:
            await self.dead_letter(message.body, topic, f"malformed event: {exc}")
            return
        if self.handlers.handler_for(event) is None:
            return  # not this service's business
        await self.handle(event, raw=message.body, topic=topic)

    async def handle(self, event: Envelope, *, raw: bytes | None = None, topic: str = "") -> None:
        handler = self.handlers.handler_for(event)
        if handler is None:
            return
        bound = structlog.contextvars.bound_contextvars(
            service=self.service,
            event_id=str(event.event_id),
            event_type=event.event_type,
            correlation_id=str(event.correlation_id),
            incident_id=event.incident_id,
        )
        with bound:
            started = time.perf_counter()
            delay = 0.1
            while True:
                try:
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
            EVENTS_CONSUMED.labels(self.service, event.event_type, outcome).inc()
            CONSUME_SECONDS.labels(self.service).observe(time.perf_counter() - started)

    async def _handle_once(self, handler: Handler, event: Envelope) -> str:
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
