"""The case report as Markdown (`GET /archive/v1/cases/{id}/report`) shows what people
wrote as text in any renderer: raw HTML as entities, image and link syntax escaped so that
nothing is loaded from elsewhere, table cells and headings left whole; in every field a
person filled (the review, titles, report titles and sources), through the template."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

from services.archive.domain.cases import CaseRecord, case_record
from services.archive.domain.views import ReportView
from services.archive.report import markdown_cell, markdown_text
from tests.unit.test_archive_fold import at
from tests.unit.test_archive_review import archived_view, report_renderer

IMG = '<img src="https://evil.example/x.png">'
IMAGE = "![x](https://evil.example/m.png)"
SCRIPT = "<script>alert(1)</script>"
LINK = "[点我](https://evil.example/p)"
AUTOLINK = "<https://evil.example/auto>"
REFERENCE = "![r]\n\n[r]: https://evil.example/ref.png"
HOSTILE = "\n".join([IMG, IMAGE, SCRIPT, LINK, AUTOLINK, REFERENCE])
# A renderer that lets HTML through, as many Markdown viewers do.
PERMISSIVE = MarkdownIt("commonmark", {"html": True}).enable("table")


def hostile_case() -> CaseRecord:
    case = case_record(archived_view(lessons=HOSTILE))
    assert case is not None
    review = case.review.model_copy(
        update={"cause": f"起因 {IMG}", "handling": f"- 第一步 {IMAGE}\n1. 第二步\n# 标题"}
    )
    figures = case.figures.model_copy(
        update={
            "obligations": [
                o.model_copy(update={"title": f"{o.title} {IMG} | 多一列"})
                for o in case.figures.obligations
            ],
            "statements": [
                s.model_copy(update={"title": f"{s.title} {IMAGE}"})
                for s in case.figures.statements
            ],
        }
    )
    return case.model_copy(update={"title": f"标题 {SCRIPT}", "review": review, "figures": figures})


def hostile_report() -> ReportView:
    return ReportView.model_validate(
        {
            "report_id": "r-evil",
            "source_type": "forum",
            "source_name": f"论坛 {IMG}",
            "media_tier": "county",
            "url": "https://bbs.example/t/1",
            "title": f"帖子 {IMAGE} {LINK}",
            "excerpt": IMG,
            "author": None,
            "published_at": at(),
            "observed_at": at(),
            "reach": {"views": 10},
            "unit_ids": ["school-a"],
            "filed_by": "monitor-chen",
            "received_at": at(),
        }
    )


def test_no_renderer_of_the_markdown_loads_or_links_anything_a_person_wrote() -> None:
    markdown = report_renderer().markdown(hostile_case(), [hostile_report()])
    html = PERMISSIVE.render(markdown)

    assert "<img" not in html
    assert "<script" not in html
    assert "evil.example" not in "".join(re.findall(r'(?:href|src)="[^"]*"', html))
    for raw in ("<img", "<script", "<https://"):
        assert raw not in markdown
    assert not re.search(r"(?<!\\)!\[", markdown)  # no image syntax left unescaped
    assert not re.search(r"(?<!\\)\]\(https://evil", markdown)
    # Shown as written, as text.
    assert "&lt;img src=&quot;https://evil.example/x.png&quot;&gt;" in html
    assert "![x](https://evil.example/m.png)" in html
    assert "[点我](https://evil.example/p)" in html
    # The report's own link to the report stays a link.
    assert 'href="https://bbs.example/t/1"' in html


def test_people_s_markup_neither_breaks_the_tables_nor_starts_blocks() -> None:
    case = hostile_case()
    markdown = report_renderer().markdown(case, [hostile_report()])
    html = report_renderer().html(case, [hostile_report()])

    rows = [line for line in markdown.splitlines() if "多一列" in line]
    assert rows
    assert all(len(re.split(r"(?<!\\)\|", row)) == 9 for row in rows)  # 7 columns
    assert "<h1>舆情事件总结评估报告</h1>" in html
    assert "<ul>" not in html
    assert "<ol>" not in html
    assert html.count("<h1>") == 1
    assert "- 第一步" in html
    assert "1. 第二步" in html
    assert "# 标题" in html
    assert "标题 &lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_escaping_keeps_plain_text_and_its_lines() -> None:
    assert markdown_text("供货商以次充好，已更换。") == "供货商以次充好，已更换。"
    assert markdown_text("第一行\n第二行\n\n第二段") == "第一行\\\n第二行\n\n第二段"
    assert markdown_text("---") == "\\---"
    assert markdown_text("2. 事项") == "2\\. 事项"
    assert markdown_text("a & b <c>") == "a &amp; b &lt;c&gt;"
    assert markdown_cell("一 | 二\n三") == "一 \\| 二 三"
    rendered = PERMISSIVE.render(markdown_text("第一行\n第二行"))
    assert rendered == "<p>第一行<br />\n第二行</p>\n"
