"""kill -9 under a stream of reports: single services, the database, the whole system.

The five services run as separate processes (`yuqing serve <name>` each, as the
distributed shape runs them) on a Tansu and a SecantusDB of this test's own (journaled,
synced on commit, as `yuqing up` runs it). Reports flow through intake's HTTP API the whole
time, a few clients posting as fast as they are answered, each retrying under its
Idempotency-Key when it gets no answer or a 503; every acceptance is recorded with its
report id. The duties' deadlines are seconds long, so that they pass, are missed and
escalate incidents while processes are being killed.

Injected, in an order drawn from a seeded generator (printed): 20 kills -9 of one service
chosen at random, at a random moment, each started again at once; 2 kills -9 of the
database under running services, started again on the same storage; then 3 kills -9 of
every service process at once, one of them with the database too, each restarted at once.
The broker is never killed (it keeps nothing: that is test_broker_wipe.py's fault).

Checked afterwards, waiting on conditions with a generous bound (the time each took is
printed): every report answered is readable from intake and its ReportReceived is in the
archive; every event every service stored is in the archive's log exactly once (by
event_id and by stream position); every consumer processed every event of its topics,
each group's committed offsets reach the broker's end (lag 0) and nothing was
dead-lettered; every duty a grading called for was opened once, counted from that grading,
none twice; every deadline passed was recorded missed once, at its true time, none twice,
and the notification's list says the same; the archive's read models equal a replay of
its log.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.archive.projections import LOG, PRODUCER_FAULTS, READ_MODELS
from services.cli import composition_root
from services.notification.bootstrap import NotificationParts
from services.notification.projections import OBLIGATIONS
from shared.bus import topic_ends
from shared.embedded import secantus_url
from shared.events import (
    DEAD_LETTER_TOPIC,
    DeadlineMissed,
    Envelope,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    ObligationOpened,
)
from shared.plan_rules import ObligationPolicy
from shared.service import Context, Dependencies, ServiceParts
from shared.settings import CONFIG_DIR, SERVICE_NAMES, Settings
from shared.store import EVENTS, INBOX, Document, EventStore, document_to_event
from tests.reliability.processes import Server, System, clean_env, database
from tests.reliability.processes import broker as kafka_broker
from tests.service.test_intake_service import report

pytestmark = pytest.mark.asyncio

SEED = 12
SINGLE_KILLS = 20
DATABASE_KILLS_ALONE = 2  # and one with the whole system: three kills of the database
SYSTEM_KILLS = 3
POSTERS = 3  # clients posting reports, together at most RATE a second
# Reports a second, all clients together: a storm the pipeline keeps up with between the
# faults (about half what it handles on a quiet machine), so that what is behind after
# them is what the faults caused, not a queue the stream outran the system with.
RATE = 2.0
# A fault comes at a random moment this long after the stream moved on from the last one.
PAUSE = (1.0, 6.0)
# Generous bounds for a loaded 2-core machine, not targets: the times are printed.
CAUGHT_UP_WITHIN = 300.0
ANSWERED_WITHIN = 120.0
# Duties due within seconds (the recurring ones keep their day): missed during the faults.
SHORT_DEADLINES = {1: ("10s", "20s"), 2: ("15s",), 3: ("15s",)}
SHORT = timedelta(minutes=5)  # a duty due sooner than this after it was counted from
MISSED_BY = timedelta(seconds=20)  # past its deadline this long, a duty must be missed
SECRET = "kills-secret-key-long-enough-for-hmac-sha256-signing"
BUS_SECRET = "kills-bus-secret-long-enough-for-hmac-sha256-signing"
CONSUMERS = ("grading", "notification", "statement", "archive")
GRADE_TYPES = ("IncidentGraded", "IncidentEscalated", "GradeOverridden")
MISHANDLING = "mishandling-deadline-missed"
# Characters for titles that read unlike each other (each opens an incident of its own).
POOL = "校路医院站区街村镇水电气桥车站馆园场厂店库河湖山林田港湾塔楼门"
# Media tiers a new report comes from, and a joining one (central escalates to level 1).
NEW_TIERS = (("county", 5), ("provincial", 3), ("central", 2))
JOIN_TIERS = (("county", 6), ("provincial", 3), ("central", 1))


def short_deadline_policy(tmp: Path) -> Path:
    """The shipped obligations with each level's one-off duties due within seconds."""
    policy = yaml.safe_load((CONFIG_DIR / "obligations.yaml").read_text(encoding="utf-8"))
    for level, withins in SHORT_DEADLINES.items():
        one_off = [e for e in policy["levels"][level] if "every" not in e]
        for entry, within in zip(one_off, withins, strict=True):
            entry.pop("same_day", None)
            entry["within"] = within
    shipped = CONFIG_DIR / (policy["delivery"].get("templates") or "templates/notification")
    policy["delivery"]["templates"] = str(shipped.resolve())
    path = tmp / "obligations.yaml"
    path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    return path


