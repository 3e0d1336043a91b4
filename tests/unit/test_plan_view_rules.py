"""GET /grading/v1/plan shows every rule a duty may carry (when it opens, where its clock
starts, what meets it, who decides it, what it waits on, how often it recurs), the routing
rules with their recipients named, the watch after resolution and who confirms the grade:
in ids and in the Chinese names staff read. On grading built on the fakes, with a pack that
writes each rule (tests/fakes/rules_pack.py) in force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.grading.bootstrap import build
from tests.fakes.harness import fake_service, fake_settings
from tests.fakes.rules_pack import write_rules_pack

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def view(tmp_path: Path) -> dict[str, Any]:
    pack = write_rules_pack(tmp_path / "plans")
    settings = fake_settings(tmp_path, plan=pack, plans_dir=tmp_path / "plans")
    async with fake_service("grading", build, settings=settings) as grading, grading.http() as http:
        answer = await http.get(
            "/grading/v1/plan", headers=grading.token("office-li", "county", "office")
        )
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def duties(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = [d for level in view["levels"] for d in level["duties"]]
    found += [d for category in view["categories"] for d in category["duties"]]
    return {d["kind"]: d for d in found}


async def test_each_duty_says_when_it_opens_and_where_its_clock_starts(
    view: dict[str, Any],
) -> None:
    by_kind = duties(view)
    # 舆情发生: the major report's 30 minutes count from the first report's publication.
    major = by_kind["group_report_major"]
    assert (major["opens_on"], major["opens_on_name"]) == ("graded", "定级时")
    assert (major["counted_from"], major["counted_from_name"]) == (
        "published",
        "舆情发生（首条信息发布）时",
    )
    assert major["deadline"] == "30m"
    assert major["deadline_name"] == "舆情发生（首条信息发布）时起30分钟内"
    proposal = by_kind["proposal_notice"]
    assert (proposal["opens_on"], proposal["opens_on_name"]) == ("proposed", "提出定级建议时")
    assert proposal["counted_from_name"] == "提出定级建议时"
    followup = by_kind["instruction_followup"]
    assert (followup["opens_on"], followup["opens_on_name"]) == ("instructed", "领导签批时")
    assert followup["deadline_name"] == "领导签批时起4小时内"
    result = by_kind["result_report"]
    assert (result["opens_on"], result["opens_on_name"]) == ("resolved", "办结时")
    assert result["deadline_name"] == "办结时起3天内"


async def test_a_decided_duty_names_who_decides_and_a_waiting_one_what_it_waits_on(
    view: dict[str, Any],
) -> None:
    by_kind = duties(view)
    decided = by_kind["county_report_decided"]
    assert (decided["opens_on"], decided["opens_on_name"]) == ("decided", "经决定开启时")
    assert decided["decided_by"] == {"id": "leader", "name": "镇网络舆情应对处置工作领导小组"}
    county = by_kind["county_report"]
    assert county["after"] == "group_report_major"
    assert county["after_title"] == by_kind["group_report_major"]["title"]
    assert county["counted_from_name"] == f"“{county['after_title']}”完成时"
    assert by_kind["group_report"]["decided_by"] is None
    watch = by_kind["full_time_watch"]
    assert (watch["every"], watch["every_name"]) == ("6h", "每6小时一次（上一轮期限后）")


async def test_a_duty_met_by_a_publication_names_the_statement_kind(
    view: dict[str, Any],
) -> None:
    reply = duties(view)["online_reply"]
    assert reply["met_by"] == {
        "statement_published": {"id": "online_reply", "name": "网上回复稿"},
        "name": "发布“网上回复稿”即完成",
    }
    assert duties(view)["rumor_rebuttal"]["met_by"] is None


async def test_routing_watch_and_confirmation_are_shown_named(view: dict[str, Any]) -> None:
    (route,) = view["routing"]
    assert route["id"] == "town-leader-board"
    assert route["source_type"] == {"id": "leader_board", "name": "地方领导留言板"}
    assert route["source_name"] == "镇(长|党委)"
    (recipient,) = route["recipients"]
    assert recipient["unit"] == {"id": "county", "name": "县局"}
    assert recipient["role"]["id"] == "office"
    assert recipient["name"] == f"县局·{recipient['role']['name']}"
    assert [k["id"] for k in route["kinds"]] == ["group_report", "group_report_major"]
    assert route["kinds"][0]["name"] == duties(view)["group_report"]["title"]
    assert view["watch"] == {
        "period": "3d",
        "period_name": "办结后3天",
        "on_report": {"id": "attach", "name": "新的相关信息附于已办结事件，供办公室查看"},
    }
    assert view["confirmed_by"] == {"id": "leader", "name": "镇网络舆情应对处置工作领导小组"}


async def test_the_default_plan_shows_its_route_and_no_watch(tmp_path: Path) -> None:
    async with (
        fake_service("grading", build, settings=fake_settings(tmp_path)) as grading,
        grading.http() as http,
    ):
        answer = await http.get(
            "/grading/v1/plan", headers=grading.token("office-li", "county", "office")
        )
    view = answer.json()
    (route,) = view["routing"]
    assert route["source_type"]["name"] == "地方领导留言板"
    assert route["kinds"] == []  # every duty
    assert route["recipients"][0]["unit"] == {"id": "county", "name": "县局"}
    assert view["watch"] is None
    assert view["confirmed_by"] is None
    quick = duties(view)["phone_quick_report"]
    assert (quick["counted_from"], quick["counted_from_name"]) == ("graded", "定级时")
    assert quick["deadline_name"] == "定级时起30分钟内"
    reply = duties(view)["same_day_reply"]
    assert reply["deadline_name"] == "当日23:59前（21:00及以后开始的，次日12:00前）"
