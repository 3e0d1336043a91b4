"""Partner API keys: `yuqing key create` prints a key once and keeps only its hash; the
services take it as `X-API-Key` and act for the partner's client (a partner, nothing more);
`yuqing key revoke` stops it in a running service without a restart."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.cli import composition_root, main
from tests.fakes.harness import FakeService, fake_service, fake_settings

REPORT: dict[str, Any] = {
    "source_type": "referral",
    "source_name": "县网信办",
    "media_tier": "county",
    "url": "https://bbs.example/thread/42",
    "title": "网传某校食堂饭菜变质",
    "excerpt": "有网友发帖称……",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "unit_ids": ["county"],
}


def yuqing(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:  # (exit code, stdout, stderr)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("YUQING_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("YUQING_API_KEYS_PATH", raising=False)
    return tmp_path


@pytest.fixture
async def intake(data_dir: Path) -> AsyncIterator[FakeService]:
    settings = fake_settings(data_dir, rate_limit="100000/minute")
    async with fake_service("intake", composition_root("intake"), settings=settings) as service:
        yield service


def created(capsys: pytest.CaptureFixture[str], partner: str = "partner-wxb") -> tuple[str, str]:
    code, out, err = yuqing(capsys, "key", "create", "--partner", partner, "--unit", "county")
    assert code == 0, err
    key = out.strip()
    key_id = err.split()[2].rstrip(":")
    return key_id, key


def test_a_key_is_printed_once_and_only_its_hash_is_kept(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id, key = created(capsys)
    stored = (data_dir / "api-keys.json").read_text()
    assert key not in stored
    # Nor its secret part: all after "<prefix>_<key id>_" (the secret may hold "_" itself).
    secret = key.split(f"_{key_id}_", 1)[1]
    assert len(secret) >= 32
    assert secret not in stored
    record = json.loads(stored)[key_id]
    assert record["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert (record["client_id"], record["unit"], record["revoked_at"]) == (
        "partner-wxb",
        "county",
        None,
    )
    assert (data_dir / "api-keys.json").stat().st_mode & 0o077 == 0
    code, listing, _ = yuqing(capsys, "key", "list")
    assert code == 0
    assert key_id in listing
    assert "active" in listing
    assert key not in listing
    another_id, another = created(capsys)
    assert another != key
    assert another_id != key_id


def test_a_key_for_an_unknown_unit_is_refused(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = yuqing(capsys, "key", "create", "--partner", "p", "--unit", "nowhere")
    assert code == 2
    assert out == ""
    assert "unknown unit 'nowhere'" in err
    assert not (data_dir / "api-keys.json").exists()


@pytest.mark.asyncio
async def test_a_key_acts_as_its_partner_until_revoked(
    intake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id, key = created(capsys)
    async with intake.http() as api:
        filed = await api.post("/intake/v1/reports", json=REPORT, headers={"X-API-Key": key})
        assert filed.status_code == 201, filed.text
        (received,) = await intake.published("ReportReceived")
        assert received.payload.filed_by == "partner-wxb"  # type: ignore[attr-defined]
        assert (received.actor.type, received.actor.id) == ("client", "partner-wxb")

        # A partner only: the lifecycle belongs to the leading group and its office.
        incident = filed.json()["incident_id"]
        resolve = await api.post(
            f"/intake/v1/incidents/{incident}/resolve",
            json={"reason": "平息"},
            headers={"X-API-Key": key},
        )
        assert resolve.status_code in (403, 404)
        assert resolve.json()["error"]["code"] in ("forbidden", "not_found")

        code, out, _ = yuqing(capsys, "key", "revoke", key_id)
        assert code == 0
        assert "revoked" in out
        after = await api.get("/intake/v1/incidents/x", headers={"X-API-Key": key})
        assert after.status_code == 401
        assert after.json()["error"]["message"] == "API key revoked"
    code, out, _ = yuqing(capsys, "key", "revoke", key_id)
    assert code == 0
    assert "already revoked" in out
    code, _, err = yuqing(capsys, "key", "revoke", "nosuchkey")
    assert code == 2
    assert "no API key nosuchkey" in err


@pytest.mark.asyncio
async def test_a_wrong_or_tampered_key_is_refused_with_401(
    intake: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id, key = created(capsys)
    tampered = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    async with intake.http() as api:
        for wrong in (tampered, f"yq_{key_id}_", "yq_000000000000_x", "not-a-key", ""):
            r = await api.get("/intake/v1/incidents/x", headers={"X-API-Key": wrong})
            assert r.status_code == 401, wrong
            assert r.json()["error"] == {
                "code": "unauthorized",
                "message": "invalid API key",
                "details": None,
            }
        good = await api.get("/intake/v1/incidents/x", headers={"X-API-Key": key})
        assert good.status_code == 404  # past the door: an unknown incident


@pytest.mark.asyncio
async def test_the_openapi_names_the_key_and_the_bearer_schemes(intake: FakeService) -> None:
    async with intake.http() as api:
        doc = (await api.get("/intake/v1/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["bearer"]["description"],
    }
    assert (schemes["partnerKey"]["in"], schemes["partnerKey"]["name"]) == ("header", "X-API-Key")
    report = doc["paths"]["/intake/v1/reports"]["post"]
    assert report["security"] == [{"bearer": []}, {"partnerKey": []}]
    assert doc["paths"]["/intake/v1/healthz"]["get"].get("security") is None


@pytest.mark.asyncio
async def test_a_key_is_rate_limited_as_its_partner_not_as_its_address(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, key = created(capsys)
    settings = fake_settings(data_dir, rate_limit="2/minute")
    async with (
        fake_service("grading", composition_root("grading"), settings=settings) as grading,
        grading.http() as api,
    ):
        grade = "/grading/v1/incidents/inc-unknown/grade"
        answers = [(await api.get(grade, headers={"X-API-Key": key})).status_code for _ in range(3)]
        assert answers == [404, 404, 429]
        # The address the key came from is counted on its own: a request without any
        # credentials from it is not refused for the key's requests (it gets its 401).
        assert (await api.get(grade)).status_code == 401
