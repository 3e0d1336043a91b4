"""Every route of every service, built through its composition root on the fakes, refuses
a request without a valid token: none, an expired one, a revoked one, one for another
audience, one signed with another key, one without an id, a revoked partner API key and
a wrong one. A valid token gets past (to whatever the route answers then), so the matrix
would see a route that let them in. Then every role against the table of who may do what."""

from __future__ import annotations

import re
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from services.cli import composition_root
from shared.auth import TokenService
from shared.events import ObligationOpened
from shared.identity import Role
from shared.settings import SERVICE_NAMES
from tests.fakes.harness import SECRET, FakeService, fake_service, fake_settings
from tests.unit.test_auth import _claims_token

pytestmark = pytest.mark.asyncio

OTHER_KEY = "another-deployments-key-long-enough-for-hs256"
REPORT: dict[str, Any] = {
    "source_type": "forum",
    "source_name": "本地论坛",
    "media_tier": "county",
    "url": "https://bbs.example/thread/matrix",
    "title": "网传某校食堂问题",
    "excerpt": "有网友发帖称……",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "unit_ids": ["school-a"],
}
DRAFT: dict[str, Any] = {"kind": "press_release", "title": "情况通报", "body": "经核实……"}
BAD = (
    "none",
    "expired",
    "revoked",
    "wrong_audience",
    "wrongly_signed",
    "no_jti",
    "revoked_api_key",
    "wrong_api_key",
)
KEY_KINDS = ("revoked_api_key", "wrong_api_key")  # sent as X-API-Key, not as a bearer


def _bad_tokens(tokens: TokenService) -> dict[str, str | None]:
    hour = timedelta(hours=1)
    revoked = tokens.issue("admin", "county", [Role.ADMIN])
    tokens.revoked.revoke(tokens.claims(revoked)["jti"], "matrix test")
    key_id, revoked_key = tokens.api_keys.create("partner-wxb", "county")
    tokens.api_keys.revoke(key_id)
    _, key = tokens.api_keys.create("partner-wxb", "county")
    return {
        "none": None,
        "expired": TokenService(SECRET, "yuqing", timedelta(seconds=-5)).issue(
            "admin", "county", [Role.ADMIN]
        ),
        "revoked": revoked,
        "wrong_audience": TokenService(SECRET, "yuqing", hour, audience="elsewhere").issue(
            "admin", "county", [Role.ADMIN]
        ),
        "wrongly_signed": TokenService(OTHER_KEY, "yuqing", hour).issue(
            "admin", "county", [Role.ADMIN]
        ),
        "no_jti": _claims_token(drop="jti", key=SECRET),
        "revoked_api_key": revoked_key,
        "wrong_api_key": key[:-6] + "000000",
    }


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_every_route_refuses_a_missing_or_bad_token_with_401(
    name: str, tmp_path: Path
) -> None:
    settings = fake_settings(tmp_path, rate_limit="100000/minute")
    async with fake_service(name, composition_root(name), settings=settings) as service:
        routes = [
            (method, service.parts.prefix + re.sub(r"\{[^}]+\}", uuid.uuid4().hex, r.path))
            for r in service.parts.router.routes
            if isinstance(r, APIRoute)
            for method in sorted(r.methods)
        ]
        assert routes, f"{name} serves routes"
        tokens = _bad_tokens(service.ctx.tokens)
        valid = service.ctx.tokens.issue("admin", "county", [Role.ADMIN])
        answers: dict[tuple[str, str, str], int] = {}
        async with service.http() as api:
            for method, path in routes:
                for kind, token in [*tokens.items(), ("valid", valid)]:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    if kind in KEY_KINDS:
                        headers = {"X-API-Key": str(token)}
                    r = await api.request(method, path, headers=headers)
                    answers[(method, path, kind)] = r.status_code
                    if r.status_code == 401:
                        assert r.json()["error"]["code"] == "unauthorized"
                        assert r.headers["www-authenticate"] == "Bearer"

    refused = {k: s for k, s in answers.items() if k[2] in BAD}
    assert refused == dict.fromkeys(refused, 401)
    assert len(refused) == len(routes) * len(BAD)
    let_in = {k: s for k, s in answers.items() if k[2] == "valid"}
    assert 401 not in let_in.values(), let_in