@dataclass
class Rig:
    """The system under test and what the test reads it with."""

    settings: Settings
    system: System
    db: Server
    kafka: Server
    client: AsyncMongoClient[Document]
    http: httpx.AsyncClient
    parts: dict[str, ServiceParts]
    tokens: dict[str, str]

    def database(self, name: str) -> AsyncDatabase[Document]:
        return self.client[self.settings.database_name(name)]

    def api(self, name: str, role: str = "admin") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.system[name].base_url,
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
            timeout=60.0,
        )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    with database(tmp_path) as db, kafka_broker(tmp_path) as kafka:
        yield db, kafka


@pytest.fixture
async def rig(servers: tuple[Server, Server], tmp_path: Path) -> AsyncIterator[Rig]:
    db, kafka = servers
    run = uuid.uuid4().hex[:8]
    mongo = secantus_url(db.port)
    policy = short_deadline_policy(tmp_path)
    env = clean_env()
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka.port}",
        MONGODB_URL=mongo,
        YUQING_DB_PREFIX=f"k{run}",
        YUQING_TOPIC_PREFIX=f"k{run}.",
        YUQING_TOPIC_PARTITIONS="2",
        YUQING_DATA_DIR=str(tmp_path / "data"),
        YUQING_LOG_FORMAT="json",
        YUQING_SECRET=SECRET,
        YUQING_BUS_SECRET=BUS_SECRET,
        YUQING_RATE_LIMIT="1000000/minute",
        YUQING_OBLIGATIONS_POLICY_PATH=str(policy),
        YUQING_OUTBOX_POLL_SECONDS="0.1",
        YUQING_OUTBOX_CHECK_SECONDS="2",
        YUQING_DEADLINE_POLL_SECONDS="0.5",
        YUQING_CONSUMER_RETRY_MAX_SECONDS="1",
        # The group waits this long for a killed member before it hands on its partitions.
        YUQING_KAFKA_SESSION_TIMEOUT_SECONDS="6",
        # A loaded shared machine: a transaction may take longer than production's 5 s.
        YUQING_MONGODB_TRANSACTION_TIMEOUT_SECONDS="15",
    )
    settings = Settings(
        kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        mongodb_url=mongo,
        db_prefix=env["YUQING_DB_PREFIX"],
        topic_prefix=env["YUQING_TOPIC_PREFIX"],
        topic_partitions=2,
        data_dir=tmp_path / "data",
        secret=SECRET,
        bus_secret=BUS_SECRET,
        obligations_policy_path=policy,
    )
    ctx = Context.from_settings(settings)
    tokens = {
        "monitor": ctx.tokens.issue("monitor-chen", "school-a", ["monitor"]),
        "admin": ctx.tokens.issue("admin", "county", ["admin"]),
    }
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo, tz_aware=True)
    # Each service's parts, as its process builds them: what it consumes and handles, and
    # notification's duty policy (nothing of them runs here).
    parts = {
        name: composition_root(name)(
            Dependencies(
                settings,
                ctx.directory,
                ctx.catalogue,
                EventStore.on(client, settings.database_name(name), name),
            )
        )
        for name in SERVICE_NAMES
    }
    system = System.of(env, tmp_path / "logs")
    async with httpx.AsyncClient() as http:
        system.start()
        try:
            took = await system.wait_serving(http)
            print(f"\nstarted: five `yuqing serve` processes, serving after {took:.1f} s")
            yield Rig(settings, system, db, kafka, client, http, parts, tokens)
        finally:
            await asyncio.to_thread(system.stop)
            await client.close()


