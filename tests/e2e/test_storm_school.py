"""A storm written from the school plan (config/plans/school, seed 000 预案1), the system
started on that pack alone and driven through its HTTP API: a 人民网 inquiry (一级), a
provincial rumor (二级) and a county suggestion (三级), each with its 分类处置 duty; replies
cleared by the school's head and the leading group (四（三）1) meeting their duties by
publication; a tracking report missed across a three-hour outage and its next round; the
总结评估 owed at resolution and missed across an eight-day outage; the watch after closure
(四（四）): a report within seven days reopens, one after it opens a new incident; review,
case and assessment.

Not carried by this pack, so not stormed: grading by a body (none of the shipped packs turns
it on), routing by source (the pack has no `routing`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Infra
from tests.e2e.conftest import wait_for
from tests.e2e.storm import PEOPLE, Articles, Rule, Storm, at, report_body, same_day, within
from tests.service.notification_receivers import HttpReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.storm]

# article -> duty kind -> deadline rule (from the instant it counts from) -> recipients -> owner.
TABLE: dict[str, tuple[str, Rule, list[str], str]] = {
    "tracking_update": (
        "四（四）重大舆情动态跟踪（2小时首报，每12小时，本部署取值）",
        within(timedelta(hours=2)),
        ["leader"],
        "office",
    ),
    "major_tracking": (
        "四（四）严重舆情动态跟踪（12小时，本部署取值）",
        within(timedelta(hours=12)),
        ["leader"],
        "office",
    ),
    "summary_review": (
        "四（五）总结评估：趋于平稳后领导小组总结（办结起7天，本部署取值）",
        within(timedelta(days=7)),
        ["office"],
        "leader",
    ),
    "direct_handling": (
        "四（一）研判预警：相关处室掌握真实信息并办理（48小时，本部署取值）",
        within(timedelta(hours=48)),
        ["office"],
        "dept_head",
    ),
    "same_day_reply": (
        "四（三）1 询问置疑诉求类当日回复：当日23:59，18:00后次日12:00",
        lambda start: same_day(start, "23:59", "18:00", "12:00"),
        ["dept_head"],
        "spokesperson",
    ),
    "clarification": (
        "四（三）3 捏造歪曲夸大诽谤类依法澄清事实真相（12小时，本部署取值）",
        within(timedelta(hours=12)),
        ["dept_head", "office"],
        "spokesperson",
    ),
    "suggestion_reply": (
        "四（三）4 建设性意见类积极采纳并回复（5天，本部署取值）",
        within(timedelta(days=5)),
        ["office"],
        "dept_head",
    ),
}
HOLDERS = {"leader": "leader-zhang", "office": "office-li", "dept_head": "head-liu"}
LEVEL_NAMES = {1: "一级舆情", 2: "二级舆情", 3: "三级舆情"}
ARTICLES = Articles(TABLE, HOLDERS, {n: f"【{name}】" for n, name in LEVEL_NAMES.items()})


def body(storm: Storm, key: str, **overrides: Any) -> dict[str, Any]:
    story = {
        "title": f"家长质疑实验小学午餐收费标准（{storm.run}）",
        "excerpt": "多名家长质疑学校午餐收费过高，询问收费依据。",
    }
    return report_body(storm.run, key, **(story | overrides))


def test_a_storm_under_the_school_plan(
    infra: Infra, tmp_path: Path, webhook_receiver: HttpReceiver
) -> None:
    storm = Storm("school", infra, tmp_path, "school", webhook_receiver)
    try:
        storm.start()
        with storm.admin() as api:
            plan = api.get("/grading/v1/plan").json()
        storm.check(plan["id"] == "school", "the system runs the school pack alone", plan["id"])

        # -- reports arriving (四（三）分类处置) ---------------------------------------------
        inquiry = storm.report(body(storm, "inquiry"))
        rumor = storm.report(
            body(
                storm,
                "rumor",
                source_name="大河网",
                media_tier="provincial",
                title=f"网传实验小学学生食物中毒系谣言（{storm.run}）",
                excerpt="网传学校多名学生食物中毒，经查系捏造。",
            )
        )
        suggestion = storm.report(
            body(
                storm,
                "suggestion",
                source_type="forum",
                source_name="县论坛",
                media_tier="county",
                title=f"建议实验小学增设课后托管（{storm.run}）",
                excerpt="家长建议学校增设课后托管服务。",
            )
        )
        owed = {
            inquiry: (1, {"tracking_update", "same_day_reply"}),
            rumor: (2, {"major_tracking", "clarification"}),
            suggestion: (3, {"direct_handling", "suggestion_reply"}),
        }
        for incident_id, (level, kinds) in owed.items():
            view = storm.until(
                incident_id,
                storm.at_level_owing(level, kinds),
                f"level {level} with its duties {sorted(kinds)}",
            )
            storm.check(
                view["plan_id"] == "school",
                f"{incident_id}: level {level}, category {view['category']}, plan school "
                f"{view['plan_version']}",
                view,
            )
            (graded,) = storm.events(incident_id, "IncidentGraded")
            storm.check_duties(ARTICLES, storm.duties(incident_id), at(graded["occurred_at"]))

        def duty(incident_id: str, kind: str) -> dict[str, Any]:
            (found,) = [d for d in storm.duties(incident_id) if d["kind"] == kind]
            return found

        # -- replies cleared by 四（三）1's chain; publishing meets the duty (met_by) --------
        storm.statement(
            inquiry,
            {
                "kind": "online_reply",
                "title": "关于午餐收费标准的回复",
                "body": "您好，午餐收费依据县物价部门核定标准，结果将于三日内公示。",
                "facts": [{"label": "收费标准（元/餐）", "value": "6"}],
                "outlets": ["学校官网"],
            },
            ["dept_head", "leader"],
            "spokesperson",
        )
        storm.statement(
            rumor,
            {
                "kind": "clarification",
                "title": "关于网传学生食物中毒的澄清",
                "body": "经核查，网传学生食物中毒系捏造，学校饮食安全正常。",
                "facts": [{"label": "就医学生", "value": "0"}],
                "outlets": ["学校官网"],
            },
            ["dept_head", "office"],
            "spokesperson",
        )
        for incident_id, kind in ((inquiry, "same_day_reply"), (rumor, "clarification")):
            met = storm.until(
                incident_id,
                storm.met(kind),
                f"{kind} met by the publication",
            )
            (d,) = [d for d in met["obligations"] if d["kind"] == kind]
            storm.check(
                not d["late"],
                f"{TABLE[kind][0]}: met on time by publishing the statement",
                d,
            )
        storm.fulfil(duty(rumor, "major_tracking")["obligation_id"], "office", "事态平稳")
        storm.fulfil(duty(suggestion, "direct_handling")["obligation_id"], "dept_head", "已核实")
        storm.fulfil(duty(suggestion, "suggestion_reply")["obligation_id"], "dept_head", "已采纳")
        tracking = duty(inquiry, "tracking_update")
        storm.stop()

        # -- an outage of three hours: the first tracking report (2h) passes -----------
        storm.start(timedelta(hours=3))
        storm.check_missed(ARTICLES, inquiry, tracking, "leader-zhang")
        storm.check(
            len(storm.events(inquiry, "IncidentEscalated")) == 0,
            "a miss at level 1 escalates nowhere (the top level)",
        )
        rounds = wait_for(
            lambda: [
                d
                for d in storm.duties(inquiry)
                if d["kind"] == "tracking_update" and d["state"] == "open"
            ],
            bool,
            timeout=30,
            what="the next tracking round",
        )
        (second,) = rounds
        storm.check(
            at(second["counted_from"]) == at(tracking["deadline"])
            and at(second["deadline"]) - at(tracking["deadline"]) == timedelta(hours=12),
            "四（四）每12小时: the next round counts from the missed round's deadline",
            second,
        )

        # -- closure: 总结评估 owed at resolution (一级), not for 三级 ----------------------
        for incident_id in (inquiry, suggestion):
            with storm.as_("leader") as api:
                resolved = api.post(
                    f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "舆情已平息"}
                )
            assert resolved.status_code == 200, resolved.text
            storm.say(f"inject resolution of {incident_id} by {PEOPLE['leader'][0]}")
        view = storm.until(
            inquiry,
            lambda v: (
                v.get("status") == "resolved"
                and any(d["kind"] == "summary_review" for d in v["obligations"])
            ),
            "resolved, its 总结评估 owed",
        )
        (resolution,) = storm.events(inquiry, "IncidentResolved")
        resolved_at = at(resolution["occurred_at"])
        summary = duty(inquiry, "summary_review")
        storm.check_duties(ARTICLES, [summary], resolved_at)
        storm.check(
            [d["state"] for d in storm.duties(inquiry) if d["kind"] == "tracking_update"]
            == ["missed", "closed"],
            "四（四）动态跟踪: the open round closes with the resolution",
        )
        storm.check(
            view["watch"] is not None
            and at(view["watch"]["until"]) - resolved_at == timedelta(days=7)
            and view["watch"]["on_report"] == "reopen",
            "四（四）处置后动态跟踪: under watch for 7 days, a report reopens",
            view["watch"],
        )
        storm.until(suggestion, lambda v: v.get("status") == "resolved", "resolved")
        storm.check(
            all(d["kind"] != "summary_review" for d in storm.duties(suggestion)),
            "四（五）no 总结评估 owed for 三级 (the deployment's choice)",
        )

        # -- the watch: a report within it reopens the incident ---------------------------
        again = body(
            storm,
            "suggestion",
            source_type="forum",
            source_name="县论坛",
            media_tier="county",
            url=f"https://people.example.cn/{storm.run}/suggestion.html?from=wx",
            title=f"再次建议实验小学增设课后托管（{storm.run}）",
        )
        storm.check(
            storm.report(again) == suggestion, "a report during the watch joins the incident"
        )
        reopened_view = storm.until(
            suggestion,
            lambda v: (
                v.get("status") == "open"
                and sum(d["state"] == "open" for d in v.get("obligations", [])) == 2
            ),
            "reopened within the watch, its duties owed again",
        )
        (reopening,) = storm.events(suggestion, "IncidentReopened")
        storm.check(
            "善后跟踪" in reopening["summary"] or reopened_view["watch"]["ended_at"] is not None,
            "the reopening says it came during the watch",
            reopening,
        )
        reowed = [d for d in storm.duties(suggestion) if d["state"] == "open"]
        storm.check_duties(ARTICLES, reowed, at(reopening["occurred_at"]))
        for d in reowed:
            storm.fulfil(d["obligation_id"], TABLE[d["kind"]][3], "再次办结")
        with storm.as_("leader") as api:
            assert (
                api.post(
                    f"/intake/v1/incidents/{suggestion}/resolve", json={"reason": "已答复"}
                ).status_code
                == 200
            )
        storm.until(suggestion, lambda v: v.get("status") == "resolved", "resolved again")

        # -- review, case ----------------------------------------------------------------
        with storm.as_("leader") as api:
            reviewed = api.post(
                f"/archive/v1/incidents/{rumor}/review",
                json={
                    "cause": "个别网民捏造学生食物中毒信息",
                    "handling": "当日核查，发布澄清",
                    "lessons": "谣言类须第一时间澄清",
                },
            )
            storm.check(
                reviewed.status_code == 409 or reviewed.status_code == 422,
                "an open incident cannot be reviewed",
                reviewed.text,
            )
            resolved = api.post(
                f"/intake/v1/incidents/{rumor}/resolve", json={"reason": "谣言已澄清"}
            )
            assert resolved.status_code == 200, resolved.text
        storm.until(rumor, lambda v: v.get("status") == "resolved", "rumor resolved")
        serious_summary = wait_for(
            lambda: [d for d in storm.duties(rumor) if d["kind"] == "summary_review_serious"],
            bool,
            timeout=30,
            what="the 二级 总结评估",
        )
        storm.fulfil(serious_summary[0]["obligation_id"], "leader", "已总结")
        storm.until(
            rumor,
            # the closure duty itself, not only what the archive had of the others
            lambda v: (
                any(
                    d["kind"] == "summary_review_serious" and d["state"] == "fulfilled"
                    for d in v["obligations"]
                )
                and all(d["state"] == "fulfilled" for d in v["obligations"])
            ),
            "the 二级 总结评估 met in the archive",
        )
        with storm.as_("leader") as api:
            reviewed = api.post(
                f"/archive/v1/incidents/{rumor}/review",
                json={
                    "cause": "个别网民捏造学生食物中毒信息",
                    "handling": "当日核查，发布澄清",
                    "lessons": "谣言类须第一时间澄清",
                },
            )
        assert reviewed.status_code == 202, reviewed.text
        case_id = reviewed.json()["case_id"]
        storm.say(f"inject review of {rumor} -> case {case_id}")
        storm.until(rumor, lambda v: v.get("status") == "archived", "the archived case")
        with storm.as_("leader") as api:
            case = api.get(f"/archive/v1/cases/{case_id}").json()
            document = api.get(f"/archive/v1/cases/{case_id}/report").text
        outcomes = {o["kind"]: o["outcome"] for o in case["figures"]["obligations"]}
        storm.check(
            outcomes
            == {
                "major_tracking": "on_time",
                "clarification": "on_time",
                "summary_review_serious": "on_time",
            },
            "the case counts each duty's outcome",
            outcomes,
        )
        storm.check("谣言类须第一时间澄清" in document, "the case report tells it", document[:300])
        storm.stop()

        # -- an outage to eight days on: the 总结评估 and the watch both run out ---------
        storm.start(timedelta(days=8))
        storm.check_missed(ARTICLES, inquiry, summary, "leader-zhang")
        late = storm.report(
            body(
                storm,
                "suggestion",
                source_type="forum",
                source_name="县论坛",
                media_tier="county",
                url=f"https://people.example.cn/{storm.run}/suggestion.html?from=qq",
                title=f"三问实验小学课后托管（{storm.run}）",
            )
        )
        storm.check(late != suggestion, "after the 7-day watch a report opens a new incident", late)

        # -- assessment (考评) -------------------------------------------------------------
        period = {
            "from": (storm.now() - timedelta(days=10)).isoformat(),
            "to": (storm.now() + timedelta(days=1)).isoformat(),
        }
        with storm.as_("leader") as api:
            assessment = api.get("/archive/v1/assessment", params=period)
        assert assessment.status_code == 200, assessment.text
        units = {u["unit_id"]: u for u in assessment.json()["units"]}
        people = {p["person_id"]: p["counts"] for p in assessment.json()["people"]}
        storm.say(f"assessment: { ({k: v['counts'] for k, v in units.items()}) }; people {people}")
        missed = sorted(r["title"] for r in units["school-a"]["records"] if r["kind"] == "missed")
        storm.check(
            missed == sorted([tracking["title"], summary["title"]]),
            "考评 实验小学: 2 漏报 (the first tracking round, the 总结评估)",
            missed,
        )
        storm.check(
            people["head-liu"]["on_time"] == 4 and people["office-li"]["on_time"] == 1,
            "考评 刘校长: 4 duties on time; 李主任: 1",
            people,
        )
    finally:
        storm.stop()
        storm.say(f"{storm.checked} checks in {storm.elapsed():.0f}s")
