"""The case library (案例库) as a table: exported as CSV or Excel, and counted for charts.

`GET /archive/v1/cases/export?format=csv|xlsx` writes every case the search of
`GET /archive/v1/cases` would find with the same filters (unit, level, category, period,
text), newest first, one row per case with Chinese column headers and names: the CSV in
UTF-8 with a byte-order mark (so that Excel reads the Chinese), the workbook with
openpyxl. `GET /archive/v1/cases/counts` counts the same cases by category, by level and
by month of opening, for the console's charts, with the charts of the assessment: cases
per day of opening by level, each unit's obligations met on time (按时率: on time of those
met on time, late or missed) and the time to the first report (首报用时: from when the
incident's first duty was counted to the first duty met), per unit as a median and for all
cases as a distribution.

Who sees what is the one visibility policy, as for the search: the caller's unit and those
below it (admin and analyst: every unit); the case library is the bureau's record, so a
partner's client is refused (403). Both read at most `limit` cases (at most
`EXPORT_MAX_ROWS`): more matching cases answer 422 naming `limit`, never a cut table.
Text from outside (a report's title) that a spreadsheet would take for a formula is
written as text.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, tzinfo
from typing import Annotated, Literal, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from pydantic import BaseModel

from services.archive.domain.cases import CaseFigures, CaseRecord
from services.archive.projections import ArchiveViews
from shared.auth import CurrentCaller
from shared.catalogue import Catalogue
from shared.directory import Directory
from shared.errors import Forbidden, Invalid
from shared.events import MAX_LEVELS, Category
from shared.identity import Caller
from shared.store import Document
from shared.visibility import Sight

# The most cases one export or count reads: a workbook of that many rows takes openpyxl
# about three seconds on one core (written beside the event loop, not on it).
EXPORT_MAX_ROWS = 2000
CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# What a spreadsheet reads as the start of a formula (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

Cell = str | int | float | datetime | None

COLUMNS = (
    "案例编号",
    "事件编号",
    "标题",
    "涉及单位",
    "级别",
    "最高级别",
    "类别",
    "立案时间",
    "办结时间",
    "归档时间",
    "舆情条数",
    "首报至定级（分钟）",
    "报送义务数",
    "按时报送",
    "迟报",
    "超时未报",
    "口径发布数",
    "事件起因",
    "处置经过",
    "经验教训",
    "总结人",
    "总结时间",
)
WIDTHS = {"标题": 40, "涉及单位": 24, "事件起因": 40, "处置经过": 40, "经验教训": 40}


# The search's filters, as `GET /archive/v1/cases` takes them.
Unit = Annotated[str | None, Query(description="cases concerning this unit")]
LevelQuery = Annotated[int | None, Query(ge=1, le=MAX_LEVELS)]
From = Annotated[datetime | None, Query(description="opened at or after")]
To = Annotated[datetime | None, Query(description="opened before")]
Text = Annotated[str | None, Query(max_length=100, description="text in the title or review")]
Limit = Annotated[int, Query(ge=1, description=f"the most cases read (at most {EXPORT_MAX_ROWS})")]


class CaseFilters(Protocol):
    """The archive's list filters (`build_router`'s `common_filters`), the search's own."""

    def __call__(
        self,
        caller: Caller,
        unit: str | None,
        level: int | None,
        category: Category | None,
        opened_from: datetime | None,
        opened_to: datetime | None,
        at_least: Sight = ...,
    ) -> list[Document]: ...


class Count(BaseModel):
    key: str  # the category's or level's id, or the month as YYYY-MM
    name: str  # as staff read it
    count: int


class DayCount(BaseModel):
    day: str  # YYYY-MM-DD, the bureau's day of opening
    total: int
    by_level: dict[str, int]  # the level's id (as `by_level`'s keys) -> cases opened that day


class UnitFigures(BaseModel):
    unit_id: str
    name: str
    cases: int  # cases concerning the unit (a case of two units counts for both)
    obligations: int  # duties met on time, late or missed (closed and open ones left out)
    on_time: int
    late: int
    missed: int
    on_time_rate: float | None  # on_time / obligations, 0..1; None without any
    median_first_report_minutes: float | None  # of its cases with a first report met


