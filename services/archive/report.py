"""The review of a case as a document in Chinese: Markdown from a Jinja2 template that a
deployment may replace, and HTML rendered from that Markdown.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from html import escape
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markdown_it import MarkdownIt

from services.archive.cases import CaseRecord, Outcome
from services.archive.domain import (
    CATEGORY_LABEL,
    LEVEL_LABEL,
    ROLE_LABEL,
    STATEMENT_KIND_LABEL,
)
from shared.auth import Directory
from shared.events import Category, Level, StatementKind

OUTCOME_LABEL: dict[Outcome, str] = {
    "on_time": "按时完成",
    "late": "迟报",
    "missed": "超时未完成",
    "closed": "已关闭",
    "open": "未完成",
}
STATE_LABEL = {
    "draft": "草稿",
    "submitted": "审核中",
    "approved": "已审核",
    "rejected": "已退回",
    "published": "已发布",
}


def duration_zh(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    total = round(seconds)
    hours, rest = divmod(abs(total), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} 小时"] if hours else []
    if minutes:
        parts.append(f"{minutes} 分")
    if secs or not parts:
        parts.append(f"{secs} 秒")
    return ("-" if total < 0 else "") + " ".join(parts)


class CaseReport:
    """Renders cases with one template, loaded once."""

    def __init__(self, template: Path, directory: Directory, tz: tzinfo) -> None:
        environment = Environment(
            loader=FileSystemLoader(template.parent),
            undefined=StrictUndefined,  # a template naming a missing field fails loudly
            # Markdown, not HTML: escaping is the Markdown renderer's job (html=False below).
            autoescape=False,  # noqa: S701
            keep_trailing_newline=True,
        )
        self._template = environment.get_template(template.name)
        self._directory = directory
        self._tz = tz
        # Raw HTML in the review's free text must not reach the page as markup.
        self._markdown = MarkdownIt("commonmark", {"html": False}).enable("table")

    def _when(self, moment: datetime | None) -> str:
        return moment.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"

    def _units(self, unit_ids: list[str]) -> str:
        found = [self._directory.unit(u) for u in unit_ids]
        return "、".join(u.name if u else i for u, i in zip(found, unit_ids, strict=True))

    def markdown(self, case: CaseRecord) -> str:
        return self._template.render(
            case=case,
            when=self._when,
            duration=duration_zh,
            units=self._units,
            level=lambda level: LEVEL_LABEL[Level(level)] if level is not None else "未分级",
            category=lambda c: CATEGORY_LABEL[Category(c)] if c is not None else "未分类",
            role=lambda r: ROLE_LABEL.get(r, r),
            outcome=lambda o: OUTCOME_LABEL[o],
            statement_kind=lambda k: STATEMENT_KIND_LABEL[StatementKind(k)],
            statement_state=lambda s: STATE_LABEL.get(s, s),
            cell=lambda text: " ".join(str(text).split()).replace("|", "\\|"),
        )

    def html(self, case: CaseRecord) -> str:
        body = self._markdown.render(self.markdown(case))
        title = f"总结评估报告 {case.case_id}"
        return (
            '<!doctype html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title></head>\n"
            f"<body>\n{body}</body></html>\n"
        )
