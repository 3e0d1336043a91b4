"""The approval inbox (GET /statements/v1/inbox) the console shows: what waits for the
caller's step, by role, unit and sight, never their own writing; and what they wrote,
with its rejections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.statement.bootstrap import build
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Clock
from tests.paging import every_page
from tests.unit.test_statement_service import (
    API,
    T0,
    People,
    Upstream,
    approve,
    drafted,
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


PAGE = 2  # YUQING_MAX_PAGE_SIZE of `small_pages`


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def small_pages(clock: Clock) -> AsyncIterator[FakeService]:
    """The service with pages of at most PAGE statements a list (YUQING_MAX_PAGE_SIZE)."""
    settings = fake_settings(
        conflict_retry_attempts=3, conflict_retry_backoff_seconds=0, max_page_size=PAGE
    )
    async with fake_service("statement", build, settings=settings, clock=clock) as running:
        yield running


async def inbox_pages(
    api: httpx.AsyncClient, headers: dict[str, str]
) -> list[dict[str, list[str]]]:
    """Each page of the inbox, following `next_cursor` to the end: the ids of each list."""
    return [
        {part: [s["statement_id"] for s in body[part]] for part in ("waiting", "mine")}
        for body in await every_page(api, f"{API}/inbox", headers)
    ]


async def test_the_inbox_pages_both_lists_and_the_next_pages_hold_the_rest_once(
    small_pages: FakeService, clock: Clock
) -> None:
    who, upstream = People(small_pages), Upstream()
    office = who.office
    async with small_pages.http() as api:
        # Five level-2 statements wait for the office, drafted a minute apart; two the
        # office wrote itself (level 3: they wait for the school's head), at one moment.
        waiting = []
        for n in range(5):
            clock.now = T0 + timedelta(minutes=n)
            await known(small_pages, upstream, f"inc-w{n}", 2)
            waiting.append(await submitted(api, f"inc-w{n}", who))
        clock.now = T0 + timedelta(minutes=10)
        written = []
        for n in range(2):
            await known(small_pages, upstream, f"inc-m{n}", 3)
            written.append(await drafted(api, f"inc-m{n}", office))

        pages = await inbox_pages(api, office)
        too_many = await api.get(f"{API}/inbox", params={"limit": PAGE + 1}, headers=office)
        forged = await api.get(f"{API}/inbox", params={"cursor": "bm9wZQ"}, headers=office)

    # Oldest first, PAGE at a time; the office's own (tied in time) newest first by id,
    # all on the first page, so the later pages hold none of them again.
    assert pages == [
        {"waiting": waiting[:2], "mine": sorted(written, reverse=True)},
        {"waiting": waiting[2:4], "mine": []},
        {"waiting": waiting[4:], "mine": []},
    ]
    assert too_many.status_code == 422, too_many.text
    assert [d["field"] for d in too_many.json()["error"]["details"]] == ["limit"]
    assert "YUQING_MAX_PAGE_SIZE" in too_many.json()["error"]["message"]
    assert forged.status_code == 400, forged.text
    assert forged.json()["error"]["details"]["field"] == "cursor"


async def test_a_page_of_the_inbox_skips_what_is_not_the_callers_and_misses_nothing(
    small_pages: FakeService, clock: Clock
) -> None:
    """Statements another school's head fills the step of lie between the caller's: a
    page still holds PAGE of the caller's, and the next the rest."""
    who, upstream = People(small_pages), Upstream()
    school_a: list[str] = []
    async with small_pages.http() as api:
        for n in range(3):
            for school, author in (("school-a", who.author), ("school-b", who.other_school)):
                clock.now += timedelta(minutes=1)
                incident = f"inc-{school}-{n}"
                await small_pages.consume(upstream.opened(incident, (school,)))
                await small_pages.consume(upstream.graded(incident, 3))
                sid = await drafted(api, incident, author)
                r = await api.post(f"{API}/statements/{sid}/submit", headers=author)
                assert r.status_code == 200, r.text
                if school == "school-a":
                    school_a.append(sid)

        head = await inbox_pages(api, who.head)
        author = await inbox_pages(api, who.author)

    assert head == [{"waiting": school_a[:2], "mine": []}, {"waiting": school_a[2:], "mine": []}]
    newest_first = school_a[::-1]
    assert author == [
        {"waiting": [], "mine": newest_first[:2]},
        {"waiting": [], "mine": newest_first[2:]},
    ]
