"""Running a service from the parts its composition root built.

Each service's `bootstrap.build(deps)` assembles, in one readable function, its store's
repositories, projections, domain collaborators, handler map, router and background
loops, from the dependencies it is given (tests give fakes). `ServiceRunner` only runs
those parts: the HTTP app around the router, the consumer around the handler map, the
outbox relay around the store, and the loops; it decides nothing about the service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener

from shared.api import RateLimiter, create_app
from shared.auth import TokenService
from shared.bus import STOP_WAIT_SECONDS, EventConsumer, OutboxRelay, make_broker
from shared.catalogue import Catalogue
from shared.clock import Clock, utcnow
from shared.directory import Directory
from shared.handlers import HandlerMap
from shared.metrics import CONSUMER_LAG, OUTBOX_BACKLOG
from shared.repository import CommandRunner, RetryPolicy
from shared.settings import Settings
from shared.store import Document, EventStore
from shared.visibility import Visibility

log = structlog.get_logger("yuqing.service")

Loop = Callable[[], Coroutine[Any, Any, None]]

# Opt-in observers of every MongoDB command the services' clients send (`make bench`
# registers one to count commands per report); empty in normal runs.
COMMAND_LISTENERS: list[CommandListener] = []


@dataclass(frozen=True)
class Context:
    """What the process gives every service it hosts."""

    settings: Settings
    tokens: TokenService
    directory: Directory
    catalogue: Catalogue
    limiter: RateLimiter  # one per process: every app of the process counts in it

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        return cls(
            settings=settings,
            tokens=TokenService.from_settings(settings),
            directory=Directory.load(settings.directory_path),
            catalogue=Catalogue.load(settings.catalogue_path),
            limiter=RateLimiter(settings.rate_limit),
        )


@dataclass(frozen=True)
class Dependencies:
    """What a composition root builds a service from."""

    settings: Settings
    directory: Directory
    catalogue: Catalogue
    store: EventStore
    clock: Clock = utcnow

    @property
    def visibility(self) -> Visibility:
        return Visibility(self.directory)

    def command_runner(self) -> CommandRunner:
        s = self.settings
        return CommandRunner(
            self.store,
            RetryPolicy(
                attempts=s.conflict_retry_attempts,
                first_backoff=s.conflict_retry_backoff_seconds,
                max_backoff=s.conflict_retry_max_backoff_seconds,
            ),
        )


@dataclass
class ServiceParts:
    """One service, assembled: what it serves, what it reacts to, what runs beside it."""

    name: str
    prefix: str
    title: str
    description: str
    store: EventStore
    router: APIRouter
    handlers: HandlerMap = field(default_factory=HandlerMap)
    consumes: tuple[str, ...] = ()
    setup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    background: list[Loop] = field(default_factory=list)
    # The service's own figures for /metrics, sampled by the runner every interval.
    gauges: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return f"{self.name}.events"


P = TypeVar("P", bound=ServiceParts)
Build = Callable[[Dependencies], P]


# How long a stop waits for a consumer that has not yet joined its group to let go.
JOINING_STOP_SECONDS = 1.0


async def _drop_connections(subscriber: object) -> None:
    """Close a joining consumer's connections without its LeaveGroup (which would wait for
    the rebalance): the broker sees a member gone, as after a crash, and stops at once."""
    consumer = getattr(subscriber, "consumer", None)
    client = getattr(consumer, "_client", None)  # aiokafka's; no public close without leave
    if client is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(JOINING_STOP_SECONDS):
                await client.close()


# Check values under which a service takes requests: a consumer still joining its group
# does not stop the API, which stores writes and serves reads on its own.
READY = frozenset({"ok", "joining"})


def ready(checks: dict[str, str]) -> bool:
    return all(v in READY for v in checks.values())


class ServiceRunner(Generic[P]):
    """Runs one service's parts: its app, consumer, outbox relay and loops."""

    def __init__(
        self,
        parts: P,
        ctx: Context,
        broker: KafkaBroker,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        parts.handlers.check(parts.name, parts.consumes)
        self.parts = parts
        self.ctx = ctx
        self.settings = ctx.settings
        self.name = parts.name
        self.prefix = parts.prefix
        self.store = parts.store
        self.db = parts.store.db
        self.broker = broker
        self._close = close
        self.relay = OutboxRelay(self.name, self.store, broker, self.settings)
        self.consumer: EventConsumer | None = None
        if parts.handlers:
            self.consumer = EventConsumer(
                self.name, self.store, broker, self.settings, parts.handlers
            )
            self.consumer.subscribe(parts.consumes)
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.joined = False  # the consumer group joined (a service consuming nothing: at once)
        self.app = self._build_app()

    @classmethod
    def connect(
        cls, name: str, build: Build[P], ctx: Context, clock: Clock = utcnow
    ) -> ServiceRunner[P]:
        """The service on the configured MongoDB and Kafka, in a database of its own."""
        settings = ctx.settings
        assert settings.mongodb_url, "MongoDB URL must be resolved first"
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            settings.mongodb_url,
            tz_aware=True,
            appname=f"yuqing-{name}",
            event_listeners=list(COMMAND_LISTENERS),
            # Fail fast when the database is away, and acknowledge only journaled writes.
            serverSelectionTimeoutMS=int(settings.mongodb_server_selection_timeout_seconds * 1000),
            w="majority",
            journal=True,
        )
        store = EventStore.on(
            client,
            settings.database_name(name),
            name,
            transaction_timeout=settings.mongodb_transaction_timeout_seconds,
        )
        parts = build(Dependencies(settings, ctx.directory, ctx.catalogue, store, clock))
        return cls(parts, ctx, make_broker(settings, name), close=client.close)

    def _build_app(self) -> FastAPI:
        app = create_app(
            self.name,
            self.prefix,
            title=self.parts.title,
            description=self.parts.description,
            state={"tokens": self.ctx.tokens},
            settings=self.ctx.settings,
            limiter=self.ctx.limiter,
        )
        app.include_router(self.parts.router, prefix=self.prefix)

        @app.get(f"{self.prefix}/healthz", tags=["operations"])
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.name}

        @app.get(
            f"{self.prefix}/readyz",
            tags=["operations"],
            responses={503: {"description": "a dependency is down or the service is starting"}},
        )
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ok = ready(checks)
            return JSONResponse(
                {"status": "ok" if ok else "unavailable", "checks": checks},
                status_code=200 if ok else 503,
            )

        return app

    async def start(self) -> None:
        await self.store.ensure_indexes()
        for step in self.parts.setup:
            await step()
        # The producer first: the relay and the dead-letter topic can send at once. Joining
        # the consumer group waits for a rebalance (after a crash, until the dead member's
        # session expires), so it happens beside the HTTP API instead of before it.
        await self.broker.connect()
        self.relay.start()
        for loop in (*self.parts.background, self._observe, self._join):
            self._tasks.append(asyncio.create_task(loop(), name=f"{self.name}-{loop.__name__}"))
        self.started = True
        log.info("service started", service=self.name)

    async def _join(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.broker.start()
                self.joined = True
                log.info("consumer joined its group", service=self.name)
                return
            except KafkaError as exc:
                log.warning("joining the consumer group failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        """Stop taking work (loops, then the consumer, its message in hand finished), send
        what the outbox can within the drain bound, then let go of the broker and database."""
        # A consumer still joining its group holds a JoinGroup the broker answers only at
        # the end of the rebalance: a stop does not wait for that, it lets the member go.
        joining = not self.joined
        bound = JOINING_STOP_SECONDS if joining else None
        was_started, self.started = self.started, False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                async with asyncio.timeout(bound or STOP_WAIT_SECONDS):
                    await task
            except TimeoutError:
                log.warning("a loop did not stop in time", service=self.name, loop=task.get_name())
            except asyncio.CancelledError:
                continue  # what a cancelled loop ends with
            except Exception as exc:
                log.warning("a loop failed as it stopped", service=self.name, error=str(exc))
        if self.consumer is not None:
            self.consumer.stopping.set()
        for subscriber in self.broker.subscribers:
            try:
                async with asyncio.timeout(bound):
                    await subscriber.stop()
            except TimeoutError:
                await _drop_connections(subscriber)
            except Exception as exc:
                log.warning("consumer stop failed", service=self.name, error=str(exc))
        await self.relay.stop(drain=self.settings.shutdown_drain_seconds if was_started else 0)
        with contextlib.suppress(TimeoutError, Exception):
            async with asyncio.timeout(bound):
                await self.broker.stop()
        if self._close is not None:
            await self._close()
        self.started = False
        log.info("service stopped", service=self.name)

    async def _observe(self) -> None:
        # Its consumer calls wait inside aiokafka, where a cancel can be swallowed: it
        # also ends when the service is no longer started.
        while self.started:
            await self.sample_metrics()
            await asyncio.sleep(self.settings.metrics_interval_seconds)

    async def sample_metrics(self) -> None:
        """Sample what /metrics shows of the outbox, the consumer and the service's own
        figures. Every replica samples, so each answers its own scrape truthfully."""
        try:
            OUTBOX_BACKLOG.labels(self.name).set(await self.store.count_unpublished())
            await self._sample_lag()
            for gauge in self.parts.gauges:
                await gauge()
        except Exception as exc:  # a figure missed is no reason to stop sampling
            log.warning("metrics sample failed", service=self.name, error=str(exc))

    async def _sample_lag(self) -> None:
        for subscriber in self.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if consumer is None:
                continue
            partitions = list(consumer.assignment())
            if not partitions:
                continue
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                committed = await consumer.committed(tp)
                lag = max(ends.get(tp, 0) - (committed or 0), 0)
                CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(lag)

    async def readiness(self) -> dict[str, str]:
        # Each dependency by name, "ok" or "unavailable": the errors are in the log, not here.
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(
                self.store.ping(), timeout=self.settings.mongodb_server_selection_timeout_seconds
            )
            checks["mongodb"] = "ok"
        except Exception:
            checks["mongodb"] = "unavailable"
        answers = self.relay.healthy and await self._broker_answers()
        checks["kafka"] = "ok" if answers else "unavailable"
        checks["started"] = "ok" if self.started else "starting"
        # Informational: HTTP is served while the consumer joins its group (see READY).
        checks["consumer"] = "ok" if self.joined else "joining"
        return checks

    async def _broker_answers(self) -> bool:
        """The broker describes its cluster within the timeout: an idle relay has sent
        nothing that would have failed, and a frozen broker keeps its connections open."""
        try:
            return await self.broker.ping(timeout=self.settings.kafka_ping_timeout_seconds)
        except Exception:
            return False

    def describe(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "prefix": self.prefix,
            "openapi": f"{self.prefix}/openapi.json",
            "docs": f"{self.prefix}/docs",
        }
