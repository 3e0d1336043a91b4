"""The case library as a table (services/archive/cases_export.py), through the archive's
HTTP API on the fakes: the CSV (UTF-8 with a BOM) and the workbook with Chinese headers and
names, the counts the console charts, the filters, the bounds, and who sees which cases."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from openpyxl import load_workbook

from services.archive.cases_export import COLUMNS, EXPORT_MAX_ROWS, CaseTable, first_report_minutes
from services.archive.domain.cases import CaseRecord, ObligationFigure, Outcome
from shared.events import Actor, GradeOverridden
from tests.fakes.harness import FakeService
from tests.unit.test_archive_service import T0, Clock, Story, reviewed
from tests.unit.test_archive_service import api as api
from tests.unit.test_archive_service import archive as archive
from tests.unit.test_archive_service import clock as clock

EXPORT = "/archive/v1/cases/export"
COUNTS = "/archive/v1/cases/counts"
LEADER = Actor(type="person", id="leader-zhang", unit_id="county")


def earlier(story: Story, by: timedelta) -> Story:
    """The same story, told `by` earlier (another month's case)."""
    story.events = [e.model_copy(update={"occurred_at": e.occurred_at - by}) for e in story.events]
    return story


async def library(archive: FakeService, api: httpx.AsyncClient, clock: Clock) -> None:
    """Two cases: inc-a of 实验小学 (level 1, 询问, opened in November) and inc-b of 第二中学
    (graded level 1, lowered by hand to level 2 as 谣言, opened in October)."""
    a = Story("inc-a", "school-a").opened()
    b = earlier(Story("inc-b", "school-b").opened(), timedelta(days=40))
    b.add(
        GradeOverridden(from_level=1, to_level=2, category="rumor", reason="核实为谣言"),
        "grading",
        b.events[-1].occurred_at + timedelta(minutes=1),
        actor=LEADER,
    )
    for story in (a, b):  # inc-b archived a minute after inc-a
        await archive.consume(*story.events, story.resolved())
        await reviewed(archive, api, story.incident_id)
        clock.now += timedelta(minutes=1)


def rows_of(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.content.startswith("\ufeff".encode())  # the BOM: Excel reads UTF-8
    text = response.content.decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    assert tuple(header) == COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


async def test_the_csv_has_chinese_headers_names_and_local_times(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    await library(archive, api, clock)
    office = archive.token("office-li", "county", "office")

    response = await api.get(EXPORT, params={"format": "csv"}, headers=office)

    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="cases-')
    assert "filename*=UTF-8''%E6%A1%88%E4%BE%8B%E5%BA%93-" in disposition  # 案例库-
    rows = rows_of(response)
    assert [r["事件编号"] for r in rows] == ["inc-b", "inc-a"]  # newest archived first
    b, a = rows
    assert (a["涉及单位"], a["级别"], a["类别"]) == ("实验小学", "一级", "询问")
    assert (b["涉及单位"], b["级别"], b["最高级别"], b["类别"]) == (
        "第二中学",
        "二级",
        "一级",
        "谣言",
    )
    assert a["立案时间"] == "2026-11-21 08:00"  # T0 is 08:00 in the bureau's time zone
    assert b["立案时间"] == "2026-10-12 08:00"
    assert (a["报送义务数"], a["按时报送"], a["超时未报"], a["舆情条数"]) == ("2", "0", "0", "1")
    assert (a["事件起因"], a["经验教训"], a["总结人"]) == (
        "供货商以次充好",
        "加强抽检",
        "李主任（领导小组办公室）",
    )


async def test_the_workbook_holds_the_same_rows_with_real_times(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    await library(archive, api, clock)
    analyst = archive.token("analyst-zhao", "county", "analyst")

    response = await api.get(EXPORT, params={"format": "xlsx", "level": 2}, headers=analyst)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert 'filename="cases-' in response.headers["content-disposition"]
    assert response.headers["content-disposition"].endswith(".xlsx")
    sheet = load_workbook(io.BytesIO(response.content)).active
    assert sheet is not None
    assert sheet.title == "案例库"
    values: list[tuple[Any, ...]] = list(sheet.iter_rows(values_only=True))
    assert values[0] == COLUMNS
    (row,) = values[1:]  # the level filter: inc-b only
    found = dict(zip(COLUMNS, row, strict=True))
    assert (found["事件编号"], found["级别"], found["类别"]) == ("inc-b", "二级", "谣言")
    opened = T0 + timedelta(seconds=1) - timedelta(days=40)  # IncidentOpened, 40 days earlier
    assert found["立案时间"] == opened.replace(tzinfo=None) + timedelta(hours=8)  # local time
    assert found["报送义务数"] == 2


async def test_the_counts_are_by_category_level_and_month_of_what_the_filters_find(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    await library(archive, api, clock)
    leader = archive.token("leader-zhang", "county", "leader")

    every = (await api.get(COUNTS, headers=leader)).json()
    october = (
        await api.get(
            COUNTS,
            params={"opened_from": "2026-10-01T00:00:00", "opened_to": "2026-11-01T00:00:00"},
            headers=leader,
        )
    ).json()

    def pairs(counts: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
        return [(c["key"], c["name"], c["count"]) for c in counts]

    assert every["total"] == 2
    assert pairs(every["by_category"]) == [("inquiry", "询问", 1), ("rumor", "谣言", 1)]
    assert pairs(every["by_level"]) == [("1", "一级", 1), ("2", "二级", 1)]
    assert pairs(every["by_month"]) == [("2026-10", "2026-10", 1), ("2026-11", "2026-11", 1)]
    assert october["total"] == 1
    assert pairs(october["by_category"]) == [("rumor", "谣言", 1)]


@pytest.mark.parametrize("path", [EXPORT, COUNTS])
async def test_a_unit_sees_only_its_own_cases_and_a_partner_none(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock, path: str
) -> None:
    await library(archive, api, clock)
    school_a = archive.token("head-liu", "school-a", "dept_head")
    partner = archive.token("partner-wxb", "county", "partner", "analyst")
    analyst = archive.token("analyst-zhao", "school-a", "analyst")  # every unit, wherever

    own = await api.get(path, headers=school_a)
    asked_other = await api.get(path, params={"unit": "school-b"}, headers=school_a)
    refused = await api.get(path, headers=partner)
    everyone = await api.get(path, headers=analyst)

    if path == EXPORT:
        assert [r["事件编号"] for r in rows_of(own)] == ["inc-a"]
        assert "第二中学" not in own.content.decode("utf-8-sig")
        assert "inc-b" not in own.content.decode("utf-8-sig")
        assert rows_of(asked_other) == []
        assert [r["事件编号"] for r in rows_of(everyone)] == ["inc-b", "inc-a"]
    else:
        assert own.json()["total"] == 1
        assert asked_other.json()["total"] == 0
        assert everyone.json()["total"] == 2
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")


@pytest.mark.parametrize("path", [EXPORT, COUNTS])
async def test_an_export_is_bounded_and_a_bigger_one_is_refused_naming_limit(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock, path: str
) -> None:
    await library(archive, api, clock)
    office = archive.token("office-li", "county", "office")

    too_big = await api.get(path, params={"limit": EXPORT_MAX_ROWS + 1}, headers=office)
    more_than_asked = await api.get(path, params={"limit": 1}, headers=office)
    enough = await api.get(path, params={"limit": 2}, headers=office)

    assert too_big.status_code == 422
    assert too_big.json()["error"]["details"][0]["field"] == "limit"
    assert more_than_asked.status_code == 422
    (detail,) = more_than_asked.json()["error"]["details"]
    assert (detail["field"], detail["type"]) == ("limit", "too_many_rows")
    assert "more than 1 cases match" in detail["reason"]
    assert enough.status_code == 200


async def test_text_a_spreadsheet_would_run_as_a_formula_is_written_as_text(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    await library(archive, api, clock)
    office = archive.token("office-li", "county", "office")
    listed = (await api.get("/archive/v1/cases", headers=office)).json()["items"]
    title = '=HYPERLINK("https://evil.example","点此")'
    case = CaseRecord.model_validate(listed[0]).model_copy(update={"title": title})
    table = CaseTable(archive.ctx.catalogue, archive.ctx.directory, ZoneInfo("Asia/Shanghai"))

    (row,) = list(csv.reader(io.StringIO(table.csv([case]).decode("utf-8-sig"))))[1:]
    sheet = load_workbook(io.BytesIO(table.xlsx([case]))).active
    assert sheet is not None
    cell = sheet.cell(row=2, column=3)

    assert row[2] == "'" + title  # a CSV cell that Excel shows, not runs
    assert (cell.value, cell.data_type) == (title, "s")  # a string cell, not a formula


def duty(kind: str, outcome: Outcome, minutes_to_fulfil: float | None) -> ObligationFigure:
    counted = T0 + timedelta(seconds=2)
    met = counted + timedelta(minutes=minutes_to_fulfil) if minutes_to_fulfil is not None else None
    return ObligationFigure(
        obligation_id=f"o-{kind}-{outcome}",
        kind=kind,
        title=kind,
        level=1,
        owner_role="office",
        counted_from=counted,
        deadline=counted + timedelta(minutes=30),
        fulfilled_at=met,
        fulfilled_by="office-li" if met else None,
        outcome=outcome,
        seconds_to_fulfil=minutes_to_fulfil * 60 if minutes_to_fulfil is not None else None,
    )


async def test_the_assessment_figures_are_per_day_by_level_per_unit_and_first_report(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    await library(archive, api, clock)
    office = archive.token("office-li", "county", "office")
    listed = (await api.get("/archive/v1/cases", headers=office)).json()["items"]
    b, a = (CaseRecord.model_validate(c) for c in listed)  # inc-b (二中, Oct), inc-a (实验小学)

    def reported(case: CaseRecord, *duties: ObligationFigure, **changes: Any) -> CaseRecord:
        figures = case.figures.model_copy(update={"obligations": list(duties)})
        return case.model_copy(update={"figures": figures, **changes})

    cases = [
        # 实验小学: phone report on time in 12 minutes, written one late; opened Nov 21.
        reported(a, duty("phone", "on_time", 12), duty("written", "late", 75)),
        # A second 实验小学 case two days on, level 2: met in 40 minutes, and one missed.
        reported(
            a,
            duty("phone", "on_time", 40),
            duty("written", "missed", None),
            case_id="case-c",
            level=2,
            opened_at=T0 + timedelta(days=2),
        ),
        # 第二中学 and 实验小学 together: nothing met yet (未报送); closed duties not counted.
        reported(
            b,
            duty("phone", "closed", None),
            unit_ids=["school-b", "school-a"],
            opened_at=T0 + timedelta(days=1),
        ),
    ]
    table = CaseTable(archive.ctx.catalogue, archive.ctx.directory, ZoneInfo("Asia/Shanghai"))

    counts = table.counts(cases)

    assert [(d.day, d.total, d.by_level) for d in counts.by_day] == [
        ("2026-11-21", 1, {"1": 1}),
        ("2026-11-22", 1, {"2": 1}),  # inc-b is level 2
        ("2026-11-23", 1, {"2": 1}),
    ]
    by_unit = {u.name: u for u in counts.by_unit}
    school_a = by_unit["实验小学"]
    assert (school_a.cases, school_a.obligations, school_a.on_time, school_a.late) == (3, 4, 2, 1)
    assert (school_a.missed, school_a.on_time_rate) == (1, 0.5)
    assert school_a.median_first_report_minutes == 26.0  # of 12 and 40
    school_b = by_unit["第二中学"]
    assert (school_b.cases, school_b.obligations, school_b.on_time_rate) == (1, 0, None)
    assert school_b.median_first_report_minutes is None
    assert [u.name for u in counts.by_unit] == ["实验小学", "第二中学"]  # no duty met: last
    assert [(f.name, f.count) for f in counts.first_report] == [
        ("15 分钟内", 1),
        ("15–30 分钟", 0),
        ("30–60 分钟", 1),
        ("1–2 小时", 0),
        ("2 小时以上", 0),
        ("未报送", 1),
    ]
    assert counts.median_first_report_minutes == 26.0
    assert first_report_minutes(cases[0].figures) == 12.0


async def test_the_counts_route_answers_the_assessment_figures(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    await library(archive, api, clock)
    leader = archive.token("leader-zhang", "county", "leader")

    every = (await api.get(COUNTS, headers=leader)).json()

    days = every["by_day"]
    assert (days[0]["day"], days[-1]["day"], len(days)) == ("2026-10-12", "2026-11-21", 41)
    assert sum(d["total"] for d in days) == 2
    assert {u["name"] for u in every["by_unit"]} == {"实验小学", "第二中学"}
    assert [b["key"] for b in every["first_report"]][-1] == "none"
