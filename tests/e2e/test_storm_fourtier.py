"""A storm written from the four-tier plan (config/plans/fourtier, seed 000 预案2、预案3), the
system started on that pack alone and driven through its HTTP API: one report at each of the
four tiers (特别重大, 重大或较大, 一般, 影响较小), each led by its own body (三 分级响应); the
duties that follow another (三1 组长请示 then 领导小组集中办公, 三3 办公室请示 then 会同股室),
counted from the filing they wait on; a statement at every tier cleared by that tier's chain;
the 24小时不间断监控 round missed across a seven-hour outage and its next round; the 影响较小
duty missed across a two-day outage, the office alerted (它在办公室指导下处置) and the
incident escalated to 一般 at that deadline; closure with 五2 总结评估 owed at 特别重大 and
重大或较大; the 五1 善后 watch (a report within seven days is attached, the incident staying
resolved; after it, a new incident); review, case and assessment.

Not stormed: what the pack does not carry (README.md, 未承载的条款), and grading by a body (no
shipped pack turns it on)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Infra
from tests.e2e.conftest import wait_for
from tests.e2e.storm import PEOPLE, Articles, Rule, Storm, at, report_body, within
from tests.service.notification_receivers import HttpReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.storm]

# duty kind -> article -> deadline rule (from the instant it counts from) -> recipients -> owner.
TABLE: dict[str, tuple[str, Rule, list[str], str]] = {
    "superior_request": (
        "三1 特别重大：组长向上级部门主要领导请示（30分钟，本部署取值）",
        within(timedelta(minutes=30)),
        ["leader"],
        "leader",
    ),
    "group_response": (
        "三1、二2 特别重大：请示后领导小组集中办公、统一口径（请示起2小时，本部署取值）",
        within(timedelta(hours=2)),
        ["office", "propaganda"],
        "leader",
    ),
    "round_the_clock_watch": (
        "四（一）2 24小时不间断监控（每6小时报送事态，本部署取值）",
        within(timedelta(hours=6)),
        ["leader"],
        "office",
    ),
    "summary_assessment": (
        "五2 特别重大：处置结束后领导小组联合相关股室总结评估（办结起7天，本部署取值）",
        within(timedelta(days=7)),
        ["office", "dept_head"],
        "leader",
    ),
    "info_section_response": (
        "三2 重大或较大：信息股会同相关股室开展应急工作（4小时，本部署取值）",
        within(timedelta(hours=4)),
        ["leader", "dept_head"],
        "propaganda",
    ),
    "summary_assessment_major": (
        "五2 重大或较大：处置结束后总结评估（办结起7天，本部署取值）",
        within(timedelta(days=7)),
        ["office", "dept_head"],
        "leader",
    ),
    "office_request": (
        "三3 一般：经应急领导小组办公室请示（4小时，本部署取值）",
        within(timedelta(hours=4)),
        ["leader"],
        "office",
    ),
    "office_response": (
        "三3 一般：请示后办公室会同相关股室开展应急工作（请示起24小时，本部署取值）",
        within(timedelta(hours=24)),
        ["leader", "dept_head"],
        "office",
    ),
    "section_handling": (
        "三4 影响较小：相关股室在办公室指导下处置（48小时，本部署取值）",
        within(timedelta(hours=48)),
        ["office"],
        "dept_head",
    ),
    "false_report_contact": (
        "四（三）1 虚假不实报道：及时上报并与网络媒体沟通（12小时，本部署取值）",
        within(timedelta(hours=12)),
        ["leader"],
        "office",
    ),
}
HOLDERS = {
    "leader": "leader-zhang",
    "office": "office-li",
    "propaganda": "propaganda-wang",
    "dept_head": "head-liu",
}
# catalogue.yaml level_short, and as the notification texts carry it.
SHORT = {1: "特别重大", 2: "重大或较大", 3: "一般", 4: "影响较小"}
TAGS = {level: f"【{short}舆情】" for level, short in SHORT.items()}
ARTICLES = Articles(TABLE, HOLDERS, TAGS)
# approval.yaml: who clears what is released at each tier.
CHAINS = {
    1: ["office", "leader"],
    2: ["propaganda", "leader"],
    3: ["office"],
    4: ["dept_head", "office"],
}
# 二1 统一领导: a miss alerts the leading group; 三4's section is guided by the office.
ALERTED = {1: "leader-zhang", 2: "leader-zhang", 3: "leader-zhang", 4: "office-li"}


def body(storm: Storm, key: str, **overrides: Any) -> dict[str, Any]:
    story = {
        "title": f"家长质疑实验小学校服收费（{storm.run}）",
        "excerpt": "多名家长质疑学校校服定价过高，询问收费依据。",
        "author": "记者 王芳",
        "reach": {"views": 8000, "reposts": 60, "comments": 90, "likes": 120},
    }
    return report_body(storm.run, key, **(story | overrides))


def test_a_storm_under_the_four_tier_plan(
    infra: Infra, tmp_path: Path, webhook_receiver: HttpReceiver
) -> None:
    storm = Storm("fourtier", infra, tmp_path, "fourtier", webhook_receiver)

    def duty(incident_id: str, kind: str, state: str = "open") -> dict[str, Any]:
        found: list[dict[str, Any]] = wait_for(
            lambda: [
                d for d in storm.duties(incident_id) if d["kind"] == kind and d["state"] == state
            ],
            lambda ds: len(ds) == 1,
            timeout=30,
            what=f"one {state} {kind}",
        )
        return found[0]

    def resolve(incident_id: str, reason: str) -> datetime:
        with storm.as_("leader") as api:
            resolved = api.post(
                f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": reason}
            )
        assert resolved.status_code == 200, resolved.text
        storm.say(f"inject resolution of {incident_id} by {PEOPLE['leader'][0]}")
        storm.until(incident_id, lambda v: v.get("status") == "resolved", "resolved")
        (resolution,) = storm.events(incident_id, "IncidentResolved")[-1:]
        return at(resolution["occurred_at"])

    try:
        storm.start()
        with storm.admin() as api:
            plan = api.get("/grading/v1/plan").json()
        storm.check(
            plan["id"] == "fourtier"
            and [lv["short"] for lv in plan["levels"]]
            == ["特别重大", "重大或较大", "一般", "影响较小"],
            "三 分级响应: the system runs the four-tier pack alone, its four tiers by name",
            plan,
        )

        # -- one report at each tier (三 分级响应; the rulebook's deployment thresholds) ------
        especially = storm.report(body(storm, "especially"))
        major = storm.report(
            body(
                storm,
                "major",
                source_name="大河网",
                media_tier="provincial",
                title=f"网传实验小学停课整顿系谣言（{storm.run}）",
                excerpt="网传学校因违规被责令停课整顿，经查系不实消息。",
            )
        )
        general = storm.report(
            body(
                storm,
                "general",
                source_name="市融媒",
                media_tier="municipal",
                title=f"建议实验小学延长图书馆开放时间（{storm.run}）",
                excerpt="市民建议学校假期开放图书馆。",
            )
        )
        minor = storm.report(
            body(
                storm,
                "minor",
                source_type="forum",
                source_name="县论坛",
                media_tier="county",
                title=f"请问校门口积水何时处理（{storm.run}）",
                excerpt="网友反映雨后校门口积水，接送不便。",
                reach={"views": 300, "reposts": 2, "comments": 5, "likes": 9},
            )
        )
        owed = {
            especially: (1, {"superior_request", "round_the_clock_watch"}),
            major: (2, {"info_section_response", "false_report_contact"}),
            general: (3, {"office_request"}),
            minor: (4, {"section_handling"}),
        }
        for incident_id, (level, kinds) in owed.items():
            view = storm.until(
                incident_id,
                storm.at_level_owing(level, kinds),
                f"tier {level} with its duties {sorted(kinds)}",
            )
            storm.check(
                view["plan_id"] == "fourtier" and view["plan_version"] == "2026.12.3-seed000-2",
                f"{incident_id}: tier {level} ({TAGS[level]}), category {view['category']}, "
                f"plan fourtier {view['plan_version']}",
                view,
            )
            (graded,) = storm.events(incident_id, "IncidentGraded")
            storm.check_duties(ARTICLES, storm.duties(incident_id), at(graded["occurred_at"]))

        # -- duties that follow another (after:), counted from the filing they wait on ------
        for incident_id, first, then, role in (
            (especially, "superior_request", "group_response", "leader"),
            (general, "office_request", "office_response", "office"),
        ):
            storm.check(
                all(d["kind"] != then for d in storm.duties(incident_id)),
                f"{TABLE[then][0]}: not owed before {first} is filed",
            )
            filed = storm.fulfil(duty(incident_id, first)["obligation_id"], role, "已请示")
            storm.check_duties(ARTICLES, [duty(incident_id, then)], at(filed["fulfilled_at"]))

        # -- a statement at each tier, cleared by that tier's chain (approval.yaml) -------
        for incident_id, level, kind, title in (
            (especially, 1, "press_release", "关于校服收费的情况通报"),
            (major, 2, "clarification", "关于网传停课整顿的澄清"),
            (general, 3, "online_reply", "关于图书馆开放时间的回复"),
            (minor, 4, "online_reply", "关于校门口积水的回复"),
        ):
            storm.statement(
                incident_id,
                {
                    "kind": kind,
                    "title": title,
                    "body": f"{title}：经核查，情况如下。",
                    "facts": [{"label": "核查单位", "value": "实验小学"}],
                    "outlets": ["学校官网"],
                },
                CHAINS[level],
                "spokesperson",
            )

        storm.fulfil(duty(especially, "group_response")["obligation_id"], "leader", "集中办公")
        storm.fulfil(duty(major, "info_section_response")["obligation_id"], "propaganda", "已处置")
        storm.fulfil(duty(major, "false_report_contact")["obligation_id"], "office", "已沟通删帖")
        storm.fulfil(duty(general, "office_response")["obligation_id"], "office", "已回告")
        watch_round = duty(especially, "round_the_clock_watch")
        section = duty(minor, "section_handling")
        storm.stop()

        # -- seven hours out: the first 6-hour round of 24小时不间断监控 passes ---------------
        storm.start(timedelta(hours=7))
        storm.check_missed(ARTICLES, especially, watch_round, ALERTED[watch_round["level"]])
        storm.check(
            len(storm.events(especially, "IncidentEscalated")) == 0,
            "a miss at 特别重大 escalates nowhere (the top tier)",
        )
        second = duty(especially, "round_the_clock_watch")
        storm.check(
            at(second["counted_from"]) == at(watch_round["deadline"])
            and at(second["deadline"]) - at(watch_round["deadline"]) == timedelta(hours=6),
            "四（一）2 不间断监控: the next round counts from the missed round's deadline",
            second,
        )

        # -- closure: 五2 总结评估 owed at the two tiers the leading group leads ---------------
        resolved_at = resolve(especially, "舆情已平息")
        summary = duty(especially, "summary_assessment")
        storm.check_duties(ARTICLES, [summary], resolved_at)
        storm.check(
            [d["state"] for d in storm.duties(especially) if d["kind"] == "round_the_clock_watch"]
            == ["missed", "closed"],
            "四（一）2: the open round closes with the resolution; 五2 stays owed",
        )
        view = storm.view(especially)
        storm.check(
            view["watch"] is not None
            and at(view["watch"]["until"]) - resolved_at == timedelta(days=7)
            and view["watch"]["on_report"] == "attach",
            "五1 善后工作: under watch for 7 days, a report is attached",
            view["watch"],
        )

        # -- the watch: a report within it is attached, the incident staying resolved ------
        again = body(
            storm,
            "especially",
            url=f"https://people.example.cn/{storm.run}/especially.html?from=wx",
            title=f"再问实验小学校服收费（{storm.run}）",
        )
        storm.check(storm.report(again) == especially, "a report during the watch joins it")
        watched = storm.until(
            especially,
            lambda v: len((v.get("watch") or {}).get("reports", [])) == 1,
            "the report shown under the watch",
        )
        storm.check(
            watched["status"] == "resolved"
            and [r["reopened"] for r in watched["watch"]["reports"]] == [False]
            and not storm.events(especially, "IncidentReopened"),
            "五1: attached for the office to see, the incident staying resolved",
            watched,
        )
        storm.check(
            any("跟踪期内收到新舆情" in e["summary"] for e in storm.timeline(especially)),
            "the timeline tells the office of it",
        )

        major_resolved = resolve(major, "谣言已澄清")
        assessment_major = duty(major, "summary_assessment_major")
        storm.check_duties(ARTICLES, [assessment_major], major_resolved)
        storm.fulfil(assessment_major["obligation_id"], "leader", "已总结评估")
        storm.until(
            major,
            lambda v: (
                all(d["state"] == "fulfilled" for d in v.get("obligations", []))
                and any(d["kind"] == "summary_assessment_major" for d in v["obligations"])
            ),
            "every duty of the 重大或较大 incident met in the archive",
        )
        with storm.as_("leader") as api:
            reviewed = api.post(
                f"/archive/v1/incidents/{major}/review",
                json={
                    "cause": "个别网民编造学校停课整顿消息",
                    "handling": "信息股会同相关股室核查，发布澄清，与刊登媒体沟通",
                    "lessons": "虚假不实报道须及时上报并与媒体沟通",
                },
            )
        assert reviewed.status_code == 202, reviewed.text
        case_id = reviewed.json()["case_id"]
        storm.say(f"inject review of {major} -> case {case_id}")
        storm.until(major, lambda v: v.get("status") == "archived", "the archived case")
        with storm.as_("leader") as api:
            case = api.get(f"/archive/v1/cases/{case_id}").json()
            document = api.get(f"/archive/v1/cases/{case_id}/report").text
        outcomes = {o["kind"]: o["outcome"] for o in case["figures"]["obligations"]}
        storm.check(
            outcomes
            == {
                "info_section_response": "on_time",
                "false_report_contact": "on_time",
                "summary_assessment_major": "on_time",
            },
            "the case counts each duty's outcome",
            outcomes,
        )
        storm.check(
            "虚假不实报道须及时上报" in document and "重大或较大" in document,
            "the case report tells it under the tier's name",
            document[:400],
        )
        storm.stop()

        # -- two days out: the 影响较小 duty passes; the office is alerted; one tier up -------
        storm.start(timedelta(hours=50))
        storm.check_missed(ARTICLES, minor, section, ALERTED[section["level"]])
        escalated = storm.until(minor, lambda v: v.get("level") == 3, "escalated to 一般")
        (escalation,) = storm.events(minor, "IncidentEscalated")
        escalated_at = at(escalation["occurred_at"])
        storm.check(
            escalated_at == at(section["deadline"]) and escalated["level"] == 3,
            "处置不当升级 (rulebook mishandling): tier 4 to 3 at the missed deadline",
            escalation,
        )
        request = duty(minor, "office_request")
        storm.check_duties(ARTICLES, [request], escalated_at)
        storm.fulfil(request["obligation_id"], "office", "已请示")
        resolve(minor, "积水已处理")
        storm.stop()

        # -- eight days out: the 总结评估 and the watch both run out ----------------------
        storm.start(timedelta(days=8))
        storm.check_missed(ARTICLES, especially, summary, ALERTED[summary["level"]])
        late = storm.report(
            body(
                storm,
                "especially",
                url=f"https://people.example.cn/{storm.run}/especially.html?from=qq",
                title=f"三问实验小学校服收费（{storm.run}）",
            )
        )
        storm.check(late != especially, "after the 7-day watch a report opens a new incident", late)

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
            missed == sorted([watch_round["title"], section["title"], summary["title"]]),
            "考评 实验小学: 3 漏报 (the first监控 round, the 影响较小 duty, the 总结评估)",
            missed,
        )
        storm.check(
            {
                person: (people[person]["on_time"], people[person]["missed"])
                for person in ("leader-zhang", "office-li", "propaganda-wang", "head-liu")
            }
            == {
                "leader-zhang": (3, 1),
                "office-li": (4, 1),
                "propaganda-wang": (1, 0),
                "head-liu": (0, 1),
            },
            "考评 per person: 张组长 3 on time (请示, 集中办公, 总结评估) and the 总结评估 missed; "
            "李主任 4 and the 监控 round missed; 信息股 1; 刘校长 the 影响较小 duty missed",
            people,
        )
    finally:
        storm.stop()
        storm.say(f"{storm.checked} checks in {storm.elapsed():.0f}s")
