"""The review of a case as a document in Chinese: Markdown from a Jinja2 template that a
deployment may replace, and HTML rendered from that Markdown. Every name it prints (level,
category, role, statement kind and state) comes from the catalogue.

The reports of the incident are listed too, oldest first, at most `reports_shown` of them:
an incident with more says "共 N 条舆情，显示前 M 条" and links to its page in the console,
which reads them all by page; never a list cut without saying so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from html import escape
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from services.archive.domain.cases import CaseRecord, ObligationFigure, Outcome
from services.archive.domain.views import ReportView
from shared.catalogue import Catalogue
from shared.directory import Directory
from shared.events import StatementState

# What became of a duty, as the review reads it: the archive's own figures, not a name of
# the shared vocabulary.
OUTCOME_LABEL: dict[Outcome, str] = {
    "on_time": "按时完成",
    "late": "迟报",
    "missed": "超时未完成",
    "closed": "已关闭",
    "open": "未完成",
}
OVERDUE_LABEL = "未完成（已过截止时间）"
# The most reports one review document lists; the rest are on the incident's page.
REPORTS_SHOWN = 20


@dataclass(frozen=True)
class ReportList:
    """The reports a review document lists: the first `shown` of `total`, oldest first."""

    shown: list[ReportView]
    total: int
    incident_url: str  # the incident's page in the console, where every report is read

    @property
    def cut(self) -> bool:
        return self.total > len(self.shown)


class Markdown(str):
    """Markdown made by the report itself (a helper's output, a link it builds): printed
    into the document as it is. Every other value a template prints is a person's text
    and is escaped (`markdown_text`)."""


# What opens inline markup: emphasis, code, links and images (`![`), a table cell's end,
# strikethrough, a heading's mark, and the escape character itself.
_INLINE_MARKUP = "\\`*_[]!|~#"
# HTML as entities: no tag, comment or autolink (`<https://...>`) reaches a renderer.
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPES = {ord(c): "\\" + c for c in _INLINE_MARKUP} | {ord(c): e for c, e in _ENTITIES.items()}
# A line that would start a block: a list item, a rule or a heading's underline, a
# numbered item. (Headings, quotes, fences and tables are escaped inline above.)
_BLOCK_START = re.compile(r"^([-+=])|^(\d{1,9})([.)])")


def _line(text: str) -> str:
    escaped = text.strip().translate(_ESCAPES)
    return _BLOCK_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", escaped)


def markdown_text(value: object) -> Markdown:
    """A person's text as Markdown that shows it as written, in every renderer: HTML as
    entities, every markup character escaped (so no image is loaded, no link made, no
    table cell ended), a line that would start a list or a rule escaped at its start; its
    lines kept (a line break is a hard break, a blank line a new paragraph)."""
    if isinstance(value, Markdown):
        return value
    lines = [_line(line) for line in str(value).splitlines()]
    out: list[str] = []
    for n, line in enumerate(lines):
        more = n + 1 < len(lines) and bool(lines[n + 1])
        out.append(line + "\\" if line and more else line)
    return Markdown("\n".join(out))


def markdown_cell(value: object) -> Markdown:
    """A person's text as one Markdown table cell (or a link's words): one line, escaped
    as `markdown_text`."""
    return markdown_text(" ".join(str(value).split()))


def _href(url: str) -> Markdown:
    """A URL as a Markdown link target: what would end or break the link escaped."""
    return Markdown(quote(url, safe=":/?#[]@!$&'*+,;=%~-._"))


def _finalize(value: object) -> object:
    """What a template prints: a person's text escaped, the report's own Markdown as is."""
    return value if isinstance(value, Markdown) else markdown_text(value)


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


def outcome_zh(obligation: ObligationFigure) -> str:
    if obligation.outcome == "open" and obligation.overdue:
        return OVERDUE_LABEL
    return OUTCOME_LABEL[obligation.outcome]


class CaseReport:
    """Renders cases with one template, loaded once (a template that cannot be read stops
    the start)."""

    def __init__(
        self,
        template: Path,
        directory: Directory,
        catalogue: Catalogue,
        tz: tzinfo,
        *,
        base_url: str = "",
        reports_shown: int = REPORTS_SHOWN,
    ) -> None:
        environment = Environment(
            loader=FileSystemLoader(template.parent),
            undefined=StrictUndefined,  # a template naming a missing field fails loudly
            # Markdown, not HTML: escaping is the Markdown renderer's job (html=False below).
            autoescape=False,  # noqa: S701
            # Every value printed is a person's text, escaped for Markdown, unless a
            # helper made it (`Markdown`): a replaced template cannot forget to.
            finalize=_finalize,
            keep_trailing_newline=True,
        )
        self._template = environment.get_template(template.name)
        self._directory = directory
        self._catalogue = catalogue
        self._tz = tz
        self._base_url = base_url.rstrip("/")
        self._reports_shown = reports_shown
        # Raw HTML in the review's free text must not reach the page as markup, and the
        # page loads nothing from elsewhere: an image is shown as a link to it.
        self._markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
        self._markdown.add_render_rule("image", _image_as_link)
        self._markdown.add_render_rule("link_open", _link_open)

    def _when(self, moment: datetime | None) -> Markdown:
        return Markdown(
            moment.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"
        )

    def _units(self, unit_ids: list[str]) -> str:
        return "、".join(self._directory.unit_name(u) for u in unit_ids)

    def _source(self, report: ReportView) -> str:
        tier = self._catalogue.media_tiers.get(report.media_tier, str(report.media_tier))
        return f"{report.source_name}（{tier}）"

    def report_list(self, case: CaseRecord, reports: Sequence[ReportView]) -> ReportList:
        """The first reports of the incident (those its view holds), oldest first."""
        ordered = sorted(reports, key=lambda r: (r.received_at, r.report_id))
        return ReportList(
            shown=ordered[: self._reports_shown],
            total=max(case.figures.report_count, len(ordered)),
            incident_url=f"{self._base_url}/incidents/{quote(case.incident_id, safe='')}",
        )

    def markdown(self, case: CaseRecord, reports: Sequence[ReportView] = ()) -> str:
        names = self._catalogue
        return self._template.render(
            case=case,
            reports=self.report_list(case, reports),
            href=_href,
            link_text=markdown_cell,
            source=self._source,
            when=self._when,
            duration=lambda seconds: Markdown(duration_zh(seconds)),
            units=self._units,
            level=names.level,
            category=names.category,
            role=names.role,
            outcome=outcome_zh,
            statement_kind=names.statement_kind,
            statement_state=lambda s: names.statement_states[StatementState(s)],
            cell=markdown_cell,
        )

    def html(self, case: CaseRecord, reports: Sequence[ReportView] = ()) -> str:
        body = self._markdown.render(self.markdown(case, reports))
        title = f"总结评估报告 {case.case_id}"
        return (
            '<!doctype html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{escape(title)}</title></head>\n"
            f"<body>\n{body}</body></html>\n"
        )


# The report, saved or served, loads nothing: no script, style file, image or frame.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_LINK_REL = "noopener noreferrer nofollow"


def _image_as_link(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """`![说明](https://...)` in review text: a link to the image, never a remote load."""
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env) or "图片"
    src = str(token.attrGet("src") or "")
    return f'<a href="{escape(src)}" rel="{_LINK_REL}">[图片：{escape(alt)}]</a>'


def _link_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """A link opens elsewhere without telling the other site where it came from."""
    tokens[idx].attrSet("rel", _LINK_REL)
    return self.renderToken(tokens, idx, options, env)
