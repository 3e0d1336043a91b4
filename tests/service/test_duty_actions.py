"""Duties as rules on the real broker and database: a quick report counted from when the
opinion arose (its deadline already past, so missed at once by the deadline watch), a
leader-board item routed to the board owner's office as well, and an inquiry answer met by
publishing an online reply (statement.events, which notification now reads)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.notification.bootstrap import NotificationParts, build
from shared.bus import ensure_topics
from shared.clock import utcnow
from shared.events import (
    DeadlineMissed,
    Envelope,
    FiredRule,
    IncidentGraded,
    ObligationFulfilled,
    ObligationOpened,
    ReportOrigin,
    StatementDrafted,
    StatementPublished,
)
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.fakes.duties import ACTIONS_POLICY, report
from tests.service.upstream_events import GRADER, bearer, client, feed, opened, wait_for

Service = ServiceRunner[NotificationParts]


def now_ms() -> datetime:
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@pytest.fixture
async def service(settings: Settings, tmp_path: Path) -> AsyncIterator[Service]:
    path = tmp_path / "obligations.yaml"
    path.write_text(ACTIONS_POLICY, encoding="utf-8")
    await ensure_topics(settings)
    fast = settings.model_copy(
        update={"obligations_policy_path": path, "deadline_poll_seconds": 0.2}
    )
    runner = ServiceRunner.connect("notification", build, Context.from_settings(fast))
    await runner.start()
    yield runner
    await runner.stop()


def event(payload: Any, incident: str, stream: str, version: int, at: datetime) -> Envelope:
    return Envelope.new(
        payload,
        incident_id=incident,
        stream_id=f"{stream}-{incident}",
        stream_version=version,
        actor=GRADER,
        occurred_at=at,
    )


async def stored(service: Service, event_type: str) -> list[dict[str, Any]]:
    return [doc async for doc in service.db["events"].find({"event_type": event_type})]


def has(service: Service, event_type: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await stored(service, event_type)) > 0

    return check


async def test_a_board_item_graded_late_is_missed_routed_and_answered_by_publishing(
    service: Service, settings: Settings
) -> None:
    now = now_ms()
    arose = now - timedelta(hours=2)
    board = report(
        "inc-a",
        published_at=arose,
        observed_at=now - timedelta(minutes=5),
        source_type="leader_board",
        source_name="人民网地方领导留言板·华宁县县长",
    )
    grade = IncidentGraded(
        level=1,
        category="inquiry",
        rules_fired=(FiredRule(rule_id="tier-central", reason="test"),),
        rulebook_version="test",
        first_report=ReportOrigin(
            report_id=board.report_id,
            source_type=board.source_type,
            source_name=board.source_name,
            published_at=board.published_at,
            observed_at=board.observed_at,
        ),
    )
    await feed(
        settings,
        opened("inc-a"),
        event(board, "inc-a", "incident", 2, now),
        event(grade, "inc-a", "grade", 1, now),
    )
    await wait_for(has(service, "DeadlineMissed"))

    opened_docs = await stored(service, "ObligationOpened")
    duties = {
        d["payload"]["kind"]: ObligationOpened.model_validate(d["payload"]) for d in opened_docs
    }
    phone = duties["phone_quick_report"]
    assert (phone.counted_from, phone.deadline) == (arose, arose + timedelta(minutes=30))
    assert duties["written_quick_report"].counted_from == now
    assert all("office@county" in d.recipients for d in duties.values())
    (missed,) = [
        DeadlineMissed.model_validate(d["payload"]) for d in await stored(service, "DeadlineMissed")
    ]
    assert (missed.kind, missed.deadline) == ("phone_quick_report", arose + timedelta(minutes=30))

    published_at = now_ms()
    drafted = StatementDrafted(
        statement_id="st-a",
        kind="online_reply",
        version=1,
        title="关于留言的答复",
        body="已安排修复。",
        author="spokesperson-sun",
    )
    out = StatementPublished(
        statement_id="st-a",
        version=1,
        outlet="人民网地方领导留言板",
        url="https://liuyan.example/st-a",
        published_by="spokesperson-sun",
    )
    await feed(
        settings,
        event(drafted, "inc-a", "statement-st-a", 1, published_at),
        event(out, "inc-a", "statement-st-a", 2, published_at),
    )
    await wait_for(has(service, "ObligationFulfilled"))
    (doc,) = await stored(service, "ObligationFulfilled")
    met = ObligationFulfilled.model_validate(doc["payload"])
    assert met.obligation_id == duties["online_answer"].obligation_id
    assert (met.met_by, met.statement_id, met.fulfilled_at) == (
        "statement_published",
        "st-a",
        published_at,
    )

    office = bearer(settings, "office-li", "county", "office")
    async with client(service) as http:

        async def followup_open() -> bool:
            r = await http.get("/notifications/v1/obligations?incident_id=inc-a", headers=office)
            kinds = {o["kind"]: o for o in r.json()["obligations"]}
            return kinds.get("answer_followup", {}).get("state") == "open"

        await wait_for(followup_open)
        r = await http.get("/notifications/v1/obligations?incident_id=inc-a", headers=office)
        rows = {o["kind"]: o for o in r.json()["obligations"]}
        assert rows["online_answer"]["state"] == "fulfilled"
        assert rows["answer_followup"]["recipients"] == ["leader", "office@county"]