def title(rng: random.Random) -> str:
    return "".join(rng.choice(POOL) for _ in range(14)) + "问题引发网民关注"


def tier(rng: random.Random, tiers: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([t for t, _ in tiers], [w for _, w in tiers])[0]


@dataclass
class Stream:
    """Clients filing reports through intake's API at RATE a second together (each waits
    for its answer, and a report not answered is tried again beside the next ones)."""

    api: httpx.AsyncClient
    rng: random.Random
    accepted: dict[str, tuple[str, int]] = field(default_factory=dict)  # report -> incident
    opened: list[str] = field(default_factory=list)  # the URLs of the incidents opened
    refused: list[str] = field(default_factory=list)
    retried: Counter[str] = field(default_factory=Counter)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)
    _next_at: float = 0.0  # when the next report is due (a shared pace)

    def start(self, posters: int) -> None:
        self._tasks = [asyncio.create_task(self._post_on()) for _ in range(posters)]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self._tasks)
        # Reports still unanswered are tried until they are (or the bound runs out).
        await asyncio.gather(*self._pending)

    async def _post_on(self) -> None:
        while not self.stopping.is_set():
            now = time.monotonic()
            self._next_at = max(self._next_at, now) + 1.0 / RATE
            await asyncio.sleep(self._next_at - 1.0 / RATE - now)
            await self.post_one()

    async def post_one(self) -> None:
        if not self.opened or self.rng.random() < 0.3:
            url = f"https://news.example.com/kills/{uuid.uuid4().hex}.html"
            media_tier = tier(self.rng, NEW_TIERS)
        else:
            url = self.rng.choice(self.opened)
            media_tier = tier(self.rng, JOIN_TIERS)
        body = report(
            url=url,
            title=title(self.rng),
            excerpt="",
            media_tier=media_tier,
            reach={"views": 50, "reposts": 1, "comments": 1, "likes": 1},
        )
        key = uuid.uuid4().hex
        if await self.attempt(body, key):
            return
        if len(self._pending) >= len(self._tasks):
            await self.retry(body, key)  # as many set aside as there are clients: wait
            return
        # As a client with a queue does: this one is tried again beside the next ones
        # (a write held by the killed process's open transaction waits for the server to
        # drop it), under the same Idempotency-Key.
        task = asyncio.create_task(self.retry(body, key))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def attempt(self, body: dict[str, Any], key: str) -> bool:
        """One try: False when it got no answer (intake killed), a 503 (the database) or a
        409 saying the record stayed busy."""
        try:
            resp = await self.api.post(
                "/intake/v1/reports", json=body, headers={"Idempotency-Key": key}
            )
        except httpx.TransportError:
            self.retried["no answer"] += 1
            return False
        if resp.status_code in (502, 503):
            self.retried[str(resp.status_code)] += 1
            return False
        if resp.status_code == 409 and _code(resp) == "conflict_retry_exhausted":
            # "Try again", as the API says: the record was busy for the whole budget (the
            # killed process's open transaction holds a document until the server drops it).
            self.retried["409 busy"] += 1
            return False
        if resp.headers.get("Idempotent-Replayed") == "true":
            self.retried["replayed"] += 1  # stored before the kill, answered after it
        if resp.status_code not in (200, 201):
            self.refused.append(f"{resp.status_code} {resp.text[:300]}")
            return True
        answer = resp.json()
        self.accepted[answer["report_id"]] = (answer["incident_id"], resp.status_code)
        if resp.status_code == 201:
            self.opened.append(body["url"])
        return True

    async def retry(self, body: dict[str, Any], key: str) -> None:
        started = time.monotonic()
        while time.monotonic() - started < ANSWERED_WITHIN:
            await asyncio.sleep(0.5)
            if await self.attempt(body, key):
                return
        self.refused.append(f"no answer within {ANSWERED_WITHIN}s for key {key}")

    async def moved_on(self, since: int, by: int = 3) -> None:
        """Wait until `by` more reports were accepted after `since` (the stream flows)."""
        started = time.monotonic()
        while len(self.accepted) < since + by:
            assert time.monotonic() - started < ANSWERED_WITHIN, (
                f"the stream stalled at {len(self.accepted)} accepted; refused: {self.refused[:3]}"
            )
            await asyncio.sleep(0.1)


