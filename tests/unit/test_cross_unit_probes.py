"""Cross-unit probes: the five services built on the fakes and wired as Kafka would wire
them, two units' incidents carried through them (filed, graded, owed, a statement
published, resolved, reviewed), and then unit A's token asks every route that takes an id
for unit B's ids: each answers exactly what a random id of the same kind answers (status
and body), and every list, count, search, export and figure leaves B out.

And what a partner sees of an incident it referred, everywhere: `ReferredIncident`
(id, status, level, category, closure times), its own reports and the official line,
never a draft, approval, comment, obligation, recipient, other filer or review.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Mount

from services.archive.bootstrap import build as build_archive
from services.grading.bootstrap import build as build_grading
from services.intake.attachments import MemoryAttachmentStore
from services.intake.bootstrap import IntakeParts
from services.intake.bootstrap import build as build_intake
from services.notification.bootstrap import build as build_notification
from services.statement.bootstrap import build as build_statement
from shared.events import (
    Actor,
    ApprovalStep,
    ReportReceived,
    StatementApproved,
    StatementPublished,
    StatementRevised,
    StatementSubmitted,
)
from shared.service import Dependencies
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.unit.test_archive_service import NOW, REVIEW, T0, Clock, Story, reviewed
from tests.unit.test_archive_service import clock as clock
from tests.unit.test_intake_attachments import png

RELEASE = {
    "kind": "online_reply",
    "title": "情况说明",
    "body": "经核查，已整改。",
    "facts": [{"label": "涉及学生", "value": "0"}],
    "outlets": ["官方微博"],
}
# A file intake accepts (a real PNG), as a multipart upload.
ATTACHMENT: dict[str, Any] = {"files": {"file": ("截图.png", png(), "image/png")}}
# A token of unit A with every role a unit's people hold (no admin, no analyst: those see
# every unit by design), so that role checks never hide what visibility would answer.
UNIT_A_ROLES = ("leader", "office", "monitor", "dept_head", "spokesperson", "propaganda")


@dataclass
class System:
    services: dict[str, FakeService]
    clients: dict[str, httpx.AsyncClient]
    forwarded: set[tuple[str, str]] = field(default_factory=set)

    def token(self, sub: str, unit: str, *roles: str) -> dict[str, str]:
        return self.services["archive"].token(sub, unit, *roles)

    async def pump(self) -> None:
        """Hand every stored event to each service consuming its topic, until none is new."""
        while True:
            moved = False
            for source in self.services.values():
                for event in await source.published():
                    for name, target in self.services.items():
                        key = (name, str(event.event_id))
                        if event.topic in target.parts.consumes and key not in self.forwarded:
                            self.forwarded.add(key)
                            await target.consume(event)
                            moved = True
            if not moved:
                return

    def http(self, service: str) -> httpx.AsyncClient:
        return self.clients[service]


@pytest.fixture
async def system(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[System]:
    # A webhook channel, so that pages are queued (and never sent: nothing dispatches).
    monkeypatch.setenv("YUQING_WEBHOOK_URL", "http://127.0.0.1:9/never-dialled")
    monkeypatch.setenv("YUQING_WEBHOOK_SECRET", "probe-webhook-secret-long-enough-x")
    files = MemoryAttachmentStore()

    def intake_on_memory(deps: Dependencies) -> IntakeParts:
        # Intake's files kept in memory (its GridFS default asks a real database).
        return build_intake(deps, attachment_store=files)

    builds = {
        "intake": intake_on_memory,
        "grading": build_grading,
        "notification": build_notification,
        "statement": build_statement,
        "archive": build_archive,
    }
    async with AsyncExitStack() as stack:
        services: dict[str, FakeService] = {}
        clients: dict[str, httpx.AsyncClient] = {}
        for name, build in builds.items():
            settings = fake_settings(archive_embedded_reports=2)
            services[name] = await stack.enter_async_context(
                fake_service(name, build, settings=settings)
            )
            clients[name] = await stack.enter_async_context(services[name].http())
        yield System(services, clients)


def report_body(unit: str, url: str, title: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "source_type": "news",
        "source_name": "县融媒体",
        "media_tier": "county",
        "url": url,
        "title": title,
        "excerpt": "家长反映食堂饭菜质量",
        "published_at": (now - timedelta(minutes=10)).isoformat(),
        "observed_at": (now - timedelta(minutes=5)).isoformat(),
        "reach": {"views": 100},
        "unit_ids": [unit],
    }


@dataclass(frozen=True)
class Handled:
    """The ids one unit's incident left in the services."""

    incident_id: str
    report_id: str
    statement_id: str
    obligation_id: str
    case_id: str
    notification_id: str
    attachment_id: str


