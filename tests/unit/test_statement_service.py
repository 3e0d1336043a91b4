"""The statement service built through its composition root on the in-memory fakes:
intake and grading events in through the consumer, drafts and decisions through the API
and the command runner, statement events out through the outbox, and who may see what."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.statement.bootstrap import StatementParts, build
from services.statement.domain import Statement
from shared.events import (
    Actor,
    ApprovalStep,
    Envelope,
    FiredRule,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    Level,
    MediaTier,
    Reach,
    ReportReceived,
    SourceType,
    StatementApproved,
    StatementSubmitted,
)
from shared.incident_context import UPSTREAM_TYPES
from shared.policy import PolicyError
from shared.repository import Repository
from shared.store import UnitOfWork
from shared.visibility import hidden
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.upstream import Streams

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
API = "/statements/v1"
RELEASE: dict[str, Any] = {
    "kind": "press_release",
    "title": "关于网传某校食堂问题的情况通报",
    "body": "经核实，网传情况不属实……",
    "facts": [{"label": "就医学生人数", "value": "0"}],
    "outlets": ["官方微博", "县教育局官网"],
}
WEIBO = {"outlet": "官方微博", "url": "https://weibo.example/1"}


def revision(body: dict[str, Any]) -> dict[str, Any]:
    """A PUT body: a version's content (the kind is the statement's, and is no field of it)."""
    return {k: v for k, v in body.items() if k != "kind"}


RULES = (FiredRule(rule_id="media-tier", reason="test"),)


class Upstream(Streams):
    """Plays intake and grading: numbered events about incidents, as they publish them."""

    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str, units: tuple[str, ...] = ("school-a",)) -> Envelope:
        payload = IncidentOpened(title="网传某校食堂问题", unit_ids=units, first_report_id="r1")
        return self.event(incident_id, payload, "incident")

    def report(self, incident_id: str, filed_by: str, units: tuple[str, ...]) -> Envelope:
        payload = ReportReceived(
            report_id=uuid.uuid4().hex,
            source_type=SourceType.REFERRAL,
            source_name="网信办转办",
            media_tier=MediaTier.COUNTY,
            url="https://example.org/r",
            normalized_url="https://example.org/r",
            title="网传某校食堂问题",
            excerpt="",
            author=None,
            published_at=T0,
            observed_at=T0,
            reach=Reach(),
            unit_ids=units,
            filed_by=filed_by,
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: Level) -> Envelope:
        payload = IncidentGraded(
            level=level, category="hype", rules_fired=RULES, rulebook_version="t"
        )
        return self.event(incident_id, payload, "grade")

    def escalated(self, incident_id: str, from_level: Level, to_level: Level) -> Envelope:
        payload = IncidentEscalated(
            from_level=from_level,
            to_level=to_level,
            category="hype",
            reason="传播扩大",
            rules_fired=RULES,
            rulebook_version="t",
        )
        return self.event(incident_id, payload, "grade")

    def overridden(self, incident_id: str, from_level: Level, to_level: Level) -> Envelope:
        payload = GradeOverridden(
            from_level=from_level, to_level=to_level, category="hype", reason="人工调整"
        )
        return self.event(incident_id, payload, "grade")


@pytest.fixture
async def statement() -> AsyncIterator[FakeService]:
    settings = fake_settings(conflict_retry_attempts=3, conflict_retry_backoff_seconds=0)
    async with fake_service("statement", build, settings=settings, clock=lambda: T0) as service:
        yield service


@pytest.fixture
async def api(statement: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with statement.http() as client:
        yield client


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


def parts(service: FakeService) -> StatementParts:
    assert isinstance(service.parts, StatementParts)
    return service.parts


class People:
    def __init__(self, service: FakeService) -> None:
        self.author = service.token("spokesperson-sun", "school-a", "spokesperson")
        self.office = service.token("office-li", "county", "office")
        self.propaganda = service.token("propaganda-wang", "county", "propaganda")
        self.head = service.token("head-liu", "school-a", "dept_head")
        self.monitor = service.token("monitor-chen", "school-a", "monitor")
        # Every role that writes, approves or publishes, but in another school.
        self.other_school = service.token(
            "spokesperson-b", "school-b", "spokesperson", "office", "propaganda", "dept_head"
        )


@pytest.fixture
def who(statement: FakeService) -> People:
    return People(statement)


async def known(
    service: FakeService, upstream: Upstream, incident: str, level: Level | None = None
) -> None:
    """The incident as intake (and grading, with a level) told the service of it."""
    await service.consume(upstream.opened(incident))
    if level is not None:
        await service.consume(upstream.graded(incident, level))


async def drafted(
    api: httpx.AsyncClient, incident: str, headers: dict[str, str], body: dict[str, Any] = RELEASE
) -> str:
    r = await api.post(f"{API}/incidents/{incident}/statements", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["statement_id"])


async def submitted(api: httpx.AsyncClient, incident: str, who: People) -> str:
    sid = await drafted(api, incident, who.author)
    r = await api.post(f"{API}/statements/{sid}/submit", headers=who.author)
    assert r.status_code == 200, r.text
    return sid


async def approve(api: httpx.AsyncClient, sid: str, headers: dict[str, str]) -> httpx.Response:
    return await api.post(f"{API}/statements/{sid}/approve", json={}, headers=headers)


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def not_found(kind: str, key: str) -> dict[str, Any]:
    refusal = hidden(kind, key)
    return {"error": {"code": "not_found", "message": refusal.message, "details": refusal.details}}


async def statement_events(service: FakeService, sid: str) -> list[Envelope]:
    return [e for e in await service.published() if e.stream_id == f"statement-{sid}"]


# --------------------------------------------------------------------------- assembly


async def test_the_handler_map_applies_every_upstream_type_it_subscribes_to(
    statement: FakeService,
) -> None:
    handlers = parts(statement).handlers

    assert set(handlers.types()) == set(UPSTREAM_TYPES)
    assert sorted(handlers.topics()) == sorted(parts(statement).consumes)


async def test_an_approval_policy_that_cannot_be_used_stops_the_build(tmp_path: Path) -> None:
    bad = tmp_path / "approval.yaml"
    bad.write_text("version: t\nlevels:\n  1: [{role: office}]\n  2: [{role: office}]\n")
    settings = fake_settings(tmp_path, approval_policy_path=bad)

    with pytest.raises(
        PolicyError, match=r"approval\.yaml: levels\.3: no clearance chain for level 3"
    ):
        async with fake_service("statement", build, settings=settings):
            pass


# --------------------------------------------------------------------------- the chain


async def test_a_level_one_release_is_cleared_by_the_office_then_the_task_force(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-1", 1)
    sid = await submitted(api, "inc-1", who)
    base = f"{API}/statements/{sid}"

    own = await approve(api, sid, who.author)
    assert error(own) == (403, "self_approval", "不能审批自己起草的版本")
    early = await approve(api, sid, who.propaganda)
    assert error(early)[:2] == (409, "out_of_order")
    assert "须先由领导小组办公室审批" in error(early)[2]
    not_theirs = await approve(api, sid, who.head)
    assert error(not_theirs)[:2] == (403, "not_your_step")

    first = await approve(api, sid, who.office)
    assert first.status_code == 200, first.text
    assert (first.json()["state"], [s["role"] for s in first.json()["missing"]]) == (
        "in_review",
        ["propaganda"],
    )
    blocked = await api.post(f"{base}/publish", json=WEIBO, headers=who.author)
    assert error(blocked)[:2] == (409, "not_approved")
    assert "缺少：宣传部（处置专班）" in error(blocked)[2]
    assert blocked.json()["error"]["details"]["missing"] == [
        {"role": "propaganda", "unit_id": None}
    ]

    second = await approve(api, sid, who.propaganda)
    assert (second.json()["state"], second.json()["missing"]) == ("approved", [])
    published = await api.post(f"{base}/publish", json=WEIBO, headers=who.author)
    assert published.status_code == 200, published.text
    assert published.json()["state"] == "published"

    events = await statement_events(statement, sid)
    assert [e.event_type for e in events] == [
        "StatementDrafted",
        "StatementSubmitted",
        "StatementApproved",
        "StatementApproved",
        "StatementPublished",
    ]
    assert [e.stream_version for e in events] == [1, 2, 3, 4, 5]
    assert {e.occurred_at for e in events} == {T0}
    submission, by_office, by_task_force = (e.payload for e in events[1:4])
    assert isinstance(submission, StatementSubmitted)
    assert submission.missing == submission.chain
    assert isinstance(by_office, StatementApproved)
    assert isinstance(by_task_force, StatementApproved)
    assert (by_office.missing, by_office.fully_approved) == (
        (ApprovalStep(role="propaganda"),),
        False,
    )
    assert (by_task_force.missing, by_task_force.fully_approved) == ((), True)


async def test_drafting_and_submitting_need_a_writer_and_a_graded_incident(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-2")
    refused = await api.post(f"{API}/incidents/inc-2/statements", json=RELEASE, headers=who.monitor)
    assert error(refused)[:2] == (403, "forbidden")

    sid = await drafted(api, "inc-2", who.author)
    ungraded = await api.post(f"{API}/statements/{sid}/submit", headers=who.author)
    assert error(ungraded)[:2] == (409, "not_graded")
    assert "尚未定级" in error(ungraded)[2]

    await statement.consume(upstream.graded("inc-2", 2))
    r = await api.post(f"{API}/statements/{sid}/submit", headers=who.author)
    assert r.json()["state"] == "in_review"
    again = await api.post(f"{API}/statements/{sid}/submit", headers=who.author)
    assert error(again) == (409, "not_submittable", "当前版本已提交审批")


async def test_a_grade_lowered_mid_review_that_the_approvals_cover_clears_the_statement(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-3", 1)
    sid = await submitted(api, "inc-3", who)
    assert (await approve(api, sid, who.office)).json()["state"] == "in_review"

    lowered = upstream.overridden("inc-3", 1, 2)
    await statement.consume(lowered)

    rechain = (await statement_events(statement, sid))[-1]
    assert isinstance(rechain.payload, StatementSubmitted)
    assert rechain.payload.chain == (ApprovalStep(role="office"),)
    assert rechain.payload.missing == ()
    assert rechain.payload.reason == "事件级别由1级调整为2级，按新级别审批"
    assert (rechain.causation_id, rechain.correlation_id) == (
        lowered.event_id,
        lowered.correlation_id,
    )
    assert rechain.actor == Actor.rule("approval-policy")
    view = (await api.get(f"{API}/statements/{sid}", headers=who.office)).json()
    assert (view["state"], view["missing"], view["level"]) == ("approved", [], 2)
    published = await api.post(f"{API}/statements/{sid}/publish", json=WEIBO, headers=who.author)
    assert published.status_code == 200, published.text


async def test_an_escalation_mid_review_asks_for_the_new_levels_chain_once(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-4", 2)
    sid = await submitted(api, "inc-4", who)
    assert (await approve(api, sid, who.office)).json()["state"] == "approved"

    raised = upstream.escalated("inc-4", 2, 1)
    await statement.consume(raised, raised)  # redelivered: the inbox drops the second

    rechains = [
        e for e in await statement_events(statement, sid) if e.event_type == "StatementSubmitted"
    ]
    assert len(rechains) == 2
    last = rechains[-1].payload
    assert isinstance(last, StatementSubmitted)
    assert last.missing == (ApprovalStep(role="propaganda"),)
    view = (await api.get(f"{API}/statements/{sid}", headers=who.office)).json()
    assert (view["state"], view["level"]) == ("in_review", 1)
    assert [s["name"] for s in view["missing"]] == ["宣传部（处置专班）"]
    assert view["chain"][0]["approved_by"] == "office-li"  # still counts
    blocked = await api.post(f"{API}/statements/{sid}/publish", json=WEIBO, headers=who.author)
    assert error(blocked)[:2] == (409, "not_approved")


async def test_a_rejected_or_withdrawn_version_comes_back_only_as_a_revision(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-5", 3)
    sid = await submitted(api, "inc-5", who)
    base = f"{API}/statements/{sid}"

    rejected = await api.post(f"{base}/reject", json={"comment": "数据待核实"}, headers=who.head)
    assert rejected.json()["state"] == "rejected"
    late = await approve(api, sid, who.head)
    assert error(late) == (409, "not_in_review", "当前版本已被退回")
    revised = await api.put(base, json=revision({**RELEASE, "body": "更正"}), headers=who.author)
    assert (revised.json()["current_version"], revised.json()["state"]) == (2, "draft")
    await api.post(f"{base}/submit", headers=who.author)

    not_theirs = await api.post(f"{base}/withdraw", json={"reason": "x"}, headers=who.propaganda)
    assert error(not_theirs)[:2] == (403, "may_not_withdraw")
    withdrawn = await api.post(f"{base}/withdraw", json={"reason": "情况有变"}, headers=who.author)
    assert withdrawn.json()["state"] == "withdrawn"
    unpublishable = await api.post(f"{base}/publish", json=WEIBO, headers=who.author)
    assert error(unpublishable) == (409, "not_approved", "当前版本已撤回，不能发布")


async def test_whoever_wrote_an_earlier_version_clears_no_step_of_the_revision(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-8", 2)
    sid = await drafted(api, "inc-8", who.office)  # the office writes v1
    base = f"{API}/statements/{sid}"
    revised = await api.put(base, json=revision({**RELEASE, "body": "修改"}), headers=who.author)
    assert revised.json()["current_version"] == 2
    await api.post(f"{base}/submit", headers=who.author)

    own = await approve(api, sid, who.office)
    assert error(own) == (403, "self_approval", "不能审批自己起草过的稿件（第1版由本人起草）")
    rejected = await api.post(f"{base}/reject", json={"comment": "x"}, headers=who.office)
    assert error(rejected)[:2] == (403, "self_approval")
    view = (await api.get(base, headers=who.office)).json()
    assert (view["state"], [s["role"] for s in view["missing"]]) == ("in_review", ["office"])
    colleague = statement.token("office-zhao", "county", "office")
    assert (await approve(api, sid, colleague)).json()["state"] == "approved"


async def test_a_statement_out_at_level_three_needs_the_level_one_chain_to_go_out_again(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-9", 3)
    sid = await submitted(api, "inc-9", who)
    base = f"{API}/statements/{sid}"
    line = f"{API}/incidents/inc-9/official-line"
    await approve(api, sid, who.head)
    first = await api.post(f"{base}/publish", json=WEIBO, headers=who.author)
    assert first.status_code == 200, first.text

    raised = upstream.escalated("inc-9", 3, 1)
    await statement.consume(raised)

    rechain = (await statement_events(statement, sid))[-1]
    assert isinstance(rechain.payload, StatementSubmitted)
    assert (rechain.payload.level, rechain.payload.missing) == (
        1,
        (ApprovalStep(role="office"), ApprovalStep(role="propaganda")),
    )
    view = (await api.get(base, headers=who.office)).json()
    assert (view["state"], view["level"]) == ("published", 1)
    assert [s["role"] for s in view["missing"]] == ["office", "propaganda"]

    site = {"outlet": "县教育局官网", "url": "https://edu.example/1"}
    blocked = await api.post(f"{base}/publish", json=site, headers=who.author)
    assert error(blocked)[:2] == (409, "not_approved")
    assert "缺少：领导小组办公室、宣传部（处置专班）" in error(blocked)[2]
    shown = (await api.get(line, headers=who.office)).json()
    assert (shown["outlet"], shown["url"]) == ("官方微博", WEIBO["url"])  # the line stays

    assert (await approve(api, sid, who.office)).status_code == 200
    assert (await approve(api, sid, who.propaganda)).status_code == 200
    again = await api.post(f"{base}/publish", json=site, headers=who.author)
    assert again.status_code == 200, again.text
    shown = (await api.get(line, headers=who.office)).json()
    assert (shown["outlet"], [c["approved_by"] for c in shown["cleared_by"]]) == (
        "县教育局官网",
        ["office-li", "propaganda-wang"],
    )


async def test_the_official_line_is_the_latest_publication_and_a_contradiction_needs_a_reason(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-6", 2)
    line = f"{API}/incidents/inc-6/official-line"
    none_yet = await api.get(line, headers=who.office)
    assert error(none_yet)[:2] == (404, "no_official_line")

    first = await submitted(api, "inc-6", who)
    await approve(api, first, who.office)
    await api.post(f"{API}/statements/{first}/publish", json=WEIBO, headers=who.author)
    shown = (await api.get(line, headers=who.office)).json()
    assert (shown["statement_id"], shown["cleared_by"][0]["approved_by"]) == (first, "office-li")

    update = {**RELEASE, "facts": [{"label": "就医学生人数", "value": "2人"}]}
    second = await drafted(api, "inc-6", who.author, update)
    flagged = await api.post(f"{API}/statements/{second}/submit", headers=who.author)
    assert [c["published_value"] for c in flagged.json()["fact_conflicts"]] == ["0"]
    bare = await approve(api, second, who.office)
    assert error(bare)[:2] == (409, "fact_changes_unacknowledged")
    ok = await api.post(
        f"{API}/statements/{second}/approve",
        json={"acknowledge_fact_changes": {"reason": "医院通报新增2人"}},
        headers=who.office,
    )
    assert ok.json()["state"] == "approved"

    listed = (await api.get(f"{API}/incidents/inc-6/statements", headers=who.office)).json()
    assert [(s["statement_id"], s["state"]) for s in listed] == [
        (first, "published"),
        (second, "approved"),
    ]


# --------------------------------------------------------------------------- who sees what

ROUTES = [
    ("post", "/incidents/{id}/statements", "incident", RELEASE),
    ("get", "/incidents/{id}/statements", "incident", None),
    ("get", "/incidents/{id}/official-line", "incident", None),
    ("put", "/statements/{id}", "statement", revision(RELEASE)),
    ("post", "/statements/{id}/submit", "statement", None),
    ("post", "/statements/{id}/approve", "statement", {"comment": "同意"}),
    ("post", "/statements/{id}/reject", "statement", {"comment": "不同意"}),
    ("post", "/statements/{id}/withdraw", "statement", {"reason": "撤回"}),
    ("post", "/statements/{id}/publish", "statement", WEIBO),
    ("get", "/statements/{id}", "statement", None),
    ("get", "/statements/{id}/diff?from=1", "statement", None),
]


@pytest.mark.parametrize(("method", "route", "kind", "body"), ROUTES)
@pytest.mark.parametrize(
    "outsider",
    [
        ("spokesperson-b", "school-b", "spokesperson", "office", "propaganda", "dept_head"),
        ("partner-wxb", "county", "partner", "admin"),  # referred it, admin beside partner
    ],
)
async def test_another_units_id_answers_exactly_like_an_unknown_one(
    statement: FakeService,
    api: httpx.AsyncClient,
    upstream: Upstream,
    who: People,
    method: str,
    route: str,
    kind: str,
    body: dict[str, Any] | None,
    outsider: tuple[str, ...],
) -> None:
    await known(statement, upstream, "inc-7", 2)
    await statement.consume(upstream.report("inc-7", "partner-wxb", ("school-a",)))
    sid = await submitted(api, "inc-7", who)
    real = sid if kind == "statement" else "inc-7"
    unknown = uuid.uuid4().hex
    headers = statement.token(*outsider)
    before = len(await statement.published())

    async def ask(key: str) -> httpx.Response:
        return await api.request(
            method.upper(), API + route.format(id=key), json=body, headers=headers
        )

    theirs, nobodys = await ask(real), await ask(unknown)

    assert (theirs.status_code, nobodys.status_code) == (404, 404)
    if "partner" in outsider and route.endswith("official-line"):
        # The partner referred it and reads its official line (none yet): it learns
        # nothing it did not know (tests/unit/test_cross_unit_probes.py shows the line).
        assert theirs.json()["error"]["code"] == "no_official_line"
    else:
        assert theirs.json() == not_found(kind, real)
    assert nobodys.json() == not_found(kind, unknown)
    assert len(await statement.published()) == before


async def test_visibility_is_decided_before_roles_and_state(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-8", 2)
    sid = await submitted(api, "inc-8", who)
    monitor_b = statement.token("monitor-b", "school-b", "monitor")

    mine = await api.post(f"{API}/statements/{sid}/publish", json=WEIBO, headers=who.monitor)
    theirs = await api.post(f"{API}/statements/{sid}/publish", json=WEIBO, headers=monitor_b)

    assert error(mine)[:2] == (403, "forbidden")  # sees it, may not publish
    assert theirs.json() == not_found("statement", sid)


async def test_a_unit_concerned_with_an_incident_of_several_units_sees_and_drafts(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await statement.consume(upstream.opened("inc-9", ("school-a", "school-b")))

    listed = await api.get(f"{API}/incidents/inc-9/statements", headers=who.other_school)
    sid = await drafted(api, "inc-9", who.other_school)

    assert listed.status_code == 200, listed.text
    view = await api.get(f"{API}/statements/{sid}", headers=who.author)
    assert view.json()["author"] == "spokesperson-b"


async def test_a_report_naming_another_unit_lets_that_unit_see_the_statements(
    statement: FakeService, api: httpx.AsyncClient, upstream: Upstream, who: People
) -> None:
    await known(statement, upstream, "inc-10", 2)
    sid = await drafted(api, "inc-10", who.author)
    hidden_first = await api.get(f"{API}/statements/{sid}", headers=who.other_school)
    assert hidden_first.status_code == 404

    await statement.consume(upstream.report("inc-10", "monitor-chen", ("school-b",)))

    shown = await api.get(f"{API}/statements/{sid}", headers=who.other_school)
    assert shown.status_code == 200, shown.text


# --------------------------------------------------------------------------- races


def stale_once(
    statement: FakeService, monkeypatch: pytest.MonkeyPatch, keep: int, times: int = 1
) -> list[int]:
    """The first `times` decisions are taken on the statement as its first `keep` events
    left it, as if another writer had appended the rest meanwhile."""
    repository: Repository[Statement] = parts(statement).repository
    loads: list[int] = []

    async def stale(uow: UnitOfWork, key: str) -> Statement | None:
        events = await uow.load(repository.stream_of(key))
        loads.append(len(events))
        return repository.fold(events[:keep] if len(loads) <= times else events)

    monkeypatch.setattr(repository, "get", stale)
    return loads


async def test_a_decision_that_lost_the_race_is_decided_again_on_what_won(
    statement: FakeService,
    api: httpx.AsyncClient,
    upstream: Upstream,
    who: People,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await known(statement, upstream, "inc-11", 2)
    sid = await submitted(api, "inc-11", who)  # drafted, submitted: version 2
    loads = stale_once(statement, monkeypatch, keep=1)

    again = await api.post(f"{API}/statements/{sid}/submit", headers=who.author)

    # Decided on the draft it was first, then again on the submitted statement.
    assert error(again) == (409, "not_submittable", "当前版本已提交审批")
    assert loads == [2, 2]
    assert len(await statement_events(statement, sid)) == 2


async def test_a_publication_racing_another_is_recorded_beside_it(
    statement: FakeService,
    api: httpx.AsyncClient,
    upstream: Upstream,
    who: People,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await known(statement, upstream, "inc-12", 2)
    sid = await submitted(api, "inc-12", who)
    await approve(api, sid, who.office)
    await api.post(f"{API}/statements/{sid}/publish", json=WEIBO, headers=who.author)
    stale_once(statement, monkeypatch, keep=3)  # before the Weibo publication

    r = await api.post(
        f"{API}/statements/{sid}/publish",
        json={"outlet": "县教育局官网", "url": "https://edu.example/1"},
        headers=who.author,
    )

    assert r.status_code == 200, r.text
    assert [p["outlet"] for p in r.json()["publications"]] == ["官方微博", "县教育局官网"]
    assert [e.stream_version for e in await statement_events(statement, sid)] == [1, 2, 3, 4, 5]


async def test_a_decision_that_keeps_losing_answers_409_and_stores_nothing(
    statement: FakeService,
    api: httpx.AsyncClient,
    upstream: Upstream,
    who: People,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await known(statement, upstream, "inc-13", 2)
    sid = await submitted(api, "inc-13", who)
    loads = stale_once(statement, monkeypatch, keep=1, times=99)

    r = await api.put(f"{API}/statements/{sid}", json=revision(RELEASE), headers=who.author)

    assert error(r)[:2] == (409, "conflict_retry_exhausted")
    assert loads == [2, 2, 2]  # the configured three attempts
    assert len(await statement_events(statement, sid)) == 2
    view = (await api.get(f"{API}/statements/{sid}", headers=who.author)).json()
    assert view["current_version"] == 1