# --------------------------------------------------------------------------- who may do what
#
# Every route of every service, for a token of each role (one role each, unit `county`,
# above the school whose incident is seeded), against that incident's real ids: the
# declared table below says who may pass each route's door (DESIGN.md "Who may do what";
# the role checks in services/*/api.py and the domains), and the test holds the code to
# it. A partner sees only what it referred (it referred nothing here): every id route is
# 404 to it, as to anyone out of sight; its lists are empty.

ROLES = tuple(Role)
ALL = frozenset(ROLES) - {Role.PARTNER}
OWNER = "owner"  # the seeded obligation's owner role (a level-3 incident's: from the policy)


class Door:
    """Who passes a route: `roles` (admin always does; None: whoever sees the incident),
    what it answers them (`ok`), and `sight`: "full" (the bureau's records: a partner's
    404), "referred" (a partner sees what it referred) or "none" (no incident in the path).
    `domain`: the route lets every seeing role in and the domain decides (2xx, 403 or 409).
    `gate_first`: the role is checked before the id is looked up (`roles` and admin only)."""

    def __init__(
        self,
        roles: frozenset[Role | str] | None,
        ok: frozenset[int] = frozenset({200}),
        *,
        sight: str = "full",
        domain: bool = False,
        gate_first: bool = False,
    ) -> None:
        self.roles, self.ok, self.sight = roles, ok, sight
        self.domain, self.gate_first = domain, gate_first


def _r(*roles: Role | str) -> frozenset[Role | str]:
    return frozenset(roles)


WRITE = frozenset({200, 201, 202, 409})  # done, or refused by the record's state
FILERS = _r(Role.MONITOR, Role.OFFICE, Role.LEADER, Role.DEPT_HEAD, Role.SPOKESPERSON, Role.PARTNER)
LIFECYCLE = _r(Role.LEADER, Role.OFFICE)
DESK = _r(Role.OFFICE)
WRITERS = _r(Role.SPOKESPERSON, Role.OFFICE, Role.PROPAGANDA, Role.DEPT_HEAD, Role.LEADER)
PUBLISHERS = _r(Role.SPOKESPERSON, Role.OFFICE, Role.PROPAGANDA, Role.LEADER)
UNSEEDED = frozenset({404})  # ids this seed cannot make (a case, a page sent): 404 to all

