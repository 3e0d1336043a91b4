"""Intake and grading through the running system: reports become incidents, graded by the
rulebook, as the archive tells it.

The system is shared with other end-to-end tests, so every matter here has a text of its
own (texts that differ in a few characters only would be joined as one matter) and URLs
of its own, and nothing assumes it is the only incident.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningSystem, wait_for

pytestmark = pytest.mark.e2e

REPORTS = "/intake/v1/reports"


def marker() -> str:
    return uuid.uuid4().hex[:8]


# One matter per test.
LANDSLIDE = (
    "县道路段塌方后迟迟未修，过往车辆险象环生",
    "网友发帖称，该路段上月塌方至今未见施工，夜间没有任何警示标志。",
)
FLOODED_UNDERPASS = (
    "暴雨后下穿隧道积水没过车轮，养护站被指反应迟缓",
    "有车主拍下视频，积水处未设置封闭提示，多辆轿车熄火被困。",
)
TOLL_RUMOR = (
    "网传县道将设卡收取过路费，附带盖章文件截图",
    "多个微信群转发所谓收费通知，落款为公路养护站，文件编号格式异常。",
)
STOLEN_MANHOLE = (
    "公路边井盖被盗数日无人管，电动车夜间摔倒",
    "附近居民称已多次拨打热线，缺失井盖处仅用树枝遮挡。",
)


def report(matter: tuple[str, str], site: str, mark: str, **overrides: Any) -> dict[str, Any]:
    """A report of `matter` as seen on `site`; `mark` keeps its URL this run's own."""
    title, excerpt = matter
    body: dict[str, Any] = {
        "source_type": "forum",
        "source_name": site,
        "media_tier": "county",
        "url": f"https://{site}.example.cn/t/{mark}",
        "title": title,
        "excerpt": excerpt,
        "author": "网友",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 800, "reposts": 12, "comments": 30, "likes": 40},
        "unit_ids": ["road-1"],
    }
    body.update(overrides)
    return body


def incident_view(api: httpx.Client, incident_id: str) -> dict[str, Any]:
    response = api.get(f"/archive/v1/incidents/{incident_id}")
    return response.json() if response.status_code == 200 else {"status_code": response.status_code}


def open_obligations(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in view.get("obligations", []) if o["state"] == "open"]


def test_five_sites_reporting_one_matter_make_one_incident(system: RunningSystem) -> None:
    mark = marker()
    sites = ["tieba", "weibo", "douyin", "toutiao", "county-bbs"]
    # Reposts differ in punctuation, spacing and width, and carry repost markers.
    variants = [
        {},
        {"title": "【转】县道路段塌方后迟迟未修,过往车辆险象环生!"},
        {"excerpt": "网友发帖称 该路段上月塌方至今未见施工 夜间没有任何警示标志"},
        {"title": "县道路段塌方后迟迟未修，过往车辆险象环生（转载）"},
        {"excerpt": "网友发帖称：该路段上月塌方至今未见施工，夜间没有任何警示标志！！"},
    ]
    with system.client() as api:
        answers = [
            api.post(REPORTS, json=report(LANDSLIDE, site, mark, **variant))
            for site, variant in zip(sites, variants, strict=True)
        ]

        assert [a.status_code for a in answers] == [201, 200, 200, 200, 200], [
            a.text for a in answers
        ]
        incident_id = answers[0].json()["incident_id"]
        assert {a.json()["incident_id"] for a in answers} == {incident_id}
        view = wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: len(v.get("reports", [])) == 5 and v.get("level") is not None,
            what="one graded incident with five reports in the archive",
        )
        assert {r["report_id"] for r in view["reports"]} == {a.json()["report_id"] for a in answers}
        matches = [
            r["match"] for r in api.get(f"/intake/v1/incidents/{incident_id}").json()["reports"]
        ]
        assert matches == [None] + ["similar_text"] * 4