async def handled(system: System, unit: str, title: str) -> Handled:
    """File, grade, owe, publish a statement, resolve and review one incident of `unit`."""
    monitor = system.token(f"monitor-{unit}", unit, "monitor")
    filed = await system.http("intake").post(
        "/intake/v1/reports",
        json=report_body(unit, f"https://news.example/{unit}", title),
        headers=monitor,
    )
    assert filed.status_code == 201, filed.text
    incident_id, report_id = filed.json()["incident_id"], filed.json()["report_id"]
    attached = await system.http("intake").post(
        f"/intake/v1/reports/{report_id}/attachments", headers=monitor, **ATTACHMENT
    )
    assert attached.status_code == 201, attached.text
    await system.pump()

    writer = system.token(f"spokesperson-{unit}", unit, "spokesperson")
    # Whatever the level's chain (the office; or the unit's department head at level 3).
    approver = system.token(f"approver-{unit}", "county", "office", "dept_head")
    statements = system.http("statement")
    drafted = await statements.post(
        f"/statements/v1/incidents/{incident_id}/statements", json=RELEASE, headers=writer
    )
    assert drafted.status_code == 201, drafted.text
    statement_id = drafted.json()["statement_id"]
    for path, body, who in (
        ("submit", None, writer),
        ("approve", {"comment": "同意"}, approver),
        ("publish", {"outlet": "官方微博", "url": f"https://weibo.example/{unit}"}, writer),
    ):
        answer = await statements.post(
            f"/statements/v1/statements/{statement_id}/{path}", json=body, headers=who
        )
        assert answer.status_code == 200, (path, answer.text)
    await system.pump()

    office = system.token("office-li", "county", "office")
    duties = await system.http("notification").get(
        "/notifications/v1/obligations", params={"incident_id": incident_id}, headers=office
    )
    obligation_id = duties.json()["obligations"][0]["obligation_id"]
    resolved = await system.http("intake").post(
        f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "舆情平息"}, headers=office
    )
    assert resolved.status_code == 200, resolved.text
    await system.pump()
    reviewed = await system.http("archive").post(
        f"/archive/v1/incidents/{incident_id}/review", json=REVIEW, headers=office
    )
    assert reviewed.status_code == 202, reviewed.text
    await system.pump()
    page = (
        await system.services["notification"]
        .db["deliveries"]
        .find_one({"incident_id": incident_id})
    )
    assert page is not None, "no page was queued"
    return Handled(
        incident_id,
        report_id,
        statement_id,
        obligation_id,
        reviewed.json()["case_id"],
        str(page["_id"]),
        attached.json()["attachment_id"],
    )


