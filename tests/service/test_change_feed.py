"""The console's event stream is fed by the archive database's change stream, on the real
broker and database, over real HTTP (uvicorn): a change to an incident view reaches, at
once, the streams of the people who may see it, and no one else's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from services.archive.bootstrap import build as build_archive
from shared.bus import ensure_topics
from shared.embedded import free_port
from shared.gateway import Gateway
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.service.upstream_events import bearer, feed, opened, wait_for

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[Gateway, str]]:
    await ensure_topics(settings)
    runner = ServiceRunner.connect("archive", build_archive, Context.from_settings(settings))
    gateway = Gateway([runner], settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(gateway, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: _true(server.started), within=60)
    assert gateway.feed is not None
    await wait_for(lambda: _true(gateway.feed is not None and gateway.feed.ready.is_set()))
    yield gateway, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 30)


async def _true(value: bool) -> bool:
    return value


async def changes(
    base: str, headers: dict[str, str], got: list[list[str]], stop: asyncio.Event
) -> None:
    """Read the caller's event stream, keeping each `change` event's incidents."""
    async with (
        httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10.0, read=120.0)) as http,
        http.stream("GET", "/events/v1/stream", headers=headers) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        kind = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "change":
                got.append(json.loads(line.removeprefix("data: "))["incidents"])
            if stop.is_set():
                return


async def test_a_change_reaches_at_once_only_those_who_may_see_it(
    settings: Settings, served: tuple[Gateway, str]
) -> None:
    gateway, base = served
    assert gateway.feed is not None
    school_a = bearer(settings, "monitor-chen", "school-a", "monitor")
    school_b = bearer(settings, "monitor-b", "school-b", "monitor")
    seen_by_a: list[list[str]] = []
    seen_by_b: list[list[str]] = []
    stop = asyncio.Event()
    readers = [
        asyncio.create_task(changes(base, school_a, seen_by_a, stop)),
        asyncio.create_task(changes(base, school_b, seen_by_b, stop)),
    ]
    try:
        await wait_for(lambda: _true(gateway.feed is not None and gateway.feed.streams == 2))
        await feed(settings, opened("inc-feed-a", units=("school-a",)))
        await wait_for(lambda: _true(["inc-feed-a"] in seen_by_a), within=30)
        # Then one B may see: B's first change names it, never A's incident.
        await feed(settings, opened("inc-feed-b", units=("school-b",)))
        await wait_for(lambda: _true(bool(seen_by_b)), within=30)
        assert seen_by_b[0] == ["inc-feed-b"]
        assert all("inc-feed-a" not in ids for ids in seen_by_b)
        assert all("inc-feed-b" not in ids for ids in seen_by_a)
    finally:
        stop.set()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    print(f"checked: school-a was told {seen_by_a}, school-b {seen_by_b}")
