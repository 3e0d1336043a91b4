"""A storm written from the town plan (config/plans/town, seed 003 篇一, 镇网络舆情工作方案), the
system started on that pack alone and driven through its HTTP API: a 人民网 inquiry (重大, level
1), a provincial rumor (较大, level 2) and two county reports (一般, level 3: an inquiry and a
suggestion), each with the duties its level and category open at grading; the ordered duties
of 二（二）(先报送镇领导小组: `county_report` and `response_plan` open when the office files
`group_report_major`, counted from the filing); the 较大 report to the county office as the
leading group decides (`county_report_decided`: a no is recorded and opens nothing, a later
yes opens it counted from the decision); statements cleared by the town's chains
(approval.yaml: 党政办 then 领导小组; 相关部门 then 党政办); closure (二（二）处置完后上报处置情况:
`result_report_major`/`result_report`/`handling_result` open at resolution, the other open
duties close); no watch after closure, so intake's 72-hour reopen window reopens a resolved
incident (its unfiled result duty closes, the next resolution opens it afresh); a 一般 duty
missed across a 25-hour outage, the office alerted (alert_roles), and the rulebook's
escalation one level up it causes (the 较大 duties counted from the escalation); review, case
and assessment.

Carried by the pack but not stormed: `full_time_watch`'s later rounds running out (a level-1
miss escalates nowhere, the school storm covers a recurring duty missed), `opinion_guidance`
(炒作类: the same category mechanism as the rumor's `rumor_rebuttal`), the delivery policy
(channels, retries, ack/renotify: tests/service/test_notification_delivery.py), and what the
pack does not carry (README's 未承载 table: duty rosters, the county office as a recipient)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Infra
from tests.e2e.conftest import wait_for
from tests.e2e.storm import PEOPLE, Articles, Rule, Storm, at, report_body, within
from tests.service.notification_receivers import HttpReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.storm]

# article (plan.yaml `articles`) -> duty kind -> deadline rule (from the instant it counts
# from) -> recipients -> owner. Every deadline is this deployment's choice (README).
TABLE: dict[str, tuple[str, Rule, list[str], str]] = {
    "group_report_major": (
        "二（二）发现舆情、报告舆情要及时，先报送镇网络舆情应对处置工作领导小组（重大，30分钟）",
        within(timedelta(minutes=30)),
        ["leader"],
        "office",
    ),
    "county_report": (
        "二（二）根据舆情情况镇领导小组要及时按程序报县网信办等相关部门（报送领导小组起1小时）",
        within(timedelta(hours=1)),
        ["leader"],
        "leader",
    ),
    "response_plan": (
        "二（三）接收舆情后，领导小组迅速组织分析研判，制定处置方案和具体措施（报送领导小组起2小时）",
        within(timedelta(hours=2)),
        ["office", "dept_head"],
        "leader",
    ),
    "full_time_watch": (
        "二（一）加强对突发事件的全网全时监测、跟踪（每6小时）",
        within(timedelta(hours=6)),
        ["leader"],
        "office",
    ),
    "result_report_major": (
        "二（二）处置完接收的舆情信息后，总结分析、查找问题不足，上报处置情况（重大，办结起24小时）",
        within(timedelta(hours=24)),
        ["leader"],
        "office",
    ),
    "group_report": (
        "二（二）先报送镇网络舆情应对处置工作领导小组（较大，2小时）",
        within(timedelta(hours=2)),
        ["leader"],
        "office",
    ),
    "county_report_decided": (
        "二（二）根据舆情情况（由镇领导小组决定）报县网信办（较大，决定起1小时）",
        within(timedelta(hours=1)),
        ["leader"],
        "leader",
    ),
    "result_report": (
        "二（二）处置完后上报处置情况（较大，办结起3天）",
        within(timedelta(days=3)),
        ["leader"],
        "office",
    ),
    "department_handling": (
        "三（一）分级负责：机关各部门负责相关舆情（一般，24小时）",
        within(timedelta(hours=24)),
        ["office"],
        "dept_head",
    ),
    "handling_result": (
        "二（二）处置完后上报处置情况（一般，相关部门报党政办，办结起3天）",
        within(timedelta(days=3)),
        ["office"],
        "dept_head",
    ),
    "online_reply": (
        "二（四）解疑释惑；短期内不能处置的要说明原因（询问类，24小时）",
        within(timedelta(hours=24)),
        ["office"],
        "spokesperson",
    ),
    "rumor_rebuttal": (
        "二（四）澄清事实、批驳谣言（谣言类，12小时）",
        within(timedelta(hours=12)),
        ["office", "leader"],
        "spokesperson",
    ),
}
# Who holds each recipient (config/directory.yaml, the deployment's demo directory): the
# leading group is 张组长, 党政办 is 李主任, the department concerned is 实验小学's 刘校长.
HOLDERS = {"leader": "leader-zhang", "office": "office-li", "dept_head": "head-liu"}
# catalogue.yaml level_short, as the pages name the level.
LEVEL_NAMES = {1: "重大舆情", 2: "较大舆情", 3: "一般舆情"}
ARTICLES = Articles(TABLE, HOLDERS, {n: f"【{name}】" for n, name in LEVEL_NAMES.items()})
DECIDED = "county_report_decided"


def body(storm: Storm, key: str, **overrides: Any) -> dict[str, Any]:
    story = {
        "title": f"网友询问镇区主干道积水为何迟迟未处理（{storm.run}）",
        "excerpt": "多名网友反映镇区主干道雨后积水严重，请问何时处理。",
    }
    return report_body(storm.run, key, **(story | overrides))


def owing(kind: str) -> Callable[[dict[str, Any]], bool]:
    """A view owing an open `kind` duty."""

    def holds(view: dict[str, Any]) -> bool:
        return any(d["kind"] == kind and d["state"] == "open" for d in view.get("obligations", []))

    return holds


def test_a_storm_under_the_town_plan(
    infra: Infra, tmp_path: Path, webhook_receiver: HttpReceiver
) -> None:
    storm = Storm("town", infra, tmp_path, "town", webhook_receiver)
    # What each person filed on time (the assessment counts it for them).
    on_time: dict[str, int] = {}

    def duty(incident_id: str, kind: str, state: str = "open") -> dict[str, Any]:
        found = [d for d in storm.duties(incident_id) if d["kind"] == kind and d["state"] == state]
        assert len(found) == 1, (kind, state, storm.duties(incident_id))
        return found[0]

    def fulfil(incident_id: str, kind: str, reference: str) -> dict[str, Any]:
        owner = TABLE[kind][3]
        filed = storm.fulfil(duty(incident_id, kind)["obligation_id"], owner, reference)
        storm.check(
            filed["state"] == "fulfilled" and not filed["late"],
            f"{TABLE[kind][0]}: filed on time by {PEOPLE[owner][0]}",
            filed,
        )
        on_time[PEOPLE[owner][0]] = on_time.get(PEOPLE[owner][0], 0) + 1
        return filed

    def resolve(incident_id: str, reason: str) -> datetime:
        with storm.as_("leader") as api:
            resolved = api.post(
                f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": reason}
            )
        assert resolved.status_code == 200, resolved.text
        storm.say(f"inject resolution of {incident_id} by {PEOPLE['leader'][0]}")
        storm.until(incident_id, lambda v: v.get("status") == "resolved", "resolved")
        resolutions = storm.events(incident_id, "IncidentResolved")
        return at(resolutions[-1]["occurred_at"])

    def decide(
        incident_id: str, decision: str, reason: str, role: str = "leader"
    ) -> httpx.Response:
        with storm.as_(role) as api:
            answer = api.post(
                f"/notifications/v1/incidents/{incident_id}/decisions",
                json={"kind": DECIDED, "decision": decision, "reason": reason},
            )
        storm.say(f"inject decision {decision} on {DECIDED} of {incident_id} by {PEOPLE[role][0]}")
        return answer

    try:
        storm.start()
        with storm.admin() as api:
            plan = api.get("/grading/v1/plan").json()
        storm.check(plan["id"] == "town", "the system runs the town pack alone", plan["id"])

        # -- reports at the three levels (二（二）分级预警机制, the deployment's rulebook) -----
        major = storm.report(body(storm, "major"))
        rumor = storm.report(
            body(
                storm,
                "rumor",
                source_name="大河网",
                media_tier="provincial",
                title=f"网传镇集市将整体拆迁系谣言（{storm.run}）",
                excerpt="网传镇集市月底整体拆迁，经核实系捏造。",
            )
        )
        inquiry = storm.report(
            body(
                storm,
                "inquiry",
                source_type="forum",
                source_name="县论坛",
                media_tier="county",
                title=f"请问镇卫生院门口垃圾何时清运（{storm.run}）",
                excerpt="有网民反映镇卫生院门口垃圾堆积多日，询问清运时间。",
            )
        )
        suggestion = storm.report(
            body(
                storm,
                "suggestion",
                source_type="forum",
                source_name="县论坛",
                media_tier="county",
                title=f"建议镇政府在集市周边增设便民停车点（{storm.run}）",
                excerpt="网民建议在镇集市周边增设便民停车点，方便群众赶集。",
            )
        )
        owed = {
            major: (1, "inquiry", {"group_report_major", "full_time_watch", "online_reply"}),
            rumor: (2, "rumor", {"group_report", "rumor_rebuttal"}),
            inquiry: (3, "inquiry", {"department_handling", "online_reply"}),
            suggestion: (3, "suggestion", {"department_handling"}),
        }
        graded_at: dict[str, datetime] = {}
        for incident_id, (level, category, kinds) in owed.items():
            view = storm.until(
                incident_id,
                storm.at_level_owing(level, kinds),
                f"level {level} with its duties {sorted(kinds)}",
            )
            storm.check(
                view["plan_id"] == "town" and view["category"] == category,
                f"{incident_id}: level {level} ({LEVEL_NAMES[level]}), category {category}, "
                f"plan town {view['plan_version']}",
                view,
            )
            (graded,) = storm.events(incident_id, "IncidentGraded")
            graded_at[incident_id] = at(graded["occurred_at"])
            storm.check_duties(ARTICLES, storm.duties(incident_id), graded_at[incident_id])
        storm.check(
            all(d["kind"] != DECIDED for d in storm.duties(rumor)),
            "二（二）较大: the county report is not owed at grading (the group decides)",
        )

        # -- 二（二）先报送镇领导小组，再报县网信办: the ordered duties ----------------------
        filed = fulfil(major, "group_report_major", "电话报送领导小组")
        filed_at = at(filed["fulfilled_at"])
        storm.until(
            major,
            lambda v: {"county_report", "response_plan"} <= {d["kind"] for d in v["obligations"]},
            "the county report and the response plan owed after the group's report",
        )
        ordered = [
            d for d in storm.duties(major) if d["kind"] in ("county_report", "response_plan")
        ]
        storm.check(len(ordered) == 2, "each opens once", ordered)
        storm.check_duties(ARTICLES, ordered, filed_at)

        # -- 二（二）根据舆情情况 (较大): the leading group decides --------------------------
        office = decide(rumor, "yes", "党政办认为应上报", role="office")
        storm.check(
            office.status_code == 403 and office.json()["error"]["code"] == "not_decider",
            "only the leading group decides (党政办 is refused)",
            office.text,
        )
        no = decide(rumor, "no", "谣言已就地澄清，领导小组决定暂不上报")
        storm.check(
            no.status_code == 201
            and no.json()["decision"] == "no"
            and no.json()["decided_by"] == "leader-zhang"
            and no.json()["obligation_id"] is None,
            "决定不报: the API records the decision and opens nothing",
            no.text,
        )
        (said_no,) = wait_for(
            lambda: storm.events(rumor, "DutyDecided"), bool, timeout=30, what="the decision"
        )
        storm.check(
            "决定不开启" in said_no["summary"] and "暂不上报" in said_no["summary"],
            "the archive's timeline tells the no and its reason",
            said_no,
        )
        storm.check(
            all(d["kind"] != DECIDED for d in storm.duties(rumor)),
            "决定不报: the duties list shows no county report",
            storm.duties(rumor),
        )
        yes = decide(rumor, "yes", "谣言在省级媒体扩散，领导小组决定上报县网信办")
        storm.check(
            yes.status_code == 201
            and yes.json()["decision"] == "yes"
            and yes.json()["obligation_id"] is not None,
            "决定上报: the API names the duty it opened",
            yes.text,
        )
        decisions = wait_for(
            lambda: storm.events(rumor, "DutyDecided"),
            lambda es: len(es) == 2,
            timeout=30,
            what="the second decision",
        )
        decided_at = at(decisions[-1]["occurred_at"])
        shown = storm.until(
            rumor,
            lambda v: len(v.get("decisions", [])) == 2,
            "the incident view lists both decisions",
        )["decisions"]
        storm.check(
            [(d["decision"], d["decided_by"]) for d in shown]
            == [(False, "leader-zhang"), (True, "leader-zhang")],
            "the archive's incident view keeps the no and the yes, with who decided",
            shown,
        )
        county_decided = duty(rumor, DECIDED)
        storm.check(
            county_decided["obligation_id"] == yes.json()["obligation_id"],
            "the duties list shows the duty the yes opened",
            county_decided,
        )
        storm.check_duties(ARTICLES, [county_decided], decided_at)
        again = decide(rumor, "yes", "重复决定")
        storm.check(again.status_code == 409, "a second yes to an owed duty is refused", again.text)

        # -- statements cleared by the town's chains (二（四）统一口径；三（一）党政办牵头) --
        storm.statement(
            major,
            {
                "kind": "online_reply",
                "title": "关于镇区主干道积水的回复",
                "body": "您好，镇党政办已组织疏通排水管网，预计三日内完成整治。",
                "facts": [{"label": "疏通管网（米）", "value": "800"}],
                "outlets": ["镇政府网站"],
            },
            ["office", "leader"],
            "spokesperson",
        )
        storm.statement(
            rumor,
            {
                "kind": "clarification",
                "title": "关于网传镇集市整体拆迁的澄清",
                "body": "经核实，网传镇集市月底整体拆迁系捏造，集市经营正常。",
                "facts": [{"label": "拆迁计划", "value": "0"}],
                "outlets": ["镇政府网站"],
            },
            ["office", "leader"],
            "spokesperson",
        )
        storm.statement(
            inquiry,
            {
                "kind": "online_reply",
                "title": "关于镇卫生院门口垃圾清运的回复",
                "body": "您好，垃圾已于今日清运，今后每日清运一次。",
                "facts": [{"label": "清运（车）", "value": "2"}],
                "outlets": ["县论坛"],
            },
            ["dept_head", "office"],
            "spokesperson",
        )

        # -- duties met before the outage -----------------------------------------------
        fulfil(major, "county_report", "已电话报县网信办")
        fulfil(major, "response_plan", "处置方案已印发")
        first_watch = duty(major, "full_time_watch")
        fulfil(major, "full_time_watch", "事态平稳")
        fulfil(major, "online_reply", "已留言回复")
        fulfil(rumor, "group_report", "已报领导小组")
        fulfil(rumor, DECIDED, "已报县网信办")
        fulfil(inquiry, "online_reply", "已留言回复")
        fulfil(suggestion, "department_handling", "已采纳并回告党政办")
        second_watch = wait_for(
            lambda: [
                d
                for d in storm.duties(major)
                if d["kind"] == "full_time_watch" and d["state"] == "open"
            ],
            bool,
            timeout=30,
            what="the next full-time watch round",
        )[0]
        storm.check(
            at(second_watch["deadline"]) - at(second_watch["counted_from"]) == timedelta(hours=6)
            and at(second_watch["counted_from"]) >= at(first_watch["counted_from"]),
            "二（一）全网全时监测: the next round is owed within 6 hours",
            (first_watch, second_watch),
        )

        # -- closure (二（二）处置完后上报处置情况) -------------------------------------------
        closures = {
            major: ("result_report_major", "full_time_watch"),
            rumor: ("result_report", "rumor_rebuttal"),
            suggestion: ("handling_result", None),
        }
        resolved_at: dict[str, datetime] = {}
        for incident_id, (kind, closing) in closures.items():
            resolved_at[incident_id] = resolve(incident_id, "舆情已平息")
            view = storm.until(
                incident_id,
                owing(kind),
                f"{kind} owed at resolution",
            )
            storm.check_duties(ARTICLES, [duty(incident_id, kind)], resolved_at[incident_id])
            if closing is not None:
                closed = duty(incident_id, closing, "closed")
                storm.check(
                    closed["closed_reason"] is not None,
                    f"{TABLE[closing][0]}: the open duty closes with the resolution",
                    closed,
                )
            storm.check(
                [d["kind"] for d in storm.duties(incident_id) if d["state"] == "open"] == [kind],
                f"{incident_id}: only {kind} is owed once resolved",
            )
            storm.check(
                view.get("watch") is None,
                "README: the town pack keeps no watch after closure (plan.yaml has no `watch`)",
                view.get("watch"),
            )

        # -- no watch: a report within intake's 72-hour reopen window reopens --------------
        first_result = duty(suggestion, "handling_result")
        again_report = body(
            storm,
            "suggestion",
            source_type="forum",
            source_name="县论坛",
            media_tier="county",
            url=f"https://people.example.cn/{storm.run}/suggestion.html?from=wx",
            title=f"再次建议镇集市增设便民停车点（{storm.run}）",
        )
        storm.check(
            storm.report(again_report) == suggestion,
            "README (intake.yaml reopen_window_hours 72): a report after closure joins it",
        )
        storm.until(
            suggestion,
            lambda v: (
                v.get("status") == "open"
                and any(
                    d["kind"] == "department_handling" and d["state"] == "open"
                    for d in v.get("obligations", [])
                )
            ),
            "reopened, its level's duty owed again",
        )
        (reopening,) = storm.events(suggestion, "IncidentReopened")
        reopened_at = at(reopening["occurred_at"])
        storm.check(
            storm.view(suggestion)["level"] == 3,
            "reopened at its level (一般)",
            storm.view(suggestion)["level"],
        )
        storm.check_duties(ARTICLES, [duty(suggestion, "department_handling")], reopened_at)
        closed_result = wait_for(
            lambda: next(
                d
                for d in storm.duties(suggestion)
                if d["obligation_id"] == first_result["obligation_id"]
            ),
            lambda d: d["state"] == "closed",
            timeout=30,
            what="the unfiled handling_result closed by the reopening",
        )
        storm.check(
            closed_result["state"] == "closed",
            "README: reopening closes the unfiled result duty",
            closed_result,
        )
        fulfil(suggestion, "department_handling", "再次回告党政办")
        second_resolution = resolve(suggestion, "已采纳并答复")
        storm.until(
            suggestion,
            lambda v: any(
                d["kind"] == "handling_result" and d["state"] == "open" for d in v["obligations"]
            ),
            "handling_result owed afresh",
        )
        fresh = duty(suggestion, "handling_result")
        storm.check(
            fresh["obligation_id"] != first_result["obligation_id"],
            "README: the next resolution opens the result duty afresh",
            fresh,
        )
        storm.check_duties(ARTICLES, [fresh], second_resolution)
        fulfil(suggestion, "handling_result", "处置情况已报党政办")
        fulfil(major, "result_report_major", "处置情况已上报")
        fulfil(rumor, "result_report", "处置情况已上报")

        # -- review -> case --------------------------------------------------------------
        review = {
            "cause": "雨后排水不畅，镇区主干道积水",
            "handling": "先报领导小组再报县网信办，当日疏通管网并回复网民",
            "lessons": "重大舆情须30分钟内报送领导小组",
        }
        with storm.as_("leader") as api:
            early = api.post(f"/archive/v1/incidents/{inquiry}/review", json=review)
        storm.check(
            early.status_code in (409, 422), "an open incident cannot be reviewed", early.text
        )
        storm.until(
            major,
            lambda v: (
                all(d["state"] != "open" for d in v["obligations"])
                and any(
                    d["kind"] == "result_report_major" and d["state"] == "fulfilled"
                    for d in v["obligations"]
                )
            ),
            "every duty of the major incident settled in the archive",
        )
        with storm.as_("leader") as api:
            reviewed = api.post(f"/archive/v1/incidents/{major}/review", json=review)
        assert reviewed.status_code == 202, reviewed.text
        case_id = reviewed.json()["case_id"]
        storm.say(f"inject review of {major} -> case {case_id}")
        storm.until(major, lambda v: v.get("status") == "archived", "the archived case")
        with storm.as_("leader") as api:
            case = api.get(f"/archive/v1/cases/{case_id}").json()
        outcomes = sorted((o["kind"], o["outcome"]) for o in case["figures"]["obligations"])
        storm.check(
            outcomes
            == sorted(
                [
                    ("group_report_major", "on_time"),
                    ("county_report", "on_time"),
                    ("response_plan", "on_time"),
                    ("full_time_watch", "on_time"),
                    ("full_time_watch", "closed"),
                    ("online_reply", "on_time"),
                    ("result_report_major", "on_time"),
                ]
            ),
            "the case counts each duty's outcome",
            outcomes,
        )
        handling = duty(inquiry, "department_handling")
        storm.stop()

        # -- an outage of 25 hours: the 一般 department handling (24h) passes --------------
        storm.start(timedelta(hours=25))
        article = TABLE["department_handling"][0]
        view = storm.until(
            inquiry,
            lambda v: (
                v.get("level") == 2
                and any(
                    d["obligation_id"] == handling["obligation_id"] and d["state"] == "missed"
                    for d in v.get("obligations", [])
                )
            ),
            "department_handling missed and the incident escalated",
        )
        (missed,) = [
            d for d in view["obligations"] if d["obligation_id"] == handling["obligation_id"]
        ]
        missed_events = storm.events(inquiry, "DeadlineMissed")
        storm.check(
            at(missed["missed_at"]) == at(handling["deadline"])
            and [at(e["occurred_at"]) for e in missed_events] == [at(handling["deadline"])],
            f"{article}: missed once, at its true deadline {handling['deadline']}",
            (missed, missed_events),
        )
        alerts = storm.miss_alerts(handling["obligation_id"])
        storm.check(
            [p["recipient"] for p in alerts.values()] == ["office-li"]
            and all(p["subject"].startswith("【超时告警·一般舆情】") for p in alerts.values()),
            f"{article}: the 一般 miss alerts 党政办 (李主任) once (alert_roles [office])",
            alerts,
        )
        (escalation,) = storm.events(inquiry, "IncidentEscalated")
        escalated_at = at(escalation["occurred_at"])
        storm.check(
            escalated_at == at(handling["deadline"]) and view["level"] == 2,
            "rulebook mishandling: escalated one level (一般 -> 较大) at the missed deadline",
            escalation,
        )
        # Notification opens them on the escalation, which the archive may show first.
        new_duties = wait_for(
            lambda: [d for d in storm.duties(inquiry) if d["level"] == 2],
            bool,
            timeout=30,
            what="the 较大 duties the escalation opens",
        )
        storm.check(
            {d["kind"] for d in new_duties} == {"group_report"},
            "the escalation opens the 较大 duties (the county report waits for the group)",
            new_duties,
        )
        storm.check_duties(ARTICLES, new_duties, escalated_at)
        fulfil(inquiry, "group_report", "已补报领导小组")
        storm.until(
            inquiry,
            lambda v: all(d["state"] != "open" for d in v["obligations"]),
            "every duty of the escalated inquiry settled in the archive",
        )
        storm.check(
            all(len(storm.events(i, "DeadlineMissed")) == 0 for i in (major, rumor, suggestion)),
            "nothing else was missed across the outage",
        )

        # -- assessment (what was on time / missed, per unit and person) -----------------
        period = {
            "from": (storm.now() - timedelta(days=3)).isoformat(),
            "to": (storm.now() + timedelta(days=1)).isoformat(),
        }
        with storm.as_("leader") as api:
            assessment = api.get("/archive/v1/assessment", params=period)
        assert assessment.status_code == 200, assessment.text
        units = {u["unit_id"]: u for u in assessment.json()["units"]}
        people = {p["person_id"]: p["counts"] for p in assessment.json()["people"]}
        storm.say(f"assessment: { ({k: v['counts'] for k, v in units.items()}) }; people {people}")
        missed_records = [r for r in units["school-a"]["records"] if r["kind"] == "missed"]
        storm.check(
            [(r["title"], r["owner_role"], r["incident_id"]) for r in missed_records]
            == [(handling["title"], "dept_head", inquiry)],
            "考评 实验小学: 1 漏报 (the 一般 department handling), under its owner role",
            missed_records,
        )
        storm.check(
            units["school-a"]["counts"]["on_time"] == sum(on_time.values()),
            f"考评 实验小学: {sum(on_time.values())} duties on time",
            units["school-a"]["counts"],
        )
        for person, count in sorted(on_time.items()):
            storm.check(
                people[person]["on_time"] == count,
                f"考评 {person}: {count} on time",
                people[person],
            )
        storm.check(
            people["head-liu"]["missed"] == 1
            and sum(p.get("missed", 0) for p in people.values()) == 1,
            "考评 刘校长 (相关部门) answers for the one 漏报",
            people,
        )
    finally:
        storm.stop()
        storm.say(f"{storm.checked} checks in {storm.elapsed():.0f}s")