class Bucket(BaseModel):
    key: str
    name: str  # as staff read it: "15 分钟内", "未报送"
    count: int


class CaseCounts(BaseModel):
    total: int
    by_category: list[Count]  # in the catalogue's order; those without a case left out
    by_level: list[Count]  # 一级 first
    by_month: list[Count]  # by month of opening (the bureau's time zone), oldest first
    # Every day from the first case's opening to the last one's, those without a case too
    # (a period longer than a year: only the days with a case).
    by_day: list[DayCount] = []
    by_unit: list[UnitFigures] = []  # by on-time rate, lowest first (then by name)
    first_report: list[Bucket] = []  # the distribution of 首报用时, every bucket
    median_first_report_minutes: float | None = None


# 首报用时 buckets: (upper bound in minutes, key, name); the last has no bound.
FIRST_REPORT_BUCKETS: tuple[tuple[float | None, str, str], ...] = (
    (15, "15", "15 分钟内"),
    (30, "30", "15–30 分钟"),
    (60, "60", "30–60 分钟"),
    (120, "120", "1–2 小时"),
    (None, "more", "2 小时以上"),
)
DENSE_DAYS = 366
NOT_REPORTED = Bucket(key="none", name="未报送", count=0)
MET = ("on_time", "late", "missed")


def first_report_minutes(figures: CaseFigures) -> float | None:
    """From when the case's first duty was counted to the first duty met, in minutes."""
    met = [o.fulfilled_at for o in figures.obligations if o.fulfilled_at is not None]
    if not met:
        return None
    counted = min(o.counted_from for o in figures.obligations)
    return round(max(0.0, (min(met) - counted).total_seconds()) / 60, 1)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _minutes(seconds: float | None) -> float | None:
    return round(seconds / 60, 1) if seconds is not None else None


