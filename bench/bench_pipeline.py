"""How fast the system turns reports into graded incidents, against the bound of its server.

Starts the embedded servers and `yuqing up` (through bench/system.py, which counts every
MongoDB command the services send) in a temporary data directory, then measures in one run:

- raw: the same MongoDB server's rate of plain inserts, of one-insert transactions and of
  find_one, from this process at the pipeline's concurrency;
- idle: commands per second the system sends with nothing to do;
- pipeline: reports posted with a fixed concurrency, each done when the archive's view of
  its incident is graded with obligations, seen on a change stream of the archive's
  database (never by polling the API); database commands and Kafka messages per report;
- bound: the raw write and transaction rates divided by the system's own writes and
  transactions per report; the pipeline's ratio to it;
- latency: reports arriving at half the sustained rate (open loop), from the POST to the
  graded view;
- reads, once no consumer lags and no outbox holds anything (at most 60 s): the incident
  view at 200 req/s; the incident list with 10,000 incidents, written as archive views and
  list rows directly (copies of a real view with their own id, time, level, status);
- replay: the archive's replay of its log, against reading the same log and bulk-writing
  the same views from this process;
- memory: the peak RSS of each process;
- what an operator watches: the system's /metrics scraped every 2 s while the pipeline
  and latency phases run (the services sample every YUQING_METRICS_INTERVAL_SECONDS, 2 s
  here rather than 15: a count of each outbox per sample, in the command figures), the
  most consumer lag seen per consumer group (`yuqing_consumer_lag`, summed over its
  topics and partitions) and the largest outbox backlog per service
  (`yuqing_outbox_backlog`, the true count of stored events not yet on Kafka).

Prints a table and writes bench/results/latest.json.

    make bench                                  # about 3-5 minutes
    make bench-long                             # 30 minutes: drift and RSS growth
    .venv/bin/python bench/bench_pipeline.py --reports 500 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from shared.embedded import EmbeddedInfra, free_port
from shared.settings import Settings
from shared.store import Document

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WRITES = frozenset({"insert", "update", "delete", "findAndModify"})
READS = frozenset({"find", "getMore", "aggregate", "count", "distinct"})
TRANSACTIONS = frozenset({"commitTransaction"})


def report(n: int) -> dict[str, Any]:
    return {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": ["central", "provincial", "county"][n % 3],
        "url": f"https://bench.example.cn/{uuid.uuid4().hex}",
        "title": f"基准测试舆情 {uuid.uuid4().hex}",
        "excerpt": f"第 {n} 条基准测试舆情件 {uuid.uuid4().hex}",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 1000, "reposts": 10, "comments": 5, "likes": 3},
        "unit_ids": ["school-a"],
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def note(text: str, results: dict[str, Any] | None = None, partial: Path | None = None) -> None:
    """A progress line; with `partial`, what is measured so far is written there too."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)
    if results is not None and partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str))


def rss_peak_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), from /proc."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def rss_now_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


# --------------------------------------------------------------------------- the system


