"""`AttachmentAdded` as intake publishes it, handed to every other service on the fakes:
those with no business with it pass it by without a dead letter, and the archive lists
the file with its sha256 on the incident."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.cli import composition_root
from services.intake.attachments import MemoryAttachmentStore
from services.intake.bootstrap import IntakeParts, build
from shared.events import Envelope
from shared.service import Dependencies
from tests.fakes.harness import fake_service
from tests.unit.test_intake_attachments import REPORT, png

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def attached() -> AsyncIterator[tuple[list[Envelope], dict[str, Any]]]:
    def built(deps: Dependencies) -> IntakeParts:
        return build(deps, attachment_store=MemoryAttachmentStore())

    async with fake_service("intake", built) as intake, intake.http() as api:
        monitor = intake.token("monitor-chen", "school-a", "monitor")
        report = (await api.post("/intake/v1/reports", json=REPORT, headers=monitor)).json()
        r = await api.post(
            f"/intake/v1/reports/{report['report_id']}/attachments",
            files={"file": ("截图.png", png(), "image/png")},
            headers=monitor,
        )
        assert r.status_code == 201, r.text
        yield await intake.published(), r.json()


@pytest.mark.parametrize("name", ["grading", "notification", "statement", "archive"])
async def test_every_service_takes_the_event_without_a_dead_letter(
    name: str, attached: tuple[list[Envelope], dict[str, Any]]
) -> None:
    events, _ = attached
    assert "AttachmentAdded" in {e.event_type for e in events}
    async with fake_service(name, composition_root(name)) as service:
        await service.consume(*events)
        assert service.dead_letters == []


async def test_the_archive_lists_the_file_with_the_sha256_intake_answered(
    attached: tuple[list[Envelope], dict[str, Any]],
) -> None:
    events, added = attached
    async with fake_service("archive", composition_root("archive")) as archive:
        await archive.consume(*events)
        admin = archive.token("admin", "county", "admin")
        async with archive.http() as api:
            view = await api.get(f"/archive/v1/incidents/{added['incident_id']}", headers=admin)
            verified = await api.get(
                f"/archive/v1/incidents/{added['incident_id']}/verify", headers=admin
            )

    [listed] = view.json()["attachments"]
    assert (listed["attachment_id"], listed["filename"], listed["sha256"]) == (
        added["attachment_id"],
        "截图.png",
        hashlib.sha256(png()).hexdigest(),
    )
    assert verified.json()["ok"] is True
