"""The case library (案例库) as a table: exported as CSV or Excel, and counted for charts.

`GET /archive/v1/cases/export?format=csv|xlsx` writes every case the search of
`GET /archive/v1/cases` would find with the same filters (unit, level, category, period,
text), newest first, one row per case with Chinese column headers and names: the CSV in
UTF-8 with a byte-order mark (so that Excel reads the Chinese), the workbook with
openpyxl. `GET /archive/v1/cases/counts` counts the same cases by category, by level and
by month of opening, for the console's charts.

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
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Annotated, Literal, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from pydantic import BaseModel

from services.archive.domain.cases import CaseRecord
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


class CaseCounts(BaseModel):
    total: int
    by_category: list[Count]  # in the catalogue's order; those without a case left out
    by_level: list[Count]  # 一级 first
    by_month: list[Count]  # by month of opening (the bureau's time zone), oldest first


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
        return CaseCounts(
            total=len(cases),
            by_category=categories,
            by_level=levels,
            by_month=[Count(key=m, name=m, count=n) for m, n in sorted(by_month.items())],
        )


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
