"""The archive's audit: what the topics hold that its log does not.

The archive's consumer commits its Kafka offset after its transaction. A database that
loses an acknowledged transaction (a server that crashed before it synced it) leaves an
event behind the committed offset and nowhere in the log, and nothing would ever deliver
it again: the incident would be shown as complete without it. So every
`YUQING_ARCHIVE_AUDIT_SECONDS` the archive reads every topic from where its last audit
stopped up to the offsets its consumer group had committed at the last audit (so every
event is looked at at least one interval after the consumer moved past it, when a lost
transaction is lost for good), looks each event up in its log, and records what is
missing exactly as the consumer would (its inbox mark, the log, the fold), counting it
(`yuqing_archive_healed_events_total`) and naming it in the log and the audit document.
What fails the consumer's checks (a forgery, poison) was dead-lettered by the consumer and
is passed over. A broker that lost what it had (an end below where the audit stopped, or a
relay epoch that grew) sends the audit back to that topic's beginning.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import APIRouter
from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError

from services.archive.projections import LOG, ArchiveViews
from shared.auth import CurrentCaller
from shared.bus import (
    bus_keys,
    checked_delivery,
    consumer_name,
    epoch_of,
    kafka_client_options,
    trusted_relay_values,
)
from shared.clock import Clock
from shared.errors import Forbidden
from shared.events import ALL_TOPICS, Envelope, EventError
from shared.handlers import Delivery
from shared.identity import Role
from shared.settings import Settings
from shared.store import Document, EventStore, UnitOfWork

log = structlog.get_logger("yuqing.archive.audit")

AUDIT = "audit"  # {"_id": "marks", "topics": {topic: {partition: offset}}, "epochs": {...}}
HEALED = Counter(
    "yuqing_archive_healed_events_total",
    "Events on a topic that the archive's log did not hold, found and recorded by its audit",
    ["topic"],
)
_READ_BATCH = 500


@dataclass
class AuditPass:
    """What one audit read and what it recorded."""

    started_at: datetime
    read: int = 0
    healed: list[str] = field(default_factory=list)  # "<event type> <event id>"
    restarted: list[str] = field(default_factory=list)  # topics read again from the start


class Audit:
    def __init__(
        self, views: ArchiveViews, store: EventStore, settings: Settings, clock: Clock
    ) -> None:
        self.views = views
        self.store = store
        self.settings = settings
        self.clock = clock
        self.keys = bus_keys(settings)
        self.inbox = consumer_name("archive")

    async def loop(self) -> None:
        every = self.settings.archive_audit_seconds
        while True:
            await asyncio.sleep(every)
            try:
                await self.run_once()
            except Exception as exc:  # an audit missed is no reason to stop auditing
                log.warning("the archive's audit could not run", error=str(exc), retry_in=every)

    async def run_once(self) -> AuditPass:
        """Read every topic from the last audit's marks up to the offsets the archive's
        consumer group has committed (what it says it has recorded: what it has not reached
        yet is not missing), and record what the log lacks."""
        report = AuditPass(started_at=self.clock())
        stored = await self.store.db[AUDIT].find_one({"_id": "marks"}) or {}
        marks: dict[str, dict[str, int]] = stored.get("topics", {})
        stops: dict[str, dict[str, int]] = stored.get("stops", {})
        epochs: dict[str, int] = stored.get("epochs", {})
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=f"{self.settings.db_prefix}.archive",  # to read its commits, never to join
            enable_auto_commit=False,
            **kafka_client_options(self.settings),
        )
        await consumer.start()
        try:
            todo, committed = await self._positions(consumer, marks, stops, report)
            grown = await self._read(consumer, todo, marks, epochs, report)
        finally:
            await consumer.stop()
        for topic in grown:  # what it read came from before a wipe: read it all again
            report.restarted.append(topic)
            marks[topic] = {}
        await self.store.db[AUDIT].update_one(
            {"_id": "marks"},
            {
                "$inc": {"healed_total": len(report.healed)},
                "$set": {
                    "topics": marks,
                    "stops": committed,
                    "epochs": epochs,
                    "last": {
                        "started_at": report.started_at,
                        "finished_at": self.clock(),
                        "read": report.read,
                        "healed": report.healed[-50:],
                        "restarted": report.restarted,
                    },
                },
            },
            upsert=True,
        )
        if report.healed:
            log.warning(
                "the archive's log lacked events on the topics: recorded them now",
                healed=len(report.healed),
                events=report.healed[:20],
            )
        return report

    async def _positions(
        self,
        consumer: AIOKafkaConsumer,
        marks: dict[str, dict[str, int]],
        stops: dict[str, dict[str, int]],
        report: AuditPass,
    ) -> tuple[dict[TopicPartition, int], dict[str, dict[str, int]]]:
        """Each partition to read, sought to where the audit stopped, with where to stop
        (what the group had committed at the last audit, if it still has); and what the
        group has committed now, where the next audit stops."""
        partitions = [
            TopicPartition(topic, p)
            for topic in (self.settings.topic(t) for t in ALL_TOPICS)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        committed_now: dict[str, dict[str, int]] = {}
        if not partitions:
            return {}, committed_now
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        todo: dict[TopicPartition, int] = {}
        for tp in partitions:
            committed = await consumer.committed(tp) or 0
            committed_now.setdefault(tp.topic, {})[str(tp.partition)] = committed
            mark = marks.get(tp.topic, {}).get(str(tp.partition), 0)
            if mark > committed:  # the group started over (a new broker, a rewind)
                report.restarted.append(f"{tp.topic}[{tp.partition}]")
                mark = 0
            mark = max(mark, starts[tp])
            marks.setdefault(tp.topic, {})[str(tp.partition)] = mark
            stop = min(stops.get(tp.topic, {}).get(str(tp.partition), 0), committed)
            if mark < stop:
                consumer.seek(tp, mark)
                todo[tp] = stop
            else:
                consumer.pause(tp)
        return todo, committed_now

    async def _read(
        self,
        consumer: AIOKafkaConsumer,
        todo: dict[TopicPartition, int],
        marks: dict[str, dict[str, int]],
        epochs: dict[str, int],
        report: AuditPass,
    ) -> set[str]:
        """Read up to the stops, healing batch by batch; the topics whose epoch grew."""
        grown: set[str] = set()
        while todo:
            fetched = await consumer.getmany(timeout_ms=2000, max_records=_READ_BATCH)
            if not fetched:
                break  # nothing more to read now: the rest waits for the next audit
            batch: list[tuple[Envelope, Delivery, str]] = []
            for tp, records in fetched.items():
                stop = todo.get(tp)
                if stop is None:
                    continue
                position = marks[tp.topic]
                for record in records:
                    if record.offset >= stop:
                        break
                    found = self._event(record.value or b"", tp.topic, record.headers)
                    if found is not None:
                        event, delivery, epoch = found
                        batch.append((event, delivery, tp.topic))
                        if epoch is not None:
                            if epoch > epochs.get(tp.topic, epoch):
                                grown.add(tp.topic)
                            epochs[tp.topic] = max(epoch, epochs.get(tp.topic, epoch))
                    position[str(tp.partition)] = record.offset + 1
                    report.read += 1
                if position[str(tp.partition)] >= stop:
                    del todo[tp]
                    consumer.pause(tp)
            await self._heal(batch, report)
        return grown

    def _event(
        self, raw: bytes, topic: str, headers: Any
    ) -> tuple[Envelope, Delivery, int | None] | None:
        """The event a record carries, as the consumer would accept it; None when the
        consumer would have refused it (and dead-lettered it then)."""
        given = {k: v.decode(errors="replace") for k, v in headers or ()}
        try:
            event = Envelope.from_json(raw)
        except (ValidationError, EventError, ValueError):
            return None
        delivery = checked_delivery(self.keys, self.settings, event, topic, given)
        if isinstance(delivery, str):
            return None
        return event, delivery, epoch_of(trusted_relay_values(self.keys, delivery, given))

    async def _heal(self, batch: list[tuple[Envelope, Delivery, str]], report: AuditPass) -> None:
        if not batch:
            return
        ids = list({str(event.event_id) for event, _, _ in batch})
        logged = {
            d["_id"] async for d in self.store.db[LOG].find({"_id": {"$in": ids}}, {"_id": 1})
        }
        missing = [(e, d, t) for e, d, t in batch if str(e.event_id) not in logged]
        if not missing:
            return

        async def work(uow: UnitOfWork) -> list[tuple[Envelope, Delivery, str]]:
            new = set(
                await uow.mark_all_processed(self.inbox, [str(e.event_id) for e, _, _ in missing])
            )
            todo = [(e, d, t) for e, d, t in missing if str(e.event_id) in new]
            # Marked in the inbox but not logged cannot be (they commit together); a racing
            # consumer that logged one meanwhile made its mark first.
            await self.views.record_all(uow, [(e, d) for e, d, _ in todo])
            return todo

        for event, _, topic in await self.store.transaction(work):
            HEALED.labels(topic).inc()
            report.healed.append(f"{event.event_type} {event.event_id}")


class AuditPassOut(BaseModel):
    started_at: datetime
    finished_at: datetime
    read: int = Field(description="records read on the topics in this pass")
    healed: list[str] = Field(description="the events it recorded (the last 50): type and id")
    restarted: list[str] = Field(description="topics read again from the start (a wipe)")


class AuditState(BaseModel):
    """What the archive's audit has checked and found."""

    interval_seconds: float
    last: AuditPassOut | None = Field(description="the last pass; none before the first")
    healed_total: int = Field(description="events recorded by the audit since the archive began")
    checked_up_to: dict[str, dict[str, int]] = Field(
        description="per topic and partition, the offset the audit has checked up to"
    )


def register_audit(router: APIRouter, db: Any, interval_seconds: float) -> None:
    @router.get(
        "/audit",
        response_model=AuditState,
        summary="What the audit of the log against the topics checked and healed (admin, analyst)",
    )
    async def audit_state(caller: CurrentCaller) -> AuditState:
        caller.require(Role.ADMIN, Role.ANALYST)
        if caller.is_partner:
            raise Forbidden("a partner's client may not read the archive's audit")
        doc: Document = await db[AUDIT].find_one({"_id": "marks"}) or {}
        last = doc.get("last")
        return AuditState(
            interval_seconds=interval_seconds,
            last=AuditPassOut.model_validate(last) if last else None,
            healed_total=int(doc.get("healed_total", 0)),
            checked_up_to=doc.get("topics", {}),
        )
