"""How fast the system turns reports into graded incidents, measured end to end.

Starts `yuqing up` on its own embedded servers (a temporary data directory), posts
reports over HTTP with a fixed concurrency, and measures for each report the time until
the archive shows its incident graded with obligations: the path through intake,
grading, notification and archive over Kafka. Also times raw event-store appends.

    make bench                       # defaults
    .venv/bin/python bench/bench_pipeline.py --reports 500 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from shared.embedded import EmbeddedInfra, free_port
from shared.events import Actor, Envelope, IncidentResolved
from shared.settings import Settings
from shared.store import Document, EventStore

YUQING = str(Path(sys.executable).with_name("yuqing"))


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


async def one(api: httpx.AsyncClient, n: int) -> tuple[float, float]:
    """Seconds until the report is accepted, and until its incident shows graded."""
    started = time.perf_counter()
    answer = await api.post("/intake/v1/reports", json=report(n))
    answer.raise_for_status()
    accepted = time.perf_counter() - started
    incident = answer.json()["incident_id"]
    while True:
        view = await api.get(f"/archive/v1/incidents/{incident}")
        if view.status_code == 200:
            body = view.json()
            if body.get("level") and body.get("obligations"):
                return accepted, time.perf_counter() - started
        await asyncio.sleep(0.02)


async def pipeline(base_url: str, token: str, reports: int, concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=30, limits=limits
    ) as api:

        async def guarded(n: int) -> tuple[float, float]:
            async with gate, asyncio.timeout(60):
                return await one(api, n)

        await guarded(-1)  # warm-up: connections, consumer assignments
        started = time.perf_counter()
        results = await asyncio.gather(*(guarded(n) for n in range(reports)))
        elapsed = time.perf_counter() - started
    accepted = [a for a, _ in results]
    graded = [g for _, g in results]
    return {
        "reports": reports,
        "concurrency": concurrency,
        "wall_seconds": round(elapsed, 2),
        "reports_per_second": round(reports / elapsed, 1),
        "accept_ms_p50": round(statistics.median(accepted) * 1000, 1),
        "accept_ms_p95": round(pct(accepted, 0.95) * 1000, 1),
        "graded_in_archive_ms_p50": round(statistics.median(graded) * 1000, 1),
        "graded_in_archive_ms_p95": round(pct(graded, 0.95) * 1000, 1),
        "graded_in_archive_ms_max": round(max(graded) * 1000, 1),
    }


async def store_appends(mongo_url: str, events: int) -> dict[str, Any]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    store = EventStore.on(client, f"bench_{uuid.uuid4().hex[:8]}", "bench")
    await store.ensure_indexes()
    actor = Actor(type="system", id="bench")
    started = time.perf_counter()
    for n in range(events):
        event = Envelope.new(
            IncidentResolved(reason="bench"),
            incident_id=f"inc-{n}",
            stream_id=f"incident-{n}",
            stream_version=1,
            actor=actor,
        )
        await store.append([event], expected_version=0)
    elapsed = time.perf_counter() - started
    await client.drop_database(store.db.name)
    await client.close()
    return {"appends": events, "appends_per_second": round(events / elapsed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--appends", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="yuqing-bench-") as tmp:
        infra = EmbeddedInfra(
            Settings(data_dir=Path(tmp), embedded_kafka_port=0, embedded_mongo_port=0)
        )
        resolved = infra.start()
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("YUQING_")},
            "KAFKA_BOOTSTRAP_SERVERS": str(resolved.kafka_bootstrap_servers),
            "MONGODB_URL": str(resolved.mongodb_url),
            "YUQING_HTTP_PORT": str(port),
            "YUQING_DATA_DIR": tmp,
            "YUQING_LOG_LEVEL": "WARNING",
            "YUQING_LOG_FORMAT": "json",
        }
        system = subprocess.Popen(
            [YUQING, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            token = ""
            assert system.stdout is not None
            for line in system.stdout:
                if line.startswith("YUQING_TOKEN="):
                    token = line.strip().split("=", 1)[1]
                    break
            if not token:
                print("yuqing up did not start", file=sys.stderr)
                return 1
            results = {
                "pipeline": asyncio.run(
                    pipeline(f"http://127.0.0.1:{port}", token, args.reports, args.concurrency)
                ),
                "event_store": asyncio.run(store_appends(str(resolved.mongodb_url), args.appends)),
                "bench_process_max_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
            }
        finally:
            system.terminate()
            system.wait(timeout=30)
            infra.stop()
    print(json.dumps(results, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
