"""The review document (`GET /archive/v1/cases/{id}/report`, services/archive/report.py and
config/templates/archive_case_report.md.j2) lists the incident's reports and never cuts the
list without saying so: past `REPORTS_SHOWN` it says how many there are and links to the
incident's page in the console, which reads them all by page."""

from __future__ import annotations

from datetime import timedelta

import httpx

from services.archive.report import REPORTS_SHOWN
from shared.events import MediaTier, Reach, ReportReceived, SourceType
from tests.fakes.harness import FakeService
from tests.unit.test_archive_service import T0, Clock, Story, reviewed
from tests.unit.test_archive_service import api as api
from tests.unit.test_archive_service import archive as archive
from tests.unit.test_archive_service import clock as clock


def with_reports(story: Story, more: int) -> Story:
    """`more` reports attached after the one that opened it, a minute apart."""
    for n in range(1, more + 1):
        story.add(
            ReportReceived(
                report_id=f"{story.incident_id}-r{n + 1}",
                source_type=SourceType.WEIBO,
                source_name="微博",
                media_tier=MediaTier.SELF_MEDIA,
                url=f"https://weibo.example/{story.incident_id}/{n} (转发)",
                normalized_url=f"weibo.example/{story.incident_id}/{n}",
                title=f"转发第{n}条 [热议] | 家长关注",
                excerpt="转发",
                author=None,
                published_at=T0 + timedelta(minutes=n),
                observed_at=T0 + timedelta(minutes=n),
                reach=Reach(views=100 * n),
                unit_ids=(story.unit,),
                filed_by=story.filed_by,
            ),
            f"report{n}",
            T0 + timedelta(minutes=n, seconds=30),
        )
    return story


async def case_of(archive: FakeService, api: httpx.AsyncClient, incident_id: str, more: int) -> str:
    story = with_reports(Story(incident_id, "school-a").opened(), more)
    await archive.consume(*story.events, story.resolved())
    return await reviewed(archive, api, incident_id)


async def test_an_incident_with_many_reports_says_how_many_and_links_to_them_all(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    case_id = await case_of(archive, api, "inc-many", REPORTS_SHOWN + 5)
    office = archive.token("office-li", "county", "office")

    markdown = (await api.get(f"/archive/v1/cases/{case_id}/report", headers=office)).text
    html = (await api.get(f"/archive/v1/cases/{case_id}/report?format=html", headers=office)).text

    total = REPORTS_SHOWN + 6  # the opening report and the ones attached
    assert f"共 {total} 条舆情，显示前 {REPORTS_SHOWN} 条" in markdown
    rows = [line for line in markdown.split("## 六、相关舆情")[1].splitlines() if "weibo" in line]
    assert len(rows) == REPORTS_SHOWN - 1  # the opening report (人民网) and the next 19
    assert "转发第19条" in markdown  # oldest first
    assert "转发第20条" not in markdown
    assert "| 2026-11-21 08:00:00 | 人民网（中央媒体） |" in markdown
    link = '<a href="http://127.0.0.1:8000/incidents/inc-many" rel="noopener noreferrer nofollow">'
    assert f"显示前 {REPORTS_SHOWN} 条；全部舆情见{link}事件详情页</a>" in html
    # A title's markup and a URL's spaces do not break the table or the link.
    assert ">转发第1条 [热议] | 家长关注</a>" in html
    assert 'href="https://weibo.example/inc-many/1%20%28%E8%BD%AC%E5%8F%91%29"' in html


async def test_an_incident_with_few_reports_lists_them_all_without_a_note(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    case_id = await case_of(archive, api, "inc-few", 2)
    office = archive.token("office-li", "county", "office")

    markdown = (await api.get(f"/archive/v1/cases/{case_id}/report", headers=office)).text

    assert "共 3 条舆情。" in markdown
    assert "显示前" not in markdown
    assert "转发第2条" in markdown
