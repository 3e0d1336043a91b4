"""What an operator's Prometheus scrape of /metrics reads of a running system: a consumer's
lag per topic and partition while messages wait, and none once it has caught up; the true
outbox backlog while the relay is held (above the relay's batch of 200); FastStream's
middleware counting what a broker consumed and published; the instrumentator's HTTP
counts and latency by route template, status and service.

Each scrape is a GET of the gateway's /metrics with an analyst's token, as Prometheus is
configured to scrape it; the figures are the ones the services sample by themselves every
YUQING_METRICS_INTERVAL_SECONDS (short here), not sampled by the test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from prometheus_client.parser import text_string_to_metric_families

from services.cli import composition_root
from shared.bus import ensure_topics
from shared.events import INTAKE_TOPIC, Actor, Envelope, IncidentResolved
from shared.gateway import Gateway
from shared.handlers import HandlerMap
from shared.identity import Role
from shared.service import Context, ServiceParts, ServiceRunner
from shared.settings import Settings
from shared.store import EventStore, UnitOfWork
from tests.service.upstream_events import wait_for

WAITING = 6
# More than the relay sends in one batch (YUQING_OUTBOX_BATCH_SIZE, 200): a backlog gauge
# of the last batch's length could never show it.
BACKLOG = 201


@pytest.fixture
def sampled(settings: Settings) -> Settings:
    """The test's settings with the services sampling their figures five times a second,
    and no rate limit in the way of the scrapes."""
    return settings.model_copy(
        update={"metrics_interval_seconds": 0.2, "rate_limit": "1000000/minute"}
    )


@dataclass
class Scrape:
    """The gateway's /metrics as Prometheus scrapes it: an analyst's bearer token."""

    api: httpx.AsyncClient
    headers: dict[str, str]

    @classmethod
    def of(cls, gateway: Gateway) -> Scrape:
        ctx = gateway.services[0].ctx
        token = ctx.tokens.issue("prometheus", "county", [Role.ANALYST])
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://t")
        return cls(api, {"Authorization": f"Bearer {token}"})

    async def samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of `name` whose labels include `labels`."""
        answer = await self.api.get("/metrics", headers=self.headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain")
        found = []
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    found.append((dict(sample.labels), sample.value))
        return found

    async def total(self, name: str, **labels: str) -> float:
        return sum(value for _, value in await self.samples(name, **labels))

    async def until(
        self, what: str, check: Callable[[], Awaitable[bool]], within: float = 30.0
    ) -> None:
        """Scrape every half second (Prometheus' interval is longer) until `check` holds."""
        try:
            async with asyncio.timeout(within):
                while not await check():
                    await asyncio.sleep(0.5)
        except TimeoutError:
            raise AssertionError(f"no scrape showed {what} within {within}s") from None


# --------------------------------------------------------------------------- a laggard


@dataclass
class Gate:
    """Holds every consumed event until the test lets them through."""

    open: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    handled: int = 0


def slow_parts(store: EventStore, gate: Gate) -> ServiceParts:
    async def held(event: Envelope, payload: IncidentResolved, uow: UnitOfWork) -> None:
        gate.entered.set()
        await gate.open.wait()
        gate.handled += 1

    # Named as intake, whose topic it publishes to, so its events carry intake's signature.
    return ServiceParts(
        name="intake",
        prefix="/laggard/v1",
        title="laggard",
        description="consumes only when let through",
        store=store,
        router=APIRouter(),
        handlers=HandlerMap().on(IncidentResolved, held),
        consumes=(INTAKE_TOPIC,),
    )


@pytest.fixture
async def laggard(
    sampled: Settings,
) -> AsyncIterator[tuple[ServiceRunner[ServiceParts], Gate, Scrape]]:
    await ensure_topics(sampled)
    gate = Gate()
    service = ServiceRunner.connect(
        "intake", lambda deps: slow_parts(deps.store, gate), Context.from_settings(sampled)
    )
    await service.start()
    scrape = Scrape.of(Gateway([service], sampled))
    yield service, gate, scrape
    gate.open.set()
    await scrape.api.aclose()
    await service.stop()


def resolved(n: int, prefix: str) -> Envelope:
    return Envelope.new(
        IncidentResolved(reason="舆情平息"),
        incident_id=f"{prefix}-{n}",
        stream_id=f"incident-{prefix}-{n}",
        stream_version=1,
        actor=Actor.system("intake"),
    )


async def test_a_scrape_shows_a_consumers_lag_while_it_is_behind_and_none_once_caught_up(
    laggard: tuple[ServiceRunner[ServiceParts], Gate, Scrape], sampled: Settings
) -> None:
    service, gate, scrape = laggard
    for n in range(WAITING):
        await service.store.append([resolved(n, "lag")], expected_version=0)
    await asyncio.wait_for(gate.entered.wait(), timeout=30)
    topic = sampled.topic(INTAKE_TOPIC)

    # Behind by all of them on Kafka; the embedded broker (Tansu) reports a partition's end
    # as one past the first record of its last produce request, so it may show less.
    async def behind() -> bool:
        lag = await scrape.total("yuqing_consumer_lag", service="intake", topic=topic)
        return 0 < lag <= WAITING

    await scrape.until(f"a lag on {topic}", behind)
    partitions = await scrape.samples("yuqing_consumer_lag", service="intake", topic=topic)
    assert sorted(labels["partition"] for labels, _ in partitions) == ["0", "1"]

    gate.open.set()

    async def caught_up() -> bool:
        lag = await scrape.total("yuqing_consumer_lag", service="intake", topic=topic)
        return gate.handled == WAITING and lag == 0

    await scrape.until("the lag back to 0", caught_up)


async def test_faststreams_middleware_counts_what_a_broker_consumed_and_published(
    laggard: tuple[ServiceRunner[ServiceParts], Gate, Scrape], sampled: Settings
) -> None:
    service, gate, scrape = laggard
    gate.open.set()
    topic = sampled.topic(INTAKE_TOPIC)
    for n in range(3):
        await service.store.append([resolved(n, "mw")], expected_version=0)
    await wait_for(lambda: _true(gate.handled == 3))

    async def counted() -> bool:
        processed = await scrape.total(
            "faststream_received_processed_messages_total",
            app_name="intake",
            handler=topic,
            status="acked",
        )
        return processed == 3

    await scrape.until("3 messages processed by the middleware's count", counted)
    # What the relay sent, and what the consumer received, with their timings.
    published = await scrape.total(
        "faststream_published_messages_total",
        app_name="intake",
        destination=topic,
        status="success",
    )
    assert published == 3
    received = ("faststream_received_messages_total", "intake", topic)
    assert await scrape.total(received[0], app_name=received[1], handler=received[2]) == 3
    took = await scrape.total(
        "faststream_received_processed_messages_duration_seconds_count",
        app_name="intake",
        handler=topic,
    )
    assert 1 <= took <= 3  # once per call of the handler: a batch is timed once
    sizes = await scrape.samples(
        "faststream_received_messages_size_bytes_sum", app_name="intake", handler=topic
    )
    assert sizes
    assert sizes[0][1] > 0


async def _true(value: bool) -> bool:
    return value


# --------------------------------------------------------------------------- the system


def report(n: int, run: str) -> dict[str, Any]:
    """A report of a matter of its own (nothing joins it to another)."""
    return {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "county",
        "url": f"https://figures.example.cn/{run}/{n}",
        "title": f"运维指标测试舆情 {uuid.uuid4().hex}",
        "excerpt": f"第 {n} 条 {uuid.uuid4().hex}",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 100, "reposts": 1, "comments": 1, "likes": 1},
        "unit_ids": ["school-a"],
    }


