"""What a test of notification's duties reads and does through its API, as the office and
the leading group would."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from tests.fakes.harness import FakeService

LIST = "/notifications/v1/obligations"
FULFIL = "/notifications/v1/obligations/{}/fulfil"


async def duties_by_kind(service: FakeService, incident_id: str) -> dict[str, dict[str, Any]]:
    """The incident's duties as the office lists them, by kind (the latest of each)."""
    office = service.token("office-li", "county", "office")
    async with service.http() as http:
        r = await http.get(LIST, params={"incident_id": incident_id}, headers=office)
    assert r.status_code == 200, r.text
    rows = sorted(r.json()["obligations"], key=lambda d: d["counted_from"])
    return {d["kind"]: d for d in rows}


async def fulfil(
    service: FakeService, obligation_id: str, at: datetime | None = None
) -> httpx.Response:
    """The leading group files the duty (at `at`, or now)."""
    leader = service.token("leader-zhang", "county", "leader")
    body = {"fulfilled_at": at.isoformat()} if at is not None else {}
    async with service.http() as http:
        return await http.post(FULFIL.format(obligation_id), json=body, headers=leader)