TABLE: dict[tuple[str, str], Door] = {
    # intake
    ("POST", "/intake/v1/reports"): Door(FILERS, frozenset({200, 201}), sight="none"),
    ("GET", "/intake/v1/reports/{report_id}"): Door(None, sight="referred"),
    ("GET", "/intake/v1/incidents/{incident_id}"): Door(None, sight="referred"),
    ("GET", "/intake/v1/incidents/{incident_id}/reports"): Door(None, sight="referred"),
    ("POST", "/intake/v1/incidents/{incident_id}/resolve"): Door(
        LIFECYCLE, WRITE, sight="referred"
    ),
    ("POST", "/intake/v1/incidents/{incident_id}/dismiss"): Door(
        LIFECYCLE, WRITE, sight="referred"
    ),
    ("POST", "/intake/v1/incidents/{incident_id}/reopen"): Door(LIFECYCLE, WRITE, sight="referred"),
    # the referral desk: merging a partner's referral, confirming a partner's claims
    ("POST", "/intake/v1/incidents/{incident_id}/merge"): Door(DESK, WRITE, sight="referred"),
    ("POST", "/intake/v1/reports/{report_id}/confirm-claims"): Door(DESK, WRITE, sight="referred"),
    # sent without a file: whoever passes the door is told the file is missing (422)
    ("POST", "/intake/v1/reports/{report_id}/attachments"): Door(
        FILERS, frozenset({422}), sight="referred"
    ),
    ("GET", "/intake/v1/reports/{report_id}/attachments"): Door(None, sight="referred"),
    ("GET", "/intake/v1/attachments/{attachment_id}"): Door(None, UNSEEDED, sight="referred"),
    # grading
    ("GET", "/grading/v1/incidents/{incident_id}/grade"): Door(None, sight="referred"),
    ("POST", "/grading/v1/incidents/{incident_id}/override"): Door(_r(Role.LEADER), WRITE),
    # grading by a body: the role the plan names (the shipped plan names none: the leader);
    # nothing is proposed under the shipped plan, so whoever passes is told 409
    ("POST", "/grading/v1/incidents/{incident_id}/confirm"): Door(_r(Role.LEADER), WRITE),
    ("POST", "/grading/v1/incidents/{incident_id}/instructions"): Door(_r(Role.LEADER), WRITE),
    ("GET", "/grading/v1/rulebook"): Door(ALL, sight="none"),
    # the plan in force: the bureau's staff; a what-if: analysts
    ("GET", "/grading/v1/plan"): Door(ALL, sight="none"),
    ("POST", "/grading/v1/plan/try"): Door(_r(Role.ANALYST), sight="none"),
    # notification
    ("GET", "/notifications/v1/obligations"): Door(None, sight="none"),
    ("POST", "/notifications/v1/obligations/{obligation_id}/fulfil"): Door(
        _r(OWNER, Role.LEADER), WRITE
    ),
    ("GET", "/notifications/v1/notifications/{notification_id}"): Door(None, UNSEEDED),
    ("POST", "/notifications/v1/notifications/{notification_id}/ack"): Door(None, UNSEEDED),
    # a duty that opens as a body decides: the shipped plan has none, so whoever sees the
    # incident is told the kind is not such a duty (422); the plan's `decided_by` decides
    ("POST", "/notifications/v1/incidents/{incident_id}/decisions"): Door(None, frozenset({422})),
    # statement
    ("POST", "/statements/v1/incidents/{incident_id}/statements"): Door(WRITERS, WRITE),
    ("GET", "/statements/v1/incidents/{incident_id}/statements"): Door(None),
    # nothing is published yet: the official line is 404 to everyone who sees the incident
    ("GET", "/statements/v1/incidents/{incident_id}/official-line"): Door(None, UNSEEDED),
    ("PUT", "/statements/v1/statements/{statement_id}"): Door(WRITERS, WRITE),
    ("POST", "/statements/v1/statements/{statement_id}/submit"): Door(WRITERS, WRITE),
    ("POST", "/statements/v1/statements/{statement_id}/approve"): Door(None, WRITE, domain=True),
    ("POST", "/statements/v1/statements/{statement_id}/reject"): Door(None, WRITE, domain=True),
    ("POST", "/statements/v1/statements/{statement_id}/withdraw"): Door(None, WRITE, domain=True),
    ("POST", "/statements/v1/statements/{statement_id}/publish"): Door(PUBLISHERS, WRITE),
    ("GET", "/statements/v1/statements/{statement_id}"): Door(None),
    ("GET", "/statements/v1/statements/{statement_id}/diff"): Door(None),
    # the console's approval inbox: anyone's own (a partner's is empty)
    ("GET", "/statements/v1/inbox"): Door(None, sight="none"),
    # archive
    ("GET", "/archive/v1/incidents"): Door(None, sight="none"),
    ("GET", "/archive/v1/incidents/{incident_id}"): Door(None, sight="referred"),
    ("GET", "/archive/v1/incidents/{incident_id}/reports"): Door(None, sight="referred"),
    ("GET", "/archive/v1/incidents/{incident_id}/timeline"): Door(None),
    ("GET", "/archive/v1/incidents/{incident_id}/verify"): Door(None),
    ("GET", "/archive/v1/events"): Door(_r(Role.ANALYST), sight="none"),
    ("POST", "/archive/v1/incidents/{incident_id}/review"): Door(LIFECYCLE, WRITE),
    ("GET", "/archive/v1/cases"): Door(None, sight="none"),
    # the case library as a table and its counts (the console's charts): the bureau's staff
    ("GET", "/archive/v1/cases/export"): Door(ALL, sight="none"),
    ("GET", "/archive/v1/cases/counts"): Door(ALL, sight="none"),
    # the dashboard's recent escalations and misses: anyone's own sight (a partner's: none)
    ("GET", "/archive/v1/alerts"): Door(None, sight="none"),
    ("GET", "/archive/v1/cases/{case_id}"): Door(None, UNSEEDED),
    ("GET", "/archive/v1/cases/{case_id}/report"): Door(None, UNSEEDED),
    ("GET", "/archive/v1/accountability"): Door(
        _r(Role.LEADER, Role.OFFICE, Role.ANALYST), sight="none"
    ),
    # 考评: the period's assessment and its document; the office's findings that feed it
    # (the seeded duty is not fulfilled: whoever may find it untrue is told 409)
    ("GET", "/archive/v1/assessment"): Door(
        _r(Role.LEADER, Role.OFFICE, Role.ANALYST), sight="none"
    ),
    ("GET", "/archive/v1/assessment/report"): Door(
        _r(Role.LEADER, Role.OFFICE, Role.ANALYST), sight="none"
    ),
    ("POST", "/archive/v1/obligations/{obligation_id}/untrue"): Door(LIFECYCLE, WRITE),
    ("POST", "/archive/v1/incidents/{incident_id}/uncleared-releases"): Door(LIFECYCLE, WRITE),
    ("POST", "/archive/v1/incidents/{incident_id}/commendations"): Door(LIFECYCLE, WRITE),
    ("POST", "/archive/v1/replay"): Door(_r(Role.ANALYST), frozenset({202, 409}), sight="none"),
    ("GET", "/archive/v1/replay/{job_id}"): Door(_r(Role.ANALYST), UNSEEDED, gate_first=True),
    # what the archive's audit checked and recorded: administration, never a partner
    ("GET", "/archive/v1/audit"): Door(_r(Role.ANALYST), sight="none"),
}

