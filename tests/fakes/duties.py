"""What a test of notification's duties reads and does through its API, as the office and
the leading group would."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from shared.events import MediaTier, Reach, ReportReceived, SourceType
from tests.fakes.harness import FakeService

LIST = "/notifications/v1/obligations"
FULFIL = "/notifications/v1/obligations/{}/fulfil"


async def duties_by_kind(service: FakeService, incident_id: str) -> dict[str, dict[str, Any]]:
    """The incident's duties as the office lists them, by kind (the latest of each)."""
    office = service.token("office-li", "county", "office")
    async with service.http() as http:
        r = await http.get(LIST, params={"incident_id": incident_id}, headers=office)
    assert r.status_code == 200, r.text
    rows = sorted(r.json()["obligations"], key=lambda d: d["counted_from"])
    return {d["kind"]: d for d in rows}


async def fulfil(
    service: FakeService, obligation_id: str, at: datetime | None = None
) -> httpx.Response:
    """The leading group files the duty (at `at`, or now)."""
    leader = service.token("leader-zhang", "county", "leader")
    body = {"fulfilled_at": at.isoformat()} if at is not None else {}
    async with service.http() as http:
        return await http.post(FULFIL.format(obligation_id), json=body, headers=leader)


# --------------------------------------------------------------------------- duty actions
# A duty table with the options of issue 13's "duties as rules" and "routing": clocks
# counted from the first report, a duty met by publishing a statement (and one waiting on
# it), and a route for 地方领导留言板 items (seed 003 第十七条).

ACTIONS_POLICY = """\
version: test-actions
alert_roles: [leader]
levels:
  1:
    - {kind: phone_quick_report, title: 一级舆情手机快报, owner_role: office,
       recipients: [leader], within: 30m, counted_from: published}
    - {kind: written_quick_report, title: 一级舆情纸质快报, owner_role: office,
       recipients: [leader], within: 60m}
  2:
    - {kind: seen_report, title: 二级舆情发现后报送, owner_role: office,
       recipients: [leader], within: 2h, counted_from: observed}
  3:
    - {kind: direct_handling, title: 三级舆情直办, owner_role: dept_head,
       recipients: [office], within: 24h}
categories:
  inquiry:
    - {kind: online_answer, title: 询问类网上答复, owner_role: spokesperson,
       recipients: [dept_head], within: 1d, met_by: {statement_published: online_reply}}
    - {kind: answer_followup, title: 答复后回告办理结果, owner_role: office,
       recipients: [leader], within: 4h, after: online_answer}
routing:
  - id: county-leader-board
    title: 县领导留言板留言转县局办公室（督办）
    source_type: leader_board
    source_name: 县
    recipients: [{role: office, unit: county}]
"""


def report(
    incident_id: str,
    *,
    published_at: datetime,
    observed_at: datetime,
    source_type: str = "weibo",
    source_name: str = "微博",
    report_id: str = "r1",
) -> ReportReceived:
    """A report as intake records it: where it came from and when it was published/seen."""
    return ReportReceived(
        report_id=report_id,
        source_type=SourceType(source_type),
        source_name=source_name,
        media_tier=MediaTier.SELF_MEDIA,
        url=f"https://example.cn/{incident_id}/{report_id}",
        normalized_url=f"example.cn/{incident_id}/{report_id}",
        title="网传学校门口道路积水",
        excerpt="家长询问何时处理",
        author=None,
        published_at=published_at,
        observed_at=observed_at,
        reach=Reach(),
        unit_ids=("school-a",),
        filed_by="monitor-chen",
    )
