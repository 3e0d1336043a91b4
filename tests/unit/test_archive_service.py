"""The archive built through its composition root on the in-memory fakes: events consumed
through the real consumer path, read back and reviewed through its HTTP API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.archive.bootstrap import ArchiveParts, build
from services.archive.projections import LOG, READ_MODELS, ROWS, VIEWS
from shared.events import (
    ALL_TOPICS,
    Actor,
    ApprovalStep,
    DeadlineMissed,
    Envelope,
    EventPayload,
    FiredRule,
    GradeOverridden,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    Level,
    MediaTier,
    ObligationFulfilled,
    ObligationOpened,
    Reach,
    ReportReceived,
    SourceType,
    StatementApproved,
    StatementDrafted,
    StatementSubmitted,
    event_types,
)
from shared.store import INBOX
from tests.fakes.harness import FakeService, fake_service
from tests.fakes.upstream import Clock

T0 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=6)  # the archive's clock: every deadline of the stories has passed
RULE = Actor.rule("rulebook")
MONITOR = Actor(type="person", id="monitor-chen", unit_id="school-a")
REVIEW = {"cause": "供货商以次充好", "handling": "当日回复，更换供货商", "lessons": "加强抽检"}


class Story:
    """One incident's events as the five services publish them, numbered per stream."""

    def __init__(self, incident_id: str, unit: str, filed_by: str = "monitor-chen") -> None:
        self.incident_id = incident_id
        self.unit = unit
        self.filed_by = filed_by
        self.versions: dict[str, int] = {}
        self.events: list[Envelope] = []

    def add(
        self,
        payload: EventPayload,
        stream: str,
        when: datetime,
        cause: Envelope | None = None,
        actor: Actor = MONITOR,
    ) -> Envelope:
        stream_id = f"{stream}-{self.incident_id}"
        version = self.versions[stream_id] = self.versions.get(stream_id, 0) + 1
        fields: dict[str, Any] = {
            "stream_id": stream_id,
            "stream_version": version,
            "actor": actor,
            "occurred_at": when,
        }
        event = (
            cause.caused(payload, **fields)
            if cause is not None
            else Envelope.new(payload, incident_id=self.incident_id, unit_id=self.unit, **fields)
        )
        self.events.append(event)
        return event

    def opened(self, level: Level = 1) -> Story:
        """Reported, opened, graded, with two duties (due in 30 and 60 minutes) and a draft."""
        received = self.add(
            ReportReceived(
                report_id=f"{self.incident_id}-r1",
                source_type=SourceType.NEWS,
                source_name="人民网",
                media_tier=MediaTier.CENTRAL,
                url=f"https://news.example/{self.incident_id}",
                normalized_url=f"news.example/{self.incident_id}",
                title=f"{self.unit} 食堂问题",
                excerpt="家长反映",
                author=None,
                published_at=T0 - timedelta(minutes=10),
                observed_at=T0 - timedelta(minutes=2),
                reach=Reach(views=120000),
                unit_ids=(self.unit,),
                filed_by=self.filed_by,
            ),
            "report",
            T0,
        )
        opened = self.add(
            IncidentOpened(
                title=f"{self.unit} 食堂问题",
                unit_ids=(self.unit,),
                first_report_id=f"{self.incident_id}-r1",
            ),
            "incident",
            T0 + timedelta(seconds=1),
            received,
        )
        self.graded = self.add(
            IncidentGraded(
                level=level,
                category="inquiry",
                rules_fired=(FiredRule(rule_id="tier-central", reason="中央媒体报道"),),
                rulebook_version="1",
            ),
            "grading",
            T0 + timedelta(seconds=2),
            opened,
            RULE,
        )
        for kind, title, minutes in (("phone", "手机快报", 30), ("written", "纸质快报", 60)):
            self.add(
                ObligationOpened(
                    obligation_id=f"{self.incident_id}-{kind}",
                    kind=f"{kind}_quick_report",
                    title=title,
                    level=level,
                    owner_role="office",
                    recipients=("leader-zhang",),
                    counted_from=self.graded.occurred_at,
                    deadline=self.graded.occurred_at + timedelta(minutes=minutes),
                ),
                f"obligation-{kind}",
                T0 + timedelta(seconds=3),
                self.graded,
                RULE,
            )
        self.add(
            StatementDrafted(
                statement_id=f"{self.incident_id}-s1",
                kind="online_reply",
                version=1,
                title="情况回复",
                body="经核查……",
                author="spokesperson-sun",
            ),
            "statement",
            T0 + timedelta(minutes=5),
        )
        return self

    def resolved(self, when: datetime = T0 + timedelta(hours=2)) -> Envelope:
        leader = Actor(type="person", id="leader-zhang", unit_id="county")
        return self.add(IncidentResolved(reason="舆情平息"), "incident", when, actor=leader)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def archive(clock: Clock) -> AsyncIterator[FakeService]:
    async with fake_service("archive", build, clock=clock) as service:
        yield service


