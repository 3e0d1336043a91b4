"""Files attached to reports, on the fakes (the bytes in `MemoryAttachmentStore`): what is
taken and what refused, who may attach, list and download, the event and its hash, and
that a failed append leaves nothing stored."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pymongo.errors import ConnectionFailure

from services.intake.attachments import MemoryAttachmentStore
from services.intake.bootstrap import IntakeParts, build
from shared.events import AttachmentAdded
from shared.service import Dependencies
from tests.fakes.harness import FakeService, fake_service, fake_settings

pytestmark = pytest.mark.asyncio

MAX = 4096


def png(width: int = 2, height: int = 2) -> bytes:
    """A real, tiny PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
REPORT: dict[str, Any] = {
    "source_type": "forum",
    "source_name": "本地论坛",
    "media_tier": "county",
    "url": "https://bbs.example/thread/attach",
    "title": "网传某校食堂问题",
    "excerpt": "有网友发帖称……",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "unit_ids": ["school-a"],
}


@pytest.fixture
def store() -> MemoryAttachmentStore:
    return MemoryAttachmentStore()


@pytest.fixture
async def intake(store: MemoryAttachmentStore) -> AsyncIterator[FakeService]:
    settings = fake_settings(attachment_max_bytes=MAX, attachment_types="png,jpeg,pdf")

    def built(deps: Dependencies) -> IntakeParts:
        return build(deps, attachment_store=store)

    async with fake_service("intake", built, settings=settings) as service:
        yield service