def test_central_media_after_a_provincial_report_escalates_to_level_one(
    system: RunningSystem,
) -> None:
    mark = marker()
    with system.client() as api:
        central_rule = next(
            t
            for t in api.get("/grading/v1/rulebook").json()["tiers"]
            if "central" in t["media_tiers"]
        )
        provincial = api.post(
            REPORTS,
            json=report(
                FLOODED_UNDERPASS,
                "provincial-daily",
                mark,
                source_type="news",
                media_tier="provincial",
            ),
        ).json()
        incident_id = provincial["incident_id"]
        wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: v.get("level") == 2,
            what="the provincial report graded level 2",
        )

        central = api.post(
            REPORTS,
            json=report(
                FLOODED_UNDERPASS, "people", mark, source_type="news", media_tier="central"
            ),
        ).json()

        assert central["incident_id"] == incident_id
        # The grade and the report reach the archive on two topics, in either order.
        view = wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: v.get("level") == 1 and len(v.get("reports", [])) == 2,
            what="the incident escalated to level 1, with both reports",
        )
        assert len(view["reports"]) == 2
        timeline = api.get(f"/archive/v1/incidents/{incident_id}/timeline").json()["events"]
        (escalated,) = [e for e in timeline if e["event_type"] == "IncidentEscalated"]
        # The archive's one-line summary keeps the head of the rule's reason.
        assert central_rule["reason"][:20] in escalated["summary"]
        grade = api.get(f"/grading/v1/incidents/{incident_id}/grade").json()
        assert grade["history"][-1]["reason"].startswith(central_rule["reason"])


def test_a_dismissed_pseudo_incident_stays_dismissed_and_opens_no_obligations(
    system: RunningSystem,
) -> None:
    mark = marker()
    with system.client() as api:
        incident_id = api.post(REPORTS, json=report(TOLL_RUMOR, "tieba", mark)).json()[
            "incident_id"
        ]
        wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: bool(open_obligations(v)),
            what="the first grade's obligations",
        )

        dismissed = api.post(
            f"/intake/v1/incidents/{incident_id}/dismiss",
            json={"reason": "网络伪舆情：收费通知系伪造，养护站从未发文"},
        )
        assert dismissed.status_code == 200, dismissed.text
        view = wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: v.get("status") == "dismissed" and not open_obligations(v),
            what="the dismissed incident with its obligations closed",
        )
        obligations_before = {o["obligation_id"] for o in view["obligations"]}

        # A central-media repost with a large reach would escalate an open incident; the
        # second unit lets us see when grading has taken it in.
        later = api.post(
            REPORTS,
            json=report(
                TOLL_RUMOR,
                "people",
                mark,
                media_tier="central",
                reach={"views": 2_000_000, "reposts": 60_000, "comments": 0, "likes": 0},
                unit_ids=["road-1", "school-b"],
            ),
        )

        assert later.status_code == 200, later.text
        assert later.json()["incident_id"] == incident_id
        grade = wait_for(
            lambda: api.get(f"/grading/v1/incidents/{incident_id}/grade").json(),
            lambda g: "school-b" in g.get("unit_ids", []),
            what="grading taking in the later report",
        )
        assert [h["event_type"] for h in grade["history"]] == ["IncidentGraded"]
        assert grade["dismissed"] is True
        view = wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: len(v.get("reports", [])) == 2,
            what="the later report in the archive",
        )
        assert view["status"] == "dismissed"
        assert not open_obligations(view)
        assert {o["obligation_id"] for o in view["obligations"]} == obligations_before
        intake = api.get(f"/intake/v1/incidents/{incident_id}").json()
        assert intake["status"] == "dismissed"


def test_ten_concurrent_retries_with_one_key_store_one_report(system: RunningSystem) -> None:
    mark = marker()
    body = report(STOLEN_MANHOLE, "weibo", mark)
    headers = {"Idempotency-Key": f"e2e-retry-{mark}"}

    def post(_: int) -> httpx.Response:
        with system.client() as api:
            return api.post(REPORTS, json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(post, range(10)))

    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["report_id"] for r in responses}) == 1
    incident_id = responses[0].json()["incident_id"]
    with system.client() as api:
        intake = api.get(f"/intake/v1/incidents/{incident_id}").json()
        assert [r["report_id"] for r in intake["reports"]] == [responses[0].json()["report_id"]]
        view = wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: len(v.get("reports", [])) >= 1 and v.get("level") is not None,
            what="the report in the archive",
        )
        assert len(view["reports"]) == 1
