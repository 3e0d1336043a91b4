"""The broker is wiped under the distributed shape: each service finds out by itself.

The five services run as separate in-process runners, one gateway each (as one
`yuqing serve <name>` per process), each with its own broker connection, relay and
consumer group, on the session's database and on a Tansu of this test's own. More than
2,000 events are stored (a history of incidents opened and resolved, appended through
intake's store, and reports filed through the API) and relayed while the archive is not
running; notification is stopped before the last reports. Then the broker is stopped and
started fresh on the same port, keeping nothing. No process is told: intake, grading and
statement, still running, find it through their relay (a send numbered below its mark,
or the periodic check of the broker's end offsets); notification and the archive find it
as they start. Every event stored before reaches every consumer of its topic that
handles it (the archive's log holds each once, by id and by stream position), and a
report filed right after the restart reaches the archive graded, with its obligations
(the time it took is printed: here it includes the archive's first pass over the whole
history, which it had never seen).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.archive.projections import LOG
from services.cli import composition_root
from shared.embedded import ChildServer, free_port, tansu_server
from shared.events import Envelope
from shared.gateway import Gateway
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from shared.store import EVENTS, INBOX, Document, UnitOfWork, document_to_event
from tests.conftest import Infra
from tests.service.test_intake_service import report
from tests.service.upstream_events import opened, resolved

pytestmark = pytest.mark.asyncio

SERVICES = ("intake", "grading", "notification", "statement", "archive")
START_TIMEOUT = 60.0
CAUGHT_UP_WITHIN = 480.0  # generous: a bound on a loaded 2-core machine, not a target
STORED_AT_LEAST = 2000
HISTORY_INCIDENTS = 1000  # two events each
# Characters for titles that read unlike each other (each opens an incident of its own).
POOL = "校路医院站区街村镇水电气桥车站馆园场厂店库河湖山林田港湾塔楼门"


@dataclass
class Broker:
    """A Tansu of this test's own on a fixed port: it keeps nothing when stopped."""

    port: int
    logs: Path
    server: ChildServer | None = None

    def start(self) -> None:
        self.server = tansu_server(self.port, self.logs)
        self.server.start(START_TIMEOUT)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass
class Shape:
    """One gateway per service, each started and stopped on its own."""

    settings: Settings
    client: AsyncMongoClient[Document]
    gateways: dict[str, Gateway] = field(default_factory=dict)

    def db(self, name: str) -> AsyncDatabase[Document]:
        """A service's database, read as the test reads it (whether the service runs or not)."""
        return self.client[self.settings.database_name(name)]

    async def start(self, name: str) -> None:
        runner = ServiceRunner.connect(
            name, composition_root(name), Context.from_settings(self.settings)
        )
        gateway = Gateway([runner], self.settings)
        await gateway.start()
        self.gateways[name] = gateway

    async def stop(self, name: str) -> None:
        await self.gateways.pop(name).stop()

    def runner(self, name: str) -> ServiceRunner[Any]:
        return self.gateways[name].services[0]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(free_port(), tmp_path / "logs")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def shape(infra: Infra, broker: Broker, tmp_path: Path) -> AsyncIterator[Shape]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{broker.port}",
        mongodb_url=infra.mongo,
        db_prefix=f"w{run}",
        topic_prefix=f"w{run}.",
        topic_partitions=2,
        data_dir=tmp_path,
        secret="wipe-secret-key-long-enough-for-hs256-signing",
        outbox_poll_seconds=0.1,
        outbox_check_seconds=1.0,
        consumer_retry_max_seconds=1.0,
        kafka_session_timeout_seconds=6.0,
        rate_limit="1000000/minute",
        # A loaded shared machine: a transaction may take longer than the 5 s of production.
        mongodb_transaction_timeout_seconds=30.0,
    )
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo, tz_aware=True)
    running = Shape(settings, client)
    try:
        yield running
    finally:
        for name in list(running.gateways):
            await running.stop(name)
        await client.close()