class CaseTable:
    """Cases as rows of named cells, in the bureau's time zone and words."""

    def __init__(self, catalogue: Catalogue, directory: Directory, tz: tzinfo) -> None:
        self.catalogue, self.directory, self.tz = catalogue, directory, tz

    def local(self, moment: datetime | None) -> datetime | None:
        return moment.astimezone(self.tz).replace(tzinfo=None) if moment is not None else None

    def person(self, person_id: str) -> str:
        found = self.directory.person(person_id)
        return found.name if found else person_id

    def row(self, case: CaseRecord) -> list[Cell]:
        figures = case.figures
        outcomes = Counter(o.outcome for o in figures.obligations)
        return [
            case.case_id,
            case.incident_id,
            case.title or "",
            "、".join(self.directory.unit_name(u) for u in case.unit_ids),
            self.catalogue.level_name(case.level),
            self.catalogue.level_name(figures.highest_level) if figures.highest_level else "",
            self.catalogue.category(case.category),
            self.local(case.opened_at),
            self.local(case.resolved_at),
            self.local(case.archived_at),
            figures.report_count,
            _minutes(figures.seconds_to_grade),
            len(figures.obligations),
            outcomes["on_time"],
            outcomes["late"],
            outcomes["missed"],
            sum(s.published_at is not None for s in figures.statements),
            case.review.cause,
            case.review.handling,
            case.review.lessons,
            self.person(case.review.reviewed_by),
            self.local(case.review.reviewed_at),
        ]

    def csv(self, cases: Sequence[CaseRecord]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        for case in cases:
            writer.writerow([_csv_cell(cell) for cell in self.row(case)])
        return ("\ufeff" + out.getvalue()).encode("utf-8")

    def xlsx(self, cases: Sequence[CaseRecord]) -> bytes:
        # Written row by row (openpyxl's write-only mode): a sheet kept whole in memory
        # grows slower with every row appended.
        book = Workbook(write_only=True)
        sheet = book.create_sheet("案例库")
        for index, name in enumerate(COLUMNS, start=1):
            sheet.column_dimensions[get_column_letter(index)].width = WIDTHS.get(name, 16)
        sheet.freeze_panes = "A2"
        bold = Font(bold=True)
        header = []
        for name in COLUMNS:
            cell = WriteOnlyCell(sheet, value=name)
            cell.font = bold
            header.append(cell)
        sheet.append(header)
        for case in cases:
            cells = []
            for value in self.row(case):
                cell = WriteOnlyCell(sheet, value=value)
                if isinstance(value, datetime):
                    cell.number_format = "yyyy-mm-dd hh:mm"
                elif isinstance(value, str) and value.startswith("="):
                    cell.data_type = "s"  # text from outside, never a formula
                cells.append(cell)
            sheet.append(cells)
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()

    def counts(self, cases: Sequence[CaseRecord]) -> CaseCounts:
        by_category = Counter(c.category for c in cases)
        by_level = Counter(c.level for c in cases)
        by_month = Counter(
            moment.strftime("%Y-%m")
            for c in cases
            if (moment := self.local(c.opened_at or c.archived_at)) is not None
        )
        categories = [
            Count(key=str(category), name=name, count=by_category[category])
            for category, name in self.catalogue.categories.items()
            if by_category[category]
        ]
        if by_category[None]:
            categories.append(
                Count(key="", name=self.catalogue.category(None), count=by_category[None])
            )
        levels = [
            Count(key=str(int(level)), name=self.catalogue.level_name(level), count=by_level[level])
            for level in sorted(self.catalogue.level_short)
            if by_level[level]
        ]
        if by_level[None]:
            levels.append(Count(key="", name=self.catalogue.level_name(None), count=by_level[None]))
        firsts = [first_report_minutes(c.figures) for c in cases]
        return CaseCounts(
            total=len(cases),
            by_category=categories,
            by_level=levels,
            by_month=[Count(key=m, name=m, count=n) for m, n in sorted(by_month.items())],
            by_day=self.by_day(cases),
            by_unit=self.by_unit(cases),
            first_report=_buckets(firsts),
            median_first_report_minutes=_median([m for m in firsts if m is not None]),
        )

    def by_day(self, cases: Sequence[CaseRecord]) -> list[DayCount]:
        days: dict[date, Counter[str]] = {}
        for case in cases:
            moment = self.local(case.opened_at or case.archived_at)
            if moment is not None:
                level = str(int(case.level)) if case.level is not None else ""
                days.setdefault(moment.date(), Counter())[level] += 1
        if not days:
            return []
        first, last = min(days), max(days)
        span = (last - first).days + 1
        # A year or less: every day, those without a case too; a longer period: its days
        # with a case only (a bar per day of several years reads as nothing).
        every = (
            [first + timedelta(days=n) for n in range(span)] if span <= DENSE_DAYS else sorted(days)
        )
        found = []
        for day in every:
            counted = days.get(day, Counter())
            found.append(
                DayCount(day=day.isoformat(), total=sum(counted.values()), by_level=dict(counted))
            )
        return found

    def by_unit(self, cases: Sequence[CaseRecord]) -> list[UnitFigures]:
        outcomes: dict[str, Counter[str]] = {}
        case_count: Counter[str] = Counter()
        firsts: dict[str, list[float]] = {}
        for case in cases:
            counted: Counter[str] = Counter(str(o.outcome) for o in case.figures.obligations)
            first = first_report_minutes(case.figures)
            for unit in dict.fromkeys(case.unit_ids):
                case_count[unit] += 1
                outcomes.setdefault(unit, Counter()).update(counted)
                if first is not None:
                    firsts.setdefault(unit, []).append(first)
        rows = []
        for unit, tally in outcomes.items():
            met = sum(tally[k] for k in MET)
            rows.append(
                UnitFigures(
                    unit_id=unit,
                    name=self.directory.unit_name(unit),
                    cases=case_count[unit],
                    obligations=met,
                    on_time=tally["on_time"],
                    late=tally["late"],
                    missed=tally["missed"],
                    on_time_rate=round(tally["on_time"] / met, 4) if met else None,
                    median_first_report_minutes=_median(firsts.get(unit, [])),
                )
            )
        # The units that need a look first; those without a duty last.
        rows.sort(key=lambda r: (r.on_time_rate is None, r.on_time_rate or 0.0, r.name))
        return rows


def _buckets(minutes: Sequence[float | None]) -> list[Bucket]:
    found = [Bucket(key=key, name=name, count=0) for _, key, name in FIRST_REPORT_BUCKETS]
    unreported = NOT_REPORTED.model_copy()
    for value in minutes:
        if value is None:
            unreported.count += 1
            continue
        for bucket, (bound, _, _) in zip(found, FIRST_REPORT_BUCKETS, strict=True):
            if bound is None or value <= bound:
                bucket.count += 1
                break
    return [*found, unreported]


def _csv_cell(cell: Cell) -> str | int | float:
    if cell is None:
        return ""
    if isinstance(cell, datetime):
        return cell.strftime("%Y-%m-%d %H:%M")
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell  # read as text, as OWASP advises
    return cell


def _attachment(name: str, suffix: str, now: datetime) -> str:
    """A download name in Chinese (RFC 5987) with a plain one for older clients."""
    stamp = now.strftime("%Y%m%d-%H%M")
    chinese = quote(f"{name}-{stamp}.{suffix}")
    return f"attachment; filename=\"cases-{stamp}.{suffix}\"; filename*=UTF-8''{chinese}"


def register_case_exports(
    router: APIRouter,
    views: ArchiveViews,
    filters: CaseFilters,
    catalogue: Catalogue,
    directory: Directory,
    tz: tzinfo,
    clock: Callable[[], datetime],
) -> None:
    """The export and the counts; registered before `/cases/{case_id}`, which would
    otherwise take `export` for a case id."""
    table = CaseTable(catalogue, directory, tz)

    async def matching(
        caller: Caller,
        unit: str | None,
        level: int | None,
        category: Category | None,
        opened_from: datetime | None,
        opened_to: datetime | None,
        q: str | None,
        limit: int,
    ) -> list[CaseRecord]:
        if caller.is_partner:
            raise Forbidden("the case library is the bureau's record: a partner may not export it")
        if limit > EXPORT_MAX_ROWS:
            raise Invalid("limit", f"at most {EXPORT_MAX_ROWS}", "less_than_equal")
        conditions = filters(
            caller, unit, level, category, opened_from, opened_to, at_least=Sight.FULL
        )
        if q:
            conditions.append({"text": {"$regex": re.escape(q), "$options": "i"}})
        rows, more = await views.list_page("cases", conditions, limit, None)
        if more is not None:
            raise Invalid(
                "limit",
                f"more than {limit} cases match: narrow the period or the filters "
                f"(one export holds at most {EXPORT_MAX_ROWS})",
                "too_many_rows",
            )
        return [CaseRecord.model_validate(row["case"]) for row in rows]

    @router.get(
        "/cases/export",
        response_class=Response,
        response_model=None,
        summary="Export the case library as CSV (UTF-8 with BOM) or Excel, headers in Chinese",
        responses={
            200: {
                "description": "The cases the search finds, newest first, one row each",
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    XLSX_TYPE: {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def export_cases(
        caller: CurrentCaller,
        format: Literal["csv", "xlsx"] = "csv",
        unit: Unit = None,
        level: LevelQuery = None,
        category: Category | None = None,
        opened_from: From = None,
        opened_to: To = None,
        q: Text = None,
        limit: Limit = 1000,
    ) -> Response:
        cases = await matching(caller, unit, level, category, opened_from, opened_to, q, limit)
        headers = {"Content-Disposition": _attachment("案例库", format, clock().astimezone(tz))}
        # Written in a worker thread: the loop keeps serving while a workbook is made.
        if format == "xlsx":
            body = await asyncio.to_thread(table.xlsx, cases)
            return Response(body, media_type=XLSX_TYPE, headers=headers)
        body = await asyncio.to_thread(table.csv, cases)
        return Response(body, media_type=CSV_TYPE, headers=headers)

    @router.get(
        "/cases/counts",
        response_model=CaseCounts,
        summary="Count the case library by category, level and month (for charts)",
    )
    async def count_cases(
        caller: CurrentCaller,
        unit: Unit = None,
        level: LevelQuery = None,
        category: Category | None = None,
        opened_from: From = None,
        opened_to: To = None,
        q: Text = None,
        limit: Limit = EXPORT_MAX_ROWS,
    ) -> CaseCounts:
        cases = await matching(caller, unit, level, category, opened_from, opened_to, q, limit)
        return table.counts(cases)
