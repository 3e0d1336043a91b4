"""Limits every service keeps, with clear errors: body size (413), requests per principal
(429 with Retry-After), unknown body fields (422 naming them), the docs behind a token when
configured so, and the security headers on every answer. Each service is built through its
own composition root on the fakes."""

from __future__ import annotations

import re
import typing
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from services.cli import composition_root
from shared.api import CONTENT_SECURITY_POLICY
from shared.auth import SESSION_COOKIE
from shared.gateway import Gateway
from shared.settings import SERVICE_NAMES
from tests.fakes.harness import FakeService, fake_service, fake_settings

pytestmark = pytest.mark.asyncio

API = "/statements/v1"
RELEASE: dict[str, Any] = {
    "kind": "press_release",
    "title": "关于网传某校食堂问题的情况通报",
    "body": "经核实，网传情况不属实……",
}


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation names, however nested (lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models(arg))
    return found


def _lax_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[str]:
    if model in seen:
        return []
    seen.add(model)
    lax = [] if model.model_config.get("extra") == "forbid" else [model.__qualname__]
    for field in model.model_fields.values():
        for nested in _models(field.annotation):
            lax.extend(_lax_models(nested, seen))
    return lax


WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _bodyless_writes(routes: list[Any]) -> list[tuple[str, str]]:
    """The writes that take no body: no body model, none documented and read by hand."""
    return [
        (method, route.path)
        for route in routes
        if isinstance(route, APIRoute)
        and route.body_field is None
        and "requestBody" not in (route.openapi_extra or {})
        for method in sorted((route.methods or set()) & WRITES)
    ]


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_every_request_body_of_every_service_refuses_unknown_fields(name: str) -> None:
    async with fake_service(name, composition_root(name)) as service:
        routes = list(service.parts.router.routes)
        bodies = [
            (route.path, route.body_field.field_info.annotation)
            for route in routes
            if isinstance(route, APIRoute) and route.body_field is not None
        ]
        # A write that takes no body refuses one with fields, naming them, as a body model
        # refuses a field it does not have.
        admin = service.token("admin", "county", "admin")
        bodyless: dict[tuple[str, str], tuple[int, Any]] = {}
        async with service.http() as api:
            for method, path in _bodyless_writes(routes):
                url = service.parts.prefix + re.sub(r"\{[^}]+\}", "x-1", path)
                r = await api.request(method, url, json={"zzz": 1}, headers=admin)
                bodyless[(method, path)] = (r.status_code, r.json()["error"]["details"])
    lax = {
        path: found
        for path, annotation in bodies
        for found in [[m for model in _models(annotation) for m in _lax_models(model, set())]]
        if found
    }
    assert bodies, f"{name} has writes with a body"
    assert lax == {}
    extra = [
        {"field": "zzz", "reason": "Extra inputs are not permitted", "type": "extra_forbidden"}
    ]
    assert bodyless == dict.fromkeys(bodyless, (422, extra))


async def test_a_write_without_a_body_takes_none_or_an_empty_object_and_refuses_the_rest() -> None:
    async with fake_service("archive", composition_root("archive")) as archive:
        admin = archive.token("admin", "county", "admin")
        async with archive.http() as api:
            replay = "/archive/v1/replay"
            none = await api.post(replay, headers=admin)
            empty = await api.post(replay, json={}, headers=admin)
            probed = await api.post(replay, json={"zzz": 1, "batch": 5}, headers=admin)
            listed = await api.post(replay, json=[1], headers=admin)
            garbage = await api.post(replay, content=b"zzz=1", headers=admin)
            anonymous = await api.post(replay, json={"zzz": 1})

    assert none.status_code == 202, none.text
    assert empty.status_code in (202, 409), empty.text  # 409: the first replay still runs
    assert probed.status_code == 422
    assert [d["field"] for d in probed.json()["error"]["details"]] == ["zzz", "batch"]
    assert "zzz (Extra inputs are not permitted)" in probed.json()["error"]["message"]
    for refused in (listed, garbage):
        assert refused.status_code == 422
        [detail] = refused.json()["error"]["details"]
        assert detail["field"] == "body"
        assert "takes no body" in detail["reason"]
    # No credentials: the same 401 as every route, before the body is judged.
    assert anonymous.status_code == 401


@pytest.fixture
async def statement() -> AsyncIterator[FakeService]:
    settings = fake_settings(max_body_bytes=4096, rate_limit="5/minute")
    async with fake_service("statement", composition_root("statement"), settings=settings) as s:
        yield s


async def test_a_draft_naming_its_author_or_unit_is_refused_naming_the_field(
    statement: FakeService,
) -> None:
    office = statement.token("office-li", "county", "office")
    async with statement.http() as api:
        for field in ("author", "unit_id"):
            r = await api.post(
                f"{API}/incidents/inc-1/statements",
                json={**RELEASE, field: "someone-else"},
                headers=office,
            )
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "validation_error"
            assert error["details"] == [
                {
                    "field": field,
                    "reason": "Extra inputs are not permitted",
                    "type": "extra_forbidden",
                }
            ]
            assert f"{field} (Extra inputs are not permitted)" in error["message"]


