"""An incident's whole life through the five services, then read back from the archive:
the timeline, time travel, the hash chain (and a tampered event), replay, and the review."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml
from pymongo import MongoClient

from shared.auth import TokenService
from shared.identity import Role
from shared.settings import CONFIG_DIR
from tests.conftest import Infra
from tests.e2e.conftest import YUQING, RunningSystem, system_env, wait_for

pytestmark = pytest.mark.e2e

# Long enough for the central report to escalate first, short enough to be missed here.
BULLETIN_DEADLINE = "5s"


@pytest.fixture(scope="module")
def archive_system(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """A system of its own whose level-2 bulletin is due within seconds, so it is missed."""
    tmp = tmp_path_factory.mktemp("archive-e2e")
    policy = yaml.safe_load((CONFIG_DIR / "obligations.yaml").read_text(encoding="utf-8"))
    for entry in policy["levels"][2]:
        entry["within"] = BULLETIN_DEADLINE
    # Message templates are found relative to the policy file: keep using the shipped ones.
    shipped = CONFIG_DIR / (policy["delivery"].get("templates") or "templates/notification")
    policy["delivery"]["templates"] = str(shipped.resolve())
    policy_path = tmp / "obligations.yaml"
    policy_path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    run = uuid.uuid4().hex[:8]
    env = system_env(
        tmp,
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_DB_PREFIX=f"arc{run}",
        YUQING_TOPIC_PREFIX=f"arc{run}.",
        YUQING_OUTBOX_POLL_SECONDS="0.2",
        YUQING_DEADLINE_POLL_SECONDS="0.5",
        YUQING_OBLIGATIONS_POLICY_PATH=str(policy_path),
    )
    running = RunningSystem(env)
    yield running
    running.stop()


def report(url: str, tier: str, source: str) -> dict[str, Any]:
    return {
        "source_type": "news",
        "source_name": source,
        "media_tier": tier,
        "url": url,
        "title": "实验小学食堂食材过期引发家长质疑",
        "excerpt": "多名家长反映学校食堂使用过期食材，要求公开调查结果。",
        "author": None,
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 120000, "reposts": 3400, "comments": 800, "likes": 5000},
        "unit_ids": ["school-a"],
    }


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Archive:
    """The archive's API as one person (a token) sees it."""

    def __init__(self, system: RunningSystem, token: str, incident_id: str) -> None:
        self.http = system.client(token)
        self.incident_id = incident_id

    def view(self, **params: str) -> dict[str, Any]:
        response = self.http.get(f"/archive/v1/incidents/{self.incident_id}", params=params)
        return response.json() if response.status_code == 200 else {}

    def until(self, predicate: Any, what: str, timeout: float = 20.0) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(self.view, predicate, timeout=timeout, what=what)
        return found

    def timeline(self) -> list[dict[str, Any]]:
        response = self.http.get(f"/archive/v1/incidents/{self.incident_id}/timeline")
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def verify(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.http.get(
            f"/archive/v1/incidents/{self.incident_id}/verify"
        ).json()
        return answer

    def exported_ids(self) -> list[str]:
        exported = self.http.get("/archive/v1/events", params={"incident_id": self.incident_id})
        return [json.loads(line)["envelope"]["event_id"] for line in exported.text.splitlines()]

    def settled(self, timeout: float = 20.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The view and the timeline once the log holds still: deliveries and tracking go on
        after the case is archived, so the timeline, the export, the view's count and the
        chain are compared only when one reading of all four agrees."""

        def reading() -> tuple[dict[str, Any], list[dict[str, Any]], list[str], dict[str, Any]]:
            return self.view(), self.timeline(), self.exported_ids(), self.verify()

        def agrees(r: tuple[Any, ...]) -> bool:
            view, timeline, stored, chain = r
            ids = sorted(e["event_id"] for e in timeline)
            return (
                ids == sorted(stored)
                and len(ids) == view.get("event_count")
                and chain.get("length") == len(ids)
            )

        view, timeline, _, _ = wait_for(reading, agrees, timeout=timeout, what="a settled log")
        return view, timeline


def first(events: list[dict[str, Any]], event_type: str) -> dict[str, Any]:
    return next(e for e in events if e["event_type"] == event_type)


def test_an_incident_is_archived_complete_verifiable_replayable_and_reviewed(
    archive_system: RunningSystem, infra: Infra
) -> None:
    system = archive_system
    tokens = TokenService(system.env["YUQING_SECRET"], "yuqing", timedelta(hours=1))

    def client(sub: str, unit: str, role: Role) -> httpx.Client:
        return system.client(tokens.issue(sub, unit, [role]))

    url = "https://news.example.cn/2026/1121/canteen.html"
    with client("monitor-chen", "school-a", Role.MONITOR) as monitor:
        opened = monitor.post("/intake/v1/reports", json=report(url, "provincial", "大河网"))
        assert opened.status_code == 201, opened.text
    incident_id = opened.json()["incident_id"]
    archive = Archive(system, system.token, incident_id)

    # Level 2, with a bulletin due in seconds that nobody will file.
    archive.until(
        lambda v: v.get("level") == 2 and len(v.get("obligations", [])) >= 1,
        "the level-2 grade with its bulletin",
    )
    with client("monitor-chen", "school-a", Role.MONITOR) as monitor:
        again = monitor.post(
            "/intake/v1/reports", json=report(url + "?utm_source=wx", "central", "人民网")
        )
        assert again.json()["incident_id"] == incident_id
    archive.until(lambda v: v.get("level") == 1, "the escalation to level 1")
    # The miss and the level-1 duties are two events of the notification stream: wait for
    # both rather than read the duties at the moment the miss shows.
    escalated = archive.until(
        lambda v: (
            any(o["state"] == "missed" for o in v.get("obligations", []))
            and any(o["kind"] == "phone_quick_report" for o in v.get("obligations", []))
        ),
        "the level-2 bulletin missed and the level-1 duties opened",
    )
    [missed] = [o for o in escalated["obligations"] if o["state"] == "missed"]
    assert missed["kind"] == "online_opinion_bulletin"
    phone = next(o for o in escalated["obligations"] if o["kind"] == "phone_quick_report")
    with client("office-li", "county", Role.OFFICE) as office:
        filed = office.post(
            f"/notifications/v1/obligations/{phone['obligation_id']}/fulfil",
            json={"reference": "电话 08:20"},
        )
        assert filed.status_code == 200, filed.text

    draft = {
        "kind": "online_reply",
        "title": "关于实验小学食堂食材问题的回复",
        "body": "经核查，涉事批次食材已全部下架封存……",
        "facts": [{"label": "涉事批次", "value": "1"}],
        "outlets": ["县教育局官网"],
    }
    with client("spokesperson-sun", "school-a", Role.SPOKESPERSON) as author:
        drafted = wait_for(
            lambda: author.post(f"/statements/v1/incidents/{incident_id}/statements", json=draft),
            lambda response: response.status_code != 404,
            what="the statement service knowing the incident",
        )
        assert drafted.status_code == 201, drafted.text
        statement_id = drafted.json()["statement_id"]
        submitted = author.post(f"/statements/v1/statements/{statement_id}/submit")
        assert submitted.status_code == 200, submitted.text
        # The level-1 chain applies once the statement service has heard of the escalation.
        wait_for(
            lambda: author.get(f"/statements/v1/statements/{statement_id}").json(),
            lambda s: [step["role"] for step in s["chain"]] == ["office", "propaganda"],
            what="the level-1 approval chain",
        )
    with client("office-li", "county", Role.OFFICE) as office:
        answer = office.post(
            f"/statements/v1/statements/{statement_id}/approve", json={"comment": "同意"}
        )
        assert answer.status_code == 200, answer.text
    publication = {"outlet": "县教育局官网", "url": "https://edu.example.cn/notice/7"}
    with client("propaganda-wang", "county", Role.PROPAGANDA) as task_force:
        answer = task_force.post(
            f"/statements/v1/statements/{statement_id}/approve", json={"comment": "可以发布"}
        )
        assert answer.status_code == 200, answer.text
        published = task_force.post(
            f"/statements/v1/statements/{statement_id}/publish", json=publication
        )
        assert published.status_code == 200, published.text
    archive.until(
        lambda v: [s["state"] for s in v.get("statements", [])] == ["published"],
        "the published statement",
    )

    with client("leader-zhang", "county", Role.LEADER) as leader:
        resolved = leader.post(
            f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "舆情已平息"}
        )
        assert resolved.status_code == 200, resolved.text
        archive.until(lambda v: v.get("status") == "resolved", "the resolution")
        review = {
            "cause": "食堂供货商以次充好，验收把关不严",
            "handling": "当日下架封存涉事食材，发布回复，更换供货商",
            "lessons": "二级舆情《网上舆情》未按时上报，须落实值班报送",
        }
        reviewed = leader.post(f"/archive/v1/incidents/{incident_id}/review", json=review)
        assert reviewed.status_code == 202, reviewed.text
        case_id = reviewed.json()["case_id"]
    archive.until(lambda v: v.get("status") == "archived", "the archived case")

    # The timeline lists every stored event (those exported, those counted in the view, those
    # chained), in the order things happened.
    view, timeline = archive.settled()
    assert view["status"] == "archived"
    times = [at(e["occurred_at"]) for e in timeline]
    assert times == sorted(times)
    types = [e["event_type"] for e in timeline]
    story = [
        "IncidentOpened",  # intake opens the incident with the report that caused it
        "ReportReceived",
        "IncidentGraded",
        "IncidentEscalated",
        "DeadlineMissed",
        "ObligationFulfilled",
        "StatementDrafted",
        "StatementSubmitted",
        "StatementApproved",
        "StatementPublished",
        "IncidentResolved",
        "ReviewRecorded",
        "CaseArchived",
    ]
    assert [types.index(t) for t in story] == sorted(types.index(t) for t in story), types
    assert first(timeline, "DeadlineMissed")["summary"].startswith(
        "报送义务「二级舆情《网上舆情》上报」超时未完成"
    )

    # Time travel: the incident as it stood at three instants.
    graded_at = first(timeline, "IncidentGraded")["occurred_at"]
    escalated_at = first(timeline, "IncidentEscalated")["occurred_at"]
    published_at = at(first(timeline, "StatementPublished")["occurred_at"])
    then = archive.view(as_of=graded_at)
    assert (then["level"], then["status"], then["statements"]) == (2, "open", [])
    then = archive.view(as_of=escalated_at)
    assert [g["level"] for g in then["grade_history"]] == [2, 1]
    assert then["level"] == 1
    then = archive.view(as_of=(published_at - timedelta(microseconds=1)).isoformat())
    assert [(s["state"], s["published_at"]) for s in then["statements"]] == [("approved", None)]
    assert then["status"] == "open"

    # The chain holds until one stored event is altered in the database.
    intact = archive.verify()
    assert intact["ok"] is True
    assert intact["length"] >= len(timeline)  # deliveries may still be recorded meanwhile
    mongo: MongoClient[dict[str, Any]] = MongoClient(infra.mongo, tz_aware=True)
    try:
        db = mongo[f"{system.env['YUQING_DB_PREFIX']}_archive"]
        escalation_id = first(timeline, "IncidentEscalated")["event_id"]
        original = db["log"].find_one({"_id": escalation_id})
        assert original is not None
        db["log"].update_one({"_id": escalation_id}, {"$set": {"envelope.payload.to_level": 2}})
        broken = archive.verify()
        assert broken["ok"] is False
        assert broken["broken"]["event_id"] == escalation_id
        db["log"].replace_one({"_id": escalation_id}, original)
        assert archive.verify()["ok"] is True

        # Replay into fresh collections gives the same read models as the live ones: every
        # document folded from the same log (the same last_seq) is equal. Deliveries and
        # tracking may log more meanwhile; a document folded from more of the log is not
        # compared, and the replay is run again until this incident's is.
        compared_own = False
        for _ in range(3):
            pointer = db["read_models"].find_one({"_id": "current"})
            assert pointer is not None
            live = {
                name: {d["_id"]: d for d in db[pointer[name]].find({})}
                for name in ("incidents", "cases")
            }
            started = archive.http.post("/archive/v1/replay")
            assert started.status_code == 202, started.text
            job_url = f"/archive/v1/replay/{started.json()['job_id']}"
            job = wait_for(
                lambda url=job_url: archive.http.get(url).json(),
                lambda j: j["state"] != "running",
                what="the replay finished",
            )
            assert (job["state"], job["processed"]) == ("completed", job["total"])
            for name, documents in live.items():
                fresh = job["collections"][name]
                assert fresh != pointer[name]
                rebuilt = {d["_id"]: d for d in db[fresh].find({})}
                assert set(documents) <= set(rebuilt)
                for key, document in documents.items():
                    if rebuilt[key].get("last_seq") == document.get("last_seq"):
                        assert rebuilt[key] == document
                        compared_own |= name == "incidents" and key == archive.incident_id
            if compared_own:
                break
        assert compared_own, "the incident's log never held still through a replay"
    finally:
        mongo.close()
    assert archive.view() == view

    # The operator's command does the same and reports how far it got.
    command = subprocess.run(
        [YUQING, "replay", "--poll", "0.2"],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert command.returncode == 0, command.stderr
    assert " completed: " in command.stdout
    assert archive.view() == view

    # The case library and the review document, in Chinese.
    case = archive.http.get(f"/archive/v1/cases/{case_id}").json()
    outcomes = {o["kind"]: o["outcome"] for o in case["figures"]["obligations"]}
    assert outcomes["online_opinion_bulletin"] == "missed"
    assert outcomes["phone_quick_report"] == "on_time"
    [statement] = case["figures"]["statements"]
    assert statement["clearance_seconds"] > 0
    assert statement["seconds_to_publication"] >= statement["clearance_seconds"]
    document = archive.http.get(f"/archive/v1/cases/{case_id}/report")
    assert document.status_code == 200
    for text in ("# 舆情事件总结评估报告", "实验小学", "须落实值班报送", "超时未完成", "按时完成"):
        assert text in document.text
    html = archive.http.get(f"/archive/v1/cases/{case_id}/report", params={"format": "html"})
    assert "<h2>四、报送义务落实情况</h2>" in html.text
    found = archive.http.get("/archive/v1/cases", params={"q": "供货商", "level": 1}).json()
    assert [c["case_id"] for c in found["items"]] == [case_id]
