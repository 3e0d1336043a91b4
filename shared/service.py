"""What every service is made of: its database, its broker connection, its outbox relay,
its consumer and its HTTP app. A service subclass supplies routes, handlers and set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pymongo import AsyncMongoClient

from shared.api import create_app
from shared.auth import Directory, TokenService
from shared.bus import EventConsumer, Handler, OutboxRelay, make_broker
from shared.events import ALL_TOPICS, Envelope
from shared.settings import Settings
from shared.store import Document, EventStore

log = structlog.get_logger("yuqing.service")


@dataclass(frozen=True)
class Context:
    """What the process gives every service it hosts."""

    settings: Settings
    tokens: TokenService
    directory: Directory

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        return cls(
            settings=settings,
            tokens=TokenService(
                settings.signing_key,
                settings.token_issuer,
                timedelta(seconds=settings.token_ttl_seconds),
            ),
            directory=Directory.load(settings.directory_path),
        )


class Service:
    """Base of the five services. Subclasses set the class attributes and override hooks."""

    name: ClassVar[str]
    prefix: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str] = ""
    consumes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.directory = ctx.directory
        assert self.settings.mongodb_url, "MongoDB URL must be resolved first"
        self.client: AsyncMongoClient[Document] = AsyncMongoClient(
            self.settings.mongodb_url, tz_aware=True, appname=f"yuqing-{self.name}"
        )
        self.store = EventStore(self.client, self.settings.database_name(self.name))
        self.db = self.store.db
        self.broker = make_broker(self.settings, self.name)
        self.relay = OutboxRelay(self.name, self.store, self.broker, self.settings)
        if self.topic in ALL_TOPICS:
            # Declared for the AsyncAPI document; the relay publishes what the store holds.
            self.broker.publisher(
                self.settings.topic(self.topic),
                title=self.topic,
                description=f"Events of the {self.name} service, keyed by incident_id",
                schema=Envelope,
            )
        self.consumer: EventConsumer | None = None
        handlers = self.handlers()
        if handlers:
            self.consumer = EventConsumer(
                self.name, self.store, self.broker, self.settings, handlers
            )
            self.consumer.subscribe(self.consumes)
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.app = self._build_app()

    @property
    def topic(self) -> str:
        return f"{self.name}.events"

    # hooks ----------------------------------------------------------------------------

    def routes(self) -> APIRouter:
        """The service's HTTP routes, relative to its prefix."""
        return APIRouter()

    def handlers(self) -> Mapping[str, Handler]:
        """Consumed event type -> handler; each runs in a transaction with the inbox mark."""
        return {}

    async def setup(self) -> None:
        """Create projection indexes, load policies: anything needed before serving."""

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Long-running loops (timers, schedulers) started with the service."""
        return []

    # lifecycle --------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = create_app(
            self.name,
            self.prefix,
            title=self.title,
            description=self.description,
            state={"tokens": self.ctx.tokens, "directory": self.directory, "service": self},
        )
        app.include_router(self.routes(), prefix=self.prefix)

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
        await self.setup()
        await self.broker.start()
        self.relay.start()
        for loop in self.background():
            self._tasks.append(asyncio.create_task(loop(), name=f"{self.name}-{loop.__name__}"))
        self.started = True
        log.info("service started", service=self.name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.relay.stop()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        await self.client.close()
        self.started = False
        log.info("service stopped", service=self.name)

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.store.ping(), timeout=2.0)
            checks["mongodb"] = "ok"
        except Exception as exc:
            checks["mongodb"] = f"error: {type(exc).__name__}"
        checks["kafka"] = "ok" if self.relay.healthy else f"error: {self.relay.last_error}"
        checks["started"] = "ok" if self.started else "starting"
        return checks

    def describe(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "prefix": self.prefix,
            "openapi": f"{self.prefix}/openapi.json",
            "docs": f"{self.prefix}/docs",
        }
