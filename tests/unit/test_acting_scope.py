"""Reading every unit is not acting for every unit: an analyst sees the whole county's
incidents, and with another role beside it (`leader,analyst` of a school) it changes only
what its own unit may change. An administrator acts for every unit."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes.harness import FakeService
from tests.unit.test_intake_service import (
    REASON,
    api,
    clock,
    file,
    intake,
    leader,
    report,
    types,
)

pytestmark = pytest.mark.asyncio

__all__ = ["api", "clock", "intake"]  # the fixtures, used by name


async def test_a_leader_who_is_also_an_analyst_reads_another_units_incident_and_changes_nothing(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    incident = (await file(api, leader(intake), unit_ids=["school-a"]))["incident_id"]
    base = f"/intake/v1/incidents/{incident}"
    other_school = intake.token("leader-b", "school-b", "leader", "analyst")

    assert (await api.get(base, headers=other_school)).status_code == 200
    for action in ("resolve", "dismiss"):
        answer = await api.post(f"{base}/{action}", json=REASON, headers=other_school)
        assert answer.status_code == 403, (action, answer.text)
    filed = await api.post(
        "/intake/v1/reports", json=report(unit_ids=["school-a"]), headers=other_school
    )
    assert filed.status_code == 403, filed.text
    assert "IncidentResolved" not in await types(intake, incident)
    assert "IncidentDismissed" not in await types(intake, incident)

    admin = intake.token("admin", "county", "admin")
    resolved = await api.post(f"{base}/resolve", json=REASON, headers=admin)
    assert resolved.status_code == 200, resolved.text
