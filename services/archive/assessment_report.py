"""The period assessment (考评) as a document in Chinese: Markdown, and HTML rendered from
it the way the case report is (services/archive/report.py): raw HTML in anything a person
wrote is shown as text, an image is a link, and the page loads nothing from elsewhere.

Titled 网络舆情处置考评报告（起止时间）, with a table per unit and per person (按时、迟报、漏报、
瞒报、谎报、未经审核发布、表扬) and then every record behind a count other than 按时.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from html import escape

from markdown_it import MarkdownIt

from services.archive.domain.assessment import (
    Assessment,
    AssessmentCounts,
    AssessmentRecord,
    RecordKind,
)
from services.archive.report import (
    REPORT_CSP,
    _image_as_link,
    _link_open,
    duration_zh,
    markdown_cell,
)
from shared.catalogue import Catalogue
from shared.directory import Directory

# The columns of both tables: the count and its heading.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("on_time", "按时"),
    ("late", "迟报"),
    ("missed", "漏报"),
    ("concealed", "瞒报"),
    ("untrue", "谎报"),
    ("uncleared_release", "未经审核发布"),
    ("commendation", "表扬"),
)
# The records listed after the tables, in this order, under these headings.
DETAILS: tuple[tuple[RecordKind, str], ...] = (
    ("late", "迟报"),
    ("missed", "漏报"),
    ("concealed", "瞒报"),
    ("untrue", "谎报"),
    ("uncleared_release", "未经审核发布"),
    ("commendation", "表扬"),
)


def cell(text: object) -> str:
    """User text as one Markdown table cell: one line, escaped as the case report does."""
    return str(markdown_cell(text)) or "—"


def _row(counts: AssessmentCounts) -> str:
    return " | ".join(str(getattr(counts, field)) for field, _ in COLUMNS)


class AssessmentReport:
    def __init__(self, directory: Directory, catalogue: Catalogue, tz: tzinfo) -> None:
        self._directory = directory
        self._catalogue = catalogue
        self._tz = tz
        self._markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
        self._markdown.add_render_rule("image", _image_as_link)
        self._markdown.add_render_rule("link_open", _link_open)

    def _when(self, moment: datetime | None) -> str:
        return moment.astimezone(self._tz).strftime("%Y-%m-%d %H:%M") if moment else "—"

    def _person(self, person_id: str | None) -> str:
        if person_id is None:
            return "—"
        found = self._directory.person(person_id)
        return found.name if found is not None else person_id

    def _unit(self, unit_id: str | None) -> str:
        return self._directory.unit_name(unit_id) if unit_id else "—"

    def title(self, assessment: Assessment) -> str:
        start, end = self._when(assessment.period_from), self._when(assessment.period_to)
        return f"网络舆情处置考评报告（{start} 至 {end}）"

    def _detail(self, record: AssessmentRecord) -> list[str]:
        """The record's cells: 事件、单位、人员、时间、情况."""
        incident = record.incident_title or record.incident_id
        match record.kind:
            case "late" | "missed":
                role = self._catalogue.role(record.owner_role) if record.owner_role else "—"
                what = f"{record.title}（责任：{role}，截止 {self._when(record.deadline)}）"
                if record.kind == "late":
                    what += f"，{self._when(record.fulfilled_at)} 完成"
                people = (
                    self._person(record.person_id)
                    if record.kind == "late"
                    else "、".join(self._person(p) for p in record.holders) or "—"
                )
            case "concealed":
                what = (
                    f"本单位首报晚于 {self._person(record.known_from)} 报送"
                    f"（{self._when(record.known_at)}）{duration_zh(record.delay_seconds)}"
                )
                people = self._person(record.person_id)
            case "untrue":
                by = self._person(record.recorded_by)
                what = f"{record.title}：{record.reason}（认定人：{by}）"
                people = self._person(record.person_id)
            case "uncleared_release":
                what = f"经 {record.title} 发布：{record.reason}"
                people = self._person(record.person_id)
            case _:
                what = f"{record.reason}（记录人：{self._person(record.recorded_by)}）"
                people = self._person(record.person_id)
        unit = record.unit_id or (
            found.unit if (found := self._directory.person(record.person_id or "")) else None
        )
        return [incident, self._unit(unit), people, self._when(record.at), what]

    def markdown(self, assessment: Assessment) -> str:
        head = " | ".join(label for _, label in COLUMNS)
        rule = " | ".join("---:" for _ in COLUMNS)
        lines = [
            f"# {self.title(assessment)}",
            "",
            f"瞒报认定：本单位首报晚于他方报送 {assessment.concealed_after_minutes:g} 分钟以上。",
            "",
            "## 一、单位考评",
            "",
        ]
        if assessment.units:
            lines += [f"| 单位 | {head} |", f"| --- | {rule} |"]
            lines += [f"| {cell(u.unit_name)} | {_row(u.counts)} |" for u in assessment.units]
        else:
            lines.append("本期无考评记录。")
        lines += ["", "## 二、个人考评", ""]
        if assessment.people:
            lines += [f"| 姓名 | 单位 | {head} |", f"| --- | --- | {rule} |"]
            lines += [
                f"| {cell(p.name)} | {cell(self._unit(p.unit_id))} | {_row(p.counts)} |"
                for p in assessment.people
            ]
        else:
            lines.append("本期无个人考评记录。")
        lines += ["", "## 三、明细", ""]
        # A fact counted for a unit and a person is listed once per unit it counts for.
        seen: set[tuple[str, str, str, str | None]] = set()
        records = [r for u in assessment.units for r in u.records]
        records += [r for p in assessment.people for r in p.records]
        for kind, label in DETAILS:
            rows = []
            for record in sorted(records, key=lambda r: (r.at, r.incident_id, r.record_id)):
                key = (*record.key(), record.unit_id)
                if record.kind != kind or key in seen:
                    continue
                seen.add(key)
                rows.append("| " + " | ".join(cell(c) for c in self._detail(record)) + " |")
            lines += [f"### {label}（{len(rows)}）", ""]
            if rows:
                lines += ["| 事件 | 单位 | 人员 | 时间 | 情况 |", "| --- | --- | --- | --- | --- |"]
                lines += rows
            else:
                lines.append("无。")
            lines.append("")
        return "\n".join(lines)

    def html(self, assessment: Assessment) -> str:
        body = self._markdown.render(self.markdown(assessment))
        return (
            '<!doctype html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{escape(self.title(assessment))}</title></head>\n"
            f"<body>\n{body}</body></html>\n"
        )