# Every route that takes an id: (service, method, path with {} for the id, kind, request);
# test_the_probe_table_lists_every_served_route_that_takes_an_id holds it to the apps. A
# write sends a body the route would take, so that its 404 is the id's: FastAPI answers a
# body it cannot read with 422 before the route runs (an upload's file is read after).
ID_ROUTES: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("archive", "GET", "/archive/v1/incidents/{}", "incident", {}),
    ("archive", "GET", "/archive/v1/incidents/{}", "incident", {"params": {"as_of": "2100-01-01"}}),
    ("archive", "GET", "/archive/v1/incidents/{}/timeline", "incident", {}),
    ("archive", "GET", "/archive/v1/incidents/{}/verify", "incident", {}),
    ("archive", "GET", "/archive/v1/incidents/{}/reports", "incident", {}),
    ("archive", "POST", "/archive/v1/incidents/{}/review", "incident", {"json": REVIEW}),
    ("archive", "GET", "/archive/v1/cases/{}", "case", {}),
    ("archive", "GET", "/archive/v1/cases/{}/report", "case", {}),
    ("archive", "GET", "/archive/v1/cases/{}/report", "case", {"params": {"format": "html"}}),
    # The office's findings for the assessment (考评), each for unit A's own unit.
    (
        "archive",
        "POST",
        "/archive/v1/incidents/{}/uncleared-releases",
        "incident",
        {
            "json": {
                "released_by": "spokesperson-sun",
                "unit_id": "school-a",
                "channel": "微信群",
                "released_at": "2026-01-01T08:00:00+08:00",
                "content": "未经审核的说明",
            }
        },
    ),
    (
        "archive",
        "POST",
        "/archive/v1/incidents/{}/commendations",
        "incident",
        {"json": {"unit_id": "school-a", "reason": "处置及时"}},
    ),
    (
        "archive",
        "POST",
        "/archive/v1/obligations/{}/untrue",
        "obligation",
        {"json": {"reason": "x"}},
    ),
    ("intake", "GET", "/intake/v1/reports/{}", "report", {}),
    ("intake", "GET", "/intake/v1/incidents/{}", "incident", {}),
    ("intake", "GET", "/intake/v1/incidents/{}/reports", "incident", {}),
    ("intake", "GET", "/intake/v1/incidents/{}/reports", "incident", {"params": {"limit": 1}}),
    ("intake", "POST", "/intake/v1/incidents/{}/resolve", "incident", {"json": {"reason": "x"}}),
    ("intake", "POST", "/intake/v1/incidents/{}/dismiss", "incident", {"json": {"reason": "x"}}),
    ("intake", "POST", "/intake/v1/incidents/{}/reopen", "incident", {"json": {"reason": "x"}}),
    (
        "intake",
        "POST",
        "/intake/v1/incidents/{}/merge",
        "incident",
        {"json": {"into": "inc-unheard-of", "reason": "x"}},
    ),
    (
        "intake",
        "POST",
        "/intake/v1/reports/{}/confirm-claims",
        "report",
        {"json": {"reason": "x"}},
    ),
    ("intake", "POST", "/intake/v1/reports/{}/attachments", "report", ATTACHMENT),
    ("intake", "GET", "/intake/v1/reports/{}/attachments", "report", {}),
    ("intake", "GET", "/intake/v1/attachments/{}", "attachment", {}),
    ("grading", "GET", "/grading/v1/incidents/{}/grade", "incident", {}),
    (
        "grading",
        "POST",
        "/grading/v1/incidents/{}/override",
        "incident",
        {"json": {"level": 1, "reason": "x"}},
    ),
    (
        "grading",
        "POST",
        "/grading/v1/incidents/{}/confirm",
        "incident",
        {"json": {"level": 1, "reason": "x"}},
    ),
    (
        "grading",
        "POST",
        "/grading/v1/incidents/{}/instructions",
        "incident",
        {"json": {"text": "请妥善处置", "signed": True}},
    ),
    ("statement", "GET", "/statements/v1/incidents/{}/statements", "incident", {}),
    ("statement", "POST", "/statements/v1/incidents/{}/statements", "incident", {"json": RELEASE}),
    ("statement", "GET", "/statements/v1/incidents/{}/official-line", "incident", {}),
    ("statement", "GET", "/statements/v1/statements/{}", "statement", {}),
    ("statement", "GET", "/statements/v1/statements/{}/diff", "statement", {"params": {"from": 1}}),
    (
        "statement",
        "PUT",
        "/statements/v1/statements/{}",
        "statement",
        {"json": {k: v for k, v in RELEASE.items() if k != "kind"}},
    ),
    ("statement", "POST", "/statements/v1/statements/{}/submit", "statement", {}),
    ("statement", "POST", "/statements/v1/statements/{}/approve", "statement", {"json": {}}),
    (
        "statement",
        "POST",
        "/statements/v1/statements/{}/reject",
        "statement",
        {"json": {"comment": "x"}},
    ),
    (
        "statement",
        "POST",
        "/statements/v1/statements/{}/withdraw",
        "statement",
        {"json": {"reason": "x"}},
    ),
    (
        "statement",
        "POST",
        "/statements/v1/statements/{}/publish",
        "statement",
        {"json": {"outlet": "官方微博", "url": "https://weibo.example/x"}},
    ),
    ("notification", "POST", "/notifications/v1/obligations/{}/fulfil", "obligation", {"json": {}}),
    (
        "notification",
        "POST",
        "/notifications/v1/incidents/{}/decisions",
        "incident",
        {"json": {"kind": "report_county", "decision": "yes", "reason": "x"}},
    ),
    ("notification", "GET", "/notifications/v1/notifications/{}", "notification", {}),
    ("notification", "POST", "/notifications/v1/notifications/{}/ack", "notification", {}),
]