@pytest.fixture
async def api(archive: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with archive.http() as client:
        yield client


def parts(archive: FakeService) -> ArchiveParts:
    assert isinstance(archive.parts, ArchiveParts)
    return archive.parts


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Wait for a condition that work running beside the test makes true (a replay)."""
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.01)


async def reviewed(archive: FakeService, api: httpx.AsyncClient, incident_id: str) -> str:
    """Review the resolved incident and feed the review's events back, as Kafka would."""
    office = archive.token("office-li", "county", "office")
    accepted = await api.post(
        f"/archive/v1/incidents/{incident_id}/review", json=REVIEW, headers=office
    )
    assert accepted.status_code == 202, accepted.text
    await archive.consume(*[e for e in await archive.published() if e.incident_id == incident_id])
    return str(accepted.json()["case_id"])


# --------------------------------------------------------------------------- recording


def test_every_event_type_of_every_topic_is_recorded(archive: FakeService) -> None:
    assert parts(archive).consumes == ALL_TOPICS
    assert set(parts(archive).handlers.types()) == set(event_types().values())


async def test_consumed_events_become_the_view_and_a_redelivery_changes_nothing(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-a", "school-a").opened()
    await archive.consume(*story.events)
    admin = archive.token("admin", "county", "admin")

    view = (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json()
    await archive.consume(story.graded)  # at-least-once delivery may bring it again

    assert (view["event_count"], view["level"], view["status"], view["complete"]) == (
        6,
        1,
        "open",
        True,
    )
    assert (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json() == view
    assert await archive.db[LOG].count_documents({"incident_id": "inc-a"}) == 6


async def test_the_timeline_names_roles_and_levels_as_the_catalogue_does(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-a", "school-a").opened()
    await archive.consume(*story.events)
    admin = archive.token("admin", "county", "admin")

    response = await api.get(
        "/archive/v1/incidents/inc-a/timeline",
        params={"event_type": ["IncidentGraded", "ObligationOpened"]},
        headers=admin,
    )

    lines = [e["summary"] for e in response.json()["events"]]
    assert lines[0] == "研判为一级（重大），类别：询问（依据：中央媒体报道）"
    assert lines[1] == "开启报送义务：手机快报，截止 2026-11-21 08:30（责任：领导小组办公室）"

    # The units an incident opens for are named as the directory names them, not by id.
    opened = await api.get(
        "/archive/v1/incidents/inc-a/timeline",
        params={"event_type": ["IncidentOpened"]},
        headers=admin,
    )
    (line,) = [e["summary"] for e in opened.json()["events"]]
    assert line.endswith("（涉及单位：实验小学）"), line


# --------------------------------------------------------------------------- facts, not verdicts


async def test_a_statement_cleared_by_a_lowered_level_is_approved_with_nothing_missing(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-a", "school-a").opened()
    office, task_force = ApprovalStep(role="office"), ApprovalStep(role="propaganda")
    statement = "statement"
    story.add(
        StatementSubmitted(
            statement_id="inc-a-s1",
            version=1,
            level=1,
            chain=(office, task_force),
            missing=(office, task_force),
        ),
        statement,
        T0 + timedelta(minutes=6),
    )
    story.add(
        StatementApproved(
            statement_id="inc-a-s1",
            version=1,
            step=office,
            approver="office-li",
            fully_approved=False,
            missing=(task_force,),
        ),
        statement,
        T0 + timedelta(minutes=8),
    )
    await archive.consume(*story.events)
    admin = archive.token("admin", "county", "admin")

    async def statement_view() -> dict[str, Any]:
        view = (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json()
        [found] = view["statements"]
        return dict(found)

    in_review = await statement_view()
    lowered = story.add(
        GradeOverridden(from_level=1, to_level=2, category="inquiry", reason="人工研判"),
        "grading",
        T0 + timedelta(minutes=10),
        story.graded,
        Actor(type="person", id="leader-zhang", unit_id="county"),
    )
    rechained = story.add(
        StatementSubmitted(
            statement_id="inc-a-s1",
            version=1,
            level=2,
            chain=(office,),
            missing=(),
            reason="事件级别调整为二级",
        ),
        statement,
        T0 + timedelta(minutes=10, seconds=1),
        lowered,
        RULE,
    )
    await archive.consume(lowered, rechained)
    cleared = await statement_view()

    assert (in_review["state"], in_review["missing"]) == (
        "in_review",
        [{"role": "propaganda", "unit_id": None}],
    )
    assert (cleared["state"], cleared["missing"], cleared["level"]) == ("approved", [], 2)


async def test_lateness_and_misses_are_as_notification_recorded_them(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-a", "school-a").opened()
    # The phone report is filed after its deadline and notification says late; the written
    # one's deadline passed with no miss recorded yet: it is open, not missed.
    story.add(
        ObligationFulfilled(
            obligation_id="inc-a-phone",
            fulfilled_by="office-li",
            fulfilled_at=T0 + timedelta(minutes=40),
            late=True,
        ),
        "obligation-phone",
        T0 + timedelta(minutes=40),
    )
    await archive.consume(*story.events)
    admin = archive.token("admin", "county", "admin")

    view = (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json()
    listed = (await api.get("/archive/v1/incidents", headers=admin)).json()["items"]

    states = {o["kind"]: (o["state"], o["late"]) for o in view["obligations"]}
    assert states == {
        "phone_quick_report": ("fulfilled", True),
        "written_quick_report": ("open", False),
    }
    assert [(i["obligations_open"], i["obligations_missed"]) for i in listed] == [(1, 0)]
    overdue = await api.get("/archive/v1/incidents", params={"overdue": True}, headers=admin)
    assert [i["incident_id"] for i in overdue.json()["items"]] == ["inc-a"]

    missed = story.add(
        DeadlineMissed(
            obligation_id="inc-a-written",
            kind="written_quick_report",
            level=1,
            deadline=T0 + timedelta(minutes=60, seconds=2),
            alerted_roles=("leader",),
        ),
        "obligation-written",
        T0 + timedelta(minutes=61),
        actor=Actor.rule("deadline-watch"),
    )
    await archive.consume(missed)
    view = (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json()
    assert {o["kind"]: o["state"] for o in view["obligations"]}["written_quick_report"] == "missed"


# --------------------------------------------------------------------------- the review


async def test_a_review_is_recorded_once_per_resolution_and_again_after_a_reopening(
    archive: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    story = Story("inc-r", "school-a").opened()
    await archive.consume(*story.events)
    office = archive.token("office-li", "county", "office")
    url = "/archive/v1/incidents/inc-r/review"

    early = await api.post(url, json=REVIEW, headers=office)
    await archive.consume(story.resolved())
    accepted = await api.post(url, json=REVIEW, headers=office)
    again = await api.post(url, json=REVIEW, headers=office)

    assert (early.status_code, early.json()["error"]["code"]) == (409, "not_resolved")
    assert early.json()["error"]["details"] == {"status": "open"}
    assert accepted.status_code == 202, accepted.text
    figures = accepted.json()["figures"]
    # Both duties are past their deadline with no miss recorded: open and overdue, not missed.
    assert [(o["title"], o["outcome"], o["overdue"]) for o in figures["obligations"]] == [
        ("手机快报", "open", True),
        ("纸质快报", "open", True),
    ]
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_reviewed")
    first = await archive.published()
    assert [(e.event_type, e.stream_id, e.stream_version) for e in first] == [
        ("ReviewRecorded", "review-inc-r", 1),
        ("CaseArchived", "review-inc-r", 2),
    ]
    assert first[0].causation_id == story.events[-1].event_id  # answers the resolution
    assert first[1].causation_id == first[0].event_id

    await archive.consume(*first)
    archived = (await api.get("/archive/v1/incidents/inc-r", headers=office)).json()
    assert (archived["status"], archived["case_id"]) == ("archived", "case-inc-r")
    after_archiving = await api.post(url, json=REVIEW, headers=office)
    assert (after_archiving.status_code, after_archiving.json()["error"]["details"]) == (
        409,
        {"status": "archived"},
    )

    reopened = story.add(IncidentReopened(reason="再次发酵"), "incident", NOW + timedelta(hours=1))
    await archive.consume(reopened, story.resolved(NOW + timedelta(hours=2)))
    clock.now = NOW + timedelta(hours=3)
    assert (await api.get("/archive/v1/cases/case-inc-r", headers=office)).status_code == 404
    second = await api.post(url, json=REVIEW, headers=office)
    assert second.status_code == 202, second.text
    stream = await archive.published()
    assert [e.stream_version for e in stream] == [1, 2, 3, 4]
    await archive.consume(*stream[2:])
    assert (await api.get("/archive/v1/cases/case-inc-r", headers=office)).status_code == 200


async def test_two_reviews_of_one_resolution_at_once_record_one(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-r", "school-a").opened()
    await archive.consume(*story.events, story.resolved())
    leader = archive.token("leader-zhang", "county", "leader")
    office = archive.token("office-li", "county", "office")
    url = "/archive/v1/incidents/inc-r/review"

    answers = await asyncio.gather(
        api.post(url, json=REVIEW, headers=leader), api.post(url, json=REVIEW, headers=office)
    )

    assert sorted(a.status_code for a in answers) == [202, 409]
    assert [e.event_type for e in await archive.published()] == ["ReviewRecorded", "CaseArchived"]


async def test_the_case_report_names_roles_and_levels_from_the_catalogue(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-r", "school-a").opened()
    await archive.consume(*story.events, story.resolved())
    case_id = await reviewed(archive, api, "inc-r")
    office = archive.token("office-li", "county", "office")

    document = await api.get(f"/archive/v1/cases/{case_id}/report", headers=office)

    assert document.headers["content-type"].startswith("text/markdown")
    assert "| 涉及单位 | 实验小学 |" in document.text
    assert "| 手机快报 | 一级（重大） | 领导小组办公室 |" in document.text
    assert "未完成（已过截止时间）" in document.text
    assert "| 情况回复 | 网上回复稿 | 草稿 |" in document.text


# --------------------------------------------------------------------------- visibility


def _same_body(
    hidden: httpx.Response, unknown: httpx.Response, hidden_id: str, unknown_id: str
) -> None:
    assert hidden.status_code == unknown.status_code == 404, (hidden.text, unknown.text)
    assert hidden.json() == json.loads(unknown.text.replace(unknown_id, hidden_id))
    assert hidden.json()["error"]["code"] == "not_found"


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/archive/v1/incidents/{}", {}),
    (
        "GET",
        "/archive/v1/incidents/{}",
        {"params": {"as_of": (T0 + timedelta(hours=1)).isoformat()}},
    ),
    ("GET", "/archive/v1/incidents/{}/timeline", {}),
    ("GET", "/archive/v1/incidents/{}/verify", {}),
    ("POST", "/archive/v1/incidents/{}/review", {"json": REVIEW}),
]
# The records of an incident a partner referred (its view is `partner_view`:
# tests/unit/test_cross_unit_probes.py).
RECORD_ROUTES = [r for r in ROUTES if not r[1].endswith("/incidents/{}")]
CASE_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/archive/v1/cases/{}", {}),
    ("GET", "/archive/v1/cases/{}/report", {}),
    ("GET", "/archive/v1/cases/{}/report", {"params": {"format": "html"}}),
]


@pytest.mark.parametrize(
    ("sub", "unit", "roles"),
    [
        ("leader-a", "school-a", ("leader",)),
        ("monitor-a", "school-a", ("monitor",)),
        ("partner-wxb", "county", ("partner",)),  # the partner referred it: internal records
        ("partner-wxb", "county", ("partner", "leader", "analyst")),  # whatever it carries
    ],
)
async def test_another_units_incident_answers_like_an_unknown_one_on_every_route(
    archive: FakeService, api: httpx.AsyncClient, sub: str, unit: str, roles: tuple[str, ...]
) -> None:
    story = Story("inc-b", "school-b", filed_by="partner-wxb").opened()
    await archive.consume(*story.events, story.resolved())
    case_id = await reviewed(archive, api, "inc-b")
    published = len(await archive.published())
    caller = archive.token(sub, unit, *roles)

    for routes, known, unknown_id in (
        (RECORD_ROUTES if "partner" in roles else ROUTES, "inc-b", "inc-random-9f3"),
        (CASE_ROUTES, case_id, "case-random-9f3"),
    ):
        for method, url, kwargs in routes:
            hidden = await api.request(method, url.format(known), headers=caller, **kwargs)
            unknown = await api.request(method, url.format(unknown_id), headers=caller, **kwargs)
            _same_body(hidden, unknown, known, unknown_id)
    assert len(await archive.published()) == published  # the refused review wrote nothing


async def test_an_unknown_replay_job_answers_the_same_404_as_any_unknown_id(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    admin = archive.token("admin", "county", "admin")

    unknown = await api.get("/archive/v1/replay/job-random-9f3", headers=admin)

    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "code": "not_found",
        "message": "no replay job job-random-9f3",
        "details": {"kind": "replay job", "id": "job-random-9f3"},
    }


async def test_visibility_is_checked_before_the_role_on_the_review(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    for story in (Story("inc-a", "school-a").opened(), Story("inc-b", "school-b").opened()):
        await archive.consume(*story.events, story.resolved())
    monitor = archive.token("monitor-a", "school-a", "monitor")

    own = await api.post("/archive/v1/incidents/inc-a/review", json=REVIEW, headers=monitor)
    other = await api.post("/archive/v1/incidents/inc-b/review", json=REVIEW, headers=monitor)

    assert (own.status_code, own.json()["error"]["code"]) == (403, "forbidden")
    assert other.status_code == 404
    assert await archive.published() == []


async def test_lists_and_searches_show_only_what_the_caller_may_see(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    for story in (
        Story("inc-a", "school-a").opened(),
        Story("inc-b", "school-b", filed_by="partner-wxb").opened(),
    ):
        await archive.consume(*story.events, story.resolved())
        await reviewed(archive, api, story.incident_id)

    async def listed(path: str, headers: dict[str, str], **params: Any) -> list[str]:
        response = await api.get(f"/archive/v1/{path}", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [item["incident_id"] for item in response.json()["items"]]

    school_a = archive.token("monitor-a", "school-a", "monitor")
    county = archive.token("leader-zhang", "county", "leader")
    partner = archive.token("partner-wxb", "county", "partner", "analyst")
    assert await listed("incidents", school_a) == ["inc-a"]
    assert await listed("incidents", school_a, unit="school-b") == []
    assert await listed("incidents", county) == ["inc-b", "inc-a"]
    assert await listed("incidents", partner) == ["inc-b"]  # what it referred, nothing more
    assert await listed("cases", school_a) == ["inc-a"]
    assert await listed("cases", school_a, q="供货商") == ["inc-a"]
    assert await listed("cases", partner) == []  # the case library is the bureau's record


async def test_an_export_is_every_unit_for_an_analyst_and_nothing_for_a_partner(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    for story in (Story("inc-a", "school-a").opened(), Story("inc-b", "school-b").opened()):
        await archive.consume(*story.events)

    async def exported(headers: dict[str, str]) -> set[str]:
        response = await api.get("/archive/v1/events", headers=headers)
        assert response.status_code == 200, response.text
        return {json.loads(line)["envelope"]["incident_id"] for line in response.text.splitlines()}

    analyst = archive.token("analyst-zhao", "county", "analyst")
    partner_analyst = archive.token("partner-wxb", "county", "partner", "analyst")
    monitor = archive.token("monitor-a", "school-a", "monitor")
    assert await exported(analyst) == {"inc-a", "inc-b"}
    assert await exported(partner_analyst) == set()
    assert (await api.get("/archive/v1/events", headers=monitor)).status_code == 403


async def test_the_assessment_counts_only_the_units_the_caller_may_assess(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    for story in (Story("inc-a", "school-a").opened(), Story("inc-b", "school-b").opened()):
        await archive.consume(*story.events)
    period = {"from": (T0 - timedelta(hours=1)).isoformat(), "to": NOW.isoformat()}
    county = archive.token("office-li", "county", "office")
    school_a = archive.token("leader-a", "school-a", "leader")

    everyone = await api.get("/archive/v1/accountability", params=period, headers=county)
    own = await api.get("/archive/v1/accountability", params=period, headers=school_a)
    other = await api.get(
        "/archive/v1/accountability", params={**period, "unit": "school-b"}, headers=school_a
    )

    assert [u["unit_id"] for u in everyone.json()["units"]] == ["school-a", "school-b"]
    [unit] = own.json()["units"]
    assert (unit["unit_id"], unit["totals"]["open"], unit["totals"]["overdue"]) == (
        "school-a",
        2,
        2,
    )
    assert unit["totals"]["missed"] == 0
    assert other.status_code == 403


# --------------------------------------------------------------------------- replay


async def test_a_replay_rebuilds_the_same_views_from_the_log(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-a", "school-a").opened()
    await archive.consume(*story.events)
    admin = archive.token("admin", "county", "admin")
    view = (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json()
    await archive.db[VIEWS].delete_many({})  # disposable: the log is the record

    started = await api.post("/archive/v1/replay", headers=admin)
    assert started.status_code == 202, started.text
    job_url = f"/archive/v1/replay/{started.json()['job_id']}"

    async def done() -> bool:
        job = (await api.get(job_url, headers=admin)).json()
        return bool(job["state"] != "running")

    await until(done)
    assert (await api.get(job_url, headers=admin)).json()["state"] == "completed"
    assert (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json() == view
    monitor = archive.token("monitor-chen", "school-a", "monitor")
    assert (await api.post("/archive/v1/replay", headers=monitor)).status_code == 403


async def test_an_event_that_passes_the_inbox_again_is_logged_once(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    # A fresh consumer group (or a lost inbox) hands the archive what it has logged: the
    # incident's log, read once for the fold, says it is there already.
    story = Story("inc-a", "school-a").opened()
    await archive.consume(*story.events)
    admin = archive.token("admin", "county", "admin")
    view = (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json()
    await archive.db[INBOX].delete_many({})

    await archive.consume(*story.events)

    assert await archive.db[LOG].count_documents({"incident_id": "inc-a"}) == 6
    assert (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json() == view
    assert (await api.get("/archive/v1/incidents/inc-a/verify", headers=admin)).json()["ok"]


async def test_a_reopening_removes_the_case_of_a_view_stored_before_cases_were_named(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-r", "school-a").opened()
    await archive.consume(*story.events, story.resolved())
    case_id = await reviewed(archive, api, "inc-r")
    office = archive.token("office-li", "county", "office")
    assert (await api.get(f"/archive/v1/cases/{case_id}", headers=office)).status_code == 200
    # A view written by an earlier version says nothing of its case.
    await archive.db[VIEWS].update_one({"_id": "inc-r"}, {"$unset": {"case_id": ""}})

    await archive.consume(
        story.add(IncidentReopened(reason="再次发酵"), "incident", NOW + timedelta(hours=1))
    )

    assert (await api.get(f"/archive/v1/cases/{case_id}", headers=office)).status_code == 404
    reopened = (await api.get("/archive/v1/incidents/inc-r", headers=office)).json()
    assert reopened["status"] == "open"


async def test_reads_follow_a_swap_of_the_read_models_made_by_another_replica(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    story = Story("inc-a", "school-a").opened()
    await archive.consume(*story.events)
    admin = archive.token("admin", "county", "admin")
    view = (await api.get("/archive/v1/incidents/inc-a", headers=admin)).json()
    # Another replica's replay: fresh collections, the pointer moved, the old ones dropped.
    db = archive.db
    async for doc in db[VIEWS].find({}):
        await db["incidents_other"].insert_one(doc)
    async for doc in db[ROWS].find({}):
        await db["incident_rows_other"].insert_one(doc)
    moved = {"incidents": "incidents_other", "incident_rows": "incident_rows_other"}
    await db[READ_MODELS].update_one({"_id": "current"}, {"$set": moved})
    await db.drop_collection(VIEWS)
    await db.drop_collection(ROWS)

    found = await api.get("/archive/v1/incidents/inc-a", headers=admin)
    listed = await api.get("/archive/v1/incidents", headers=admin)

    assert (found.status_code, found.json()) == (200, view)
    assert [i["incident_id"] for i in listed.json()["items"]] == ["inc-a"]


async def test_views_stored_before_the_list_had_rows_are_listed_after_a_start(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await archive.consume(*Story("inc-a", "school-a").opened().events)
    await archive.consume(*Story("inc-b", "school-a").opened().events)
    admin = archive.token("admin", "county", "admin")
    listed = (await api.get("/archive/v1/incidents", headers=admin)).json()
    await archive.db.drop_collection(ROWS)  # as a database of before the rows
    for step in archive.parts.setup:  # the archive starting again on it
        await step()

    assert (await api.get("/archive/v1/incidents", headers=admin)).json() == listed
    assert {i["incident_id"] for i in listed["items"]} == {"inc-a", "inc-b"}
    row = await archive.db[ROWS].find_one({"_id": "inc-a"})
    assert row is not None
    assert "view" not in row


async def store_views(archive: FakeService, docs: list[dict[str, Any]]) -> None:
    """Views written straight into the archive's collections, with the rows the list reads
    (each view's document without the view)."""
    await archive.db[VIEWS].insert_many(docs)
    rows = [{k: v for k, v in doc.items() if k != "view"} for doc in docs]
    await archive.db[ROWS].insert_many(rows)


async def test_a_long_list_pages_through_every_incident_newest_first_once(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    # Keyset paging: rows months apart, in the future and sharing a time all come out
    # once, in order, with and without a filter.
    await archive.consume(*Story("inc-a", "school-a").opened().events)
    template = await archive.db[VIEWS].find_one({"_id": "inc-a"})
    assert template is not None
    times = [NOW + timedelta(days=2)] + [NOW - timedelta(hours=29 * n) for n in range(300)]
    times += [NOW - timedelta(days=3)] * 5  # ties, ordered by id
    rows = []
    for n, at in enumerate(times):
        incident, level = f"inc-x{n:05d}", 1 + n % 3
        summary = {**template["summary"], "incident_id": incident, "level": level}
        rows.append(
            {**template, "_id": incident, "summary": summary, "level": level, "sort_at": at}
        )
    await store_views(archive, rows)
    admin = archive.token("admin", "county", "admin")

    async def every(**query: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            params = {**query, "limit": 40, **({"cursor": cursor} if cursor else {})}
            page = await api.get("/archive/v1/incidents", params=params, headers=admin)
            assert page.status_code == 200, page.text
            seen += [item["incident_id"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return seen

    everything = sorted([*rows, template], key=lambda r: (r["sort_at"], r["_id"]), reverse=True)
    assert await every() == [r["_id"] for r in everything]
    assert await every(level=2) == [r["_id"] for r in everything if r["level"] == 2]


async def test_the_overdue_filter_splits_the_list_by_deadlines_past_and_not(
    archive: FakeService, api: httpx.AsyncClient
) -> None:
    await archive.consume(*Story("inc-a", "school-a").opened().events)
    template = await archive.db[VIEWS].find_one({"_id": "inc-a"})
    assert template is not None
    dues = {"inc-past": NOW - timedelta(minutes=1), "inc-none": None}
    dues["inc-later"] = NOW + timedelta(minutes=1)
    for n, (incident, due) in enumerate(dues.items()):
        summary = {**template["summary"], "incident_id": incident}
        at = NOW - timedelta(minutes=n)
        doc = {**template, "_id": incident, "summary": summary, "due": due, "sort_at": at}
        await store_views(archive, [doc])
    await archive.db[VIEWS].delete_one({"_id": "inc-a"})
    await archive.db[ROWS].delete_one({"_id": "inc-a"})
    admin = archive.token("admin", "county", "admin")

    async def listed(overdue: str) -> set[str]:
        page = await api.get("/archive/v1/incidents", params={"overdue": overdue}, headers=admin)
        assert page.status_code == 200, page.text
        return {item["incident_id"] for item in page.json()["items"]}

    assert await listed("true") == {"inc-past"}
    assert await listed("false") == {"inc-none", "inc-later"}