# A valid body and query for each route that takes one, so that the door is what answers.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/intake/v1/reports"): REPORT,
    ("POST", "/intake/v1/incidents/{incident_id}/resolve"): {"reason": "已平息"},
    ("POST", "/intake/v1/incidents/{incident_id}/dismiss"): {"reason": "网络伪舆情"},
    ("POST", "/intake/v1/incidents/{incident_id}/reopen"): {"reason": "再次发酵"},
    # not a referral (the seeded incident is the bureau's own): 409 for whoever may merge
    ("POST", "/intake/v1/incidents/{incident_id}/merge"): {
        "into": "{incident_id}",
        "reason": "同一事件",
    },
    ("POST", "/intake/v1/reports/{report_id}/confirm-claims"): {"reason": "已核实"},
    ("POST", "/grading/v1/incidents/{incident_id}/override"): {"level": 2, "reason": "研判"},
    ("POST", "/grading/v1/incidents/{incident_id}/confirm"): {},
    ("POST", "/grading/v1/incidents/{incident_id}/instructions"): {
        "text": "请涉事部门核实处置",
        "signed": True,
    },
    ("POST", "/grading/v1/plan/try"): {"plan": "school", "since": "2026-01-01T00:00:00+08:00"},
    ("POST", "/notifications/v1/obligations/{obligation_id}/fulfil"): {"reference": "县政发1号"},
    ("POST", "/notifications/v1/incidents/{incident_id}/decisions"): {
        "kind": "county_report",
        "decision": "yes",
        "reason": "领导小组研判决定上报",
    },
    ("POST", "/statements/v1/incidents/{incident_id}/statements"): DRAFT,
    ("PUT", "/statements/v1/statements/{statement_id}"): {"title": "修订", "body": "修订正文"},
    ("POST", "/statements/v1/statements/{statement_id}/approve"): {"comment": "同意"},
    ("POST", "/statements/v1/statements/{statement_id}/reject"): {"comment": "退回"},
    ("POST", "/statements/v1/statements/{statement_id}/withdraw"): {"reason": "撤回"},
    ("POST", "/statements/v1/statements/{statement_id}/publish"): {
        "outlet": "官方微博",
        "url": "https://weibo.example/1",
    },
    ("POST", "/archive/v1/incidents/{incident_id}/review"): {
        "cause": "起因",
        "handling": "经过",
        "lessons": "教训",
    },
    ("POST", "/archive/v1/obligations/{obligation_id}/untrue"): {"reason": "报送内容与事实不符"},
    ("POST", "/archive/v1/incidents/{incident_id}/uncleared-releases"): {
        "released_by": "monitor-a",
        "unit_id": "school-a",
        "channel": "个人微博",
        "released_at": "2026-11-21T09:00:00+08:00",
        "content": "未经审核的情况说明",
    },
    ("POST", "/archive/v1/incidents/{incident_id}/commendations"): {
        "unit_id": "school-a",
        "reason": "处置及时",
    },
}
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/statements/v1/statements/{statement_id}/diff"): {"from": "1"},
    ("GET", "/archive/v1/accountability"): {
        "from": "2026-01-01T00:00:00+08:00",
        "to": "2027-01-01T00:00:00+08:00",
    },
    ("GET", "/archive/v1/assessment"): {
        "from": "2026-01-01T00:00:00+08:00",
        "to": "2027-01-01T00:00:00+08:00",
    },
    ("GET", "/archive/v1/assessment/report"): {
        "from": "2026-01-01T00:00:00+08:00",
        "to": "2027-01-01T00:00:00+08:00",
    },
}