def title(rng: random.Random) -> str:
    return "".join(rng.choice(POOL) for _ in range(14)) + "问题引发网民关注"


async def post_report(api: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    """File a report as a client does: a 503 (a database slower than the transaction budget
    on a loaded machine) is tried again under the same Idempotency-Key."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    for _ in range(10):
        resp = await api.post("/intake/v1/reports", json=body, headers=key)
        if resp.status_code != 503:
            break
    assert resp.status_code in (200, 201), resp.text
    return resp


async def file_reports(
    api: httpx.AsyncClient, rng: random.Random, incidents: int, joined: int
) -> list[str]:
    """`incidents` reports opening an incident each, and `joined` more about them (the same
    URL), filed a few at a time; returns the incidents opened."""
    opened: list[tuple[str, str]] = []
    gate = asyncio.Semaphore(4)

    async def post(body: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            return (await post_report(api, body)).json()  # type: ignore[no-any-return]

    async def open_one(n: int) -> None:
        url = f"https://news.example.com/wipe/{uuid.uuid4().hex}.html"
        answer = await post(report(url=url, title=title(rng), excerpt=""))
        opened.append((answer["incident_id"], url))

    await asyncio.gather(*(open_one(n) for n in range(incidents)))
    urls = [url for _, url in opened]
    await asyncio.gather(
        *(post(report(url=rng.choice(urls), title=title(rng), excerpt="")) for _ in range(joined))
    )
    return [incident for incident, _ in opened]


async def seed_history(intake: ServiceRunner[Any], incidents: int) -> None:
    """`incidents` incidents opened and resolved, appended in intake's store 25 a time."""
    ids = [f"inc-h{n:05d}" for n in range(incidents)]
    for start in range(0, incidents, 25):

        async def work(uow: UnitOfWork, batch: list[str] = ids[start : start + 25]) -> None:
            for incident in batch:
                await uow.append([opened(incident), resolved(incident)], 0)

        await intake.store.transaction(work)


async def stored(shape: Shape) -> dict[str, list[Envelope]]:
    """Every event each service's store holds, in store order."""
    found = {}
    for name in SERVICES:
        db = shape.db(name)
        found[name] = [document_to_event(d) async for d in db[EVENTS].find({}, sort=[("seq", 1)])]
    return found


async def missing_anywhere(shape: Shape, events: dict[str, list[Envelope]]) -> list[str]:
    """What a consumer has not processed, or the archive's log does not hold exactly once."""
    missing: list[str] = []
    archive = shape.db("archive")
    # Once: by event_id (the log's key) and by stream position (a second copy of one).
    docs = [d async for d in archive[LOG].find({}, {"stream_id": 1, "stream_version": 1})]
    logged = {d["_id"] for d in docs}
    positions = Counter((d["stream_id"], d["stream_version"]) for d in docs)
    for event in (e for es in events.values() for e in es):
        if str(event.event_id) not in logged:
            missing.append(f"not in the archive's log: {event.event_type} {event.event_id}")
        if positions[(event.stream_id, event.stream_version)] > 1:
            missing.append(f"logged twice: {event.stream_id} v{event.stream_version}")
    for name in SERVICES:
        runner = shape.runner(name)
        expected = [
            f"{name}-consumer:{e.event_id}"
            for es in events.values()
            for e in es
            if e.topic in runner.parts.consumes and runner.parts.handlers.handler_for(e)
        ]
        marks = {d["_id"] async for d in shape.db(name)[INBOX].find({"_id": {"$in": expected}})}
        missing += [f"{name} never processed {key}" for key in expected if key not in marks]
    return missing


async def wait_for(what: str, check: Any, within: float = CAUGHT_UP_WITHIN) -> float:
    started = time.monotonic()
    while True:
        last = await check()
        if not last:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"{what}: still {last[:5]} (+{len(last)})"
        await asyncio.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_each_process_finds_a_broker_wipe_and_sends_what_the_broker_lost(
    shape: Shape, broker: Broker
) -> None:
    rng = random.Random(12)
    # The archive is not running before the wipe (a consumer that has all the history
    # to catch up with); the others are.
    for name in ("intake", "grading", "notification", "statement"):
        await shape.start(name)
    ctx = shape.runner("intake").ctx
    monitor = ctx.tokens.issue("monitor-chen", "school-a", ["monitor"])
    admin = {"Authorization": f"Bearer {ctx.tokens.issue('admin', 'county', ['admin'])}"}
    intake = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=shape.gateways["intake"]),
        base_url="http://test",
        headers={"Authorization": f"Bearer {monitor}"},
        timeout=60.0,
    )
    async with intake:
        # A long history: incidents opened and resolved long ago, stored through intake's
        # store (its write path, many streams a transaction), then some filed as reports.
        await seed_history(shape.runner("intake"), HISTORY_INCIDENTS)
        await file_reports(intake, rng, incidents=8, joined=16)
        await wait_for("the outboxes empty", lambda: unsent(shape))
        await shape.stop("notification")
        late = await file_reports(intake, rng, incidents=4, joined=4)
        await wait_for("the outboxes empty", lambda: unsent(shape))
        before = await stored(shape)
        counts = {name: len(es) for name, es in before.items()}
        print(f"stored before the wipe: {sum(counts.values())} events {counts}")
        print(
            f"  the archive never started, notification stopped before {len(late)} of the "
            f"incidents: what they have not processed is only in the stores"
        )
        assert sum(counts.values()) >= STORED_AT_LEAST

        broker.stop()
        broker.start()
        wiped_at = time.monotonic()
        print(f"injected: the broker stopped and started fresh on port {broker.port}")
        await shape.start("notification")
        await shape.start("archive")

        fresh = report(
            url=f"https://news.example.com/wipe/after-{uuid.uuid4().hex}.html", title=title(rng)
        )
        resp = await post_report(intake, fresh)
        assert resp.json()["new_incident"] is True, resp.text
        incident_id = resp.json()["incident_id"]

    archive = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=shape.gateways["archive"]),
        base_url="http://test",
        headers=admin,
        timeout=60.0,
    )
    async with archive:

        async def not_graded() -> list[str]:
            resp = await archive.get(f"/archive/v1/incidents/{incident_id}")
            view = resp.json() if resp.status_code == 200 else {}
            return [] if view.get("level") and view.get("obligations") else [str(view)[:200]]

        took = await wait_for("the report filed after the wipe graded in the archive", not_graded)
        print(
            f"checked: the report filed right after the restart is in the archive graded "
            f"with its obligations {took:.1f} s after it was filed "
            f"({time.monotonic() - wiped_at:.1f} s after the restart)"
        )
    await wait_for("every stored event everywhere", lambda: missing_anywhere(shape, before))
    print(
        f"checked: all {sum(counts.values())} events stored before the wipe processed by "
        f"every consumer of their topic and in the archive's log exactly once, "
        f"{time.monotonic() - wiped_at:.1f} s after the restart"
    )
    requeued = {name: shape.runner(name).relay.requeued for name in SERVICES}
    print(f"checked: each service found the wipe itself and sent again {requeued}")
    for name, events in before.items():
        if events:
            assert requeued[name] >= len(events), f"{name} did not send its events again"


