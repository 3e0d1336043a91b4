"""The approval inbox (GET /statements/v1/inbox) the console shows: what waits for the
caller's step, by role, unit and sight, never their own writing; and what they wrote,
with its rejections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.statement.bootstrap import build
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.unit.test_statement_service import (
    API,
    T0,
    People,
    Upstream,
    approve,
    known,
    submitted,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    settings = fake_settings(conflict_retry_attempts=3, conflict_retry_backoff_seconds=0)
    async with fake_service("statement", build, settings=settings, clock=lambda: T0) as running:
        yield running


async def inbox(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, list[str]]:
    r = await api.get(f"{API}/inbox", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, list[dict[str, Any]]] = r.json()
    return {part: [s["statement_id"] for s in body[part]] for part in ("waiting", "mine")}


async def test_a_statement_waits_in_the_inbox_of_whoever_fills_its_next_step(
    service: FakeService,
) -> None:
    who, upstream = People(service), Upstream()
    await known(service, upstream, "inc-1", 1)
    async with service.http() as api:
        assert (await api.get(f"{API}/inbox")).status_code == 401
        sid = await submitted(api, "inc-1", who)

        assert await inbox(api, who.office) == {"waiting": [sid], "mine": []}
        # The next step is the office's: the task force waits its turn; the author never
        # clears their own; another school's holder of every role does not see the incident.
        assert await inbox(api, who.propaganda) == {"waiting": [], "mine": []}
        assert await inbox(api, who.author) == {"waiting": [], "mine": [sid]}
        assert await inbox(api, who.head) == {"waiting": [], "mine": []}
        assert await inbox(api, who.other_school) == {"waiting": [], "mine": []}

        assert (await approve(api, sid, who.office)).status_code == 200
        assert await inbox(api, who.office) == {"waiting": [], "mine": []}
        assert await inbox(api, who.propaganda) == {"waiting": [sid], "mine": []}

        back = {"comment": "请补充调查结论"}
        r = await api.post(f"{API}/statements/{sid}/reject", json=back, headers=who.propaganda)
        assert r.status_code == 200, r.text
        assert await inbox(api, who.propaganda) == {"waiting": [], "mine": []}
        mine = (await api.get(f"{API}/inbox", headers=who.author)).json()["mine"]
        assert [(s["state"], s["rejections"][-1]["comment"]) for s in mine] == [
            ("rejected", "请补充调查结论")
        ]
