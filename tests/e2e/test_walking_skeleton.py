"""A report travels through all five services over Kafka and comes back through the archive."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from shared.auth import TokenService
from shared.identity import Role
from tests.e2e.conftest import RunningSystem, wait_for

pytestmark = pytest.mark.e2e


def report(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "central",
        "url": "https://people.example.cn/n1/2026/1121/c1-1.html?utm_source=wx",
        "title": "某县实验小学食堂食材过期引发家长质疑",
        "excerpt": "多名家长反映学校食堂使用过期食材，要求公开调查结果。",
        "author": "记者 李明",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 120000, "reposts": 3400, "comments": 800, "likes": 5000},
        "unit_ids": ["school-a"],
    }
    body.update(overrides)
    return body


def token_for(system: RunningSystem, sub: str, unit: str, *roles: Role) -> str:
    tokens = TokenService(system.env["YUQING_SECRET"], "yuqing", timedelta(hours=1))
    return tokens.issue(sub, unit, list(roles))


def incident_view(api: httpx.Client, incident_id: str) -> dict[str, Any]:
    response = api.get(f"/archive/v1/incidents/{incident_id}")
    return response.json() if response.status_code == 200 else {"status_code": response.status_code}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_level_1_report_is_graded_given_deadlines_and_told_in_order(
    system: RunningSystem,
) -> None:
    with system.client() as api:
        answer = api.post("/intake/v1/reports", json=report())
        assert answer.status_code in (200, 201), answer.text
        created = answer.json()
        assert created["new_incident"] is True
        incident_id = created["incident_id"]

        view = wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: v.get("level") == 1 and len(v.get("obligations", [])) >= 2,
            # A condition, not a latency bound: right after the start the consumers may still
            # be joining their groups (make bench measures the latency).
            timeout=60,
            what="graded incident with obligations in the archive",
        )

        assert view["status"] == "open"
        assert view["unit_ids"] == ["school-a"]
        timeline = api.get(f"/archive/v1/incidents/{incident_id}/timeline").json()["events"]
        graded = next(e for e in timeline if e["event_type"] == "IncidentGraded")
        graded_at = at(graded["occurred_at"])
        due = sorted(at(o["deadline"]) - graded_at for o in view["obligations"])
        assert due[:2] == [timedelta(minutes=30), timedelta(minutes=60)]
        assert all(o["state"] == "open" for o in view["obligations"])

        types = [e["event_type"] for e in timeline]
        for before, after in [
            ("IncidentOpened", "ReportReceived"),
            ("ReportReceived", "IncidentGraded"),
            ("IncidentGraded", "ObligationOpened"),
        ]:
            assert types.index(before) < types.index(after), types
        assert all(e["summary"] for e in timeline)


def test_the_same_url_again_joins_the_open_incident(system: RunningSystem) -> None:
    url = "https://weibo.example.com/u/77/status/4999?utm_medium=share"
    # A matter of its own: the same text under another URL would join another test's.
    text = {"title": "实验小学操场塑胶跑道异味", "excerpt": "家长称跑道气味刺鼻，孩子咳嗽。"}
    with system.client() as api:
        first = api.post(
            "/intake/v1/reports", json=report(url=url, media_tier="provincial", **text)
        ).json()
        again = api.post(
            "/intake/v1/reports",
            json=report(
                url="HTTPS://Weibo.Example.com/u/77/status/4999/", media_tier="county", **text
            ),
        ).json()

        assert again["new_incident"] is False
        assert again["incident_id"] == first["incident_id"]
        view = wait_for(
            lambda: incident_view(api, first["incident_id"]),
            lambda v: len(v.get("reports", [])) == 2 and v.get("level") == 2,
            what="two reports on one level-2 incident",
        )
        assert {r["report_id"] for r in view["reports"]} == {
            first["report_id"],
            again["report_id"],
        }


def test_bad_input_names_the_field_and_stores_nothing(system: RunningSystem) -> None:
    # Intake's own event store: the archive, fed over Kafka, could lag behind a wrong write.
    with MongoClient(system.env["MONGODB_URL"]) as mongo:
        intake_events = mongo[f"{system.env['YUQING_DB_PREFIX']}_intake"]["events"]
        stored_before = intake_events.count_documents({})
        with system.client() as api:
            missing = report()
            del missing["url"]
            no_url = api.post("/intake/v1/reports", json=missing)
            bad_tier = api.post("/intake/v1/reports", json=report(media_tier="tabloid"))

        assert no_url.status_code == 422
        assert no_url.json()["error"]["code"] == "validation_error"
        assert "url" in [d["field"] for d in no_url.json()["error"]["details"]]
        assert bad_tier.status_code == 422
        assert "media_tier" in bad_tier.json()["error"]["message"]

        anonymous = httpx.post(f"{system.base_url}/intake/v1/reports", json=report())
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthorized"
        assert intake_events.count_documents({}) == stored_before


def test_a_statement_is_published_only_after_the_level_1_chain_approves_it(
    system: RunningSystem,
) -> None:
    author = token_for(system, "spokesperson-sun", "school-a", Role.SPOKESPERSON)
    office = token_for(system, "office-li", "county", Role.OFFICE)
    task_force = token_for(system, "propaganda-wang", "county", Role.PROPAGANDA)
    with system.client() as admin:
        incident_id = admin.post(
            "/intake/v1/reports",
            json=report(url="https://news.example.cn/a/1", title="实验小学校门口交通事故"),
        ).json()["incident_id"]
    with system.client(author) as api:
        draft = {
            "kind": "press_release",
            "title": "关于实验小学门口交通事故的情况通报",
            "body": "11月21日上午，实验小学门口发生一起交通事故……",
            "facts": [{"label": "受伤人数", "value": "2"}],
            "outlets": ["县政府网站"],
        }
        # The statement service learns of the incident from intake's events, over Kafka.
        drafted = wait_for(
            lambda: api.post(f"/statements/v1/incidents/{incident_id}/statements", json=draft),
            lambda response: response.status_code != 404,
            what="the statement service knowing the incident",
        )
        assert drafted.status_code == 201, drafted.text
        statement_id = drafted.json()["statement_id"]
        # Submitting needs the level, which reaches the statement service from grading.
        wait_for(
            lambda: api.post(f"/statements/v1/statements/{statement_id}/submit").status_code,
            lambda status: status == 200,
            what="the statement submitted on the graded incident",
        )
        own = api.post(f"/statements/v1/statements/{statement_id}/approve", json={"comment": "ok"})
        assert own.status_code == 403

    publish = {"outlet": "县政府网站", "url": "https://gov.example.cn/notice/1"}
    with system.client(office) as api:
        assert (
            api.post(
                f"/statements/v1/statements/{statement_id}/approve", json={"comment": "同意"}
            ).status_code
            == 200
        )
        early = api.post(f"/statements/v1/statements/{statement_id}/publish", json=publish)
        assert early.status_code == 409
        assert "propaganda" in early.text
    with system.client(task_force) as api:
        approved = api.post(
            f"/statements/v1/statements/{statement_id}/approve", json={"comment": "可以发布"}
        )
        assert approved.status_code == 200
        assert (
            api.post(f"/statements/v1/statements/{statement_id}/publish", json=publish).status_code
            == 200
        )

    with system.client() as admin:
        view = wait_for(
            lambda: incident_view(admin, incident_id),
            lambda v: any(s.get("state") == "published" for s in v.get("statements", [])),
            what="the published statement in the archive",
        )
        assert view["statements"][0]["statement_id"] == statement_id
