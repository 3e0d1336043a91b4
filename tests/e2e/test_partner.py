"""A partner agency's referral through the running system (issue 11, "A partner scenario
end to end"): its report about a school's open incident opens a referral of its own and
changes nothing of the school's incident; its `central` claim raises no level until the
office confirms it; the office merges the referral; the partner then sees its referral's
outcome and, of the school's incident, where it stands, its own report and the official
line, and never a draft, an obligation, an approval or the review.

Every fact of another service is waited for (the services learn of each other over
Kafka), never read at one instant.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from shared.identity import Role
from tests.e2e.conftest import RunningSystem, wait_for
from tests.e2e.test_statements import draft_when_known, submit_when_graded
from tests.e2e.test_walking_skeleton import token_for

pytestmark = pytest.mark.e2e

REPORTS = "/intake/v1/reports"
PARTNER = "partner-wxb"
INTERNAL = ("obligations", "grade_history", "review", "filed_by", "unit_ids", "case_figures")


def school_report(run: str) -> dict[str, Any]:
    return {
        "source_type": "forum",
        "source_name": "县论坛",
        "media_tier": "county",
        "url": f"https://bbs.county.example.cn/t/{run}",
        "title": f"网友反映实验小学东门人行道地砖破损（{run}）",
        "excerpt": "有家长反映东门外人行道地砖松动，雨天容易滑倒。",
        "author": "网友",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 900, "reposts": 12, "comments": 30, "likes": 40},
        "unit_ids": ["school-a"],
    }


def referral_of(school: dict[str, Any], run: str) -> dict[str, Any]:
    """The same item as the partner refers it, claiming central media and ten views."""
    return {
        **school,
        "source_type": "referral",
        "source_name": "网信办转办",
        "media_tier": "central",
        "url": school["url"] + "?utm_source=wxb",
        "title": f"转办：实验小学东门人行道破损问题（{run}）",
        "reach": {"views": 10},
    }


def answer(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json() if response.status_code == 200 else {}
    return body or {"status_code": response.status_code}


def archive_view(api: httpx.Client, incident_id: str) -> dict[str, Any]:
    return answer(api.get(f"/archive/v1/incidents/{incident_id}"))


def grade(api: httpx.Client, incident_id: str) -> dict[str, Any]:
    return answer(api.get(f"/grading/v1/incidents/{incident_id}/grade"))


def test_a_partners_referral_is_its_own_until_merged_and_its_claims_wait_for_the_office(
    system: RunningSystem,
) -> None:
    run = uuid.uuid4().hex[:8]
    monitor = token_for(system, "monitor-chen", "school-a", Role.MONITOR)
    partner = token_for(system, PARTNER, "county", Role.PARTNER)
    office = token_for(system, "office-li", "county", Role.OFFICE)
    author = token_for(system, "spokesperson-sun", "school-a", Role.SPOKESPERSON)
    head = token_for(system, "head-liu", "school-a", Role.DEPT_HEAD)
    school = school_report(run)

    with system.client(monitor) as api:
        filed = api.post(REPORTS, json=school)
    assert filed.status_code == 201, filed.text
    school_id, school_report_id = filed.json()["incident_id"], filed.json()["report_id"]

    with system.client() as admin:
        graded = wait_for(
            lambda: archive_view(admin, school_id),
            lambda v: v.get("level") is not None,
            what="the school's incident graded in the archive",
        )
        assert graded["level"] == 3
        intake_before = admin.get(f"/intake/v1/incidents/{school_id}").json()

    # The partner refers the same item: a referral of its own, not the school's incident.
    with system.client(partner) as api:
        referred = api.post(REPORTS, json=referral_of(school, run))
        assert referred.status_code == 201, referred.text
        assert (referred.json()["referral"], referred.json()["new_incident"]) == (True, True)
        referral_id, partner_report_id = (
            referred.json()["incident_id"],
            referred.json()["report_id"],
        )
        assert referral_id != school_id
        for hidden in (
            f"/intake/v1/incidents/{school_id}",
            f"/archive/v1/incidents/{school_id}",
            f"/grading/v1/incidents/{school_id}/grade",
            f"/intake/v1/reports/{school_report_id}",
        ):
            assert api.get(hidden).status_code == 404, hidden

    with system.client() as admin:
        # The claimed central tier counts for nothing yet: the referral is graded level 3.
        referral_view = wait_for(
            lambda: archive_view(admin, referral_id),
            lambda v: v.get("level") is not None and v.get("referral") is not None,
            what="the referral graded in the archive, marked as a referral",
        )
        assert referral_view["level"] == 3
        assert referral_view["referral"]["matched_incident_ids"] == [school_id]
        assert referral_view["referral"]["referred_by"] == PARTNER
        (claimed,) = referral_view["reports"]
        assert (claimed["media_tier"], claimed["claims_unconfirmed"]) == ("central", True)
        assert grade(admin, referral_id)["level"] == 3
        # The school's incident is unchanged: no unit, no report, not reopened, same level.
        assert admin.get(f"/intake/v1/incidents/{school_id}").json() == intake_before
        school_view = archive_view(admin, school_id)
        assert (school_view["status"], school_view["level"]) == ("open", 3)
        assert school_view["unit_ids"] == ["school-a"]
        assert [r["report_id"] for r in school_view["reports"]] == [school_report_id]

    # The school publishes a reply (the official line) and keeps another draft unpublished.
    publish = {"outlet": "县长信箱", "url": f"https://mailbox.example.cn/{run}"}
    reply = {
        "kind": "online_reply",
        "title": "关于实验小学东门人行道破损问题的回复",
        "body": "学校已联系住建部门，本周内完成地砖修复。",
        "facts": [{"label": "修复时限", "value": "本周内"}],
        "outlets": ["县长信箱"],
    }
    with system.client(author) as api:
        published_id = draft_when_known(api, school_id, reply)
        assert submit_when_graded(api, published_id).json()["level"] == 3
    with system.client(head) as api:
        approved = api.post(
            f"/statements/v1/statements/{published_id}/approve", json={"comment": "同意"}
        )
        assert approved.status_code == 200, approved.text
    with system.client(author) as api:
        out = api.post(f"/statements/v1/statements/{published_id}/publish", json=publish)
        assert out.status_code == 200, out.text
        draft_id = draft_when_known(api, school_id, {**reply, "title": "内部草稿：修复进度说明"})

    # The office merges the referral into the school's incident, as a recorded act.
    with system.client(partner) as api:
        refused = api.post(
            f"/intake/v1/incidents/{referral_id}/merge", json={"into": school_id, "reason": "x"}
        )
        assert refused.status_code == 403, refused.text
    with system.client(office) as api:
        merged = api.post(
            f"/intake/v1/incidents/{referral_id}/merge",
            json={"into": school_id, "reason": "同一事项，并入学校事件办理"},
        )
        assert merged.status_code == 200, merged.text
        assert merged.json()["referral"]["status"] == "resolved"

    with system.client() as admin:
        merged_view = wait_for(
            lambda: archive_view(admin, referral_id),
            lambda v: (
                (v.get("referral") or {}).get("merged_into") == school_id
                and v.get("status") == "resolved"
            ),
            what="the referral merged and closed in the archive",
        )
        assert merged_view["referral"]["merged_by"] == "office-li"
        target = wait_for(
            lambda: archive_view(admin, school_id),
            lambda v: [r.get("match") for r in v.get("reports", [])] == [None, "merged_referral"],
            what="the partner's report recorded on the school's incident",
        )
        assert target["unit_ids"] == ["school-a"]
        assert target["status"] == "open"
        assert target["reports"][1]["claims_unconfirmed"] is True

    with system.client(partner) as api:
        # Its referral's outcome, where it went.
        outcome = api.get(f"/intake/v1/incidents/{referral_id}").json()
        assert (outcome["status"], outcome["merged_into"]) == ("resolved", school_id)
        # Grading counted the merged report, and its unconfirmed claim raised nothing.
        seen_grade = wait_for(
            lambda: grade(api, school_id),
            lambda g: g.get("level") is not None,
            what="grading giving the partner sight of the school's incident",
        )
        assert seen_grade["level"] == 3
        seen = wait_for(
            lambda: archive_view(api, school_id),
            lambda v: v.get("sight") == "referred" and v.get("statements"),
            what="the archive giving the partner its sight of the school's incident",
        )
        assert (seen["incident_id"], seen["status"], seen["level"]) == (school_id, "open", 3)
        assert seen["category"] is not None
        assert [r["report_id"] for r in seen["reports"]] == [partner_report_id]
        assert [s["statement_id"] for s in seen["statements"]] == [published_id]
        assert draft_id not in str(seen)
        assert not set(INTERNAL) & set(seen)
        line = wait_for(
            lambda: answer(api.get(f"/statements/v1/incidents/{school_id}/official-line")),
            lambda body: "statement_id" in body,
            what="the statement service giving the partner the official line",
        )
        assert (line["statement_id"], line["url"]) == (published_id, publish["url"])
        assert "cleared_by" not in line
        for internal in (
            f"/statements/v1/statements/{draft_id}",
            f"/statements/v1/statements/{published_id}",
            f"/archive/v1/incidents/{school_id}/timeline",
            f"/archive/v1/incidents/{school_id}/verify",
            f"/intake/v1/reports/{school_report_id}",
        ):
            assert api.get(internal).status_code == 404, internal
        obligations = api.get("/notifications/v1/obligations", params={"incident_id": school_id})
        assert obligations.json()["obligations"] == []
        listed = api.get(f"/statements/v1/incidents/{school_id}/statements")
        assert draft_id not in listed.text
        own_there = api.get(f"/intake/v1/incidents/{school_id}").json()
        assert [r["report_id"] for r in own_there["reports"]] == [partner_report_id]

    # The office confirms the claims: only now does the central tier count.
    with system.client(office) as api:
        confirmed = api.post(
            f"/intake/v1/reports/{partner_report_id}/confirm-claims",
            json={"reason": "经核实，人民网已刊发"},
        )
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["incident_id"] == school_id
    with system.client() as admin:
        regraded = wait_for(
            lambda: grade(admin, school_id),
            lambda g: g.get("level") == 1,
            what="the school's incident regraded on the confirmed claim",
        )
        assert regraded["history"][-1]["event_type"] == "IncidentEscalated"
        confirmed_view = wait_for(
            lambda: archive_view(admin, school_id),
            lambda v: v.get("level") == 1 and v["reports"][1]["claims_confirmed"] is not None,
            what="the confirmation and the escalation in the archive",
        )
        claim = confirmed_view["reports"][1]
        assert claim["claims_unconfirmed"] is False
        assert claim["claims_confirmed"]["confirmed_by"] == "office-li"
    with system.client(partner) as api:
        wait_for(
            lambda: archive_view(api, school_id),
            lambda v: v.get("level") == 1,
            what="the partner seeing the level the confirmed claim set",
        )