@pytest.fixture
async def api(intake: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with intake.http() as client:
        yield client


async def filed(api: httpx.AsyncClient, headers: dict[str, str], **more: Any) -> dict[str, Any]:
    r = await api.post("/intake/v1/reports", json={**REPORT, **more}, headers=headers)
    assert r.status_code in (200, 201), r.text
    answer: dict[str, Any] = r.json()
    return answer


def upload(
    api: httpx.AsyncClient,
    report_id: str,
    headers: dict[str, str],
    data: bytes,
    name: str = "截图.png",
    claimed: str = "image/png",
) -> Any:
    return api.post(
        f"/intake/v1/reports/{report_id}/attachments",
        files={"file": (name, data, claimed)},
        headers=headers,
    )


async def test_a_file_is_stored_with_its_sha256_listed_and_downloaded_as_it_was(
    intake: FakeService, api: httpx.AsyncClient, store: MemoryAttachmentStore
) -> None:
    monitor = intake.token("monitor-chen", "school-a", "monitor")
    report = await filed(api, monitor)
    image = png()

    r = await upload(api, report["report_id"], monitor, image, claimed="application/octet-stream")

    assert r.status_code == 201, r.text
    added = r.json()
    digest = hashlib.sha256(image).hexdigest()
    assert (added["filename"], added["content_type"], added["size"], added["sha256"]) == (
        "截图.png",
        "image/png",  # told by its bytes, not by what the upload claimed
        len(image),
        digest,
    )
    assert added["incident_id"] == report["incident_id"]
    listed = await api.get(f"/intake/v1/reports/{report['report_id']}/attachments", headers=monitor)
    assert [a["attachment_id"] for a in listed.json()] == [added["attachment_id"]]
    got = await api.get(f"/intake/v1/attachments/{added['attachment_id']}", headers=monitor)
    assert got.status_code == 200
    assert got.content == image
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-sha256"] == digest
    assert "filename*=UTF-8''%E6%88%AA%E5%9B%BE.png" in got.headers["content-disposition"]
    [event] = await intake.published("AttachmentAdded")
    assert isinstance(event.payload, AttachmentAdded)
    assert (event.incident_id, event.payload.sha256, event.payload.report_id) == (
        report["incident_id"],
        digest,
        report["report_id"],
    )
    assert store.files == {added["attachment_id"]: image}


@pytest.mark.parametrize(
    ("data", "name", "status", "kind"),
    [
        (b"x" * (MAX + 1), "big.png", 413, "payload_too_large"),
        (b"", "empty.png", 422, "validation_error"),
        (b"plain text, not an image", "note.png", 415, "unsupported_media_type"),
        # a program named like a picture is told by its bytes
        (b"MZ\x90\x00" + b"\x00" * 60, "photo.png", 415, "unsupported_media_type"),
        # a type the deployment did not allow (gif is known, not in this list)
        (b"GIF89a" + b"\x00" * 20, "anim.gif", 415, "unsupported_media_type"),
        (png(), "", 422, "validation_error"),
    ],
)
async def test_a_file_it_cannot_take_is_refused_naming_the_file_and_nothing_is_kept(
    intake: FakeService,
    api: httpx.AsyncClient,
    store: MemoryAttachmentStore,
    data: bytes,
    name: str,
    status: int,
    kind: str,
) -> None:
    monitor = intake.token("monitor-chen", "school-a", "monitor")
    report = await filed(api, monitor)

    r = await upload(api, report["report_id"], monitor, data, name=name)

    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == kind
    assert error["details"][0]["field"] == "file"
    assert store.files == {}
    assert await intake.published("AttachmentAdded") == []


async def test_no_file_in_the_form_names_the_field(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    monitor = intake.token("monitor-chen", "school-a", "monitor")
    report = await filed(api, monitor)

    r = await api.post(
        f"/intake/v1/reports/{report['report_id']}/attachments",
        data={"other": "x"},
        headers=monitor,
    )

    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "file"


async def test_a_failed_append_deletes_the_stored_file(
    intake: FakeService,
    api: httpx.AsyncClient,
    store: MemoryAttachmentStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monitor = intake.token("monitor-chen", "school-a", "monitor")
    report = await filed(api, monitor)
    parts = intake.parts
    assert isinstance(parts, IntakeParts)
    stored_before_append: list[set[str]] = []

    async def broken(*_: Any, **__: Any) -> None:
        stored_before_append.append(set(store.files))
        raise ConnectionFailure("the database went away")

    monkeypatch.setattr(parts.attachments.incidents, "save", broken)

    r = await upload(api, report["report_id"], monitor, png())

    assert r.status_code == 503
    assert stored_before_append  # the file was stored when the append was tried
    assert all(len(s) == 1 for s in stored_before_append)
    assert store.files == {}
    listed = await api.get(f"/intake/v1/reports/{report['report_id']}/attachments", headers=monitor)
    assert listed.json() == []


async def test_who_may_attach_list_and_download(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    monitor = intake.token("monitor-chen", "school-a", "monitor")
    report = await filed(api, monitor)
    added = (await upload(api, report["report_id"], monitor, PDF, name="回复.pdf")).json()
    file_url = f"/intake/v1/attachments/{added['attachment_id']}"
    list_url = f"/intake/v1/reports/{report['report_id']}/attachments"
    other_unit = intake.token("monitor-b", "school-b", "monitor")
    analyst = intake.token("analyst-zhao", "county", "analyst")
    partner = intake.token("partner-wxb", "county", "partner")

    # Another unit: the same 404 as an id that does not exist, for the file and the report.
    missing = await api.get("/intake/v1/attachments/att-0000000000000000", headers=other_unit)
    hidden_file = await api.get(file_url, headers=other_unit)
    assert (missing.status_code, hidden_file.status_code) == (404, 404)
    assert hidden_file.json()["error"]["details"]["kind"] == "attachment"
    assert (await api.get(list_url, headers=other_unit)).status_code == 404
    assert (await upload(api, report["report_id"], other_unit, png())).status_code == 404
    # A partner that did not file the report sees none of it.
    assert (await api.get(file_url, headers=partner)).status_code == 404
    # The analyst reads everything and may not attach.
    assert (await api.get(file_url, headers=analyst)).content == PDF
    assert (await upload(api, report["report_id"], analyst, png())).status_code == 403


async def test_a_partner_attaches_to_what_it_filed_and_sees_only_its_own_files(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    partner = intake.token("partner-wxb", "county", "partner")
    office = intake.token("office-li", "county", "office")
    referral = await filed(api, partner, source_type="referral")

    mine = await upload(api, referral["report_id"], partner, png(), name="线索截图.png")
    office_file = await upload(api, referral["report_id"], office, PDF, name="核查.pdf")

    assert (mine.status_code, office_file.status_code) == (201, 201)
    # The office reads both; the partner only what it added (the office's check is the
    # bureau's own record).
    list_url = f"/intake/v1/reports/{referral['report_id']}/attachments"
    listed = await api.get(list_url, headers=office)
    assert [a["filename"] for a in listed.json()] == ["线索截图.png", "核查.pdf"]
    partners = await api.get(list_url, headers=partner)
    assert [a["filename"] for a in partners.json()] == ["线索截图.png"]
    got = await api.get(f"/intake/v1/attachments/{mine.json()['attachment_id']}", headers=partner)
    assert got.status_code == 200
    office_url = f"/intake/v1/attachments/{office_file.json()['attachment_id']}"
    assert (await api.get(office_url, headers=partner)).status_code == 404
    # A report the partner did not file, on an incident of the bureau: out of its sight.
    own = await filed(
        api, intake.token("monitor-chen", "school-a", "monitor"), url="https://bbs.example/2"
    )
    assert (await upload(api, own["report_id"], partner, png())).status_code == 404


async def test_an_upload_far_beyond_the_bound_is_refused_before_it_is_read(
    intake: FakeService, api: httpx.AsyncClient, store: MemoryAttachmentStore
) -> None:
    monitor = intake.token("monitor-chen", "school-a", "monitor")
    report = await filed(api, monitor)

    r = await upload(api, report["report_id"], monitor, b"\x89PNG" + b"x" * (2 * 1024 * 1024))

    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert store.files == {}
