"""Sign-in through an OpenID Connect provider: a fake provider (discovery, keys, a token
endpoint that checks the PKCE verifier and the client's secret, RS256 ID tokens) and the
console's routes, driven as a browser is: sent to the provider, sent back with a code.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet, RSAKey

from shared.auth import SESSION_COOKIE
from shared.console import PasswordBook, auth_router
from shared.oidc import STATE_COOKIE, OidcClient, SignInFailed, oidc_router
from shared.service import Context
from shared.settings import Settings

pytestmark = pytest.mark.asyncio

ISSUER = "https://idp.example/realms/county"
CLIENT = "yuqing-console"
SECRET = "the-clients-secret"


@dataclass
class Grant:
    user: str
    nonce: str
    challenge: str
    redirect_uri: str


@dataclass
class Provider:
    """A provider as Keycloak or any OIDC server answers the relying party."""

    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, auto_kid=True))
    grants: dict[str, Grant] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)  # overrides, to make bad tokens
    issuer: str = ISSUER
    # Who the provider's own sign-in page authenticates, when a browser comes to it.
    user: str = "office-li"

    def app(self) -> FastAPI:
        app = FastAPI()
        issuer = self.issuer

        @app.get("/realms/county/.well-known/openid-configuration")
        async def discovery() -> dict[str, str]:
            return {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/protocol/openid-connect/auth",
                "token_endpoint": f"{issuer}/protocol/openid-connect/token",
                "jwks_uri": f"{issuer}/protocol/openid-connect/certs",
            }

        @app.get("/realms/county/protocol/openid-connect/auth")
        async def authorize(request: Request) -> RedirectResponse:
            # The person signs in at the provider (here at once) and is sent back.
            q = request.query_params
            code = f"code-{len(self.grants)}-{self.user}"
            self.grants[code] = Grant(self.user, q["nonce"], q["code_challenge"], q["redirect_uri"])
            back = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
            return RedirectResponse(back, status_code=302)

        @app.get("/realms/county/protocol/openid-connect/certs")
        async def certs() -> Any:
            return KeySet([self.key]).as_dict(private=False)

        @app.post("/realms/county/protocol/openid-connect/token")
        async def token(request: Request) -> dict[str, str]:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            grant_type, code = form.get("grant_type"), form.get("code", "")
            redirect_uri, code_verifier = form.get("redirect_uri"), form.get("code_verifier", "")
            expected = "Basic " + base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()
            if request.headers.get("authorization") != expected:
                raise HTTPException(401, "invalid_client")
            grant = self.grants.pop(code, None)
            digest = hashlib.sha256(code_verifier.encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if (
                grant is None
                or grant_type != "authorization_code"
                or grant.challenge != challenge
                or grant.redirect_uri != redirect_uri
            ):
                raise HTTPException(400, "invalid_grant")
            now = int(time.time())
            claims = {
                "iss": issuer,
                "aud": CLIENT,
                "sub": f"uuid-{grant.user}",
                "preferred_username": grant.user,
                "nonce": grant.nonce,
                "iat": now,
                "exp": now + 300,
                **self.claims,
            }
            header = {"alg": "RS256", "kid": self.key.kid}
            return {
                "access_token": "opaque",
                "token_type": "Bearer",
                "id_token": jose_jwt.encode(header, claims, self.key),
            }

        return app


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        secret="test-secret-key-with-enough-length-for-hs256",
        public_base_url="http://console.test",
        oidc_issuer=ISSUER,
        oidc_client_id=CLIENT,
        oidc_client_secret=SECRET,
    )


def console(settings: Settings, provider: Provider | None) -> httpx.AsyncClient:
    ctx = Context.from_settings(settings)
    app = FastAPI()
    app.state.tokens = ctx.tokens  # as install_console sets it
    book = PasswordBook.from_settings(settings, ctx.directory)
    app.include_router(auth_router(book, ctx.tokens, ctx.directory, ctx.catalogue, settings))
    client = None
    if provider is not None:
        client = OidcClient(settings, transport=httpx.ASGITransport(app=provider.app()))
    app.include_router(oidc_router(client, ctx.tokens, ctx.directory, settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test")


async def sent_to_provider(browser: httpx.AsyncClient, next: str = "/") -> dict[str, str]:
    resp = await browser.get("/auth/v1/oidc/login", params={"next": next})
    assert resp.status_code == 302, resp.text
    location = urlparse(resp.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}".startswith(ISSUER)
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == "http://console.test/auth/v1/oidc/callback"
    cookie = resp.headers["set-cookie"]
    assert STATE_COOKIE in cookie
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    return query


def signs_in(provider: Provider, query: dict[str, str], user: str) -> str:
    """The provider authenticates `user` and sends the browser back with this code."""
    code = f"code-{len(provider.grants)}-{user}"
    provider.grants[code] = Grant(
        user, query["nonce"], query["code_challenge"], query["redirect_uri"]
    )
    return code


@pytest.fixture
def browser(settings: Settings, provider: Provider) -> httpx.AsyncClient:
    return console(settings, provider)


async def test_a_person_of_the_directory_signs_in_through_the_provider(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    async with browser:
        query = await sent_to_provider(browser, next="/incidents/inc-1")
        code = signs_in(provider, query, "office-li")
        back = await browser.get(
            "/auth/v1/oidc/callback", params={"code": code, "state": query["state"]}
        )
        assert back.status_code == 200, back.text
        assert 'content="0;url=/incidents/inc-1"' in back.text
        assert SESSION_COOKIE in back.cookies
        assert "samesite=strict" in back.headers.get_list("set-cookie")[0].lower()
        me = await browser.get("/auth/v1/me")
        assert me.status_code == 200, me.text
        assert me.json()["id"] == "office-li"
        assert "office" in me.json()["roles"]


async def test_a_callback_with_another_state_or_without_the_cookie_signs_nobody_in(
    settings: Settings, provider: Provider
) -> None:
    async with console(settings, provider) as browser:
        query = await sent_to_provider(browser)
        code = signs_in(provider, query, "office-li")
        forged = await browser.get(
            "/auth/v1/oidc/callback", params={"code": code, "state": "another"}
        )
        assert forged.status_code == 400
        assert "登录状态不符" in forged.text
        assert SESSION_COOKIE not in forged.cookies
    async with console(settings, provider) as stranger:  # a browser that never started it
        lured = await stranger.get(
            "/auth/v1/oidc/callback", params={"code": code, "state": query["state"]}
        )
        assert lured.status_code == 400
        assert SESSION_COOKIE not in lured.cookies


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"nonce": "replayed"}, "another login's nonce"),
        ({"aud": "another-client"}, "issued to another client"),
        ({"iss": "https://idp.example/realms/other"}, "another issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
    ],
)
async def test_an_id_token_that_does_not_verify_signs_nobody_in(
    browser: httpx.AsyncClient, provider: Provider, claims: dict[str, Any], why: str
) -> None:
    provider.claims = claims
    async with browser:
        query = await sent_to_provider(browser)
        code = signs_in(provider, query, "office-li")
        back = await browser.get(
            "/auth/v1/oidc/callback", params={"code": code, "state": query["state"]}
        )
        assert back.status_code == 401, why
        assert "身份令牌无效" in back.text
        assert SESSION_COOKIE not in back.cookies


async def test_a_provider_that_rotated_its_key_is_read_again(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    async with browser:
        first = await sent_to_provider(browser)
        back = await browser.get(
            "/auth/v1/oidc/callback",
            params={"code": signs_in(provider, first, "office-li"), "state": first["state"]},
        )
        assert back.status_code == 200  # the keys are read and kept
        provider.key = RSAKey.generate_key(2048, auto_kid=True)  # rotated, and published
        again = await sent_to_provider(browser)
        back = await browser.get(
            "/auth/v1/oidc/callback",
            params={"code": signs_in(provider, again, "office-li"), "state": again["state"]},
        )
        assert back.status_code == 200, back.text


async def test_an_id_token_signed_by_a_key_the_provider_never_published_is_refused(
    settings: Settings, provider: Provider
) -> None:
    forger = RSAKey.generate_key(2048, auto_kid=True)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": CLIENT, "nonce": "n", "exp": now + 60, "iat": now}
    forged = jose_jwt.encode({"alg": "RS256", "kid": provider.key.kid}, claims, forger)
    client = OidcClient(settings, transport=httpx.ASGITransport(app=provider.app()))
    with pytest.raises(SignInFailed, match="身份令牌无效") as refused:
        await client._verified(await client.provider(), forged, "n")
    assert refused.value.status == 401


async def test_someone_the_directory_does_not_know_is_refused_by_name(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    async with browser:
        query = await sent_to_provider(browser)
        code = signs_in(provider, query, "zhang-unknown")
        back = await browser.get(
            "/auth/v1/oidc/callback", params={"code": code, "state": query["state"]}
        )
        assert back.status_code == 403
        assert "zhang-unknown" in back.text
        assert SESSION_COOKIE not in back.cookies


async def test_the_page_returned_to_is_only_ever_one_of_this_site(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    async with browser:
        query = await sent_to_provider(browser, next="//evil.example/steal")
        code = signs_in(provider, query, "office-li")
        back = await browser.get(
            "/auth/v1/oidc/callback", params={"code": code, "state": query["state"]}
        )
        assert back.status_code == 200
        assert 'content="0;url=/"' in back.text


async def test_without_a_provider_configured_sign_in_by_password_is_all_there_is(
    settings: Settings,
) -> None:
    async with console(settings, None) as browser:
        offered = await browser.get("/auth/v1/oidc")
        assert offered.json() == {"enabled": False, "name": "统一身份认证"}
        assert (await browser.get("/auth/v1/oidc/login")).status_code == 404