def fault_plan(rng: random.Random) -> list[tuple[str, str]]:
    plan = [("service", rng.choice(SERVICE_NAMES)) for _ in range(SINGLE_KILLS)]
    for _ in range(DATABASE_KILLS_ALONE):
        plan.insert(rng.randint(1, len(plan)), ("database", ""))
    with_db = rng.randrange(SYSTEM_KILLS)
    plan += [("system", "database" if n == with_db else "") for n in range(SYSTEM_KILLS)]
    return plan


async def inject(rig: Rig, stream: Stream, rng: random.Random) -> Counter[str]:
    plan = fault_plan(rng)
    print(f"fault plan (seed {SEED}): " + ", ".join(f"{k}{':' + v if v else ''}" for k, v in plan))
    done: Counter[str] = Counter()
    begun = time.monotonic()
    for n, (kind, what) in enumerate(plan, start=1):
        await stream.moved_on(len(stream.accepted))
        if kind == "service":
            victim = rig.system[what]
            await victim.wait_serving(rig.http)  # killed while it works, not while it starts
        else:
            await rig.system.wait_serving(rig.http)
        await asyncio.sleep(rng.uniform(*PAUSE))  # the random moment of the fault
        at = time.monotonic() - begun
        at_utc = f"{datetime.now(UTC):%H:%M:%S}"
        if kind == "service":
            pid = victim.pid
            victim.kill()
            victim.start()
            done["single service"] += 1
            print(
                f"injected {n:2}: {at_utc} UTC, t={at:5.1f}s kill -9 {what} (pid {pid}), "
                f"started again at once; {len(stream.accepted)} reports accepted so far"
            )
        elif kind == "database":
            pid = rig.db.pid
            rig.db.kill()
            down = time.monotonic()
            await asyncio.to_thread(rig.db.start)
            done["database"] += 1
            print(
                f"injected {n:2}: {at_utc} UTC, t={at:5.1f}s kill -9 the database (pid {pid}) "
                f"under running services, up again on the same storage after "
                f"{time.monotonic() - down:.1f} s; {len(stream.accepted)} accepted so far"
            )
        else:
            rig.system.kill()
            if what:
                rig.db.kill()
                await asyncio.to_thread(rig.db.start)
                done["database"] += 1
            rig.system.start()
            done["whole system"] += 1
            took = await rig.system.wait_serving(rig.http)
            print(
                f"injected {n:2}: {at_utc} UTC, t={at:5.1f}s kill -9 of all five services"
                f"{' and the database' if what else ''}, all started again at once, serving "
                f"after {took:.1f} s; {len(stream.accepted)} accepted so far"
            )
    await rig.system.wait_serving(rig.http)
    await stream.moved_on(len(stream.accepted), by=10)
    return done


async def stored_events(rig: Rig) -> dict[str, list[Envelope]]:
    """Every event each service's store holds, in store order."""
    found: dict[str, list[Envelope]] = {}
    for name in SERVICE_NAMES:
        cursor = rig.database(name)[EVENTS].find({}, sort=[("seq", 1)])
        found[name] = [document_to_event(d) async for d in cursor]
    return found