def expected(role: Role, door: Door, owner: str) -> frozenset[int]:
    """What the table says `role` gets from the route."""
    if door.gate_first:
        gated = {Role.ADMIN} | (door.roles or set())
        return door.ok if role in gated else frozenset({403})
    if role is Role.PARTNER and door.sight != "none":
        return frozenset({404})  # it referred nothing: out of its sight, like an unknown id
    if door.ok == UNSEEDED:
        return UNSEEDED
    allowed = (
        ALL | {Role.PARTNER}
        if door.roles is None
        else {Role(owner) if r == OWNER else r for r in door.roles} | {Role.ADMIN}
    )
    if role not in allowed:
        return frozenset({403})
    if door.domain:
        return door.ok | {403}
    return door.ok


def _filled(body: dict[str, Any] | None, ids: dict[str, str]) -> dict[str, Any] | None:
    """A body with its "{incident_id}"-like values replaced by the seeded ids."""
    if body is None:
        return None
    return {
        k: ids.get(v[1:-1], v) if isinstance(v, str) and v[:1] == "{" else v
        for k, v in body.items()
    }


async def _seeded(name: str, services: dict[str, FakeService], ids: dict[str, str]) -> None:
    """Feed `services[name]` what the services before it published, and note the ids."""
    service = services[name]
    if name == "intake":
        async with service.http() as api:
            r = await api.post(
                "/intake/v1/reports",
                json=REPORT,
                headers=service.token("monitor-a", "school-a", "monitor"),
            )
            assert r.status_code == 201, r.text
            ids.update(incident_id=r.json()["incident_id"], report_id=r.json()["report_id"])
    upstream = [e for s in services.values() if s is not service for e in await s.published()]
    if service.runner.consumer is not None:
        await service.consume(*[e for e in upstream if e.topic in service.parts.consumes])
    if name == "statement":
        async with service.http() as api:
            r = await api.post(
                f"/statements/v1/incidents/{ids['incident_id']}/statements",
                json=DRAFT,
                headers=service.token("office-a", "school-a", "office"),
            )
            assert r.status_code == 201, r.text
            ids["statement_id"] = r.json()["statement_id"]
    for event in await service.published():
        if isinstance(event.payload, ObligationOpened) and "obligation_id" not in ids:
            ids.update(obligation_id=event.payload.obligation_id, owner=event.payload.owner_role)


async def test_every_role_gets_what_the_table_declares_on_every_route(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, rate_limit="100000/minute")
    ids: dict[str, str] = {}
    answers: dict[tuple[str, str, str], int] = {}
    wanted: dict[tuple[str, str, str], frozenset[int]] = {}
    services: dict[str, FakeService] = {}
    declared: set[tuple[str, str]] = set()
    async with AsyncExitStack() as stack:
        for name in SERVICE_NAMES:
            services[name] = await stack.enter_async_context(
                fake_service(name, composition_root(name), settings=settings)
            )
            await _seeded(name, services, ids)
        for service in services.values():
            async with service.http() as api:
                for route in service.parts.router.routes:
                    assert isinstance(route, APIRoute)
                    for method in sorted(route.methods):
                        key = (method, service.parts.prefix + route.path)
                        declared.add(key)
                        if key not in TABLE:
                            continue  # named below: every route must be in the table
                        path = re.sub(
                            r"\{([^}]+)\}",
                            lambda m: ids.get(m.group(1), uuid.uuid4().hex),
                            key[1],
                        )
                        for role in ROLES:
                            r = await api.request(
                                method,
                                path,
                                json=_filled(BODIES.get(key), ids),
                                params=QUERIES.get(key),
                                headers=service.token(f"matrix-{role.value}", "county", role),
                            )
                            answers[(*key, role.value)] = r.status_code
                            wanted[(*key, role.value)] = expected(role, TABLE[key], ids["owner"])
                            if r.status_code >= 400:
                                assert set(r.json()) == {"error"}, r.text
    assert declared == set(TABLE), (
        f"not in the table of who may do what: {sorted(declared - set(TABLE))}; "
        f"in it but not served: {sorted(set(TABLE) - declared)}"
    )
    wrong = {k: (answers[k], sorted(w)) for k, w in wanted.items() if answers[k] not in w}
    assert not wrong, "\n".join(f"{k}: got {got}, table says {w}" for k, (got, w) in wrong.items())
