"""The database goes away under running services, and comes back.

Intake (its API) and grading (its consumer of intake's events) on an embedded broker and
a SecantusDB that this test starts itself, so that it can kill it: while it is gone a
write and a read answer 503 at once with the clear error, `/readyz` names the database;
once it is back the API works again, nothing accepted before the kill is lost, the
outbox relays everything stored and the consumer grades every incident, dead-lettering
nothing (the outage was transient, not the events' fault).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.grading.bootstrap import build as build_grading
from services.intake.bootstrap import IntakeParts, build
from shared.bus import ensure_topics
from shared.embedded import ChildServer, free_port, secantus_server, secantus_url, tansu_server
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.service.test_intake_service import OTHER_MATTER, report

pytestmark = pytest.mark.asyncio

# Generous: the answer is due within the 2 s server-selection timeout; this bound only
# tells "answered" from "hung on the driver's 30 s / 120 s defaults" on a loaded machine.
ANSWERED_WITHIN = 10.0
START_TIMEOUT = 60.0
# Five matters apart, so that each report opens an incident of its own.
MATTERS = (
    "某校食堂饭菜变质引发家长质疑",
    "县道养护施工路段夜间无警示灯",
    "小区供水管道破裂停水三天",
    "景区门票涨价游客不满",
    "医院挂号系统崩溃患者排长队",
)


@dataclass
class Database:
    """A SecantusDB of this test's own, on a fixed port and storage, to kill and restart."""

    port: int
    storage: Path
    logs: Path
    server: ChildServer | None = None

    @property
    def url(self) -> str:
        return secantus_url(self.port)

    def start(self) -> None:
        self.server = secantus_server(self.port, self.storage, self.logs)
        self.server.start(START_TIMEOUT)

    def kill(self) -> None:
        """kill -9: no shutdown of its own, only what it had put on disk survives."""
        assert self.server is not None
        assert self.server.process is not None
        self.server.process.kill()
        self.server.process.wait(timeout=10)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    server = tansu_server(free_port(), tmp_path / "logs")
    server.start(START_TIMEOUT)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(free_port(), tmp_path / "mongo", tmp_path / "logs")
    db.start()
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def settings(broker: str, database: Database, tmp_path: Path) -> Settings:
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap_servers=broker,
        mongodb_url=database.url,
        db_prefix=f"r{run}",
        topic_prefix=f"r{run}.",
        topic_partitions=1,
        data_dir=tmp_path,
        secret="reliability-secret-key-long-enough-for-hs256",
        outbox_poll_seconds=0.1,
        consumer_retry_max_seconds=1.0,
    )


@pytest.fixture
async def intake(settings: Settings) -> AsyncIterator[ServiceRunner[IntakeParts]]:
    await ensure_topics(settings)
    service = ServiceRunner.connect("intake", build, Context.from_settings(settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def grading(settings: Settings) -> AsyncIterator[tuple[ServiceRunner[Any], list[str]]]:
    """Grading, with what its consumer dead-letters kept (the reasons)."""
    await ensure_topics(settings)
    service = ServiceRunner.connect("grading", build_grading, Context.from_settings(settings))
    dead: list[str] = []
    assert service.consumer is not None
    send = service.consumer.dead_letter

    async def dead_letter(raw: bytes, topic: str, reason: str) -> None:
        dead.append(reason)
        await send(raw, topic, reason)

    service.consumer.dead_letter = dead_letter  # type: ignore[method-assign]
    await service.start()
    yield service, dead
    await service.stop()


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def test_a_database_outage_answers_503_at_once_and_loses_nothing_accepted(
    intake: ServiceRunner[IntakeParts],
    grading: tuple[ServiceRunner[Any], list[str]],
    database: Database,
) -> None:
    grader, dead_letters = grading
    token = intake.ctx.tokens.issue("monitor-chen", "school-a", ["monitor"])
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=intake.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers, timeout=60.0
    ) as api:
        accepted = []
        incidents: set[str] = set()
        for n, title in enumerate(MATTERS):
            body = report(url=f"https://news.example.com/outage/{n}.html", title=title, excerpt="")
            resp = await api.post("/intake/v1/reports", json=body)
            assert resp.status_code in (200, 201), resp.text  # opened, or joined, the matter
            accepted.append(resp.json()["report_id"])
            incidents.add(resp.json()["incident_id"])

        database.kill()
        print(f"injected: kill -9 of the database after {len(accepted)} reports accepted")

        post, post_took = await timed(
            api.post("/intake/v1/reports", json=report(url="https://x.example/a", **OTHER_MATTER))
        )
        get, get_took = await timed(api.get(f"/intake/v1/reports/{accepted[0]}"))
        ready, ready_took = await timed(api.get("/intake/v1/readyz"))
        print(
            f"while it is down: POST {post.status_code} in {post_took:.2f}s, "
            f"GET {get.status_code} in {get_took:.2f}s, readyz {ready.status_code} "
            f"in {ready_took:.2f}s: {ready.json()}"
        )
        assert post.status_code == 503, post.text
        assert post.json()["error"]["code"] == "unavailable"
        assert "database" in post.json()["error"]["message"]
        assert get.status_code == 503, get.text
        assert get.json()["error"]["code"] == "unavailable"
        assert ready.status_code == 503
        assert ready.json()["checks"]["mongodb"] == "unavailable"
        assert ready.json()["checks"]["kafka"] == "ok", "the broker is blamed for the database"
        assert max(post_took, get_took, ready_took) < ANSWERED_WITHIN

        database.start()
        print("injected: the database started again on the same port and storage")

        deadline = time.monotonic() + 30
        while (await api.get("/intake/v1/readyz")).json()["checks"]["mongodb"] != "ok":
            assert time.monotonic() < deadline, "the database did not come back within 30s"
            await asyncio.sleep(0.2)

        after = await api.post(
            "/intake/v1/reports", json=report(url="https://x.example/up", **OTHER_MATTER)
        )
        assert after.status_code == 201, after.text
        found = [
            (await api.get(f"/intake/v1/reports/{report_id}")).status_code for report_id in accepted
        ]
        print(f"checked: {found.count(200)} of {len(accepted)} accepted reports readable")
        assert found == [200] * len(accepted)

        # And the outbox catches up by itself: every stored event relayed to the broker.
        deadline = time.monotonic() + 30
        while unsent := await intake.db["events"].count_documents({"published": False}):
            assert time.monotonic() < deadline, f"{unsent} stored events never relayed"
            await asyncio.sleep(0.2)
        stored = await intake.db["events"].count_documents({})
        print(f"checked: all {stored} stored events relayed after the outage")

    # Grading was consuming while the database died: it retries, and grades every incident.
    leader = intake.ctx.tokens.issue("leader-zhang", "county", ["leader"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=grader.app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {leader}"},
        timeout=60.0,
    ) as grades:
        deadline = time.monotonic() + 30
        for incident_id in sorted(incidents):
            path = f"/grading/v1/incidents/{incident_id}/grade"
            while (await grades.get(path)).status_code != 200:
                assert time.monotonic() < deadline, f"{incident_id} never graded"
                await asyncio.sleep(0.2)
    print(f"checked: all {len(incidents)} incidents graded; dead-lettered: {dead_letters}")
    assert dead_letters == []