@pytest.fixture
async def system(sampled: Settings) -> AsyncIterator[tuple[Gateway, Scrape]]:
    """Intake and grading as `yuqing up` runs them, behind one gateway."""
    ctx = Context.from_settings(sampled)
    runners = [ServiceRunner.connect(n, composition_root(n), ctx) for n in ("intake", "grading")]
    gateway = Gateway(runners, sampled)
    await gateway.start()
    scrape = Scrape.of(gateway)
    yield gateway, scrape
    await scrape.api.aclose()
    await gateway.stop()


async def test_a_scrape_of_the_running_system_shows_the_true_backlog_then_the_lag_behind_it(
    system: tuple[Gateway, Scrape], sampled: Settings
) -> None:
    began = time.monotonic()
    gateway, scrape = system
    intake, grading = gateway.services
    await wait_for(lambda: _true(grading.joined), within=60)
    topic = sampled.topic(INTAKE_TOPIC)

    # The relay is held (as when the broker is away): every stored event waits.
    await intake.relay.stop()
    run = uuid.uuid4().hex[:8]
    monitor = intake.ctx.tokens.issue("monitor-chen", "school-a", [Role.MONITOR])

    async def post(n: int) -> None:
        answer = await scrape.api.post(
            "/intake/v1/reports",
            json=report(n, run),
            headers={"Authorization": f"Bearer {monitor}"},
        )
        assert answer.status_code == 201, answer.text

    route = {"service": "intake", "handler": "/intake/v1/reports", "method": "POST"}
    counted = await scrape.total("yuqing_http_requests_total", **route, status="201")
    timed = await scrape.total("yuqing_http_request_duration_seconds_count", **route)
    posted = 0
    while await intake.store.count_unpublished() <= BACKLOG:
        await asyncio.gather(*(post(posted + n) for n in range(8)))
        posted += 8
    waiting = await intake.store.count_unpublished()

    async def whole_backlog() -> bool:
        return await scrape.total("yuqing_outbox_backlog", service="intake") == waiting

    await scrape.until(f"the backlog of {waiting} (> {BACKLOG - 1})", whole_backlog)

    # Released, the relay sends them all at once: grading falls behind, and it shows.
    before = await scrape.total("yuqing_events_consumed_total", service="grading")
    intake.relay.start()
    seen: list[float] = []

    async def behind() -> bool:
        lag = await scrape.total("yuqing_consumer_lag", service="grading", topic=topic)
        seen.append(lag)
        return lag > 0

    await scrape.until(f"grading's lag on {topic} above 0", behind)
    consumed = await scrape.total("yuqing_events_consumed_total", service="grading") - before

    async def caught_up() -> bool:
        lag = await scrape.total("yuqing_consumer_lag", service="grading", topic=topic)
        backlog = await scrape.total("yuqing_outbox_backlog", service="intake")
        done = await scrape.total("yuqing_events_consumed_total", service="grading") - before
        return lag == 0 and backlog == 0 and done >= posted  # every report's incident graded

    await scrape.until("the backlog sent and grading caught up", caught_up, within=120)
    after = await scrape.total("yuqing_events_consumed_total", service="grading") - before
    assert after > consumed, "grading was behind when the lag showed: it handled more since"
    took = time.monotonic() - began
    print(f"{took:.0f} s: a backlog of {waiting} shown, then a lag of {max(seen)} behind it")

    # The instrumentator counted and timed every accepted report by its route template.
    now = await scrape.total("yuqing_http_requests_total", **route, status="201")
    assert now - counted == posted
    now = await scrape.total("yuqing_http_request_duration_seconds_count", **route)
    assert now - timed == posted