async def in_the_log_once(rig: Rig, stored: dict[str, list[Envelope]], bad: list[str]) -> str:
    archive = rig.database("archive")
    fields = {"topic": 1, "stream_id": 1, "stream_version": 1, "event_type": 1}
    docs = [d async for d in archive[LOG].find({}, fields)]
    logged = Counter(d["_id"] for d in docs)
    positions = Counter((d["topic"], d["stream_id"], d["stream_version"]) for d in docs)
    events = [e for es in stored.values() for e in es]
    ids = {str(e.event_id) for e in events}
    for event in events:
        if str(event.event_id) not in logged:
            bad.append(f"not in the archive's log: {event.event_type} {event.event_id}")
    bad += [f"logged twice at {p}" for p, n in positions.items() if n > 1]
    bad += [f"in the log, stored nowhere: {i}" for i in logged if i not in ids]
    faults = await archive[PRODUCER_FAULTS].count_documents({})
    if faults:
        bad.append(f"{faults} producer faults recorded (a stream position sent twice)")
    by_service = {name: len(es) for name, es in stored.items()}
    return (
        f"all {len(events)} stored events {by_service} in the archive's log exactly once "
        f"(by event_id and by stream position), {faults} producer faults"
    )


async def reports_archived(
    rig: Rig, stream: Stream, stored: dict[str, list[Envelope]], bad: list[str]
) -> str:
    cursor = rig.database("archive")[LOG].find(
        {"event_type": "ReportReceived"}, {"envelope.payload.report_id": 1}
    )
    archived = {d["envelope"]["payload"]["report_id"] async for d in cursor}
    bad += [f"report {r} answered, not archived" for r in stream.accepted if r not in archived]
    return f"all {len(stream.accepted)} reports answered have their ReportReceived in the archive"


async def processed_by_every_consumer(
    rig: Rig, stored: dict[str, list[Envelope]], bad: list[str]
) -> str:
    counts = {}
    for name in CONSUMERS:
        parts = rig.parts[name]
        handled = {
            f"{name}-consumer:{e.event_id}": e
            for es in stored.values()
            for e in es
            if e.topic in parts.consumes and parts.handlers.handler_for(e)
        }
        expected = list(handled)
        inbox = rig.database(name)[INBOX]
        marks = {d["_id"] async for d in inbox.find({"_id": {"$in": expected}}, {"_id": 1})}
        missing = [handled[key] for key in expected if key not in marks]
        bad += [
            f"{name} never processed {e.event_type} {e.event_id} of {e.topic} "
            f"(occurred {e.occurred_at:%H:%M:%S.%f})"
            for e in missing[:20]
        ]
        if len(missing) > 20:
            bad.append(f"{name}: {len(missing) - 20} more not processed")
        counts[name] = len(expected)
    return f"every consumer processed every event of its topics it handles {counts}"


async def no_lag(rig: Rig, stored: dict[str, list[Envelope]], bad: list[str]) -> str:
    """Each group's committed offsets against the broker's ends, read as the services read
    their own lag (OffsetFetch through a consumer of the group that does not join it)."""
    settings = rig.settings
    lags: dict[str, int] = {}
    for name in CONSUMERS:
        topics = [settings.topic(t) for t in rig.parts[name].consumes]
        ends = await topic_ends(settings, topics)
        reader = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.db_prefix}.{name}",
            enable_auto_commit=False,
        )
        await reader.start()
        try:
            lag = 0
            for topic, partitions in ends.items():
                for partition, end in partitions.items():
                    committed = await reader.committed(TopicPartition(topic, partition))
                    lag += max(end - (committed or 0), 0)
        finally:
            await reader.stop()
        lags[name] = lag
        if lag:
            bad.append(f"{name}'s group is {lag} messages behind the broker")
    dead = await topic_ends(settings, [settings.topic(DEAD_LETTER_TOPIC)])
    dead_letters = sum(dead[settings.topic(DEAD_LETTER_TOPIC)].values())
    if dead_letters:
        bad.append(f"{dead_letters} messages dead-lettered (a fault is transient, not poison)")
    return f"each group's lag is 0 {lags}; {dead_letters} dead-lettered"


