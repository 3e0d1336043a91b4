"""A service built through its own composition root on the in-memory fakes.

Nothing connects: the store is FakeMongo, and the Kafka broker is built but never
started, so consumed events are handed to the service's consumer directly (the same
dispatch, inbox mark and dead-lettering path as a message from Kafka) and what it would
publish is read from its outbox.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from shared.bus import make_broker, signed_headers
from shared.clock import Clock, utcnow
from shared.events import Envelope
from shared.service import Build, Context, Dependencies, ServiceParts, ServiceRunner
from shared.settings import Settings
from shared.store import EVENTS, document_to_event
from tests.fakes.mongo import FakeMongo

P = TypeVar("P", bound=ServiceParts)

SECRET = "fake-layer-secret-key-long-enough-for-hs256"
BUS_SECRET = "fake-layer-bus-secret-long-enough-to-sign-events"


def fake_settings(tmp: Path | None = None, **overrides: Any) -> Settings:
    return Settings(
        kafka_bootstrap_servers="127.0.0.1:1",  # never dialled: the broker is not started
        mongodb_url="mongodb://127.0.0.1:1",
        secret=SECRET,
        bus_secret=BUS_SECRET,
        data_dir=tmp or Path(tempfile.gettempdir()) / "yuqing-fake",
        **overrides,
    )


class FakeService:
    """One service on fakes: its runner (app, store, parts) and ways to drive it."""

    def __init__(self, runner: ServiceRunner[Any]) -> None:
        self.runner = runner
        self.parts = runner.parts
        self.store = runner.store
        self.db = runner.db
        self.ctx = runner.ctx
        self.dead_letters: list[tuple[str, str]] = []  # (topic, reason), as the consumer sent
        if runner.consumer is not None:

            async def dead_letter(raw: bytes, topic: str, reason: str) -> None:
                self.dead_letters.append((topic, reason))

            # The broker is never started: what would go to the dead-letter topic is kept.
            runner.consumer.dead_letter = dead_letter  # type: ignore[method-assign]

    def token(self, sub: str, unit: str, *roles: str) -> dict[str, str]:
        token = self.ctx.tokens.issue(sub, unit, list(roles))
        return {"Authorization": f"Bearer {token}"}

    async def consume(self, *events: Envelope) -> None:
        """Hand events to the service's consumer as Kafka would, one after the other, each
        signed by its topic's owner as that service's outbox relay signs it."""
        consumer = self.runner.consumer
        assert consumer is not None, f"{self.runner.name} consumes nothing"
        for event in events:
            producer = event.topic.removesuffix(".events")
            headers = signed_headers(event, producer, consumer.keys)
            await self.receive(event.to_json(), event.topic, headers)

    async def receive(self, raw: bytes, topic: str, headers: dict[str, str]) -> None:
        """Hand one message to the consumer as it came off `topic`: checked, then handled."""
        assert self.runner.consumer is not None, f"{self.runner.name} consumes nothing"
        await self.runner.consumer.receive(raw, self.runner.settings.topic(topic), headers)

    async def published(self, event_type: str | None = None) -> list[Envelope]:
        """Everything the service has stored for its outbox, in store order."""
        query = {"event_type": event_type} if event_type else {}
        cursor = self.store.db[EVENTS].find(query, sort=[("seq", 1)])
        return [document_to_event(doc) async for doc in cursor]

    def http(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.runner.app)
        return httpx.AsyncClient(transport=transport, base_url="http://test")


@asynccontextmanager
async def fake_service(
    name: str,
    build: Build[P],
    *,
    settings: Settings | None = None,
    clock: Clock = utcnow,
    mongo: FakeMongo | None = None,
) -> AsyncIterator[FakeService]:
    settings = settings or fake_settings()
    ctx = Context.from_settings(settings)
    mongo = mongo or FakeMongo()
    store = mongo.store(name)
    parts = build(Dependencies(settings, ctx.directory, ctx.catalogue, store, clock))
    runner = ServiceRunner(parts, ctx, make_broker(settings, name))
    await store.ensure_indexes()
    for step in parts.setup:
        await step()
    yield FakeService(runner)
