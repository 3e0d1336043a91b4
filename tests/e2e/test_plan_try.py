"""`yuqing plan try` as an analyst runs it: incidents recorded by the running system under
the Huaning pack, replayed through the four-tier pack by the command line, which prints a
table per incident (levels, duties and their deadlines, the recorded duties it drops), and
the live system unchanged afterwards (the same events, the same duties, the same plan)."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import YUQING, RunningSystem, wait_for
from tests.e2e.test_walking_skeleton import incident_view, report

pytestmark = pytest.mark.e2e


# What the delivery loop records of pages on its own schedule (with no channel configured,
# each recipient's NotificationFailed): none of it is anything a what-if could write.
DELIVERY_OUTCOMES = {"NotificationSent", "NotificationFailed", "NotificationAcknowledged"}


def live(system: RunningSystem, incident_ids: list[str]) -> dict[str, Any]:
    """What the live system holds of the incidents: their events (but the pages' delivery
    outcomes), duties and the plan."""
    with system.client() as api:
        return {
            "plan": api.get("/grading/v1/plan").json()["id"],
            **{
                incident_id: (
                    [
                        e["event_id"]
                        for e in api.get(f"/archive/v1/incidents/{incident_id}/timeline").json()[
                            "events"
                        ]
                        if e["event_type"] not in DELIVERY_OUTCOMES
                    ],
                    sorted(
                        (o["kind"], o["deadline"], o["state"])
                        for o in api.get(
                            "/notifications/v1/obligations", params={"incident_id": incident_id}
                        ).json()["obligations"]
                    ),
                )
                for incident_id in incident_ids
            },
        }


def blocks(table: str) -> dict[str, list[str]]:
    """The table's lines per incident: its own line, then its duties' lines."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in table.splitlines()[3:]:
        if line[:1] in ("*", " ") and line[1:2].strip():
            current = found.setdefault(line[1:].split()[0], [])
        current.append(line)
    return found


def test_plan_try_replays_huaning_incidents_through_the_four_tier_pack_and_writes_nothing(
    system: RunningSystem,
) -> None:
    run = uuid.uuid4().hex[:8]
    since = datetime.now(UTC) - timedelta(seconds=1)
    filed = {
        "central": report(
            url=f"https://people.example.cn/try/{run}/central.html",
            title=f"家长质疑实验小学校服收费（{run}）",
            excerpt="多名家长质疑学校校服定价过高。",
            reach={"views": 5000, "reposts": 40, "comments": 80, "likes": 100},
        ),
        "county": report(
            source_type="forum",
            source_name="县论坛",
            media_tier="county",
            url=f"https://county-bbs.example.cn/try/{run}",
            title=f"请问校门口积水何时处理（{run}）",
            excerpt="网友反映雨后校门口积水。",
            reach={"views": 300, "reposts": 2, "comments": 5, "likes": 9},
        ),
    }
    ids: dict[str, str] = {}
    with system.client() as api:
        for key, body in filed.items():
            answer = api.post("/intake/v1/reports", json=body)
            assert answer.status_code in (200, 201), answer.text
            ids[key] = answer.json()["incident_id"]
        for key, level in (("central", 1), ("county", 3)):
            wait_for(
                lambda key=key: incident_view(api, ids[key]),
                lambda v, level=level: v.get("level") == level and bool(v.get("obligations")),
                timeout=60,
                what=f"the {key} incident graded at level {level} with its duties",
            )
    before = live(system, list(ids.values()))

    done = subprocess.run(
        [YUQING, "plan", "try", "fourtier", "--since", since.isoformat(), "--url", system.base_url],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("plan fourtier 2026.12.3-seed000-2 against incidents graded"), (
        done.stdout[:300]
    )
    table = blocks(done.stdout)
    central, county = table[ids["central"]], table[ids["county"]]
    # Both differ (*), both recorded under Huaning; the county one is 影响较小 (4) here.
    for block, change in ((central, "1->1"), (county, "3->4")):
        assert block[0].startswith("*"), block
        assert "huaning" in block[0], block
        assert change in block[0], block
    assert {line.split()[0] for line in central[1:]} >= {
        "superior_request",
        "round_the_clock_watch",
    }
    assert any(line.split()[0] == "section_handling" for line in county[1:]), county
    # Huaning's own level-1 duties are what the four-tier pack would drop.
    assert any(
        line.split()[0] == "phone_quick_report" and line.endswith("dropped") for line in central
    ), central

    assert live(system, list(ids.values())) == before, "plan try changed the live system"
