"""Every route of every service, built through its composition root on the fakes, refuses
a request without a valid token: none, an expired one, a revoked one, one for another
audience, one signed with another key, one without an id. A valid token gets past (to
whatever the route answers then), so the matrix would see a route that let them in."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from services.cli import composition_root
from shared.auth import TokenService
from shared.identity import Role
from shared.settings import SERVICE_NAMES
from tests.fakes.harness import SECRET, fake_service, fake_settings
from tests.unit.test_auth import _claims_token

pytestmark = pytest.mark.asyncio

OTHER_KEY = "another-deployments-key-long-enough-for-hs256"
BAD = ("none", "expired", "revoked", "wrong_audience", "wrongly_signed", "no_jti")


def _bad_tokens(tokens: TokenService) -> dict[str, str | None]:
    hour = timedelta(hours=1)
    revoked = tokens.issue("admin", "county", [Role.ADMIN])
    tokens.revoked.revoke(tokens.claims(revoked)["jti"], "matrix test")
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
