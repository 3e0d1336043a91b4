"""The whole system started on the four-tier pack alone (YUQING_PLAN=config/plans/fourtier,
seed 000 预案2/3): a county report is graded at tier 4 (影响较小), the section concerned owes
its duty within the pack's 48 hours, and the archive tells it by the pack's names."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import CONFIG_DIR
from tests.conftest import Infra
from tests.e2e.conftest import RunningSystem, system_env, wait_for

pytestmark = pytest.mark.e2e

FOURTIER = CONFIG_DIR / "plans" / "fourtier"


def report(run: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_type": "forum",
        "source_name": "县论坛",
        "media_tier": "county",
        "url": f"https://county-bbs.example.cn/t/{run}",
        "title": f"请问学校门口积水何时处理（{run}）",
        "excerpt": "家长反映雨后校门口积水，接送孩子不便。",
        "author": "网友",
        "published_at": "2026-12-01T08:00:00+08:00",
        "observed_at": "2026-12-01T08:05:00+08:00",
        "reach": {"views": 300, "reposts": 2, "comments": 5, "likes": 9},
        "unit_ids": ["school-a"],
    }
    body.update(overrides)
    return body


def incident_view(api: httpx.Client, incident_id: str) -> dict[str, Any]:
    response = api.get(f"/archive/v1/incidents/{incident_id}")
    return response.json() if response.status_code == 200 else {"status_code": response.status_code}


def test_a_tier_4_incident_owes_the_sections_duty_under_the_four_tier_plan(
    infra: Infra, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    env = system_env(
        tmp_path / "data",
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_DB_PREFIX=f"ft{run}",
        YUQING_TOPIC_PREFIX=f"ft{run}.",
        YUQING_OUTBOX_POLL_SECONDS="0.2",
        YUQING_PLAN=str(FOURTIER),
    )
    system = RunningSystem(env)
    try:
        with system.client() as api:
            plan = api.get("/grading/v1/plan")
            assert plan.status_code == 200, plan.text
            assert plan.json()["id"] == "fourtier"
            assert [lv["short"] for lv in plan.json()["levels"]] == [
                "特别重大",
                "重大或较大",
                "一般",
                "影响较小",
            ]

            filed = api.post("/intake/v1/reports", json=report(run))
            assert filed.status_code in (200, 201), filed.text
            incident_id = filed.json()["incident_id"]
            view = wait_for(
                lambda: incident_view(api, incident_id),
                lambda v: v.get("level") == 4 and len(v.get("obligations", [])) >= 1,
                timeout=30,
                what="a tier-4 incident with its duties in the archive",
            )
            timeline = api.get(f"/archive/v1/incidents/{incident_id}/timeline").json()["events"]
    finally:
        system.stop()

    by_kind = {o["kind"]: o for o in view["obligations"]}
    # 三4: the section concerned, under the office's guidance; no duty of another tier (and
    # the pack has no inquiry duty: 预案2/3 do not sort opinion by kind).
    assert set(by_kind) == {"section_handling"}, by_kind
    graded = next(e for e in timeline if e["event_type"] == "IncidentGraded")
    graded_at = datetime.fromisoformat(graded["occurred_at"])
    section = by_kind["section_handling"]
    assert datetime.fromisoformat(section["deadline"]) - graded_at == timedelta(hours=48)
    assert section["state"] == "open"
    assert graded["summary"].startswith("研判为影响较小的网络舆情"), graded["summary"]
    opened = [e["summary"] for e in timeline if e["event_type"] == "ObligationOpened"]
    assert any("相关股室在办公室指导下处置" in s and "责任：相关股室" in s for s in opened), opened
