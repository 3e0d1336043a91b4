"""Sign-in through the bureau's identity provider: OpenID Connect, the authorization code
flow with PKCE, for a deployment that sets `YUQING_OIDC_ISSUER`.

`GET /auth/v1/oidc/login` sends the browser to the provider with a fresh state, nonce and
PKCE verifier, kept in a short-lived signed cookie (httpOnly, SameSite=Lax: the provider
sends the browser back with a top-level GET from its own site, where a Strict cookie is
not sent). `GET /auth/v1/oidc/callback` checks the state, exchanges the code (with the
verifier and the client's secret) at the token endpoint, and verifies the ID token with
the provider's published keys (issuer, audience, expiry, nonce). The claim named by
`YUQING_OIDC_USERNAME_CLAIM` (`preferred_username` unless set) must be the id of a person
of the directory: the person signs in as with a password, with the same session cookie,
unit and roles. Nobody is created from a provider's claims: who holds which role stays the
directory's.

PKCE and the JOSE verification are Authlib's (`authlib.oauth2.rfc7636`) and joserfc's,
the library Authlib's JOSE moved to; the two HTTP calls go through httpx.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import structlog
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from shared.auth import TokenService
from shared.console import start_session
from shared.directory import Directory
from shared.settings import Settings

log = structlog.get_logger("yuqing.oidc")

STATE_COOKIE = "yuqing_oidc"
_STATE_AUDIENCE = "yuqing-oidc-state"
_STATE_SECONDS = 600
_DISCOVERY_SECONDS = 3600
_ALGORITHMS = ("RS256", "ES256", "PS256", "EdDSA")


class SignInFailed(Exception):
    """Why a sign-in through the provider did not come to a session (said to the person)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Provider:
    """What the provider's discovery document says of it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class OidcClient:
    """The relying party: discovery, the authorization URL, the code exchange, the ID token."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        assert settings.oidc_issuer
        assert settings.oidc_client_id
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        secret = settings.oidc_client_secret
        self.client_secret = secret.get_secret_value() if secret else None
        self.scopes = settings.oidc_scopes
        self.claim = settings.oidc_username_claim
        self._transport = transport
        self._provider: tuple[Provider, float] | None = None
        self._keys: KeySet | None = None

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._transport, timeout=10.0)

    async def provider(self) -> Provider:
        if self._provider is not None and time.monotonic() - self._provider[1] < _DISCOVERY_SECONDS:
            return self._provider[0]
        async with self._http() as http:
            resp = await http.get(f"{self.issuer}/.well-known/openid-configuration")
        resp.raise_for_status()
        doc = resp.json()
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
            raise SignInFailed(502, "身份认证服务的配置与设定的签发方不符")
        found = Provider(
            issuer=str(doc["issuer"]),
            authorization_endpoint=str(doc["authorization_endpoint"]),
            token_endpoint=str(doc["token_endpoint"]),
            jwks_uri=str(doc["jwks_uri"]),
        )
        self._provider = (found, time.monotonic())
        return found

    async def _key_set(self, provider: Provider, *, fresh: bool = False) -> KeySet:
        if self._keys is None or fresh:
            async with self._http() as http:
                resp = await http.get(provider.jwks_uri)
            resp.raise_for_status()
            self._keys = KeySet.import_key_set(resp.json())
        return self._keys

    async def authorization_url(
        self, redirect_uri: str, state: str, nonce: str, verifier: str
    ) -> str:
        provider = await self.provider()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        return f"{provider.authorization_endpoint}?{urlencode(query)}"

    async def identity(self, code: str, verifier: str, redirect_uri: str, nonce: str) -> str:
        """The directory id the provider vouches for, from the verified ID token."""
        provider = await self.provider()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": self.client_id,
        }
        async with self._http() as http:
            if self.client_secret:  # client_secret_basic; a public client sends none
                auth = httpx.BasicAuth(self.client_id, self.client_secret)
                resp = await http.post(provider.token_endpoint, data=form, auth=auth)
            else:
                resp = await http.post(provider.token_endpoint, data=form)
        if resp.status_code != 200:
            log.warning(
                "the provider refused the code", status=resp.status_code, body=resp.text[:200]
            )
            raise SignInFailed(401, "身份认证服务未接受本次登录，请重新登录")
        id_token = resp.json().get("id_token")
        if not isinstance(id_token, str):
            raise SignInFailed(401, "身份认证服务没有返回身份令牌")
        claims = await self._verified(provider, id_token, nonce)
        value = claims.get(self.claim)
        if not isinstance(value, str) or not value:
            raise SignInFailed(401, f"身份令牌中没有 {self.claim}")
        return value

    async def _verified(self, provider: Provider, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            try:
                token = jose_jwt.decode(id_token, await self._key_set(provider), _ALGORITHMS)
            except JoseError:  # a key rotated since the keys were read: read them again
                token = jose_jwt.decode(
                    id_token, await self._key_set(provider, fresh=True), _ALGORITHMS
                )
            jose_jwt.JWTClaimsRegistry(
                leeway=60,
                iss={"essential": True, "value": provider.issuer},
                aud={"essential": True, "value": self.client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(token.claims)
        except (JoseError, ValueError) as exc:
            log.warning("an ID token did not verify", error=str(exc))
            raise SignInFailed(401, "身份令牌无效或已过期，请重新登录") from exc
        return dict(token.claims)


def _safe_next(value: str | None) -> str:
    """Only a path of this site: never an open redirect to another."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def _page(status: int, title: str, body: str, go: str | None = None) -> HTMLResponse:
    refresh = f'<meta http-equiv="refresh" content="0;url={escape(go)}">' if go else ""
    html = (
        f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">{refresh}'
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>"
        f'<p>{escape(body)}</p><p><a href="{escape(go or "/login")}">'
        f"{'继续' if go else '返回登录'}</a></p></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def oidc_router(
    client: OidcClient | None, tokens: TokenService, directory: Directory, settings: Settings
) -> APIRouter:
    router = APIRouter(prefix="/auth/v1/oidc", tags=["console"])
    secure = settings.base_url.startswith("https://")
    redirect_uri = f"{settings.base_url.rstrip('/')}/auth/v1/oidc/callback"
    key = settings.signing_key

    @router.get("", summary="Whether sign-in through the identity provider is offered")
    async def offered() -> dict[str, Any]:
        return {"enabled": client is not None, "name": settings.oidc_display_name}

    @router.get("/login", summary="Go to the identity provider to sign in", response_model=None)
    async def login(next: str | None = Query(default=None, max_length=2000)) -> Response:
        if client is None:
            return _page(
                404, "未启用统一身份认证", "本系统未配置统一身份认证，请用账号和密码登录。"
            )
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        try:
            url = await client.authorization_url(redirect_uri, state, nonce, verifier)
        except (httpx.HTTPError, SignInFailed, KeyError, ValueError) as exc:
            log.warning("the identity provider cannot be reached", error=str(exc))
            return _page(
                502, "统一身份认证暂不可用", "无法连接身份认证服务，请稍后再试或用密码登录。"
            )
        kept = jwt.encode(
            {
                "state": state,
                "nonce": nonce,
                "verifier": verifier,
                "next": _safe_next(next),
                "aud": _STATE_AUDIENCE,
                "exp": int(time.time()) + _STATE_SECONDS,
            },
            key,
            algorithm="HS256",
        )
        response = RedirectResponse(url, status_code=302)
        response.set_cookie(
            STATE_COOKIE,
            kept,
            max_age=_STATE_SECONDS,
            httponly=True,
            samesite="lax",
            secure=secure,
            path="/auth/v1/oidc",
        )
        return response

    @router.get(
        "/callback",
        summary="Where the identity provider sends the browser back",
        response_model=None,
    )
    async def callback(
        request: Request,
        code: str | None = Query(default=None, max_length=4000),
        state: str | None = Query(default=None, max_length=200),
        error: str | None = Query(default=None, max_length=200),
    ) -> Response:
        try:
            if client is None:
                raise SignInFailed(404, "本系统未配置统一身份认证")
            if error:
                raise SignInFailed(401, f"身份认证服务拒绝了登录（{error}）")
            try:
                kept = jwt.decode(
                    request.cookies.get(STATE_COOKIE, ""),
                    key,
                    algorithms=["HS256"],
                    audience=_STATE_AUDIENCE,
                )
            except jwt.PyJWTError as exc:
                raise SignInFailed(400, "登录已超时或不是从本系统发起，请重新登录") from exc
            if not state or not hmac.compare_digest(str(kept["state"]), state) or not code:
                raise SignInFailed(400, "登录状态不符，请重新登录")
            try:
                username = await client.identity(
                    code, kept["verifier"], redirect_uri, kept["nonce"]
                )
            except httpx.HTTPError as exc:
                raise SignInFailed(502, "无法连接身份认证服务，请稍后再试") from exc
            person = directory.person(username)
            if person is None:
                log.warning("an identity the directory does not know", username=username)
                raise SignInFailed(403, f"账号 {username} 不在本系统的人员名录中，请联系管理员")
        except SignInFailed as failed:
            response: Response = _page(failed.status, "登录未完成", failed.message)
        else:
            response = _page(
                200, "已登录", f"{person.name or person.id}，正在进入系统。", go=kept["next"]
            )
            start_session(response, person, tokens, settings)
            log.info("signed in through the identity provider", person=person.id)
        response.delete_cookie(
            STATE_COOKIE, path="/auth/v1/oidc", secure=secure, httponly=True, samesite="lax"
        )
        return response

    return router
