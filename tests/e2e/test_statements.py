"""Statements across the running system: a level-3 reply cleared by the head of the unit
concerned becomes the incident's official line, which the archive shows, and a later
statement that changes its figures is flagged and needs an acknowledged reason."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from shared.identity import Role
from tests.e2e.conftest import RunningSystem, wait_for
from tests.e2e.test_walking_skeleton import incident_view, report, token_for

pytestmark = pytest.mark.e2e


def county_level_incident(system: RunningSystem) -> str:
    """A report from a county outlet with little reach: graded level 3."""
    run = uuid.uuid4().hex[:8]
    body = report(
        source_name="县融媒体中心",
        media_tier="county",
        url=f"https://county-media.example.cn/news/{run}",
        title=f"网友反映实验小学放学时段校门口拥堵（{run}）",
        excerpt="有网友反映放学时段校门口车辆拥堵。",
        reach={"views": 900, "reposts": 12, "comments": 30, "likes": 40},
    )
    with system.client() as admin:
        response = admin.post("/intake/v1/reports", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["incident_id"])


def draft_when_known(api: httpx.Client, incident_id: str, draft: dict[str, Any]) -> str:
    # The statement service learns of the incident from intake's events, over Kafka.
    drafted = wait_for(
        lambda: api.post(f"/statements/v1/incidents/{incident_id}/statements", json=draft),
        lambda response: response.status_code != 404,
        what="the statement service knowing the incident",
    )
    assert drafted.status_code == 201, drafted.text
    return str(drafted.json()["statement_id"])


def submit_when_graded(api: httpx.Client, statement_id: str) -> httpx.Response:
    # Submitting needs the level, which reaches the statement service from grading.
    submitted: httpx.Response = wait_for(
        lambda: api.post(f"/statements/v1/statements/{statement_id}/submit"),
        lambda response: response.status_code == 200,
        what="the statement submitted on the graded incident",
    )
    return submitted


def reply(value: str) -> dict[str, Any]:
    return {
        "kind": "online_reply",
        "title": "关于实验小学校门口拥堵问题的回复",
        "body": "您好，学校已协调交警在放学时段疏导交通。",
        "facts": [{"label": "疏导警力", "value": value}],
        "outlets": ["县长信箱"],
    }


def test_a_level_3_reply_cleared_by_the_unit_head_becomes_the_official_line(
    system: RunningSystem,
) -> None:
    author = token_for(system, "spokesperson-sun", "school-a", Role.SPOKESPERSON)
    head = token_for(system, "head-liu", "school-a", Role.DEPT_HEAD)
    incident_id = county_level_incident(system)
    publish = {"outlet": "县长信箱", "url": f"https://mailbox.example.cn/{incident_id}"}

    with system.client(author) as api:
        first = draft_when_known(api, incident_id, reply("2名"))
        submitted = submit_when_graded(api, first).json()
        assert submitted["level"] == 3
        assert [s["name"] for s in submitted["missing"]] == ["部门分管领导（school-a）"]
        own = api.post(f"/statements/v1/statements/{first}/approve", json={"comment": "ok"})
        assert own.status_code == 403
        assert "不能审批自己起草的版本" in own.json()["error"]["message"]

    with system.client(head) as api:
        approved = api.post(f"/statements/v1/statements/{first}/approve", json={"comment": "同意"})
        assert approved.json()["state"] == "approved", approved.text
    with system.client(author) as api:
        published = api.post(f"/statements/v1/statements/{first}/publish", json=publish)
        assert published.status_code == 200, published.text
        line = api.get(f"/statements/v1/incidents/{incident_id}/official-line").json()
        assert (line["statement_id"], line["url"]) == (first, publish["url"])
        assert [(s["approved_by"], s["name"]) for s in line["cleared_by"]] == [
            ("head-liu", "部门分管领导（school-a）")
        ]

    with system.client() as admin:
        view = wait_for(
            lambda: incident_view(admin, incident_id),
            lambda v: any(s.get("state") == "published" for s in v.get("statements", [])),
            what="the published reply in the archive's incident view",
        )
        assert view["level"] == 3
        assert [s["statement_id"] for s in view["statements"]] == [first]
        timeline = wait_for(
            lambda: admin.get(f"/archive/v1/incidents/{incident_id}/timeline").json(),
            lambda t: "StatementPublished" in [e["event_type"] for e in t.get("events", [])],
            what="the publication in the archive's timeline",
        )
        types = [e["event_type"] for e in timeline["events"]]
        assert types.index("StatementApproved") < types.index("StatementPublished")

    # A second reply that changes the published figure: flagged, and cleared only with a reason.
    with system.client(author) as api:
        second = draft_when_known(api, incident_id, reply("４ 名"))
        flagged = api.post(f"/statements/v1/statements/{second}/submit").json()
        assert [(c["label"], c["published_value"]) for c in flagged["fact_conflicts"]] == [
            ("疏导警力", "2名")
        ]
    with system.client(head) as api:
        approve = f"/statements/v1/statements/{second}/approve"
        refused = api.post(approve, json={"comment": "同意"})
        assert refused.status_code == 409
        assert "疏导警力（已发布：2名，本稿：４ 名）" in refused.json()["error"]["message"]
        reason = "交警大队增派2名警力"
        accepted = api.post(
            approve, json={"comment": "同意", "acknowledge_fact_changes": {"reason": reason}}
        )
        assert accepted.status_code == 200, accepted.text
        shown = api.get(f"/statements/v1/statements/{second}").json()
        assert shown["state"] == "approved"
        assert shown["approvals"][0]["fact_changes_acknowledged"]["reason"] == reason


def test_a_grade_lowered_mid_review_shows_the_same_statement_in_the_archive_as_at_its_service(
    system: RunningSystem,
) -> None:
    """A level-1 release approved by the office is covered once the leading group lowers
    the incident to level 2 (the office alone clears level 2): the statement service says
    approved with nothing missing, and the archive shows that, not a state of its own."""
    author = token_for(system, "spokesperson-sun", "school-a", Role.SPOKESPERSON)
    office = token_for(system, "office-li", "county", Role.OFFICE)
    leader = token_for(system, "leader-zhang", "county", Role.LEADER)
    run = uuid.uuid4().hex[:8]
    with system.client() as admin:
        filed = admin.post(
            "/intake/v1/reports",
            json=report(url=f"https://people.example.cn/n1/{run}.html", title=f"食堂问题（{run}）"),
        )
    assert filed.status_code == 201, filed.text
    incident_id = str(filed.json()["incident_id"])
    release = {
        "kind": "press_release",
        "title": "关于实验小学食堂问题的情况通报",
        "body": "经核查，涉事批次食材已封存送检。",
        "facts": [{"label": "封存批次", "value": "3批"}],
        "outlets": ["县政府网站"],
    }

    with system.client(author) as api:
        statement_id = draft_when_known(api, incident_id, release)
        submitted = submit_when_graded(api, statement_id).json()
    assert submitted["level"] == 1
    assert [s["role"] for s in submitted["missing"]] == ["office", "propaganda"]
    with system.client(office) as api:
        reviewed = api.post(
            f"/statements/v1/statements/{statement_id}/approve", json={"comment": "同意"}
        )
    assert reviewed.status_code == 200, reviewed.text
    assert [s["role"] for s in reviewed.json()["missing"]] == ["propaganda"]

    with system.client(leader) as api:
        lowered = api.post(
            f"/grading/v1/incidents/{incident_id}/override",
            json={"level": 2, "reason": "经研判影响范围有限，调整为二级"},
        )
    assert lowered.status_code == 200, lowered.text

    with system.client(author) as api:
        own = wait_for(
            lambda: api.get(f"/statements/v1/statements/{statement_id}").json(),
            lambda s: s.get("level") == 2,
            what="the statement service re-chaining the statement at level 2",
        )
    assert own["state"] == "approved"
    assert own["missing"] == []

    with system.client() as admin:
        view = wait_for(
            lambda: incident_view(admin, incident_id),
            lambda v: any(s.get("level") == 2 for s in v.get("statements", [])),
            what="the re-chained statement in the archive's incident view",
        )
    (archived,) = view["statements"]
    assert archived["state"] == own["state"]
    assert [(s["role"], s["unit_id"]) for s in archived["missing"]] == [
        (s["role"], s["unit_id"]) for s in own["missing"]
    ]