@dataclass
class System:
    """The running `yuqing up` with its servers, and what the bench reads them with."""

    base_url: str
    token: str
    process: subprocess.Popen[str]
    counts_path: Path
    mongodb_url: str
    kafka: str
    pids: dict[str, int]
    archive_db: str
    _snapshot: int = 0
    _mongo: AsyncMongoClient[Document] | None = None

    @property
    def mongo(self) -> AsyncMongoClient[Document]:
        """The bench's own client (not counted), made in the running event loop, with the
        write concern the services' clients use (shared/service.py), so that the raw rates
        are of the same kind of write."""
        if self._mongo is None:
            self._mongo = AsyncMongoClient(
                self.mongodb_url, tz_aware=True, w="majority", journal=True
            )
        return self._mongo

    async def close(self) -> None:
        if self._mongo is not None:
            await self._mongo.close()
            self._mongo = None

    def archive(self) -> AsyncDatabase[Document]:
        return self.mongo[self.archive_db]

    async def commands(self) -> tuple[dict[str, int], dict[str, int]]:
        """The services' command counts so far (by `<database>:<collection>.<command>`), and
        the commands that failed (by `<database>.<command>.<error>`)."""
        self._snapshot += 1
        self.process.send_signal(signal.SIGUSR1)
        while True:
            with contextlib.suppress(OSError, ValueError):
                body = json.loads(self.counts_path.read_text())
                if body["snapshot"] >= self._snapshot:
                    return dict(body["commands"]), dict(body["failed"])
            await asyncio.sleep(0.01)

    async def messages(self) -> int:
        """Messages on every topic of the broker so far."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka)
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in await consumer.topics()
                for p in consumer.partitions_for_topic(topic) or ()
            ]
            ends = await consumer.end_offsets(partitions)
            return sum(ends.values())
        finally:
            await consumer.stop()


@dataclass
class Usage:
    commands: dict[str, int]
    messages: int
    failed: dict[str, int]

    @classmethod
    async def of(cls, system: System) -> Usage:
        commands, failed = await system.commands()
        return cls(commands, await system.messages(), failed)

    def since(self, earlier: Usage) -> Usage:
        def minus(now: dict[str, int], then: dict[str, int]) -> dict[str, int]:
            return {k: now.get(k, 0) - then.get(k, 0) for k in set(now) | set(then)}

        return Usage(
            minus(self.commands, earlier.commands),
            self.messages - earlier.messages,
            minus(self.failed, earlier.failed),
        )

    def total(self, names: frozenset[str] | None = None) -> int:
        return sum(
            n for k, n in self.commands.items() if names is None or k.split(".")[-1] in names
        )

    def by_database(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, n in self.commands.items():
            db = key.rsplit(".", 1)[0].split(":", 1)[0]
            out[db] = out.get(db, 0) + n
        return dict(sorted(out.items()))

    def by_collection(self, top: int = 60) -> dict[str, int]:
        """The most used `<database>:<collection>.<command>`, most first."""
        ranked = sorted(self.commands.items(), key=lambda kv: -kv[1])[:top]
        return {k: n for k, n in ranked if n > 0}

    def by_command(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, n in self.commands.items():
            name = key.rsplit(".", 1)[1]
            out[name] = out.get(name, 0) + n
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@contextlib.contextmanager
def running_system(tmp: str, metrics_interval: float = 2.0) -> Iterator[System]:
    settings = Settings(data_dir=Path(tmp), embedded_kafka_port=0, embedded_mongo_port=0)
    infra = EmbeddedInfra(settings)
    resolved = infra.start()
    port = free_port()
    counts = Path(tmp) / "bench-counts.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("YUQING_")},
        "KAFKA_BOOTSTRAP_SERVERS": str(resolved.kafka_bootstrap_servers),
        "MONGODB_URL": str(resolved.mongodb_url),
        "YUQING_HTTP_PORT": str(port),
        "YUQING_DATA_DIR": tmp,
        "YUQING_LOG_LEVEL": "WARNING",
        "YUQING_LOG_FORMAT": "json",
        "YUQING_BENCH_COUNTS": str(counts),
        # The figures /metrics shows are sampled this often (the default is 15 s).
        "YUQING_METRICS_INTERVAL_SECONDS": str(metrics_interval),
        # The bench is one principal sending far more than a person would.
        "YUQING_RATE_LIMIT": "100000000/minute",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "system.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        token = ""
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("YUQING_TOKEN="):
                token = line.strip().split("=", 1)[1]
                break
        if not token:
            raise SystemExit("yuqing up did not start")
        pids = {"yuqing": process.pid, "bench": os.getpid()}
        for server in infra.servers:
            child = server.process
            if child is not None:
                label = "mongodb" if "Mongo" in server.name else "kafka"
                pids[label] = child.pid
        yield System(
            base_url=f"http://127.0.0.1:{port}",
            token=token,
            process=process,
            counts_path=counts,
            mongodb_url=str(resolved.mongodb_url),
            kafka=str(resolved.kafka_bootstrap_servers),
            pids=pids,
            archive_db=resolved.database_name("archive"),
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        infra.stop()


# --------------------------------------------------------------------------- what is watched


def lag_and_backlog(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """From one scrape of /metrics: each consumer group's lag (its service's
    `yuqing_consumer_lag` summed over topics and partitions) and each service's outbox
    backlog."""
    lag: dict[str, float] = {}
    backlog: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            service = sample.labels.get("service", "?")
            if sample.name == "yuqing_consumer_lag":
                lag[service] = lag.get(service, 0.0) + sample.value
            elif sample.name == "yuqing_outbox_backlog":
                backlog[service] = backlog.get(service, 0.0) + sample.value
    return lag, backlog


@dataclass
class Watch:
    """Scrapes the system's /metrics every `every` seconds, as an operator's Prometheus
    does, and keeps per phase the most consumer lag seen per group and the largest outbox
    backlog per service."""

    system: System
    every: float = 2.0
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lag: dict[str, float] = field(default_factory=dict)
    _backlog: dict[str, float] = field(default_factory=dict)
    _scrapes: int = 0
    _failed: int = 0
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with client(self.system, 1) as api:
            while True:
                try:
                    answer = await api.get("/metrics")
                    answer.raise_for_status()
                    lag, backlog = lag_and_backlog(answer.text)
                except (httpx.HTTPError, ValueError):
                    self._failed += 1
                else:
                    self._scrapes += 1
                    for name, value in lag.items():
                        self._lag[name] = max(self._lag.get(name, 0.0), value)
                    for name, value in backlog.items():
                        self._backlog[name] = max(self._backlog.get(name, 0.0), value)
                await asyncio.sleep(self.every)

    def mark(self, phase: str) -> dict[str, Any]:
        """What was seen since the last mark, as the figures of `phase`."""
        seen = {
            "scrapes": self._scrapes,
            "scrapes_failed": self._failed,
            "consumer_lag_max": int(max(self._lag.values(), default=0)),
            "consumer_lag_max_by_group": {k: int(v) for k, v in sorted(self._lag.items())},
            "outbox_backlog_max": int(max(self._backlog.values(), default=0)),
            "outbox_backlog_max_by_service": {k: int(v) for k, v in sorted(self._backlog.items())},
        }
        self.phases[phase] = seen
        self._lag, self._backlog, self._scrapes, self._failed = {}, {}, 0, 0
        return seen

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def settle(system: System, within: float) -> float:
    """Wait until no consumer lags and no outbox holds anything, two scrapes in a row (the
    services sample every `--metrics-interval`), at most `within` seconds: the reads are
    measured on the system, not on the pipeline's tail. The seconds it took."""
    started = time.perf_counter()
    quiet = 0
    async with client(system, 1) as api:
        while quiet < 2 and time.perf_counter() - started < within:
            await asyncio.sleep(1.0)
            try:
                answer = await api.get("/metrics")
                answer.raise_for_status()
                lag, backlog = lag_and_backlog(answer.text)
            except (httpx.HTTPError, ValueError):
                quiet = 0
                continue
            quiet = quiet + 1 if not any(lag.values()) and not any(backlog.values()) else 0
    return round(time.perf_counter() - started, 1)