# Routes with an id in their path that the probes leave out, each with the reason.
ID_EXEMPT: dict[tuple[str, str, str], str] = {
    # A replay job belongs to the deployment, not to a unit: only an admin or an analyst
    # reads it (both see every unit by design), and unit A's token is refused (403) before
    # the id is looked up, so it tells no id from another. A partner's probe of it:
    # test_an_admin_role_beside_partner_neither_replays_nor_reads_a_replay.
    ("archive", "GET", "/archive/v1/replay/{}"): "not unit-scoped (replay job)",
}
# The path parameters that name a unit's record, and the kind of id the table gives them.
ID_PARAMS = {
    "incident_id": "incident",
    "report_id": "report",
    "statement_id": "statement",
    "obligation_id": "obligation",
    "case_id": "case",
    "attachment_id": "attachment",
    "notification_id": "notification",
}
PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def served_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path template) of every route the app serves, included routers walked."""

    def walk(routes: Sequence[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if isinstance(route, APIRoute):
                yield from ((m, prefix + route.path) for m in route.methods or ())
            elif hasattr(route, "effective_route_contexts"):
                # FastAPI's included router: the routes it serves, with their full paths.
                for context in route.effective_route_contexts():
                    yield from ((m, prefix + context.path_format) for m in context.methods)
            elif isinstance(route, Mount):
                yield from walk(route.routes, prefix + route.path)
            else:
                # What has a path and methods (the docs, the schema); anything else the walk
                # cannot see into fails here rather than hiding its routes.
                methods = getattr(route, "methods", None)
                assert methods is not None, f"a route the walk cannot see into: {route!r}"
                yield from ((m, prefix + route.path) for m in methods)

    yield from walk(app.routes, "")


async def test_the_probe_table_lists_every_served_route_that_takes_an_id(system: System) -> None:
    probed = {(service, method, path): kind for service, method, path, kind, _ in ID_ROUTES}
    served: set[tuple[str, str, str]] = set()
    missing, wrong_kind = [], []
    for name, service in system.services.items():
        app = service.runner.app
        routes = set(served_routes(app))
        # The walk saw at least every operation the service's schema documents.
        documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
        assert documented <= routes, (name, documented - routes)
        for method, path in sorted(routes):
            params = PARAM.findall(path)
            if not params:
                continue
            key = (name, method, PARAM.sub("{}", path))
            served.add(key)
            if key in ID_EXEMPT:
                continue
            if key not in probed:
                missing.append(f"{method} {path} ({name})")
            elif [probed[key]] != [ID_PARAMS.get(p) for p in params]:
                wrong_kind.append(f"{method} {path}: probed as {probed[key]}")

    assert not missing, "routes taking an id the probes leave out: " + "; ".join(missing)
    assert not wrong_kind, wrong_kind
    stale = (set(probed) | set(ID_EXEMPT)) - served
    assert not stale, f"probed or exempted, but not served: {sorted(stale)}"


def known_id(ids: Handled, kind: str) -> str:
    return {
        "incident": ids.incident_id,
        "report": ids.report_id,
        "statement": ids.statement_id,
        "obligation": ids.obligation_id,
        "case": ids.case_id,
        "notification": ids.notification_id,
        "attachment": ids.attachment_id,
    }[kind]


async def stored_counts(system: System) -> dict[str, int]:
    return {name: len(await s.published()) for name, s in system.services.items()}


async def test_unit_a_probing_unit_b_ids_gets_what_a_random_id_gets_on_every_route(
    system: System,
) -> None:
    await handled(system, "school-a", "实验小学食堂问题")
    b = await handled(system, "school-b", "第二中学食堂问题")
    before = await stored_counts(system)
    unit_a = system.token("probe-a", "school-a", *UNIT_A_ROLES)

    for service, method, path, kind, request in ID_ROUTES:
        known = known_id(b, kind)
        unknown = f"{kind}-random-9f3"
        client = system.http(service)
        probed = await client.request(method, path.format(known), headers=unit_a, **request)
        random = await client.request(method, path.format(unknown), headers=unit_a, **request)
        where = (method, path, request, probed.text, random.text)
        assert probed.status_code == random.status_code == 404, where
        assert probed.json() == json.loads(random.text.replace(unknown, known)), where
    # Nothing any refused write asked for was stored.
    assert await stored_counts(system) == before

    # Each probe asked a route that exists, about ids that exist: the route is served, and
    # unit B itself reads what A was refused.
    unit_b = system.token("probe-b", "school-b", *UNIT_A_ROLES)
    for service, method, path, kind, request in ID_ROUTES:
        paths = system.services[service].runner.app.openapi()["paths"]
        served = {
            (m.upper(), re.sub(r"\{[^}]+\}", "{}", template))
            for template, operations in paths.items()
            for m in operations
        }
        assert (method, path) in served, (method, path)
        if method == "GET":
            client = system.http(service)
            own = await client.get(path.format(known_id(b, kind)), headers=unit_b, **request)
            assert own.status_code == 200, (path, request, own.text)


async def test_every_list_count_search_and_figure_leaves_unit_b_out(system: System) -> None:
    a = await handled(system, "school-a", "实验小学食堂问题")
    b = await handled(system, "school-b", "第二中学食堂问题")
    unit_a = system.token("probe-a", "school-a", *UNIT_A_ROLES)
    archive, notification = system.http("archive"), system.http("notification")

    async def ids(client: httpx.AsyncClient, path: str, key: str, **params: Any) -> list[str]:
        answer = await client.get(path, params=params, headers=unit_a)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        rows: Sequence[dict[str, Any]] = body["items"] if "items" in body else body[key]
        return sorted({str(row["incident_id"]) for row in rows})

    incidents, cases = "/archive/v1/incidents", "/archive/v1/cases"
    assert await ids(archive, incidents, "items") == [a.incident_id]
    for query in ({"unit": "school-b"}, {"q": "第二中学"}, {"status": "archived"}):
        found = await ids(archive, incidents, "items", **query)
        assert b.incident_id not in found, query
    assert await ids(archive, cases, "items") == [a.incident_id]
    assert await ids(archive, cases, "items", q="第二中学") == []
    duties = "/notifications/v1/obligations"
    assert await ids(notification, duties, "obligations") == [a.incident_id]
    assert await ids(notification, duties, "obligations", incident_id=b.incident_id) == []
    assert await ids(notification, duties, "obligations", unit="school-b") == []
    counted = await notification.get(duties, params={"incident_id": b.incident_id}, headers=unit_a)
    assert counted.json()["count"] == 0

    inbox = await system.http("statement").get("/statements/v1/inbox", headers=unit_a)
    assert inbox.status_code == 200, inbox.text
    listed = [v["incident_id"] for part in ("waiting", "mine") for v in inbox.json()[part]]
    assert b.incident_id not in listed

    # The assessment (考评): unit B's figures appear nowhere, and asking for them answers
    # what asking for any unit outside A's sight answers.
    period = {
        "from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "to": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    }
    figures = await archive.get("/archive/v1/accountability", params=period, headers=unit_a)
    assert figures.status_code == 200, figures.text
    assert [u["unit_id"] for u in figures.json()["units"]] == ["school-a"]
    asked_b = await archive.get(
        "/archive/v1/accountability", params={**period, "unit": "school-b"}, headers=unit_a
    )
    asked_other = await archive.get(
        "/archive/v1/accountability", params={**period, "unit": "road-1"}, headers=unit_a
    )
    assert asked_b.status_code == asked_other.status_code == 403
    assert asked_b.json() == json.loads(asked_other.text.replace("road-1", "school-b"))

    # The assessment (考评) and its document: the same.
    assessed = await archive.get("/archive/v1/assessment", params=period, headers=unit_a)
    assert assessed.status_code == 200, assessed.text
    assert {u["unit_id"] for u in assessed.json()["units"]} == {"school-a"}
    assert "school-b" not in assessed.text
    assert b.incident_id not in assessed.text
    for fmt in ("markdown", "html"):
        document = await archive.get(
            "/archive/v1/assessment/report", params={**period, "format": fmt}, headers=unit_a
        )
        assert document.status_code == 200, document.text
        assert "实验小学" in document.text
        for secret in ("第二中学", "school-b", b.incident_id):
            assert secret not in document.text, (fmt, secret)
    for path in ("/archive/v1/assessment", "/archive/v1/assessment/report"):
        asked_b = await archive.get(path, params={**period, "unit": "school-b"}, headers=unit_a)
        asked_other = await archive.get(path, params={**period, "unit": "road-1"}, headers=unit_a)
        assert asked_b.status_code == asked_other.status_code == 403, path
        assert asked_b.json() == json.loads(asked_other.text.replace("road-1", "school-b"))

    # The case library as a table and as counts for the charts.
    for query in ({}, {"unit": "school-b"}, {"q": "第二中学"}):
        table = await archive.get("/archive/v1/cases/export", params=query, headers=unit_a)
        assert table.status_code == 200, table.text
        rows = list(csv.DictReader(io.StringIO(table.content.decode("utf-8-sig"))))
        assert [r["事件编号"] for r in rows] == ([a.incident_id] if not query else []), query
        for secret in ("第二中学", b.incident_id, b.case_id):
            assert secret not in table.text, (query, secret)
    workbook = await archive.get(
        "/archive/v1/cases/export", params={"format": "xlsx"}, headers=unit_a
    )
    assert workbook.status_code == 200, workbook.text
    counts = await archive.get("/archive/v1/cases/counts", headers=unit_a)
    assert counts.status_code == 200, counts.text
    assert counts.json()["total"] == 1
    assert [u["unit_id"] for u in counts.json()["by_unit"]] == ["school-a"]
    assert sum(c["count"] for c in counts.json()["by_level"]) == 1
    for query in ({"unit": "school-b"}, {"q": "第二中学"}):
        counted_b = await archive.get("/archive/v1/cases/counts", params=query, headers=unit_a)
        assert counted_b.status_code == 200, counted_b.text
        assert counted_b.json()["total"] == 0, query
        assert "school-b" not in [u["unit_id"] for u in counted_b.json()["by_unit"]], query

    # The event export is an analyst's (who sees every unit by design): unit A's people are
    # refused it, alike whichever incident or unit they name.
    export = "/archive/v1/events"
    for known, unknown, name in (
        (b.incident_id, "incident-random-9f3", "incident_id"),
        ("school-b", "road-1", "unit"),
    ):
        asked_b = await archive.get(export, params={name: known}, headers=unit_a)
        asked_other = await archive.get(export, params={name: unknown}, headers=unit_a)
        assert asked_b.status_code == asked_other.status_code == 403, asked_b.text
        assert asked_b.json() == json.loads(asked_other.text.replace(unknown, known))
    refused = await archive.get(export, headers=unit_a)
    assert refused.status_code == 403, refused.text

    # The dashboard's alerts: the leading group raises both grades by hand (an escalation
    # each), and A's list holds A's alone, whatever it asks.
    leader = system.token("leader-zhang", "county", "leader")
    for incident in (a, b):
        raised = await system.http("grading").post(
            f"/grading/v1/incidents/{incident.incident_id}/override",
            json={"level": 1, "reason": "舆情升温"},
            headers=leader,
        )
        assert raised.status_code == 200, raised.text
    await system.pump()
    everyone = await archive.get("/archive/v1/alerts", headers=leader)
    assert sorted({row["incident_id"] for row in everyone.json()["items"]}) == sorted(
        [a.incident_id, b.incident_id]
    ), everyone.text
    assert await ids(archive, "/archive/v1/alerts", "items") == [a.incident_id]
    assert await ids(archive, "/archive/v1/alerts", "items", limit=1) == [a.incident_id]


# --------------------------------------------------------------------------- a partner

PARTNER = "partner-wxb"
# Whatever else its token carries, a partner sees as a partner.
PARTNER_ROLES = ("partner", "leader", "office", "analyst")
REFERRED_FIELDS = {
    "sight",
    "incident_id",
    "status",
    "level",
    "category",
    "resolved_at",
    "dismissed_at",
    "archived_at",
}


def referred_story(archive: FakeService) -> Story:
    """A school-b incident a monitor opened and the partner also reported on: graded, owed,
    a statement cleared and published, then revised into a new draft, resolved."""
    story = Story("inc-p", "school-b").opened()
    first = story.events[0]
    assert isinstance(first.payload, ReportReceived)
    partner = Actor(type="client", id=PARTNER, unit_id="county")
    story.add(
        first.payload.model_copy(
            update={"report_id": "inc-p-partner", "filed_by": PARTNER, "title": "网信办转办"}
        ),
        "report",
        T0 + timedelta(minutes=1),
        actor=partner,
    )
    office = ApprovalStep(role="office")
    statement = "statement"
    story.add(
        StatementSubmitted(
            statement_id="inc-p-s1", version=1, level=1, chain=(office,), missing=(office,)
        ),
        statement,
        T0 + timedelta(minutes=6),
    )
    story.add(
        StatementApproved(
            statement_id="inc-p-s1",
            version=1,
            step=office,
            approver="office-li",
            comment="措辞再斟酌",
            fully_approved=True,
            missing=(),
        ),
        statement,
        T0 + timedelta(minutes=7),
    )
    story.add(
        StatementPublished(
            statement_id="inc-p-s1",
            version=1,
            outlet="官方微博",
            url="https://weibo.example/p",
            published_by="spokesperson-sun",
        ),
        statement,
        T0 + timedelta(minutes=8),
    )
    story.add(
        StatementRevised(
            statement_id="inc-p-s1",
            version=2,
            title="内部草稿",
            body="未定稿",
            author="spokesperson-sun",
        ),
        statement,
        T0 + timedelta(minutes=9),
    )
    return story


# What the bureau keeps of the incident: none of it may reach the partner.
INTERNAL = ("monitor-chen", "office-li", "措辞再斟酌", "手机快报", "leader-zhang", "内部草稿")


async def test_a_partner_sees_only_its_part_of_an_incident_it_referred_in_the_archive(
    clock: Clock,
) -> None:
    settings = fake_settings(archive_embedded_reports=5)
    async with fake_service("archive", build_archive, settings=settings, clock=clock) as archive:
        story = referred_story(archive)
        await archive.consume(*story.events, story.resolved())
        async with archive.http() as api:
            case_id = await reviewed(archive, api, "inc-p")
            partner = archive.token(PARTNER, "county", *PARTNER_ROLES)
            office = archive.token("office-li", "county", "office")

            view = await api.get("/archive/v1/incidents/inc-p", headers=partner)
            past = await api.get(
                "/archive/v1/incidents/inc-p",
                params={"as_of": (T0 + timedelta(minutes=30)).isoformat()},
                headers=partner,
            )
            reports = await api.get("/archive/v1/incidents/inc-p/reports", headers=partner)
            listed = await api.get("/archive/v1/incidents", headers=partner)
            full = await api.get("/archive/v1/incidents/inc-p", headers=office)
            for answer in (view, past, reports, listed, full):
                assert answer.status_code == 200, answer.text

            body = view.json()
            assert set(body) == REFERRED_FIELDS | {"reports", "statements", "merged_into"}
            assert (body["sight"], body["status"], body["level"]) == ("referred", "archived", 1)
            assert body["archived_at"] is not None
            assert body["resolved_at"] is not None
            assert [r["report_id"] for r in body["reports"]] == ["inc-p-partner"]
            # The official line as it went out (version 1), not the draft written since.
            assert [(s["version"], s["title"], s["outlet"]) for s in body["statements"]] == [
                (1, "情况回复", "官方微博")
            ]
            assert (past.json()["sight"], past.json()["status"]) == ("referred", "open")
            assert [r["report_id"] for r in reports.json()["items"]] == ["inc-p-partner"]
            assert reports.json()["total"] == 1
            [row] = listed.json()["items"]
            assert set(row) == REFERRED_FIELDS
            assert row["incident_id"] == "inc-p"
            for answer in (view, past, reports, listed):
                for secret in (*INTERNAL, REVIEW["cause"]):
                    assert secret not in answer.text, (secret, answer.text)
            # The office reads the whole record, the draft and the filers included.
            assert full.json()["sight"] == "full"
            assert full.json()["filed_by"] == ["monitor-chen", PARTNER]
            assert full.json()["statements"][0]["title"] == "内部草稿"

            # Filters on what a partner does not see are refused, naming the parameter.
            for name, value in (("unit", "school-b"), ("q", "食堂"), ("overdue", "true")):
                refused = await api.get(
                    "/archive/v1/incidents", params={name: value}, headers=partner
                )
                assert refused.status_code == 422, refused.text
                assert refused.json()["error"]["details"][0]["field"] == name
            # The bureau's records: cases, the assessment and the export leave it out.
            cases = await api.get("/archive/v1/cases", headers=partner)
            assert (cases.status_code, cases.json()["items"]) == (200, [])
            period = {"from": (T0 - timedelta(days=1)).isoformat(), "to": NOW.isoformat()}
            figures = await api.get("/archive/v1/accountability", params=period, headers=partner)
            assert figures.status_code == 200, figures.text
            assert figures.json()["units"] == []
            exported = await api.get("/archive/v1/events", headers=partner)
            assert (exported.status_code, exported.text) == (200, "")
            for path in (
                "/archive/v1/incidents/inc-p/timeline",
                "/archive/v1/incidents/inc-p/verify",
                f"/archive/v1/cases/{case_id}",
                f"/archive/v1/cases/{case_id}/report",
            ):
                assert (await api.get(path, headers=partner)).status_code == 404, path


async def test_a_partner_reads_the_grade_and_the_official_line_of_what_it_referred(
    system: System,
) -> None:
    partner = system.token(PARTNER, "county", *PARTNER_ROLES)
    filed = await system.http("intake").post(
        "/intake/v1/reports",
        json={
            **report_body("school-b", "https://news.example/p", "网信办转办：食堂"),
            "source_type": "referral",
        },
        headers=partner,
    )
    assert filed.status_code == 201, filed.text
    incident_id = filed.json()["incident_id"]
    await system.pump()
    office = system.token("office-li", "county", "office")
    statements = system.http("statement")
    drafted = await statements.post(
        f"/statements/v1/incidents/{incident_id}/statements", json=RELEASE, headers=office
    )
    assert drafted.status_code == 201, drafted.text
    statement_id = drafted.json()["statement_id"]
    approver = system.token("approver", "county", "office", "dept_head", "propaganda")
    for path, body, who in (
        ("submit", None, office),
        ("approve", {"comment": "措辞再斟酌"}, approver),
        ("approve", {"comment": "措辞再斟酌"}, system.token("p2", "county", "propaganda")),
        ("publish", {"outlet": "官方微博", "url": "https://weibo.example/p"}, office),
    ):
        answer = await statements.post(
            f"/statements/v1/statements/{statement_id}/{path}", json=body, headers=who
        )
        if answer.status_code == 409 and path == "approve":
            continue  # the chain was complete already
        assert answer.status_code == 200, (path, answer.text)
    await system.pump()

    grade = await system.http("grading").get(
        f"/grading/v1/incidents/{incident_id}/grade", headers=partner
    )
    line = await statements.get(
        f"/statements/v1/incidents/{incident_id}/official-line", headers=partner
    )
    drafts = await statements.get(f"/statements/v1/statements/{statement_id}", headers=partner)
    listed = await statements.get(
        f"/statements/v1/incidents/{incident_id}/statements", headers=partner
    )
    office_line = await statements.get(
        f"/statements/v1/incidents/{incident_id}/official-line", headers=office
    )

    assert grade.status_code == 200, grade.text
    assert set(grade.json()) == REFERRED_FIELDS
    assert grade.json()["level"] is not None
    assert line.status_code == 200, line.text
    assert "published_by" in office_line.json()
    assert "cleared_by" in office_line.json()
    assert set(line.json()) == {
        "incident_id",
        "statement_id",
        "kind",
        "version",
        "title",
        "body",
        "facts",
        "outlet",
        "url",
        "published_at",
    }
    assert (line.json()["title"], line.json()["outlet"]) == (RELEASE["title"], "官方微博")
    # Drafts, chains and the statement list are the bureau's records.
    assert (drafts.status_code, listed.status_code) == (404, 404)
    for answer in (grade, line):
        assert "措辞再斟酌" not in answer.text
        assert "office-li" not in answer.text


# --------------------------------------------------------------------------- limits


async def test_reports_beyond_the_embedded_ones_are_counted_and_listed_by_page(
    clock: Clock,
) -> None:
    settings = fake_settings(archive_embedded_reports=2)
    async with fake_service("archive", build_archive, settings=settings, clock=clock) as archive:
        story = Story("inc-m", "school-a").opened()
        first = story.events[0]
        assert isinstance(first.payload, ReportReceived)
        for n in range(2, 8):
            story.add(
                first.payload.model_copy(update={"report_id": f"inc-m-r{n}"}),
                "report",
                T0 + timedelta(minutes=n),
            )
        await archive.consume(*story.events)
        admin = archive.token("admin", "county", "admin")
        async with archive.http() as api:
            view = (await api.get("/archive/v1/incidents/inc-m", headers=admin)).json()
            [row] = (await api.get("/archive/v1/incidents", headers=admin)).json()["items"]
            seen: list[str] = []
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
                page = await api.get(
                    "/archive/v1/incidents/inc-m/reports", params=params, headers=admin
                )
                assert page.status_code == 200, page.text
                assert page.json()["total"] == 7
                seen += [r["report_id"] for r in page.json()["items"]]
                cursor = page.json()["next_cursor"]
                if cursor is None:
                    break
            too_many = await api.get(
                "/archive/v1/incidents/inc-m/reports", params={"limit": 101}, headers=admin
            )
            list_too_many = await api.get(
                "/archive/v1/incidents", params={"limit": 101}, headers=admin
            )

    assert [r["report_id"] for r in view["reports"]] == ["inc-m-r1", "inc-m-r2"]
    assert (view["report_count"], row["report_count"]) == (7, 7)
    assert seen == ["inc-m-r1", *[f"inc-m-r{n}" for n in range(2, 8)]]
    for refused in (too_many, list_too_many):
        assert refused.status_code == 422, refused.text
        [detail] = refused.json()["error"]["details"]
        assert detail["field"] == "limit"
        assert "100" in detail["reason"]


async def test_an_export_asks_for_a_window_no_longer_than_the_maximum(clock: Clock) -> None:
    settings = fake_settings(export_max_window_days=7)
    async with fake_service("archive", build_archive, settings=settings, clock=clock) as archive:
        await archive.consume(*Story("inc-a", "school-a").opened().events)
        analyst = archive.token("analyst-zhao", "county", "analyst")
        async with archive.http() as api:

            async def export(**params: str) -> httpx.Response:
                return await api.get("/archive/v1/events", params=params, headers=analyst)

            week = await export(since=(NOW - timedelta(days=7)).isoformat())
            recent = await export()  # the last window: it holds the story
            longer = await export(since=(T0 - timedelta(days=8)).isoformat(), until=T0.isoformat())
            open_ended = await export(since=(NOW - timedelta(days=8)).isoformat())
            backwards = await export(since=NOW.isoformat(), until=T0.isoformat())
            old = await export(until=(T0 - timedelta(days=1)).isoformat())
            one_incident = await export(incident_id="inc-a")

    assert week.status_code == recent.status_code == 200
    assert len(week.text.splitlines()) == len(recent.text.splitlines()) == 6
    assert len(one_incident.text.splitlines()) == 6
    assert (old.status_code, old.text) == (200, "")
    for refused, name in ((longer, "since"), (open_ended, "since"), (backwards, "until")):
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"][0]["field"] == name
    assert "7 days" in longer.json()["error"]["details"][0]["reason"]


async def test_an_admin_role_beside_partner_neither_replays_nor_reads_a_replay(
    clock: Clock,
) -> None:
    async with (
        fake_service("archive", build_archive, clock=clock) as archive,
        archive.http() as api,
    ):
        admin = archive.token("admin", "county", "admin")
        partner = archive.token(PARTNER, "county", "partner", "admin")
        refused = await api.post("/archive/v1/replay", headers=partner)
        started = await api.post("/archive/v1/replay", headers=admin)
        assert started.status_code == 202, started.text
        job = started.json()["job_id"]
        hidden = await api.get(f"/archive/v1/replay/{job}", headers=partner)
        unknown = await api.get("/archive/v1/replay/job-random-9f3", headers=partner)

    assert refused.status_code == 403
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == json.loads(unknown.text.replace("job-random-9f3", job))
