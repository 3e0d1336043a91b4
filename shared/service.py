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
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener

from shared.api import RateLimiter, create_app
from shared.auth import TokenService
from shared.bus import EventConsumer, OutboxRelay, make_broker
from shared.catalogue import Catalogue
from shared.clock import Clock, utcnow
from shared.directory import Directory
from shared.events import ALL_TOPICS, Envelope
from shared.handlers import HandlerMap
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

    @property
    def topic(self) -> str:
        return f"{self.name}.events"


P = TypeVar("P", bound=ServiceParts)
Build = Callable[[Dependencies], P]


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
        if parts.topic in ALL_TOPICS:
            # Declared for the AsyncAPI document; the relay publishes what the store holds.
            broker.publisher(
                self.settings.topic(parts.topic),
                title=parts.topic,
                description=f"Events of the {self.name} service, keyed by incident_id",
                schema=Envelope,
            )
        self.consumer: EventConsumer | None = None
        if parts.handlers:
            self.consumer = EventConsumer(
                self.name, self.store, broker, self.settings, parts.handlers
            )
            self.consumer.subscribe(parts.consumes)
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False
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

        @app.get(f"{self.prefix}/readyz", tags=["operations"])
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ok = all(v == "ok" for v in checks.values())
            return JSONResponse(
                {"status": "ok" if ok else "unavailable", "checks": checks},
                status_code=200 if ok else 503,
            )

        return app

    async def start(self) -> None:
        await self.store.ensure_indexes()
        for step in self.parts.setup:
            await step()
        await self.broker.start()
        self.relay.start()
        for loop in self.parts.background:
            self._tasks.append(asyncio.create_task(loop(), name=f"{self.name}-{loop.__name__}"))
        self.started = True
        log.info("service started", service=self.name)

    async def stop(self) -> None:
        """Stop taking work (loops, then the consumer, its message in hand finished), send
        what the outbox can within the drain bound, then let go of the broker and database."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.consumer is not None:
            self.consumer.stopping.set()
        for subscriber in self.broker.subscribers:
            with contextlib.suppress(Exception):
                await subscriber.stop()
        await self.relay.stop(drain=self.settings.shutdown_drain_seconds if self.started else 0)
        with contextlib.suppress(Exception):
            await self.broker.stop()
        if self._close is not None:
            await self._close()
        self.started = False
        log.info("service stopped", service=self.name)

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
        checks["kafka"] = "ok" if self.relay.healthy else "unavailable"
        checks["started"] = "ok" if self.started else "starting"
        return checks

    def describe(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "prefix": self.prefix,
            "openapi": f"{self.prefix}/openapi.json",
            "docs": f"{self.prefix}/docs",
        }