# --------------------------------------------------------------------------- completion


@dataclass
class Completions:
    """When each incident's archive view first showed it graded with obligations, from a
    change stream on the archive's database (every read-model collection, so a replay's
    swap does not blind it)."""

    system: System
    seen: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        # Only the views' changes come back, filtered on the server: the log, inbox and
        # chains change with every event, and each change sent is the server's work.
        pipeline: list[Document] = [
            {
                "$match": {
                    "operationType": {"$in": ["insert", "replace", "update"]},
                    "ns.coll": {"$regex": "^incidents"},
                }
            }
        ]
        async with await self.system.archive().watch(
            pipeline, full_document="updateLookup"
        ) as stream:
            self._ready.set()
            async for change in stream:
                doc = change.get("fullDocument") or {}
                if not str(change.get("ns", {}).get("coll", "")).startswith("incidents"):
                    continue
                view = doc.get("view") or {}
                if doc.get("level") is None or not view.get("obligations"):
                    continue
                incident = str(doc["_id"])
                if incident in self.seen:
                    continue
                now = time.perf_counter()
                self.seen[incident] = now
                waiter = self.waiting.pop(incident, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    async def done(self, incident: str) -> float:
        if incident in self.seen:
            return self.seen[incident]
        waiter = self.waiting.setdefault(incident, asyncio.get_running_loop().create_future())
        return await waiter


# Reports the system refused (503) or dropped and the bench sent again, by what happened.
REFUSED: Counter[str] = Counter()


async def post_one(
    api: httpx.AsyncClient, completions: Completions, n: int
) -> tuple[float, float, float]:
    """(started, accepted, graded) perf_counter times of one report. A 503 or a dropped
    connection is tried again, as a client would, from the same start (so it counts in the
    latency), up to five times; `REFUSED` counts them."""
    started = time.perf_counter()
    body = report(n)
    for attempt in range(1, 6):
        try:
            answer = await api.post("/intake/v1/reports", json=body)
        except httpx.TransportError as exc:
            if attempt == 5:
                raise
            REFUSED[type(exc).__name__] += 1
            await asyncio.sleep(0.2)
            continue
        if answer.status_code != 503 or attempt == 5:
            break
        REFUSED["503"] += 1
        await asyncio.sleep(0.2)
    answer.raise_for_status()
    accepted = time.perf_counter()
    graded = await completions.done(answer.json()["incident_id"])
    return started, accepted, graded


def client(system: System, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=system.base_url,
        headers={"Authorization": f"Bearer {system.token}"},
        timeout=60,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# --------------------------------------------------------------------------- raw server


async def raw_rates(mongo: AsyncMongoClient[Document], concurrency: int) -> dict[str, float]:
    """Plain inserts, one-insert transactions and find_one per second on the same server."""
    db = mongo[f"bench_raw_{uuid.uuid4().hex[:6]}"]
    payload = {"envelope": {"text": "x" * 900, "n": 1}, "published": False}
    await db.w.insert_one({"_id": "warm", **payload})

    async def spread(total: int, one: Callable[[int], Awaitable[Any]]) -> float:
        counter = iter(range(total))

        async def worker() -> None:
            for n in counter:
                await one(n)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)

    async def insert(n: int) -> None:
        await db.w.insert_one({"_id": f"w{n}", **payload})

    async def transaction(n: int) -> None:
        async with mongo.start_session() as session:

            async def work(s: Any) -> None:
                await db.t.insert_one({"_id": f"t{n}", **payload}, session=s)

            await session.with_transaction(work)

    async def find(n: int) -> None:
        await db.w.find_one({"_id": f"w{n % 1000}"})

    writes = await spread(2000, insert)
    transactions = await spread(600, transaction)
    finds = await spread(2000, find)
    await mongo.drop_database(db.name)
    return {
        "writes_per_s": round(writes, 1),
        "transactions_per_s": round(transactions, 1),
        "find_one_per_s": round(finds, 1),
    }


# --------------------------------------------------------------------------- phases


async def sustained(
    system: System, completions: Completions, reports: int, concurrency: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    async with client(system, concurrency * 2) as api:

        async def guarded(n: int) -> tuple[float, float, float]:
            async with gate, asyncio.timeout(120):
                return await post_one(api, completions, n)

        await guarded(-1)  # warm-up: connections, consumer assignments
        before = await Usage.of(system)
        started = time.perf_counter()
        results = await asyncio.gather(*(guarded(n) for n in range(reports)))
        elapsed = time.perf_counter() - started
        used = (await Usage.of(system)).since(before)
    accepted = [a - s for s, a, _ in results]
    graded = [g - s for s, _, g in results]
    return {
        "reports": reports,
        "concurrency": concurrency,
        "wall_s": round(elapsed, 2),
        "reports_per_s": round(reports / elapsed, 2),
        "accept_ms_p50": ms(statistics.median(accepted)),
        "accept_ms_p95": ms(pct(accepted, 0.95)),
        "graded_ms_p50": ms(statistics.median(graded)),
        "graded_ms_p95": ms(pct(graded, 0.95)),
        "commands_per_report": round(used.total() / reports, 1),
        "writes_per_report": round(used.total(WRITES) / reports, 1),
        "reads_per_report": round(used.total(READS) / reports, 1),
        "transactions_per_report": round(used.total(TRANSACTIONS) / reports, 2),
        "kafka_messages_per_report": round(used.messages / reports, 2),
        "commands_by_database_per_report": {
            k: round(v / reports, 1) for k, v in used.by_database().items()
        },
        "commands_by_name_per_report": {
            k: round(v / reports, 1) for k, v in used.by_command().items()
        },
        "commands_by_collection_per_report": {
            k: round(v / reports, 2) for k, v in used.by_collection().items()
        },
        # Write conflicts and the like: each one an attempt done again.
        "failed_commands_per_report": {
            k: round(v / reports, 2)
            for k, v in sorted(used.failed.items(), key=lambda kv: -kv[1])
            if v > 0
        },
    }


async def open_loop(
    rate: float, count: int, one: Callable[[int], Awaitable[float]], cap: float, inflight: int
) -> tuple[list[float], float, int]:
    """Call `one(n)` on a schedule of `rate` per second, whatever the earlier calls do,
    with at most `inflight` at once (the client's connections; more wait their turn, and
    that wait counts), and stop waiting after `cap` seconds.

    `one` returns the perf_counter time it was done; each latency runs from the call's
    slot in the schedule, so a slow server is not excused by the calls it delayed. An
    unfinished call counts the time from its slot to the cut-off. Returns the latencies,
    the rate of finished calls, and how many did not finish."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(inflight)

    async def at(n: int) -> float:
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        async with gate:
            return await one(n) - (started + n / rate)

    tasks = [asyncio.create_task(at(n)) for n in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=cap)
    cut = time.perf_counter()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    latencies = [t.result() for t in tasks if t in done]
    slots = [started + n / rate for n, t in enumerate(tasks) if t in pending]
    latencies += [cut - slot for slot in slots if slot < cut]
    return latencies, len(done) / (cut - started), len(pending)


async def latency(
    system: System, completions: Completions, rate: float, seconds: float
) -> dict[str, Any]:
    count = max(20, int(rate * seconds))
    async with client(system, 64) as api:

        async def one(n: int) -> float:
            async with asyncio.timeout(120):
                _, _, graded = await post_one(api, completions, 10_000 + n)
            return graded

        latencies, achieved, unfinished = await open_loop(
            rate, count, one, seconds * 3 + 30, inflight=64
        )
    return {
        "rate_per_s": round(rate, 2),
        "achieved_per_s": round(achieved, 2),
        "reports": count,
        "unfinished": unfinished,
        "p50": ms(pct(latencies, 0.50)),
        "p95": ms(pct(latencies, 0.95)),
        "p99": ms(pct(latencies, 0.99)),
        "max": ms(max(latencies)),
    }


async def reads_get(system: System, incidents: list[str], rate: float, seconds: float) -> Any:
    async with client(system, 128) as api:

        async def one(n: int) -> float:
            answer = await api.get(f"/archive/v1/incidents/{incidents[n % len(incidents)]}")
            answer.raise_for_status()
            return time.perf_counter()

        latencies, achieved, unfinished = await open_loop(
            rate, int(rate * seconds), one, seconds * 2, inflight=64
        )
    return {
        "get_rate_per_s": rate,
        "get_achieved_per_s": round(achieved, 1),
        "get_unfinished": unfinished,
        "get_p50_ms": ms(pct(latencies, 0.5)),
        "get_p99_ms": ms(pct(latencies, 0.99)),
    }


async def current_incidents(db: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    """The incident views the archive serves now (a replay moves them)."""
    pointer = await db["read_models"].find_one({"_id": "current"})
    return db[str(pointer["incidents"]) if pointer else "incidents"]


async def current_rows(db: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    """The rows the archive's incident list reads now (each view's document but the view)."""
    pointer = await db["read_models"].find_one({"_id": "current"})
    return db[str((pointer or {}).get("incident_rows", "incident_rows"))]


async def load_incidents(system: System, total: int, cap: float) -> tuple[int, float]:
    """Write `total` incident views straight into the archive's views and the rows its list
    reads: copies of a real view, each with its own id, time, level, status and unit, in
    batches of 500; stops after `cap` seconds. The views there now, and the seconds it
    took."""
    db = system.archive()
    collection = await current_incidents(db)
    rows = await current_rows(db)
    template = await collection.find_one({"level": {"$ne": None}})
    assert template is not None, "the pipeline left no graded incident to copy"
    have = await collection.count_documents({})
    units = ["school-a", "school-b", "road-1"]
    statuses = ["open", "resolved", "dismissed"]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(7)  # noqa: S311 - spread, not secrecy
    started = time.perf_counter()
    batch: list[Document] = []
    for n in range(max(0, total - have)):
        incident = f"inc-bench-{n:06d}"
        at = base + timedelta(seconds=rng.randrange(0, 300 * 86400))
        level, unit, status = rng.randint(1, 3), units[n % 3], statuses[rng.randrange(3)]
        view = {**template["view"], "incident_id": incident, "level": level, "status": status}
        view["unit_ids"] = [unit]
        summary = {**template["summary"], "incident_id": incident, "level": level}
        summary.update(status=status, unit_ids=[unit], opened_at=at.isoformat())
        batch.append(
            {
                **template,
                "_id": incident,
                "view": view,
                "summary": summary,
                "level": level,
                "status": status,
                "unit_ids": [unit],
                "opened_at": at,
                "sort_at": at,
                "due": None,
            }
        )
        if len(batch) == 500:
            await collection.insert_many(batch, ordered=False)
            await rows.insert_many([without_view(doc) for doc in batch], ordered=False)
            batch = []
            if time.perf_counter() - started > cap:
                break
    if batch:
        await collection.insert_many(batch, ordered=False)
        await rows.insert_many([without_view(doc) for doc in batch], ordered=False)
    return await collection.count_documents({}), time.perf_counter() - started


def without_view(doc: Document) -> Document:
    return {field: value for field, value in doc.items() if field != "view"}


async def reads_list(system: System, rate: float, seconds: float) -> dict[str, Any]:
    queries: dict[str, dict[str, Any]] = {
        "(none)": {},
        "level=1": {"level": 1},
        "unit=school-b": {"unit": "school-b"},
        "status=resolved": {"status": "resolved"},
        "unit=road-1&level=2": {"unit": "road-1", "level": 2},
        "limit=100": {"limit": 100},
    }
    names = list(queries)
    kinds: dict[str, list[float]] = {name: [] for name in names}
    async with client(system, 64) as api:
        cursors: dict[str, str] = {}

        async def one(n: int) -> float:
            name = names[n % len(names)]
            started = time.perf_counter()
            follow = cursors.get(name) if n % 2 else None  # every other one: the next page
            params = {**queries[name], **({"cursor": follow} if follow else {})}
            answer = await api.get("/archive/v1/incidents", params=params)
            answer.raise_for_status()
            finished = time.perf_counter()
            if nxt := answer.json().get("next_cursor"):
                cursors[name] = nxt
            kinds[name].append(finished - started)  # served, not queued
            return finished

        latencies, achieved, unfinished = await open_loop(
            rate, int(rate * seconds), one, seconds * 2, inflight=64
        )
    return {
        "list_rate_per_s": rate,
        "list_achieved_per_s": round(achieved, 1),
        "list_unfinished": unfinished,
        "list_p50_ms": ms(pct(latencies, 0.5)),
        "list_p99_ms": ms(pct(latencies, 0.99)),
        "list_served_p99_ms_by_filter": {k: ms(pct(v, 0.99)) for k, v in kinds.items() if v},
    }


async def replay(system: System) -> dict[str, Any]:
    db = system.archive()
    events = await db["log"].count_documents({})
    async with client(system, 4) as api:
        answer = await api.post("/archive/v1/replay")
        answer.raise_for_status()
        job_id = answer.json()["job_id"]
    while True:
        job = await db["replay_jobs"].find_one({"_id": job_id})
        if job is not None and job["state"] != "running":
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "completed", job
    took = (job["finished_at"] - job["started_at"]).total_seconds()
    raw = await raw_replay(system)
    rate = events / took
    return {
        "events": events,
        "seconds": round(took, 2),
        "events_per_s": round(rate, 1),
        "raw_events_per_s": round(raw, 1),
        "ratio_to_raw": round(rate / raw, 2),
    }


async def raw_replay(system: System) -> float:
    """Read the log by incident in batches of 200 and bulk-write the same view documents:
    the replay's I/O without its fold."""
    db = system.archive()
    views = {d["_id"]: d async for d in (await current_incidents(db)).find()}
    scratch = db[f"bench_raw_views_{uuid.uuid4().hex[:6]}"]
    started = time.perf_counter()
    incidents = sorted(str(i) for i in await db["log"].distinct("incident_id"))
    events = 0
    for start in range(0, len(incidents), 200):
        batch = incidents[start : start + 200]
        seen = set()
        async for doc in db["log"].find({"incident_id": {"$in": batch}}, sort=[("seq", 1)]):
            events += 1
            seen.add(doc["incident_id"])
        writes = [ReplaceOne({"_id": i}, views[i], upsert=True) for i in seen if i in views]
        if writes:
            await scratch.bulk_write(writes, ordered=False)
    took = time.perf_counter() - started
    await scratch.drop()
    return events / took


# --------------------------------------------------------------------------- the run


async def measure(system: System, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "args": vars(args)}
    note("raw server rates")
    results["raw"] = await raw_rates(system.mongo, args.concurrency)
    note(f"raw: {results['raw']}; idle", results, args.partial)

    idle_before = await Usage.of(system)
    await asyncio.sleep(args.idle_seconds)
    idle = (await Usage.of(system)).since(idle_before)
    results["idle"] = {
        "seconds": args.idle_seconds,
        "commands_per_s": round(idle.total() / args.idle_seconds, 1),
        "writes_per_s": round(idle.total(WRITES) / args.idle_seconds, 1),
    }

    completions = Completions(system)
    await completions.start()
    watch = Watch(system, args.scrape_seconds)
    await watch.start()
    note("pipeline", results, args.partial)
    try:
        pipe = await sustained(system, completions, args.reports, args.concurrency)
        results["pipeline"] = pipe
        watch.mark("pipeline")
        raw = results["raw"]
        write_s = 1 / raw["writes_per_s"]
        txn_extra_s = max(0.0, 1 / raw["transactions_per_s"] - write_s)
        per_report_s = (
            pipe["writes_per_report"] * write_s + pipe["transactions_per_report"] * txn_extra_s
        )
        bound = 1 / per_report_s if per_report_s else float("inf")
        results["bound"] = {
            "reports_per_s": round(bound, 2),
            "how": "1 / (writes_per_report / raw.writes_per_s + transactions_per_report"
            " * (1 / raw.transactions_per_s - 1 / raw.writes_per_s))",
        }
        pipe["ratio_to_bound"] = round(pipe["reports_per_s"] / bound, 2)
        note(f"pipeline: {pipe['reports_per_s']} reports/s; latency", results, args.partial)
        results["latency_ms"] = await latency(
            system, completions, pipe["reports_per_s"] / 2, args.latency_seconds
        )
        watch.mark("latency")
    finally:
        await watch.stop()
        await completions.stop()
    results["watched"] = {
        "scrape_every_s": args.scrape_seconds,
        "sampled_every_s": args.metrics_interval,
        **watch.phases,
    }
    results["refused_and_retried"] = dict(REFUSED)

    incidents = list(completions.seen)
    results["settled_before_reads_s"] = await settle(system, 60.0)
    note("incident view reads", results, args.partial)
    results["read"] = await reads_get(system, incidents, args.get_rate, args.read_seconds)
    results["read"]["get_ratio_to_raw_find_one"] = round(
        results["read"]["get_achieved_per_s"] / results["raw"]["find_one_per_s"], 2
    )
    note("replay", results, args.partial)
    results["replay"] = await replay(system)
    note("loading incidents for the list", results, args.partial)
    count, took = await load_incidents(system, args.list_incidents, args.load_cap)
    results["read"]["list_incidents"] = count
    results["read"]["list_load_s"] = round(took, 1)
    results["read"].update(await reads_list(system, args.list_rate, args.read_seconds))
    note("incident list done", results, args.partial)
    results["memory"] = {
        "peak_rss_mb": {name: rss_peak_mb(pid) for name, pid in system.pids.items()},
    }
    return results


async def measure_long(system: System, args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop load for `--long` seconds: throughput and RSS per minute."""
    completions = Completions(system)
    await completions.start()
    watch = Watch(system, args.scrape_seconds)
    await watch.start()
    minutes: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(args.concurrency)
    total_minutes = max(1, int(args.long // 60))  # whole minutes, each measured alike
    begun = time.perf_counter()
    deadline = begun + total_minutes * 60
    done = 0
    try:
        async with client(system, args.concurrency * 2) as api:

            async def worker() -> None:
                nonlocal done
                n = 0
                while time.perf_counter() < deadline:
                    async with gate, asyncio.timeout(120):
                        await post_one(api, completions, n)
                    done += 1
                    n += 1

            workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
            last = 0
            for minute in range(1, total_minutes + 1):
                await asyncio.sleep(max(0.0, begun + minute * 60 - time.perf_counter()))
                seen = watch.mark(f"minute {minute}")
                minutes.append(
                    {
                        "reports_per_s": round((done - last) / 60, 2),
                        "rss_mb": {k: rss_now_mb(p) for k, p in system.pids.items()},
                        "consumer_lag_max": seen["consumer_lag_max"],
                        "outbox_backlog_max": seen["outbox_backlog_max"],
                    }
                )
                last = done
                print(f"minute {len(minutes)}: {minutes[-1]}", flush=True)
            await asyncio.gather(*workers)
    finally:
        await watch.stop()
        await completions.stop()
    first, final = minutes[0]["reports_per_s"], minutes[-1]["reports_per_s"]
    growth: dict[str, float | None] = {}
    if len(minutes) >= 6:
        for name in system.pids:
            at5, end = minutes[4]["rss_mb"].get(name), minutes[-1]["rss_mb"].get(name)
            growth[name] = round(end / at5 - 1, 3) if at5 and end else None
    return {
        "drift": {"ratio": round(final / first, 2) if first else None, "minutes": minutes},
        "memory": {"rss_growth_minute5_to_end": growth},
    }


async def closing(system: System, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await work
    finally:
        await system.close()


def table(results: dict[str, Any]) -> str:
    p, b, lat = results["pipeline"], results["bound"], results["latency_ms"]
    r, rp, raw = results["read"], results["replay"], results["raw"]
    rows = [
        (
            "raw inserts / transactions / find_one per s",
            f"{raw['writes_per_s']} / {raw['transactions_per_s']} / {raw['find_one_per_s']}",
        ),
        (
            "idle commands / writes per s",
            f"{results['idle']['commands_per_s']} / {results['idle']['writes_per_s']}",
        ),
        ("pipeline reports/s (concurrency)", f"{p['reports_per_s']} ({p['concurrency']})"),
        ("reports refused or dropped, sent again", str(results.get("refused_and_retried", {}))),
        (
            "commands per report (writes/reads/txns)",
            f"{p['commands_per_report']} ({p['writes_per_report']}/{p['reads_per_report']}/"
            f"{p['transactions_per_report']})",
        ),
        ("kafka messages per report", f"{p['kafka_messages_per_report']}"),
        ("bound reports/s", f"{b['reports_per_s']}"),
        ("pipeline ratio to bound", f"{p['ratio_to_bound']}"),
        (
            f"latency ms at {lat['rate_per_s']}/s p50/p95/p99/max",
            f"{lat['p50']} / {lat['p95']} / {lat['p99']} / {lat['max']}",
        ),
        ("settled before the reads (no lag, no outbox), s", f"{results['settled_before_reads_s']}"),
        (
            f"incident view at {r['get_rate_per_s']}/s: achieved, p99 ms",
            f"{r['get_achieved_per_s']}/s, {r['get_p99_ms']}",
        ),
        (
            f"incident list, {r['list_incidents']} incidents at {r['list_rate_per_s']}/s: p99 ms",
            f"{r['list_p99_ms']} (achieved {r['list_achieved_per_s']}/s)",
        ),
        (
            "replay events/s (raw, ratio)",
            f"{rp['events_per_s']} ({rp['raw_events_per_s']}, {rp['ratio_to_raw']})",
        ),
        ("peak RSS MB", ", ".join(f"{k} {v}" for k, v in results["memory"]["peak_rss_mb"].items())),
    ]
    for phase in ("pipeline", "latency"):
        seen = results.get("watched", {}).get(phase)
        if seen:
            rows.append(
                (
                    f"scraped in {phase}: max consumer lag by group",
                    f"{seen['consumer_lag_max']} {seen['consumer_lag_max_by_group']}",
                )
            )
            rows.append(
                (
                    f"scraped in {phase}: max outbox backlog by service",
                    f"{seen['outbox_backlog_max']} {seen['outbox_backlog_max_by_service']}",
                )
            )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--read-seconds", type=float, default=10.0)
    parser.add_argument("--get-rate", type=float, default=200.0)
    parser.add_argument("--list-rate", type=float, default=50.0)
    parser.add_argument("--list-incidents", type=int, default=10_000)
    parser.add_argument("--load-cap", type=float, default=90.0, help="seconds to load them")
    parser.add_argument("--long", type=float, default=0.0, help="seconds of drift run (1800)")
    parser.add_argument("--metrics-interval", type=float, default=2.0, help="services sample")
    parser.add_argument("--scrape-seconds", type=float, default=2.0, help="/metrics scraped")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out: Path = args.out or RESULTS / ("long.json" if args.long else "latest.json")
    args.partial = out.with_suffix(".partial.json")

    with (
        tempfile.TemporaryDirectory(prefix="yuqing-bench-") as tmp,
        running_system(tmp, args.metrics_interval) as system,
    ):
        if args.long:
            results = asyncio.run(closing(system, measure_long(system, args)))
        else:
            results = asyncio.run(closing(system, measure(system, args)))
            print(table(results))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n")
        args.partial.unlink(missing_ok=True)
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