def stored_time(at: datetime) -> datetime:
    """A time as MongoDB keeps it: to the millisecond."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def duty_policy(rig: Rig) -> tuple[ObligationPolicy, ZoneInfo]:
    parts = rig.parts["notification"]
    assert isinstance(parts, NotificationParts)
    return parts.policy, ZoneInfo(rig.settings.timezone)


async def duties_once(rig: Rig, stored: dict[str, list[Envelope]], bad: list[str]) -> str:
    """Each duty a grading calls for opened once, counted from that grading (an escalation
    opens the new level's duties not already owed); each deadline passed missed once, at
    its true time; the notification's list of duties as its events say."""
    policy, tz = duty_policy(rig)
    expected: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    for event in stored["grading"]:
        p = event.payload
        if isinstance(p, IncidentGraded):
            level, upwards = p.level, True
        elif isinstance(p, IncidentEscalated | GradeOverridden):
            level, upwards = p.to_level, p.to_level < p.from_level
        else:
            continue
        for rule in policy.rules_for(level if upwards else None, p.category):
            key = (event.incident_id, rule.kind)
            if key not in expected:
                counted_from = event.occurred_at
                expected[key] = (counted_from, rule.deadline(counted_from, tz))
    opened: dict[tuple[str, str], list[Envelope]] = defaultdict(list)
    missed: dict[str, list[Envelope]] = defaultdict(list)
    for event in stored["notification"]:
        if isinstance(event.payload, ObligationOpened):
            opened[(event.incident_id, event.payload.kind)].append(event)
        elif isinstance(event.payload, DeadlineMissed):
            missed[event.payload.obligation_id].append(event)
    for key, (counted_from, deadline) in expected.items():
        found = opened.get(key, [])
        if not found:
            bad.append(f"duty lost: {key} called for by the grading of {counted_from}")
            continue
        if len(found) > 1:
            bad.append(f"duty opened {len(found)} times: {key}")
        duty = found[0].payload
        assert isinstance(duty, ObligationOpened)
        if (duty.counted_from, duty.deadline) != (counted_from, deadline):
            bad.append(
                f"duty {key} counted from {duty.counted_from} due {duty.deadline}, "
                f"not from the grading's {counted_from} due {deadline}"
            )
    bad += [f"duty opened that no grading called for: {k}" for k in opened if k not in expected]
    now = datetime.now(tz)
    rows = {d["_id"]: d async for d in rig.database("notification")[OBLIGATIONS].find({})}
    duties = [e for es in opened.values() for e in es]
    for event in duties:
        duty = event.payload
        assert isinstance(duty, ObligationOpened)
        misses = missed.get(duty.obligation_id, [])
        if len(misses) > 1:
            bad.append(f"deadline recorded missed {len(misses)} times: {duty.obligation_id}")
        for miss in misses:
            p = miss.payload
            assert isinstance(p, DeadlineMissed)
            if not (p.deadline == miss.occurred_at == duty.deadline):
                bad.append(f"miss of {duty.obligation_id} at {miss.occurred_at}, due {p.deadline}")
        if duty.deadline - duty.counted_from < SHORT and not misses:
            bad.append(f"{duty.kind} of {event.incident_id} due {duty.deadline} never missed")
        elif duty.deadline > now and misses:
            bad.append(f"duty {duty.obligation_id} missed before its deadline {duty.deadline}")
        row = rows.get(duty.obligation_id)
        state = "missed" if misses else "open"
        if row is None or (row["state"], row["deadline"]) != (state, stored_time(duty.deadline)):
            listed = row and (row["state"], row["deadline"])
            bad.append(f"the list of duties says {listed} of {duty.obligation_id}, not {state}")
    bad += [
        f"a listed duty no event opened: {o}"
        for o in set(rows)
        - {e.payload.obligation_id for e in duties if isinstance(e.payload, ObligationOpened)}
    ]
    # A miss at the incident's level escalates it once, dated from the miss.
    escalations = Counter(
        e.causation_id
        for e in stored["grading"]
        if isinstance(e.payload, IncidentEscalated)
        and any(r.rule_id == MISHANDLING for r in e.payload.rules_fired)
    )
    bad += [f"one miss escalated {n} times ({c})" for c, n in escalations.items() if n > 1]
    all_misses = sum(len(m) for m in missed.values())
    return (
        f"{len(expected)} duties called for by {len({k[0] for k in expected})} incidents' "
        f"gradings, each opened once from its grading; {all_misses} deadlines passed, each "
        f"recorded missed once at its true time ({sum(escalations.values())} escalations "
        f"for a miss, none twice); the list of {len(rows)} duties agrees"
    )


CHECKS = ("log", "reports archived", "consumers processed", "no lag", "duties")


async def settled(rig: Rig, stream: Stream) -> tuple[float, list[str]]:
    """Wait until every check holds in one reading of the stores; their figures, each with
    when it last failed (the consumers catch up before the last deadlines have passed)."""
    started = time.monotonic()
    last_bad = dict.fromkeys(CHECKS, 0.0)
    while True:
        stored = await stored_events(rig)
        bad: list[str] = []
        figures = []
        took = time.monotonic() - started
        for name, check in zip(
            CHECKS,
            (
                in_the_log_once(rig, stored, bad),
                reports_archived(rig, stream, stored, bad),
                processed_by_every_consumer(rig, stored, bad),
                no_lag(rig, stored, bad),
                duties_once(rig, stored, bad),
            ),
            strict=True,
        ):
            before = len(bad)
            figures.append(await check)
            if len(bad) > before:
                last_bad[name] = took
        if not bad:
            return took, [
                f"{figure} (held from {last_bad[name]:.1f} s)"
                for name, figure in zip(CHECKS, figures, strict=True)
            ]
        if took > CAUGHT_UP_WITHIN:
            kinds = Counter(" ".join(b.split()[:3]) for b in bad)
            logs = "\n".join(f"--- {s.name}:\n{s.tail(15)}" for s in rig.system.services.values())
            raise AssertionError(
                f"not caught up within {CAUGHT_UP_WITHIN}s: {dict(kinds)}\n{bad[:10]}\n{logs}"
            )
        await asyncio.sleep(1.0)


async def caught_up_with(
    rig: Rig, snapshot: dict[str, list[Envelope]], stopped: float
) -> tuple[float, str]:
    """How long until every event stored when the stream stopped is in the archive's log
    and processed by every consumer of its topic: the catching up with what the faults left
    behind, apart from the new work deadlines passing later bring (they go on for tens of
    seconds after the last report: the test's duties are due seconds after each grading)."""
    ids = [str(e.event_id) for es in snapshot.values() for e in es]
    while True:
        bad: list[str] = []
        logged = {
            d["_id"]
            async for d in rig.database("archive")[LOG].find({"_id": {"$in": ids}}, {"_id": 1})
        }
        bad += [f"not in the archive's log: {i}" for i in ids if i not in logged]
        figure = await processed_by_every_consumer(rig, snapshot, bad)
        took = time.monotonic() - stopped
        if not bad:
            return took, f"all {len(ids)} events stored at the stop in the archive; {figure}"
        if took > CAUGHT_UP_WITHIN:
            raise AssertionError(f"not caught up within {CAUGHT_UP_WITHIN}s: {bad[:10]}")
        await asyncio.sleep(0.5)


async def readable(rig: Rig, stream: Stream) -> tuple[float, int]:
    """Every report answered, read back from intake (after the faults, at once)."""
    started = time.monotonic()
    gate = asyncio.Semaphore(8)
    async with rig.api("intake", "monitor") as api:

        async def status(report_id: str) -> tuple[str, int, str]:
            async with gate:
                resp = await api.get(f"/intake/v1/reports/{report_id}")
                incident = resp.json().get("incident_id", "") if resp.status_code == 200 else ""
                return report_id, resp.status_code, incident

        found = await asyncio.gather(*(status(r) for r in stream.accepted))
    lost = [f"{r}: {code}" for r, code, _ in found if code != 200]
    assert lost == [], f"{len(lost)} reports answered are not readable: {lost[:10]}"
    moved = [r for r, _, incident in found if incident != stream.accepted[r][0]]
    assert moved == [], f"reports read back in another incident: {moved[:10]}"
    return time.monotonic() - started, len(found)


def _code(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


async def replay_equals_live(rig: Rig) -> str:
    """The archive's read models equal a fold of its log: a replay into fresh collections
    gives the same documents as the live ones (each folded from the same last_seq)."""
    archive = rig.database("archive")
    async with rig.api("archive") as api:
        for attempt in range(1, 4):
            pointer = await archive[READ_MODELS].find_one({"_id": "current"})
            assert pointer is not None
            live = {
                name: {d["_id"]: d async for d in archive[pointer[name]].find({})}
                for name in ("incidents", "incident_rows", "cases")
            }
            started = await api.post("/archive/v1/replay")
            assert started.status_code == 202, started.text
            job_url = f"/archive/v1/replay/{started.json()['job_id']}"
            began = time.monotonic()
            while (job := (await api.get(job_url)).json())["state"] == "running":
                assert time.monotonic() - began < CAUGHT_UP_WITHIN, f"replay stuck: {job}"
                await asyncio.sleep(0.5)
            assert (job["state"], job["processed"]) == ("completed", job["total"]), job
            moved = 0
            for name, documents in live.items():
                fresh = job["collections"][name]
                rebuilt = {d["_id"]: d async for d in archive[fresh].find({})}
                assert set(rebuilt) == set(documents), (name, set(rebuilt) ^ set(documents))
                for key, document in documents.items():
                    if rebuilt[key].get("last_seq") != document.get("last_seq"):
                        moved += 1  # folded from more of the log than the live one read
                    else:
                        assert rebuilt[key] == document, (name, key)
            if not moved:
                return (
                    f"the archive's {len(live['incidents'])} incident views, their list rows "
                    f"and {len(live['cases'])} cases equal a replay of its log "
                    f"({job['processed']} incidents replayed, attempt {attempt})"
                )
    raise AssertionError(f"the log never held still through a replay ({moved} moved)")


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_kills_of_services_the_database_and_the_whole_system_lose_and_double_nothing(
    rig: Rig,
) -> None:
    begun = time.monotonic()
    rng = random.Random(SEED)
    async with rig.api("intake", "monitor") as api:
        stream = Stream(api, random.Random(SEED + 1))
        stream.start(POSTERS)
        try:
            done = await inject(rig, stream, rng)
        finally:
            await stream.stop()
    stopped = time.monotonic()
    at_the_stop = await stored_events(rig)
    faults = time.monotonic() - begun
    print(
        f"injected: {done['single service']} kills -9 of single services, "
        f"{done['whole system']} of the whole system, {done['database']} of the database, "
        f"in {faults:.0f} s"
    )
    print(
        f"stream: {len(stream.accepted)} reports answered "
        f"({sum(1 for _, s in stream.accepted.values() if s == 201)} opening an incident), "
        f"retried {dict(stream.retried)}, refused {len(stream.refused)}"
    )
    assert stream.refused == [], stream.refused[:5]
    assert done == {
        "single service": SINGLE_KILLS,
        "whole system": SYSTEM_KILLS,
        "database": DATABASE_KILLS_ALONE + 1,
    }

    took, count = await readable(rig, stream)
    print(f"checked: all {count} reports answered are readable from intake ({took:.1f} s)")
    took, figure = await caught_up_with(rig, at_the_stop, stopped)
    print(f"checked: caught up with the stop {took:.1f} s after the stream stopped: {figure}")
    took, figures = await settled(rig, stream)
    print(f"checked: caught up {took:.1f} s after the stream stopped:")
    for figure in figures:
        print(f"  {figure}")
    print(f"checked: {await replay_equals_live(rig)}")
    print(f"runtime: {time.monotonic() - begun:.0f} s")
