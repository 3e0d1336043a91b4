"""A storm written from the Huaning plan (config/plans/huaning, seed 003 篇三), the system
started on that pack alone and driven through its HTTP API: three reports (a 人民网 article,
a provincial one, a 县长 leader-board message), their duties checked against the articles,
one met, some missed across a five-hour outage (and the escalation one miss causes), two
statements cleared by the plan's chains, closure, review, case and assessment.

Not carried by this pack, so not stormed: grading by a body (第四条; tests/plans/huaning_body),
a watch after closure (篇三 has none: a report within intake's reopen window reopens)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Infra
from tests.e2e.storm import PEOPLE, Articles, Rule, Storm, at, report_body, same_day, within
from tests.service.notification_receivers import HttpReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.storm]

# article -> duty kind -> deadline rule (from the instant it counts from) -> recipients -> owner.
TABLE: dict[str, tuple[str, Rule, list[str], str]] = {
    "phone_quick_report": (
        "第十三条 一级舆情手机快报（半小时内报上级主要领导）",
        within(timedelta(minutes=30)),
        ["leader"],
        "office",
    ),
    "written_quick_report": (
        "第十三条 一级舆情纸质快报（一小时内，本部署取值）",
        within(timedelta(hours=1)),
        ["leader"],
        "office",
    ),
    "tracking_update": (
        "第十七条 一级舆情动态跟踪（每24小时）",
        within(timedelta(hours=24)),
        ["leader"],
        "office",
    ),
    "online_opinion_bulletin": (
        "第十四条 二级舆情《网上舆情》上报（4小时，本部署取值）",
        within(timedelta(hours=4)),
        ["leader"],
        "office",
    ),
    "direct_handling": (
        "第十五条 三级舆情直办，限时办结并回告（24小时，本部署取值）",
        within(timedelta(hours=24)),
        ["office"],
        "dept_head",
    ),
    "same_day_reply": (
        "分类处置（种子000）询问类当日回复：当日23:59，21:00后次日12:00",
        lambda start: same_day(start, "23:59", "21:00", "12:00"),
        ["dept_head"],
        "spokesperson",
    ),
}
# Who holds each recipient (config/directory.yaml): the leading group's 张组长, the office's
# 李主任, the head of the unit concerned (实验小学's 刘校长); office@county is 李主任 too.
HOLDERS = {"leader": "leader-zhang", "office": "office-li", "dept_head": "head-liu"}
HOLDERS["office@county"] = "office-li"
LEVEL_NAMES = {1: "一级舆情", 2: "二级舆情", 3: "三级舆情"}
ARTICLES = Articles(TABLE, HOLDERS, {n: f"【{name}】" for n, name in LEVEL_NAMES.items()})
# 第十七条: a 县长 leader-board item's duties go to the county 督办室 too (its office).
BOARD = "office@county"
LEVEL_DUTIES = {
    1: {"phone_quick_report", "written_quick_report", "tracking_update"},
    2: {"online_opinion_bulletin"},
    3: {"direct_handling"},
}


def body(storm: Storm, key: str, **overrides: Any) -> dict[str, Any]:
    story = {
        "title": f"家长质疑实验小学食堂食材过期（{storm.run}）",
        "excerpt": "多名家长反映学校食堂使用过期食材，质疑监管不力。",
    }
    return report_body(storm.run, key, **(story | overrides))


def test_a_storm_under_the_huaning_plan(
    infra: Infra, tmp_path: Path, webhook_receiver: HttpReceiver
) -> None:
    storm = Storm("huaning", infra, tmp_path, "huaning", webhook_receiver)
    try:
        storm.start()
        with storm.admin() as api:
            plan = api.get("/grading/v1/plan").json()
        storm.check(plan["id"] == "huaning", "the system runs the Huaning pack alone", plan["id"])

        # -- reports arriving -------------------------------------------------------------
        central = storm.report(body(storm, "central"))
        provincial = storm.report(
            body(
                storm,
                "provincial",
                source_name="大河网",
                media_tier="provincial",
                title=f"网友反映实验小学放学时段校门口拥堵（{storm.run}）",
                excerpt="有网友反映放学时段校门口车辆拥堵，询问何时整改。",
            )
        )
        board = storm.report(
            body(
                storm,
                "board",
                source_type="leader_board",
                source_name="人民网地方领导留言板·县长",
                media_tier="county",
                title=f"请问实验小学门前路灯何时修复（{storm.run}）",
                excerpt="留言反映学校门前路灯损坏多日，询问修复时间。",
            )
        )
        levels = {central: 1, provincial: 2, board: 3}
        graded_at: dict[str, datetime] = {}
        for incident_id, level in levels.items():
            owed = LEVEL_DUTIES[level] | {"same_day_reply"}
            view = storm.until(
                incident_id,
                storm.at_level_owing(level, owed),
                f"level {level} with its duties in the archive",
            )
            (graded,) = storm.events(incident_id, "IncidentGraded")
            graded_at[incident_id] = at(graded["occurred_at"])
            storm.check(
                view["plan_id"] == "huaning",
                f"第三条: {incident_id} graded level {level} under plan huaning "
                f"{view['plan_version']}",
                view,
            )
            duties = storm.duties(incident_id)
            storm.check_duties(
                ARTICLES, duties, graded_at[incident_id], [BOARD] if incident_id == board else []
            )
            # The archive's view tells the same deadlines and recipients.
            archived = {d["obligation_id"]: d for d in view["obligations"]}
            storm.check(
                all(
                    at(archived[d["obligation_id"]]["deadline"]) == at(d["deadline"])
                    and archived[d["obligation_id"]]["recipients"] == d["recipients"]
                    for d in duties
                ),
                f"the archive shows {incident_id}'s duties as notification does",
            )

        def duty(incident_id: str, kind: str) -> dict[str, Any]:
            (found,) = [d for d in storm.duties(incident_id) if d["kind"] == kind]
            return found

        # -- duties met -------------------------------------------------------------------
        storm.fulfil(duty(central, "phone_quick_report")["obligation_id"], "office", "电话 08:20")
        storm.fulfil(duty(board, "direct_handling")["obligation_id"], "dept_head", "已修复并回告")
        for incident_id in levels:
            storm.fulfil(
                duty(incident_id, "same_day_reply")["obligation_id"], "spokesperson", "已答复"
            )

        # -- statements cleared by the plan's chains (第二十一条) ---------------------------
        storm.statement(
            central,
            {
                "kind": "press_release",
                "title": "关于实验小学食堂食材问题的情况通报",
                "body": "经核查，涉事批次食材已全部下架封存……",
                "facts": [{"label": "涉事批次", "value": "1"}],
                "outlets": ["县教育局官网"],
            },
            ["office", "propaganda"],
            "spokesperson",
        )
        storm.statement(
            board,
            {
                "kind": "online_reply",
                "title": "关于实验小学门前路灯的回复",
                "body": "您好，路灯已于今日修复。",
                "facts": [{"label": "修复路灯", "value": "2"}],
                "outlets": ["人民网地方领导留言板"],
            },
            ["dept_head"],
            "spokesperson",
        )
        storm.until(
            board,
            lambda v: (
                bool(v["obligations"]) and all(d["state"] == "fulfilled" for d in v["obligations"])
            ),
            "the board's duties met",
        )
        storm.stop()

        # -- an outage of five hours: deadlines pass while the system is down -------------
        storm.start(timedelta(hours=5))
        written = duty(central, "written_quick_report")
        bulletin = duty(provincial, "online_opinion_bulletin")
        storm.until(
            central,
            lambda v: any(
                d["kind"] == "written_quick_report" and d["state"] == "missed"
                for d in v["obligations"]
            ),
            "第十三条 the written quick report missed",
        )
        escalated = storm.until(
            provincial,
            lambda v: (
                v.get("level") == 1
                and sum(d["state"] == "missed" for d in v.get("obligations", [])) == 3
            ),
            "第三条 the provincial incident escalated on its missed bulletin, and its level-1 "
            "duties, counted from the escalation, missed too",
        )
        for incident_id, kinds in (
            (central, {"written_quick_report"}),
            (provincial, {"online_opinion_bulletin", "phone_quick_report", "written_quick_report"}),
        ):
            view = storm.view(incident_id)
            missed_events = storm.events(incident_id, "DeadlineMissed")
            for d in view["obligations"]:
                if d["kind"] not in kinds:
                    continue
                article = TABLE[d["kind"]][0]
                storm.check(
                    d["state"] == "missed" and at(d["missed_at"]) == at(d["deadline"]),
                    f"{article}: {incident_id} missed once, at its true deadline {d['deadline']}",
                    d,
                )
                storm.check(
                    sum(e.get("obligation_id") == d["obligation_id"] for e in missed_events) <= 1
                    and len(missed_events) == len(kinds),
                    f"{article}: one DeadlineMissed for it",
                    missed_events,
                )
                alerts = storm.miss_alerts(d["obligation_id"])
                storm.check(
                    [p["recipient"] for p in alerts.values()] == ["leader-zhang"],
                    f"{article}: the miss alerts the leading group (张组长) once",
                    alerts,
                )
        (escalation,) = storm.events(provincial, "IncidentEscalated")
        escalated_at = at(escalation["occurred_at"])
        storm.check(
            escalated_at == at(bulletin["deadline"]),
            "第三条 处置不当升级: escalated to level 1 at the bulletin's deadline",
            escalation,
        )
        new_duties = [d for d in storm.duties(provincial) if d["level"] == 1]
        storm.check(
            {d["kind"] for d in new_duties} == LEVEL_DUTIES[1],
            "the escalation opens the level-1 duties",
            new_duties,
        )
        storm.check_duties(ARTICLES, new_duties, escalated_at)
        storm.check(escalated["level"] == 1, "the archive shows the provincial incident at level 1")

        # A missed duty filed late (迟报).
        late = storm.fulfil(written["obligation_id"], "office", "纸质快报补报")
        storm.check(late["late"] is True, "第十三条 the written report filed late is 迟报", late)

        # -- closure ----------------------------------------------------------------------
        for incident_id in levels:
            with storm.as_("leader") as api:
                resolved = api.post(
                    f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "舆情已平息"}
                )
            assert resolved.status_code == 200, resolved.text
            storm.say(f"inject resolution of {incident_id} by {PEOPLE['leader'][0]}")
        for incident_id in (central, provincial):
            view = storm.until(
                incident_id,
                lambda v: (
                    v.get("status") == "resolved"
                    and all(d["state"] != "open" for d in v["obligations"])
                ),
                "resolved with its tracking duty closed",
            )
            (tracking,) = [
                d
                for d in view["obligations"]
                if d["kind"] == "tracking_update" and d["state"] == "closed"
            ]
            storm.check(
                tracking["closed_reason"] is not None,
                f"第十七条 动态跟踪 closes with {incident_id}'s resolution",
                tracking,
            )

        # -- review, case and its report ------------------------------------------------
        with storm.as_("leader") as api:
            reviewed = api.post(
                f"/archive/v1/incidents/{central}/review",
                json={
                    "cause": "食堂供货商以次充好，验收把关不严",
                    "handling": "当日下架封存涉事食材，发布情况通报",
                    "lessons": "一级舆情纸质快报未按时送达，须落实值班报送",
                },
            )
        assert reviewed.status_code == 202, reviewed.text
        case_id = reviewed.json()["case_id"]
        storm.say(f"inject review of {central} -> case {case_id}")
        storm.until(central, lambda v: v.get("status") == "archived", "the archived case")
        with storm.as_("leader") as api:
            case = api.get(f"/archive/v1/cases/{case_id}").json()
            document = api.get(f"/archive/v1/cases/{case_id}/report").text
        outcomes = {o["kind"]: o["outcome"] for o in case["figures"]["obligations"]}
        storm.check(
            outcomes
            == {
                "phone_quick_report": "on_time",
                "written_quick_report": "late",
                "tracking_update": "closed",
                "same_day_reply": "on_time",
            },
            "the case counts each duty's outcome",
            outcomes,
        )
        storm.check(
            all(t in document for t in ("# 舆情事件总结评估报告", "须落实值班报送", "迟报")),
            "the case report tells it in Chinese",
            document[:400],
        )

        # -- assessment (第二十八条: 迟报、漏报 per unit and person) ------------------------
        period = {
            "from": (storm.now() - timedelta(days=1)).isoformat(),
            "to": (storm.now() + timedelta(days=1)).isoformat(),
        }
        with storm.as_("leader") as api:
            assessment = api.get("/archive/v1/assessment", params=period)
        assert assessment.status_code == 200, assessment.text
        units = {u["unit_id"]: u["counts"] for u in assessment.json()["units"]}
        people = {p["person_id"]: p["counts"] for p in assessment.json()["people"]}
        storm.say(f"assessment: units {units}; people {people}")
        school = units["school-a"]
        storm.check(
            (school["late"], school["missed"]) == (1, 3),
            "考评 实验小学: 1 迟报 (纸质快报), 3 漏报 (the provincial incident's)",
            school,
        )
        (school_records,) = [
            u["records"] for u in assessment.json()["units"] if u["unit_id"] == "school-a"
        ]
        missed = [r for r in school_records if r["kind"] == "missed"]
        storm.check(
            sorted(r["title"] for r in missed)
            == sorted(
                ["二级舆情《网上舆情》上报"]
                + [
                    d["title"]
                    for d in new_duties
                    if d["kind"] in ("phone_quick_report", "written_quick_report")
                ]
            )
            and all(r["owner_role"] == "office" and r["incident_id"] == provincial for r in missed),
            "考评 each 漏报 recorded against the unit under its owner role (office)",
            missed,
        )
        # The people: a fulfilment counts for who filed it; a miss for who holds the owner
        # role in the incident's unit, else in the nearest unit above (实验小学 has no office:
        # the county office answers for its 漏报, as its pages went to it).
        office = people["office-li"]
        storm.check(
            (office["on_time"], office["late"], office["missed"]) == (1, 1, 3),
            "考评 李主任 (the office, who filed the quick reports): 1 on time, 1 迟报, 3 漏报",
            office,
        )
        storm.check(
            (people["head-liu"]["on_time"], people["head-liu"]["missed"]) == (1, 0),
            "考评 刘校长: 第十五条 直办 on time",
            people["head-liu"],
        )
        storm.check(
            people["spokesperson-sun"]["on_time"] == 3,
            "考评 孙老师: three same-day replies on time",
            people["spokesperson-sun"],
        )

        # -- after closure: 篇三 keeps no watch; intake's reopen window (72h) applies -------
        again = body(
            storm,
            "board",
            source_type="leader_board",
            source_name="人民网地方领导留言板·县长",
            media_tier="county",
            url=f"https://people.example.cn/{storm.run}/board.html?from=wx",
            title=f"请问实验小学门前路灯为何又坏了（{storm.run}）",
            excerpt="留言反映路灯修复后又损坏，询问何时再修。",
        )
        storm.check(
            storm.report(again) == board,
            "intake.yaml reopen_window_hours (72h): a report 5h after closure joins it",
        )
        view = storm.until(
            board,
            lambda v: (
                v.get("status") == "open"
                and sum(d["state"] == "open" for d in v.get("obligations", [])) == 2
            ),
            "the resolved incident reopened, its level's duties owed again",
        )
        (reopening,) = storm.events(board, "IncidentReopened")
        reopened_at = at(reopening["occurred_at"])
        storm.check(view["level"] == 3, "reopened at its level (三级)", view["level"])
        reowed = [d for d in storm.duties(board) if d["state"] == "open"]
        storm.check_duties(ARTICLES, reowed, reopened_at, [BOARD])
        for d in reowed:
            role = TABLE[d["kind"]][3]
            storm.fulfil(d["obligation_id"], role, "再次办结")
        with storm.as_("leader") as api:
            again_resolved = api.post(
                f"/intake/v1/incidents/{board}/resolve", json={"reason": "路灯已再次修复"}
            )
        assert again_resolved.status_code == 200, again_resolved.text
        storm.until(board, lambda v: v.get("status") == "resolved", "resolved again")
        missed_before = {i: len(storm.events(i, "DeadlineMissed")) for i in levels}
        storm.stop()

        # -- a second outage, to four days on: nothing is recorded twice ----------------
        storm.start(timedelta(days=4))
        late_report = storm.report(
            body(storm, "provincial", title=f"校门口拥堵问题再次引发关注（{storm.run}）")
        )
        storm.check(
            late_report != provincial,
            "past the 72h reopen window a report on the closed incident opens a new one",
            late_report,
        )
        storm.until(late_report, lambda v: v.get("level") is not None, "the new incident graded")
        missed_after = {i: len(storm.events(i, "DeadlineMissed")) for i in levels}
        escalations = len(storm.events(provincial, "IncidentEscalated"))
        storm.check(
            missed_after == missed_before and escalations == 1,
            "across a second restart every miss and the escalation stay recorded once",
            (missed_before, missed_after, escalations, storm.timeline(board)),
        )
    finally:
        storm.stop()
        storm.say(f"{storm.checked} checks in {storm.elapsed():.0f}s")