async def unsent(shape: Shape) -> list[str]:
    return [name for name in shape.gateways if await shape.runner(name).store.count_unpublished()]


async def not_yet_seen_processed(shape: Shape) -> list[str]:
    """The topics whose relay has not yet seen every consumer group past all it holds."""
    from shared.bus import RELAY_PROCESSED, topic_ends

    ends = await topic_ends(shape.settings, [shape.settings.topic(n + ".events") for n in SERVICES])
    behind = []
    for name in SERVICES:
        topic = shape.settings.topic(f"{name}.events")
        mark = await shape.db(name)[RELAY_PROCESSED].find_one({"_id": topic})
        below = {int(p): o for p, o in (mark or {}).get("below", {}).items()}
        if any(below.get(p, 0) < end for p, end in ends[topic].items() if end):
            behind.append(f"{topic}: seen {below}, holds {ends[topic]}")
    return behind


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_after_a_wipe_of_a_running_system_only_what_a_consumer_lacked_is_sent_again(
    shape: Shape, broker: Broker
) -> None:
    rng = random.Random(21)
    for name in SERVICES:
        await shape.start(name)
    ctx = shape.runner("intake").ctx
    monitor = ctx.tokens.issue("monitor-chen", "school-a", ["monitor"])
    admin = {"Authorization": f"Bearer {ctx.tokens.issue('admin', 'county', ['admin'])}"}
    intake = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=shape.gateways["intake"]),
        base_url="http://test",
        headers={"Authorization": f"Bearer {monitor}"},
        timeout=60.0,
    )
    archive = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=shape.gateways["archive"]),
        base_url="http://test",
        headers=admin,
        timeout=60.0,
    )
    async with intake, archive:
        await seed_history(shape.runner("intake"), HISTORY_INCIDENTS)
        await file_reports(intake, rng, incidents=8, joined=16)
        await wait_for("the outboxes empty", lambda: unsent(shape))
        history = await stored(shape)
        await wait_for("every consumer caught up", lambda: missing_anywhere(shape, history))
        await wait_for(
            "each relay sees every group caught up", lambda: not_yet_seen_processed(shape)
        )
        # Notification stops: what intake and grading send from now on only it lacks.
        await shape.stop("notification")
        late = await file_reports(intake, rng, incidents=3, joined=3)
        await wait_for("the outboxes empty", lambda: unsent(shape))
        before = await stored(shape)
        total = sum(len(es) for es in before.values())
        print(
            f"stored before the wipe: {total} events; every consumer had processed all but "
            f"what notification lacks of {len(late)} incidents filed after it stopped"
        )
        assert total >= STORED_AT_LEAST

        broker.stop()
        broker.start()
        wiped_at = time.monotonic()
        print(f"injected: the broker stopped and started fresh on port {broker.port}")
        await shape.start("notification")
        fresh = report(
            url=f"https://news.example.com/wipe/after-{uuid.uuid4().hex}.html", title=title(rng)
        )
        filed_at = time.monotonic()
        resp = await post_report(intake, fresh)
        assert resp.json()["new_incident"] is True, resp.text
        incident_id = resp.json()["incident_id"]

        async def not_graded() -> list[str]:
            resp = await archive.get(f"/archive/v1/incidents/{incident_id}")
            view = resp.json() if resp.status_code == 200 else {}
            return [] if view.get("level") and view.get("obligations") else [str(view)[:200]]

        await wait_for("the report filed after the wipe graded in the archive", not_graded)
        took = time.monotonic() - filed_at
        print(
            f"checked: the report filed right after the restart is in the archive graded "
            f"with its obligations {took:.1f} s after it was filed "
            f"({time.monotonic() - wiped_at:.1f} s after the restart)"
        )
    await wait_for("every stored event everywhere", lambda: missing_anywhere(shape, before))
    requeued = {name: shape.runner(name).relay.requeued for name in SERVICES}
    print(
        f"checked: all {total} events processed by every consumer of their topic and in the "
        f"archive's log exactly once, {time.monotonic() - wiped_at:.1f} s after the restart; "
        f"sent again: {requeued} (not the {total} stored)"
    )
    # Each relay found the wipe, and sent again far less than its history: what
    # notification lacked (intake's and grading's last incidents) and what was sent after
    # the relays' last look at the groups.
    assert requeued["intake"] > 0, "intake's relay never found the wipe"
    assert requeued["intake"] < len(before["intake"]) // 4, requeued
    assert sum(requeued.values()) < total // 4, requeued
