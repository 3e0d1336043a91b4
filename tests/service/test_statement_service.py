"""The statement service against the real embedded broker and database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from services.statement.bootstrap import StatementParts, build
from shared.bus import ensure_topics
from shared.service import Context, ServiceRunner
from shared.settings import Settings
from tests.paging import every_page
from tests.service.upstream_events import bearer, client, escalated, feed, graded, opened, wait_for

pytestmark = pytest.mark.asyncio

RELEASE = {
    "kind": "press_release",
    "title": "关于网传某校食堂问题的情况通报",
    "body": "经核实，网传情况不属实……",
    "facts": [{"label": "就医学生人数", "value": "0"}],
    "outlets": ["官方微博", "县教育局官网"],
}


def revision(body: dict[str, Any]) -> dict[str, Any]:
    """A PUT body: a version's content (the kind is the statement's, and is no field of it)."""
    return {k: v for k, v in body.items() if k != "kind"}


Runner = ServiceRunner[StatementParts]


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Runner]:
    await ensure_topics(settings)
    runner = ServiceRunner.connect("statement", build, Context.from_settings(settings))
    await runner.start()
    yield runner
    # Stopped once the relay has sent what the test stored: on Python 3.11 a cancel that
    # meets a fresh append inside OutboxRelay's asyncio.wait_for is swallowed, and stop()
    # then waits for the relay for ever.
    await wait_for(lambda: drained(runner))
    await runner.stop()


@pytest.fixture
async def small_pages(settings: Settings) -> AsyncIterator[Runner]:
    """The service with inbox pages of at most two statements a list."""
    await ensure_topics(settings)
    small = settings.model_copy(update={"max_page_size": 2})
    runner = ServiceRunner.connect("statement", build, Context.from_settings(small))
    await runner.start()
    yield runner
    await wait_for(lambda: drained(runner))
    await runner.stop()


async def drained(runner: Runner) -> bool:
    return not await runner.store.unpublished(1)


class People:
    def __init__(self, settings: Settings) -> None:
        self.author = bearer(settings, "spokesperson-sun", "school-a", "spokesperson")
        self.office = bearer(settings, "office-li", "county", "office")
        self.propaganda = bearer(settings, "propaganda-wang", "county", "propaganda")
        self.head = bearer(settings, "head-liu", "school-a", "dept_head")
        self.other_school = bearer(settings, "spokesperson-b", "school-b", "spokesperson")


async def draft_when_known(
    http: httpx.AsyncClient, incident: str, headers: dict[str, str], body: dict[str, Any] = RELEASE
) -> dict[str, Any]:
    """Drafting waits until the service has heard of the incident from intake."""
    created: dict[str, Any] = {}

    async def drafted() -> bool:
        r = await http.post(
            f"/statements/v1/incidents/{incident}/statements", json=body, headers=headers
        )
        created.update(r.json() if r.status_code == 201 else {})
        return r.status_code == 201

    await wait_for(drafted)
    return created


async def submit_when_graded(
    http: httpx.AsyncClient, statement_id: str, headers: dict[str, str]
) -> None:
    """Submitting answers 409 until grading has reached the service."""

    async def accepted() -> bool:
        r = await http.post(f"/statements/v1/statements/{statement_id}/submit", headers=headers)
        return r.status_code == 200

    await wait_for(accepted)


async def test_a_level_one_release_needs_the_office_then_the_task_force_before_publishing(
    service: Runner, settings: Settings
) -> None:
    who = People(settings)
    await feed(settings, opened("inc-1"), graded("inc-1", 1))

    async with client(service) as http:
        statement = await draft_when_known(http, "inc-1", who.author)
        sid = statement["statement_id"]
        base = f"/statements/v1/statements/{sid}"
        assert statement["state"] == "draft"
        assert statement["versions"][0]["facts"] == RELEASE["facts"]
        await submit_when_graded(http, sid, who.author)

        own = await http.post(f"{base}/approve", json={}, headers=who.author)
        assert own.status_code == 403
        early = await http.post(f"{base}/approve", json={}, headers=who.propaganda)
        assert early.status_code == 409
        assert "领导小组办公室" in early.json()["error"]["message"]

        r = await http.post(f"{base}/approve", json={"comment": "同意"}, headers=who.office)
        assert r.status_code == 200, r.text
        blocked = await http.post(
            f"{base}/publish",
            json={"outlet": "官方微博", "url": "https://weibo.example/1"},
            headers=who.author,
        )
        assert blocked.status_code == 409
        assert "宣传部（处置专班）" in blocked.json()["error"]["message"]

        r = await http.post(f"{base}/approve", json={"comment": "可发"}, headers=who.propaganda)
        assert r.json()["state"] == "approved"
        published = await http.post(
            f"{base}/publish",
            json={"outlet": "官方微博", "url": "https://weibo.example/1"},
            headers=who.author,
        )
        assert published.status_code == 200, published.text

        view = (await http.get(base, headers=who.office)).json()
        assert view["state"] == "published"
        assert view["level"] == 1
        assert [(s["role"], s["approved_by"]) for s in view["chain"]] == [
            ("office", "office-li"),
            ("propaganda", "propaganda-wang"),
        ]
        assert all(s["approved_at"] for s in view["chain"])
        assert view["missing"] == []
        assert view["publications"][0]["url"] == "https://weibo.example/1"
        hidden = await http.get(base, headers=who.other_school)
        assert hidden.status_code == 404
        unknown = await http.get("/statements/v1/statements/no-such-id", headers=who.office)
        assert hidden.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
        assert (await http.get(base)).status_code == 401


async def test_the_inbox_pages_by_cursor_through_every_statement_once_on_the_real_database(
    small_pages: Runner, settings: Settings
) -> None:
    who = People(settings)
    incidents = [f"inc-p{n}" for n in range(3)]
    await feed(settings, *[e for i in incidents for e in (opened(i), graded(i, 2))])

    async with client(small_pages) as http:
        drafts = []
        for incident in incidents:
            statement = await draft_when_known(http, incident, who.author)
            await submit_when_graded(http, statement["statement_id"], who.author)
            drafted_at = datetime.fromisoformat(statement["drafted_at"])
            drafts.append((drafted_at, statement["statement_id"]))
        office = await every_page(http, "/statements/v1/inbox", who.office)
        author = await every_page(http, "/statements/v1/inbox", who.author)
        too_many = await http.get("/statements/v1/inbox?limit=3", headers=who.office)

    written = [sid for _, sid in sorted(drafts)]  # oldest first, ties by id

    def ids(page: dict[str, Any], part: str) -> list[str]:
        return [s["statement_id"] for s in page[part]]

    assert [ids(p, "waiting") for p in office] == [written[:2], written[2:]]
    assert [ids(p, "mine") for p in author] == [written[::-1][:2], written[::-1][2:]]
    assert all(not p["mine"] for p in office)
    assert all(not p["waiting"] for p in author)
    assert too_many.status_code == 422
    assert too_many.json()["error"]["details"][0]["field"] == "limit"


async def test_a_revision_restarts_the_chain_and_a_rejection_needs_a_comment(
    service: Runner, settings: Settings
) -> None:
    who = People(settings)
    await feed(settings, opened("inc-2"), graded("inc-2", 3))

    async with client(service) as http:
        reply = {**RELEASE, "kind": "online_reply", "outlets": []}
        sid = (await draft_when_known(http, "inc-2", who.author, reply))["statement_id"]
        base = f"/statements/v1/statements/{sid}"
        await submit_when_graded(http, sid, who.author)

        no_reason = await http.post(f"{base}/reject", json={"comment": " "}, headers=who.head)
        assert no_reason.status_code == 422
        rejected = await http.post(
            f"{base}/reject", json={"comment": "数据待核实"}, headers=who.head
        )
        assert rejected.json()["state"] == "rejected"

        revised = await http.put(
            base, json=revision({**reply, "body": "更正后的回复"}), headers=who.author
        )
        assert revised.json()["current_version"] == 2
        assert revised.json()["state"] == "draft"
        r = await http.post(f"{base}/submit", headers=who.author)
        assert r.json()["missing"] == [
            {"role": "dept_head", "unit_id": "school-a", "name": "部门分管领导（school-a）"}
        ]
        approved = await http.post(f"{base}/approve", json={}, headers=who.head)
        assert approved.json()["state"] == "approved"
        done = await http.post(
            f"{base}/publish", json={"outlet": "留言板", "url": "ref-1"}, headers=who.author
        )
        assert done.status_code == 200
        assert done.json()["publications"][0]["version"] == 2


async def test_an_ungraded_incident_takes_drafts_but_not_submissions(
    service: Runner, settings: Settings
) -> None:
    who = People(settings)
    await feed(settings, opened("inc-3"))

    async with client(service) as http:
        sid = (await draft_when_known(http, "inc-3", who.author))["statement_id"]
        r = await http.post(f"/statements/v1/statements/{sid}/submit", headers=who.author)
        assert r.status_code == 409
        assert "尚未定级" in r.json()["error"]["message"]
        missing = await http.post(
            "/statements/v1/incidents/nobody-knows/statements", json=RELEASE, headers=who.author
        )
        assert missing.status_code == 404


async def test_an_escalation_mid_review_asks_for_the_new_levels_chain(
    service: Runner, settings: Settings
) -> None:
    who = People(settings)
    await feed(settings, opened("inc-4"), graded("inc-4", 2))

    async with client(service) as http:
        sid = (await draft_when_known(http, "inc-4", who.author))["statement_id"]
        base = f"/statements/v1/statements/{sid}"
        await submit_when_graded(http, sid, who.author)
        r = await http.post(f"{base}/approve", json={}, headers=who.office)
        assert r.json()["state"] == "approved"

        await feed(settings, escalated("inc-4", 2, 1))

        async def back_in_review() -> bool:
            view = (await http.get(base, headers=who.office)).json()
            return bool(view["state"] == "in_review")

        await wait_for(back_in_review)
        view = (await http.get(base, headers=who.office)).json()
        assert view["level"] == 1
        assert [s["role"] for s in view["missing"]] == ["propaganda"]
        assert view["chain"][0]["approved_by"] == "office-li"  # still counts
        blocked = await http.post(
            f"{base}/publish", json={"outlet": "官方微博", "url": "u"}, headers=who.author
        )
        assert blocked.status_code == 409


async def publish_release(
    http: httpx.AsyncClient, who: People, incident: str, body: dict[str, Any] = RELEASE
) -> str:
    """A level-2 release cleared by the office and published on the official Weibo."""
    sid = (await draft_when_known(http, incident, who.author, body))["statement_id"]
    await submit_when_graded(http, sid, who.author)
    base = f"/statements/v1/statements/{sid}"
    assert (await http.post(f"{base}/approve", json={}, headers=who.office)).status_code == 200
    r = await http.post(
        f"{base}/publish",
        json={"outlet": "官方微博", "url": f"https://weibo.example/{sid}"},
        headers=who.author,
    )
    assert r.status_code == 200, r.text
    return str(sid)


async def test_publishing_sets_the_official_line_and_a_contradiction_needs_acknowledging(
    service: Runner, settings: Settings
) -> None:
    who = People(settings)
    await feed(settings, opened("inc-5"), graded("inc-5", 2))

    async with client(service) as http:
        incident = "/statements/v1/incidents/inc-5"
        await wait_for(lambda: _known(http, incident, who.office))
        none_yet = await http.get(f"{incident}/official-line", headers=who.office)
        assert none_yet.status_code == 404
        assert "尚无已发布的口径" in none_yet.json()["error"]["message"]

        first = await publish_release(http, who, "inc-5")
        line = (await http.get(f"{incident}/official-line", headers=who.office)).json()
        assert (line["statement_id"], line["version"]) == (first, 1)
        assert line["url"] == f"https://weibo.example/{first}"
        assert line["facts"] == RELEASE["facts"]
        assert [(s["role"], s["approved_by"]) for s in line["cleared_by"]] == [
            ("office", "office-li")
        ]
        assert line["cleared_by"][0]["approved_at"]

        update = {**RELEASE, "facts": [{"label": "就医学生人数", "value": "２ 人"}]}
        second = (await draft_when_known(http, "inc-5", who.author, update))["statement_id"]
        base = f"/statements/v1/statements/{second}"
        submitted = await http.post(f"{base}/submit", headers=who.author)
        assert submitted.json()["fact_conflicts"] == [
            {
                "label": "就医学生人数",
                "published_value": "0",
                "new_value": "２ 人",
                "published_in": first,
                "published_version": 1,
            }
        ]

        bare = await http.post(f"{base}/approve", json={"comment": "同意"}, headers=who.office)
        assert bare.status_code == 409
        assert "就医学生人数（已发布：0，本稿：２ 人）" in bare.json()["error"]["message"]
        blank = await http.post(
            f"{base}/approve",
            json={"acknowledge_fact_changes": {"reason": " "}},
            headers=who.office,
        )
        assert blank.status_code == 422
        reason = "医院通报新增2名学生就医观察"
        ok = await http.post(
            f"{base}/approve",
            json={"comment": "同意", "acknowledge_fact_changes": {"reason": reason}},
            headers=who.office,
        )
        assert ok.status_code == 200, ok.text
        acknowledged = ok.json()["chain"][0]["fact_changes_acknowledged"]
        assert acknowledged["reason"] == reason
        assert acknowledged["changes"][0]["new_value"] == "２ 人"

        listed = (await http.get(f"{incident}/statements", headers=who.office)).json()
        assert [(s["statement_id"], s["state"]) for s in listed] == [
            (first, "published"),
            (second, "approved"),
        ]
        hidden = await http.get(f"{incident}/official-line", headers=who.other_school)
        assert hidden.status_code == 404


async def _known(http: httpx.AsyncClient, incident: str, headers: dict[str, str]) -> bool:
    return (await http.get(f"{incident}/statements", headers=headers)).status_code == 200


async def test_a_statement_shows_the_diff_between_its_versions_and_any_two_on_request(
    service: Runner, settings: Settings
) -> None:
    who = People(settings)
    await feed(settings, opened("inc-6"), graded("inc-6", 2))

    async with client(service) as http:
        sid = (await draft_when_known(http, "inc-6", who.author))["statement_id"]
        base = f"/statements/v1/statements/{sid}"
        second = {**RELEASE, "body": "经核实，网传情况不属实。\n学校已整改。", "facts": []}
        await http.put(base, json=revision(second), headers=who.author)
        third = {**second, "title": "关于某校食堂问题的说明"}
        await http.put(base, json=revision(third), headers=who.author)

        view = (await http.get(base, headers=who.office)).json()
        assert [(d["from_version"], d["to_version"]) for d in view["diffs"]] == [(1, 2), (2, 3)]
        assert "+学校已整改。" in view["diffs"][0]["body"]
        assert view["diffs"][0]["facts"]["removed"] == RELEASE["facts"]
        assert view["diffs"][1]["body"] == ""

        whole = (await http.get(f"{base}/diff?from=1", headers=who.office)).json()
        assert (whole["from_version"], whole["to_version"]) == (1, 3)
        assert "+关于某校食堂问题的说明" in whole["title"]
        missing = await http.get(f"{base}/diff?from=1&to=9", headers=who.office)
        assert missing.status_code == 404


async def test_a_withdrawn_statement_is_not_approved_until_revised_and_resubmitted(
    service: Runner, settings: Settings
) -> None:
    who = People(settings)
    await feed(settings, opened("inc-7"), graded("inc-7", 2))

    async with client(service) as http:
        sid = (await draft_when_known(http, "inc-7", who.author))["statement_id"]
        base = f"/statements/v1/statements/{sid}"
        await submit_when_graded(http, sid, who.author)

        not_theirs = await http.post(
            f"{base}/withdraw", json={"reason": "不同意"}, headers=who.propaganda
        )
        assert not_theirs.status_code == 403
        r = await http.post(f"{base}/withdraw", json={"reason": "情况有变"}, headers=who.author)
        assert r.json()["state"] == "withdrawn"
        assert r.json()["withdrawals"][0]["reason"] == "情况有变"
        late = await http.post(f"{base}/approve", json={}, headers=who.office)
        assert late.status_code == 409
        assert "已撤回" in late.json()["error"]["message"]

        await http.put(base, json=revision({**RELEASE, "body": "更新后的通报"}), headers=who.author)
        await http.post(f"{base}/submit", headers=who.author)
        r = await http.post(f"{base}/approve", json={}, headers=who.office)
        assert r.json()["state"] == "approved"


async def test_the_openapi_describes_the_statement_view(
    service: Runner, settings: Settings
) -> None:
    async with client(service) as http:
        spec = (await http.get("/statements/v1/openapi.json")).json()
    route = spec["paths"]["/statements/v1/statements/{statement_id}"]["get"]
    schema = route["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/StatementView"}
    fields = spec["components"]["schemas"]["StatementView"]["properties"]
    assert {"chain", "missing", "diffs", "fact_conflicts", "withdrawals"} <= set(fields)


async def test_two_publications_at_once_are_both_recorded_one_after_the_other(
    service: Runner, settings: Settings
) -> None:
    """Real transactions collide on the stream's next version; the loser is decided again."""
    who = People(settings)
    await feed(settings, opened("inc-8"), graded("inc-8", 2))

    async with client(service) as http:
        sid = (await draft_when_known(http, "inc-8", who.author))["statement_id"]
        base = f"/statements/v1/statements/{sid}"
        await submit_when_graded(http, sid, who.author)
        assert (await http.post(f"{base}/approve", json={}, headers=who.office)).status_code == 200

        outlets = ["官方微博", "县教育局官网"]  # both approved with the release
        answers = await asyncio.gather(
            *(
                http.post(
                    f"{base}/publish",
                    json={"outlet": outlet, "url": f"https://example.org/{i}"},
                    headers=who.author,
                )
                for i, outlet in enumerate(outlets)
            )
        )

        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        view = (await http.get(base, headers=who.office)).json()
        assert sorted(p["outlet"] for p in view["publications"]) == sorted(outlets)
        stream = await service.store.load(f"statement-{sid}")
        assert [e.stream_version for e in stream] == [1, 2, 3, 4, 5]
