"""Deadlines across the whole system: a short policy, a crash before the deadline, and what
the bureau then sees: the miss on the record once, the leader alerted, the grade raised."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.notification.channels import webhook_signature
from tests.conftest import Infra
from tests.e2e.conftest import RunningSystem, system_env, wait_for
from tests.e2e.test_walking_skeleton import incident_view, report
from tests.service.notification_receivers import HttpReceiver, Received

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret"
# Long enough to see the duties opened and crash before the deadline; short for a test.
SHORT = "20s"

POLICY = """\
version: e2e-short
alert_roles: [leader]
levels:
  1:
    - {{kind: phone_quick_report, title: 一级舆情手机快报, owner_role: office,
       recipients: [leader], within: {short}}}
    - {{kind: written_quick_report, title: 一级舆情纸质快报, owner_role: office,
       recipients: [leader], within: 60m}}
  2:
    - {{kind: online_opinion_bulletin, title: 二级舆情《网上舆情》上报, owner_role: office,
       recipients: [leader], within: {short}}}
delivery:
  channels:
    webhook: {{type: webhook, url: "{url}", secret_env: YUQING_E2E_WEBHOOK_SECRET}}
  kinds:
    default: [webhook]
  retry: {{attempts: 3, first: 1s, cap: 2s}}
"""


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver().running() as running:
        yield running


def events_of(api: httpx.Client, incident_id: str, event_type: str) -> list[dict[str, Any]]:
    timeline = api.get(f"/archive/v1/incidents/{incident_id}/timeline").json()["events"]
    return [e for e in timeline if e["event_type"] == event_type]


def alerts(receiver: HttpReceiver, incident_id: str) -> list[Received]:
    return [
        r
        for r in receiver.requests
        if r.json()["incident_id"] == incident_id and r.json()["subject"].startswith("【超时告警")
    ]


def test_a_deadline_passes_across_a_crash_once_alerts_the_leader_and_raises_the_grade(
    infra: Infra, tmp_path: Path, receiver: HttpReceiver
) -> None:
    policy = tmp_path / "obligations.yaml"
    policy.write_text(POLICY.format(short=SHORT, url=receiver.url), encoding="utf-8")
    run = uuid.uuid4().hex[:8]
    env = system_env(
        tmp_path / "data",
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_DB_PREFIX=f"dl{run}",
        YUQING_TOPIC_PREFIX=f"dl{run}.",
        YUQING_OUTBOX_POLL_SECONDS="0.2",
        YUQING_DEADLINE_POLL_SECONDS="0.5",
        YUQING_OBLIGATIONS_POLICY_PATH=str(policy),
        YUQING_E2E_WEBHOOK_SECRET=SECRET,
    )
    system = RunningSystem(env)
    try:
        with system.client() as api:
            level_one = api.post("/intake/v1/reports", json=report(url=f"https://c.example/{run}"))
            level_two = api.post(
                "/intake/v1/reports",
                json=report(
                    url=f"https://p.example/{run}",
                    media_tier="provincial",
                    title="某路段积水严重居民出行不便",
                    excerpt="居民反映雨后路段积水，出行困难。",
                    reach={"views": 100, "reposts": 1, "comments": 1, "likes": 1},
                    unit_ids=["road-1"],
                ),
            )
            one, two = level_one.json()["incident_id"], level_two.json()["incident_id"]
            for incident_id, count in ((one, 2), (two, 1)):
                wait_for(
                    lambda i=incident_id: api.get(
                        "/notifications/v1/obligations", params={"incident_id": i}
                    ).json()["count"],
                    lambda n, c=count: n == c,
                    timeout=30,
                    what=f"the duties of {incident_id} opened",
                )
            duties = api.get("/notifications/v1/obligations", params={"incident_id": one}).json()
            first_deadline = min(
                datetime.fromisoformat(o["deadline"]) for o in duties["obligations"]
            )
            # The crash must come before the deadline, or nothing crosses a restart.
            assert datetime.now(UTC) < first_deadline, "duties opened too late to crash first"
    finally:
        # A crash, not a shutdown: nothing gets to tidy up.
        system.process.kill()
        system.process.wait()

    restarted = RunningSystem(env)
    try:
        with restarted.client() as api:
            view = wait_for(
                lambda: incident_view(api, one),
                lambda v: any(
                    o["kind"] == "phone_quick_report" and o["state"] == "missed"
                    for o in v.get("obligations", [])
                ),
                timeout=90,
                what="the phone report missed in the archive",
            )
            by_kind = {o["kind"]: o for o in view["obligations"]}
            assert by_kind["written_quick_report"]["state"] == "open"

            wait_for(
                lambda: alerts(receiver, one),
                bool,
                timeout=30,
                what="the leader alerted of the missed phone report",
            )
            (alert,) = alerts(receiver, one)
            body = alert.json()
            assert body["recipient"] == "leader-zhang"
            assert "一级舆情手机快报" in body["subject"]
            stamp = alert.headers["X-Yuqing-Timestamp"]
            assert alert.headers["X-Yuqing-Signature"] == webhook_signature(
                SECRET, stamp, alert.body
            )

            # Grading escalates the level-2 incident on its missed bulletin (mishandling).
            # The miss and the escalation reach the archive on two topics, in either order.
            wait_for(
                lambda: incident_view(api, two),
                lambda v: (
                    v.get("level") == 1
                    and any(
                        o["kind"] == "online_opinion_bulletin" and o["state"] == "missed"
                        for o in v.get("obligations", [])
                    )
                ),
                timeout=60,
                what="the level-2 incident escalated after its missed deadline",
            )
            assert events_of(api, two, "IncidentEscalated")

            # Several passes of the watch and of delivery later, still one miss, one alert.
            time.sleep(3)
            missed = events_of(api, one, "DeadlineMissed")
            assert len(missed) == 1
            assert len(alerts(receiver, one)) == 1
            assert len(events_of(api, one, "IncidentGraded")) == 1
    finally:
        restarted.stop()
