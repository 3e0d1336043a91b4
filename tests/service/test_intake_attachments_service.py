"""Attached files on the real database: the bytes in intake's GridFS (bucket
`attachment_files`) with their sha256, a file larger than the ordinary body limit taken
and read back whole, and a failed append leaving no file behind."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pymongo.errors import ConnectionFailure

from services.intake.attachments import BUCKET
from services.intake.bootstrap import IntakeParts, build
from shared.bus import ensure_topics
from shared.service import Context, ServiceRunner
from shared.settings import Settings

IntakeService = ServiceRunner[IntakeParts]

pytestmark = pytest.mark.asyncio

REPORT: dict[str, Any] = {
    "source_type": "news",
    "source_name": "人民网",
    "media_tier": "central",
    "url": "https://news.example.com/2026/1121/attach.html",
    "title": "某校食堂饭菜变质引发家长质疑",
    "excerpt": "有家长在网上反映……",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "unit_ids": ["school-a"],
}
# A PNG header and 1.5 MiB after it: above YUQING_MAX_BODY_BYTES (1 MiB), several GridFS
# chunks (255 KiB each), a PNG by its magic number.
LARGE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * (6 * 1024)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[IntakeService]:
    await ensure_topics(settings)
    service = ServiceRunner.connect("intake", build, Context.from_settings(settings))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def api(service: IntakeService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def monitor(service: IntakeService) -> dict[str, str]:
    token = service.ctx.tokens.issue("monitor-chen", "school-a", ["monitor"])
    return {"Authorization": f"Bearer {token}"}


async def filed(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    r = await api.post("/intake/v1/reports", json=REPORT, headers=headers)
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_a_large_file_is_kept_in_gridfs_with_its_sha256_and_read_back_whole(
    service: IntakeService, api: httpx.AsyncClient
) -> None:
    headers = monitor(service)
    report = await filed(api, headers)

    r = await api.post(
        f"/intake/v1/reports/{report['report_id']}/attachments",
        files={"file": ("现场截图.png", LARGE, "image/png")},
        headers=headers,
    )

    assert r.status_code == 201, r.text
    added = r.json()
    digest = hashlib.sha256(LARGE).hexdigest()
    assert (added["size"], added["sha256"]) == (len(LARGE), digest)
    stored = await service.db[f"{BUCKET}.files"].find_one({"_id": added["attachment_id"]})
    assert stored is not None
    assert (stored["length"], stored["metadata"]["sha256"]) == (len(LARGE), digest)
    assert await service.db[f"{BUCKET}.chunks"].count_documents({"files_id": stored["_id"]}) > 1
    got = await api.get(f"/intake/v1/attachments/{added['attachment_id']}", headers=headers)
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == digest
    assert got.headers["x-content-sha256"] == digest
    logged = await service.db["events"].find_one({"event_type": "AttachmentAdded"})
    assert logged is not None
    assert (logged["incident_id"], logged["payload"]["sha256"]) == (report["incident_id"], digest)


async def test_a_failed_append_leaves_no_file_in_gridfs(
    service: IntakeService, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = monitor(service)
    report = await filed(api, headers)
    seen_stored: list[int] = []

    async def broken(*_: Any, **__: Any) -> None:
        seen_stored.append(await service.db[f"{BUCKET}.files"].count_documents({}))
        raise ConnectionFailure("the database went away")

    monkeypatch.setattr(service.parts.attachments.incidents, "save", broken)

    r = await api.post(
        f"/intake/v1/reports/{report['report_id']}/attachments",
        files={"file": ("现场截图.png", LARGE, "image/png")},
        headers=headers,
    )

    assert r.status_code == 503
    assert seen_stored  # the append was tried with the file stored
    assert all(n == 1 for n in seen_stored)
    assert await service.db[f"{BUCKET}.files"].count_documents({}) == 0
    assert await service.db[f"{BUCKET}.chunks"].count_documents({}) == 0