async def test_a_body_over_the_limit_is_413_and_not_read_past_it(statement: FakeService) -> None:
    office = statement.token("office-li", "county", "office")
    pulled: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(1000):  # 1 MB in all, sent without a Content-Length
            pulled.append(i)
            yield b"x" * 1000

    async with statement.http() as api:
        chunked = await api.post(
            f"{API}/incidents/inc-1/statements", content=chunks(), headers=office
        )
        declared = await api.post(
            f"{API}/incidents/inc-1/statements",
            content=b"{" + b" " * 10_000 + b"}",
            headers={**office, "content-type": "application/json"},
        )

    for r in (chunked, declared):
        assert r.status_code == 413, r.text
        assert r.json()["error"] == {
            "code": "payload_too_large",
            "message": "the request body is larger than 4096 bytes (YUQING_MAX_BODY_BYTES)",
            "details": {"max_body_bytes": 4096},
        }
    assert len(pulled) <= 6  # 4 KB read, then the answer: not the whole megabyte


async def test_too_many_requests_from_one_principal_are_429_with_retry_after(
    statement: FakeService,
) -> None:
    office = statement.token("office-li", "county", "office")
    other = statement.token("office-zhao", "county", "office")
    async with statement.http() as api:
        answers = [await api.get(f"{API}/statements/s-1", headers=office) for _ in range(6)]
        # The same person with a second token counts in the same window.
        again = await api.get(
            f"{API}/statements/s-1", headers=statement.token("office-li", "county", "office")
        )
        colleague = await api.get(f"{API}/statements/s-1", headers=other)
        probes = [await api.get(f"{API}/healthz", headers=office) for _ in range(3)]
        anonymous = [await api.get(f"{API}/statements/s-1") for _ in range(6)]

    assert [r.status_code for r in answers] == [404] * 5 + [429]
    refused = answers[-1]
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= 60
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert "at most 5/minute (YUQING_RATE_LIMIT)" in refused.json()["error"]["message"]
    assert refused.json()["error"]["details"] == {"retry_after_seconds": wait}
    assert again.status_code == 429
    assert colleague.status_code == 404  # another principal has a window of its own
    assert {r.status_code for r in probes} == {200}
    # Without a token, the client address is the principal.
    assert [r.status_code for r in anonymous] == [401] * 5 + [429]


async def test_people_signed_in_to_the_console_are_limited_each_not_by_their_shared_address(
    statement: FakeService,
) -> None:
    """Behind one office's address, each signed-in person has a window of their own."""

    def session(sub: str) -> dict[str, str]:
        token = statement.token(sub, "county", "office")["Authorization"].split(" ", 1)[1]
        return {"cookie": f"{SESSION_COOKIE}={token}"}

    async with statement.http() as api:
        li = [
            await api.get(f"{API}/statements/s-1", headers=session("office-li")) for _ in range(6)
        ]
        zhao = await api.get(f"{API}/statements/s-1", headers=session("office-zhao"))

    assert [r.status_code for r in li] == [404] * 5 + [429]
    assert zhao.status_code == 404  # the same address, another person: not yet limited


async def test_every_answer_carries_the_security_headers(statement: FakeService) -> None:
    async with statement.http() as api:
        answers = [
            await api.get(f"{API}/statements/s-1"),
            await api.get(f"{API}/healthz"),
            await api.get(f"{API}/openapi.json"),
        ]
        docs = await api.get(f"{API}/docs")

    for r in answers:
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "http" not in CONTENT_SECURITY_POLICY  # no remote source
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert docs.headers["content-security-policy"].startswith("default-src 'self'")
    assert docs.headers["x-content-type-options"] == "nosniff"


async def _docs_answers(**overrides: Any) -> dict[str, int]:
    settings = fake_settings(**overrides)
    async with fake_service("statement", composition_root("statement"), settings=settings) as s:
        tokens = {
            "none": {},
            "monitor": s.token("monitor-chen", "school-a", "monitor"),
            "analyst": s.token("analyst-zhao", "county", "analyst"),
            "admin": s.token("admin", "county", "admin"),
            "forged": {"Authorization": "Bearer not-a-token"},
        }
        async with s.http() as api:
            return {
                f"{path} {who}": (await api.get(f"{API}/{path}", headers=headers)).status_code
                for path in ("openapi.json", "docs")
                for who, headers in tokens.items()
            }


async def test_the_docs_need_an_admin_or_analyst_token_when_not_public() -> None:
    private = await _docs_answers(public_docs=False)
    assert private == {
        f"{path} {who}": status
        for path in ("openapi.json", "docs")
        for who, status in {
            "none": 401,
            "monitor": 403,
            "analyst": 200,
            "admin": 200,
            "forged": 401,
        }.items()
    }
    # Production keeps them private by default; development shows them.
    assert (await _docs_answers(environment="production"))["openapi.json none"] == 401
    assert set((await _docs_answers()).values()) == {200}


async def test_metrics_and_asyncapi_need_a_token_when_the_docs_are_not_public() -> None:
    settings = fake_settings(public_docs=False)
    async with fake_service("statement", composition_root("statement"), settings=settings) as s:
        gateway = Gateway([s.runner], settings)
        analyst = s.token("analyst-zhao", "county", "analyst")
        transport = httpx.ASGITransport(app=gateway.root)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            for path in ("/metrics", "/asyncapi.json", "/asyncapi"):
                anonymous = await api.get(path)
                assert anonymous.status_code == 401, path
                assert anonymous.json()["error"]["code"] == "unauthorized"
                assert anonymous.headers["x-content-type-options"] == "nosniff"
                assert (await api.get(path, headers=analyst)).status_code == 200, path
            assert (await api.get("/healthz")).status_code == 200
            page = await api.get("/asyncapi", headers=analyst)
            assert page.headers["content-type"].startswith("text/html")
            assert 'id="StatementPublished"' in page.text
            assert "<script" not in page.text
