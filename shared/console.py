"""The web console: sign-in with a session cookie, a live change stream, and the built
front end (console/dist) served at `/` with a fallback to its index for its own routes.

People sign in with the id of their directory entry and a password hashed with argon2
(pwdlib), kept in `<data dir>/passwords.json` with their failed attempts; five wrong
passwords in a row lock the account for a configured time. A successful sign-in sets two
cookies: `yuqing_session`, httpOnly and SameSite=Strict, carrying a short-lived token of
`shared.auth.TokenService` that every service verifies as it verifies a bearer token, and
`yuqing_csrf`, readable by the page, which it echoes in `X-CSRF-Token` on every request that
changes something (`shared.auth.current_caller` checks the pair).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import jwt
import structlog
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pwdlib import PasswordHash
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from shared.api import error_response
from shared.auth import CSRF_COOKIE, SESSION_COOKIE, TokenService, current_caller
from shared.catalogue import Catalogue
from shared.change_feed import ChangeFeed
from shared.clock import Clock, utcnow
from shared.directory import Directory, Person
from shared.identity import Caller, Role
from shared.settings import Settings
from shared.visibility import Visibility

log = structlog.get_logger("yuqing.console")

# A change stream's quiet keep-alive, and how long a burst of changes is gathered for.
_IDLE_SECONDS = 15.0
_BURST_SECONDS = 0.3

# Paths of the system that are never console pages, even when nothing answers them.
API_PREFIXES = ("/auth/", "/events/", "/api", "/healthz", "/readyz", "/metrics", "/asyncapi")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# --- passwords -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignIn:
    """What a sign-in attempt came to: the person, or why not."""

    person: Person | None
    locked_until: datetime | None = None


class PasswordBook:
    """The hashed passwords of the directory's people and their failed attempts, in one
    JSON file (written whole, atomically). Read again at every attempt, so a password set
    with `yuqing passwd` while the system runs counts at once.
    """

    def __init__(
        self,
        path: Path,
        directory: Directory,
        max_failures: int = 5,
        lockout: timedelta = timedelta(minutes=15),
        clock: Clock = utcnow,
    ) -> None:
        self.path = path
        self.directory = directory
        self.max_failures = max_failures
        self.lockout = lockout
        self.clock = clock
        self._hasher = PasswordHash.recommended()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, directory: Directory) -> PasswordBook:
        return cls(
            settings.data_dir / "passwords.json",
            directory,
            max_failures=settings.login_max_failures,
            lockout=timedelta(seconds=settings.login_lockout_seconds),
        )

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        data: dict[str, dict[str, Any]] = json.loads(self.path.read_text(encoding="utf-8"))
        return data

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        temp.chmod(0o600)
        temp.replace(self.path)

    def set(self, person_id: str, password: str, *, demo: bool = False) -> None:
        if self.directory.person(person_id) is None:
            raise KeyError(person_id)
        with self._lock:
            data = self._read()
            data[person_id] = {"hash": self._hasher.hash(password), "demo": demo, "failures": 0}
            self._write(data)

    def ensure_demo_passwords(self) -> list[tuple[Person, str | None]]:
        """A fresh password for every person of the directory who has none or a demo one
        (partners' clients use the API): each person, with the new password, or None for
        a password set with `yuqing passwd`, which is kept.
        """
        out: list[tuple[Person, str | None]] = []
        with self._lock:
            data = self._read()
            for person in self.directory.people:
                if Role.PARTNER in person.roles:
                    continue
                record = data.get(person.id)
                if record is not None and not record.get("demo"):
                    out.append((person, None))
                    continue
                password = secrets.token_urlsafe(9)
                data[person.id] = {
                    "hash": self._hasher.hash(password),
                    "demo": True,
                    "failures": 0,
                }
                out.append((person, password))
            self._write(data)
        return out

    def check(self, person_id: str, password: str) -> SignIn:
        now = self.clock()
        with self._lock:
            data = self._read()
            record = data.get(person_id)
            person = self.directory.person(person_id)
            if record is None or person is None:
                self._hasher.verify(password, self._dummy)  # the same time as a real check
                return SignIn(None)
            locked = record.get("locked_until")
            if locked and datetime.fromisoformat(locked) > now:
                return SignIn(None, datetime.fromisoformat(locked))
            if self._hasher.verify(password, record["hash"]):
                record.update(failures=0, locked_until=None)
                self._write(data)
                return SignIn(person)
            failures = int(record.get("failures", 0)) + 1
            until = None
            if failures >= self.max_failures:
                until = now + self.lockout
                failures = 0
            record.update(failures=failures, locked_until=until.isoformat() if until else None)
            self._write(data)
            return SignIn(None, until)


# --- the sign-in routes ----------------------------------------------------------------


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=200)


class Me(BaseModel):
    id: str
    name: str | None
    unit: str
    unit_name: str
    roles: list[str]
    session_expires_at: datetime | None = None


def _me(caller: Caller, directory: Directory, expires: datetime | None = None) -> Me:
    return Me(
        id=caller.id,
        name=caller.name,
        unit=caller.unit,
        unit_name=directory.unit_name(caller.unit),
        roles=sorted(r.value for r in caller.roles),
        session_expires_at=expires,
    )


def _bearer_or_session(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.cookies.get(SESSION_COOKIE, "")


def start_session(
    response: Response, person: Person, tokens: TokenService, settings: Settings
) -> datetime:
    """Set the session cookie (a short-lived token, httpOnly, SameSite=Strict) and the CSRF
    cookie the page echoes; returns when the session ends."""
    ttl = timedelta(seconds=settings.session_ttl_seconds)
    secure = settings.base_url.startswith("https://")
    token = tokens.issue(person.id, person.unit, person.roles, ttl=ttl, name=person.name)
    age = int(ttl.total_seconds())
    response.set_cookie(
        SESSION_COOKIE, token, max_age=age, httponly=True, samesite="strict", secure=secure
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        max_age=age,
        httponly=False,
        samesite="strict",
        secure=secure,
    )
    return utcnow() + ttl


def auth_router(
    book: PasswordBook,
    tokens: TokenService,
    directory: Directory,
    catalogue: Catalogue,
    settings: Settings,
) -> APIRouter:
    router = APIRouter(prefix="/auth/v1", tags=["console"])
    ttl = timedelta(seconds=settings.session_ttl_seconds)
    secure = settings.base_url.startswith("https://")

    def open_session(response: Response, person: Person) -> datetime:
        return start_session(response, person, tokens, settings)

    @router.post("/login", response_model=Me, summary="Sign in; sets the session cookie")
    async def login(body: Credentials, response: Response) -> Me | JSONResponse:
        result = await asyncio.to_thread(book.check, body.username.strip(), body.password)
        if result.locked_until is not None:
            log.warning("sign-in locked", person=body.username)
            return error_response(
                429,
                "account_locked",
                "too many wrong passwords; the account is locked for a while",
                {"locked_until": result.locked_until.isoformat()},
            )
        if result.person is None:
            log.info("sign-in refused", person=body.username)
            return error_response(401, "bad_credentials", "wrong username or password")
        expires = open_session(response, result.person)
        log.info("signed in", person=result.person.id)
        caller = Caller(
            result.person.id,
            result.person.unit,
            frozenset(result.person.roles),
            result.person.name,
        )
        return _me(caller, directory, expires)

    @router.post("/logout", status_code=204, summary="Sign out; clears the session cookie")
    async def logout(request: Request) -> Response:
        if request.cookies.get(SESSION_COOKIE):
            current_caller(request)  # a session needs its CSRF header to be ended
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=secure)
        response.delete_cookie(CSRF_COOKIE, samesite="strict", secure=secure)
        return response

    @router.get("/me", response_model=Me, summary="Who is signed in")
    async def me(request: Request, response: Response) -> Me:
        caller = current_caller(request)
        expires = None
        if not request.headers.get("authorization"):
            # A session in use is renewed once it is past half its life.
            claims = _unverified_claims(request.cookies.get(SESSION_COOKIE, ""))
            expires = datetime.fromtimestamp(int(claims.get("exp", 0)), tz=utcnow().tzinfo)
            if expires - utcnow() < ttl / 2 and (person := directory.person(caller.id)):
                expires = open_session(response, person)
        return _me(caller, directory, expires)

    @router.get("/names", summary="The names staff read: the catalogue, units and people")
    async def names(request: Request) -> dict[str, Any]:
        current_caller(request)
        return {
            **catalogue.model_dump(mode="json"),
            "units": {u.id: u.name for u in directory.units},
            "people": {p.id: p.name for p in directory.people},
            "timezone": settings.timezone,
        }

    return router


def _unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a token already verified by `current_caller`, read again for its expiry."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


# --- the change stream -----------------------------------------------------------------


async def _get(system: ASGIApp, path: str, token: str) -> tuple[int, bytes]:
    """GET `path` from this process's own gateway, as the caller: the same routes, the same
    checks, without a socket."""
    route, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {token}".encode()), (b"host", b"console")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    status = 500
    body = bytearray()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await system(scope, receive, send)  # type: ignore[arg-type]
    return status, bytes(body)


async def _get_remote(base_url: str, path: str, token: str) -> tuple[int, bytes]:
    """GET `path` from the system's base URL: where the archive runs in another process."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        answer = await http.get(path, headers={"Authorization": f"Bearer {token}"})
        return answer.status_code, answer.content


def events_router(
    system: ASGIApp,
    poll_seconds: float,
    lifetime_seconds: float,
    *,
    archive_here: bool = True,
    base_url: str = "",
    feed: ChangeFeed | None = None,
    visibility: Visibility | None = None,
) -> APIRouter:
    """`GET /events/v1/stream`: server-sent events telling the page that what it shows has
    changed; the page then fetches what it shows again.

    Where the archive runs in this process, the stream is fed by the archive database's
    change stream (`feed`): each incident view that changes is told (`event: change`, with
    the ids) only to a caller who may see it, a burst as one message, at once. In the
    distributed shape the gateway sends `/events/v1/` to the archive's process for that
    (deploy/nginx.conf, k8s/base/ingress.yaml). In a process without the archive (or on a
    database without change streams), the stream reads the archive's list of open
    incidents (which carries each one's open duties, next deadline and last change) every
    `poll_seconds` through the system's base URL, as the caller, and tells of a difference.
    A stream ends after `lifetime_seconds` (or when the session does) and the browser opens
    the next one by itself (`retry`), so the session is checked again and a stopping server
    is not held open by its streams (the page fetches again on each new one: what changed
    in between is not lost). `?incident=<id>` also watches that incident's view: its page hears
    of what happens to it after it left the open list (resolved, reviewed).
    """
    router = APIRouter(prefix="/events/v1", tags=["console"])
    watched = "/archive/v1/incidents?status=open&limit=100"

    def fed(
        request: Request, caller: Caller, session_ends: float, ends: float
    ) -> AsyncIterator[bytes]:
        assert feed is not None
        assert visibility is not None
        loop = asyncio.get_running_loop()

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            with feed.subscribe() as changes:
                while loop.time() < ends and not await request.is_disconnected():
                    if time.time() >= session_ends:
                        yield b"event: expired\ndata: {}\n\n"
                        return
                    try:
                        async with asyncio.timeout(min(_IDLE_SECONDS, ends - loop.time())):
                            told = [await changes.get()]
                    except TimeoutError:
                        yield b": idle\n\n"
                        continue
                    await asyncio.sleep(_BURST_SECONDS)  # a batch the archive logged: once
                    while not changes.empty():
                        told.append(changes.get_nowait())
                    ids = sorted({s.incident_id for s in told if visibility.can_see(caller, s)})
                    if ids:
                        data = json.dumps({"incidents": ids}, ensure_ascii=False)
                        yield f"event: change\ndata: {data}\n\n".encode()

        return events()

    @router.get("/stream", summary="Server-sent events: `change` when the caller's view changed")
    async def stream(
        request: Request,
        incident: Annotated[
            str | None,
            Query(max_length=200, description="also watch this incident (its page is open)"),
        ] = None,
    ) -> StreamingResponse:
        caller = current_caller(request)
        if feed is not None and not feed.unavailable:
            token = _bearer_or_session(request)
            session_ends = float(_unverified_claims(token).get("exp", 0))
            ends = asyncio.get_running_loop().time() + lifetime_seconds
            return StreamingResponse(
                fed(request, caller, session_ends, ends),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        # An incident page also watches its incident, which leaves the open list once resolved.
        paths = [watched] + (
            [f"/archive/v1/incidents/{quote(incident, safe='')}"] if incident else []
        )
        token = _bearer_or_session(request)
        loop = asyncio.get_running_loop()
        ends = loop.time() + lifetime_seconds

        async def events() -> AsyncIterator[bytes]:
            last = ""
            yield b"retry: 2000\n\n"
            while loop.time() < ends and not await request.is_disconnected():
                digest = hashlib.sha256()
                status = 0
                for path in paths:
                    try:
                        if archive_here:
                            status, body = await _get(system, path, token)
                        else:
                            status, body = await _get_remote(base_url, path, token)
                    except Exception:  # keep the stream; the page fetches again on its own too
                        log.exception("change stream poll failed")
                        status, body = 0, b""
                    if status == 401:
                        yield b"event: expired\ndata: {}\n\n"
                        return
                    digest.update(str(status).encode() + body)
                now = digest.hexdigest()
                if last and now != last:
                    yield b"event: change\ndata: {}\n\n"
                else:
                    yield b": idle\n\n"
                last = now
                await asyncio.sleep(poll_seconds)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router


# --- the built front end ---------------------------------------------------------------


NOT_BUILT = """<!doctype html><html lang="zh-CN"><meta charset="utf-8"><title>yuqing</title>
<body><h1>舆情处置平台</h1><p>控制台尚未构建：请运行 <code>make console</code>
（需要 Node.js 20 与 npm）。接口说明见 <a href="/api">/api</a>。</p></body></html>"""


def install_console(
    app: FastAPI,
    *,
    settings: Settings,
    tokens: TokenService,
    directory: Directory,
    catalogue: Catalogue,
    system: ASGIApp,
    archive_here: bool = True,
    dist: Path | None = None,
    book_factory: Callable[[], PasswordBook] | None = None,
    feed: ChangeFeed | None = None,
) -> PasswordBook:
    """Add sign-in, the change stream and the console pages to the gateway's own app."""
    app.state.tokens = tokens
    book = book_factory() if book_factory else PasswordBook.from_settings(settings, directory)
    app.include_router(auth_router(book, tokens, directory, catalogue, settings))
    from shared.oidc import OidcClient, oidc_router  # it builds on this module's sessions

    oidc = OidcClient(settings) if settings.oidc_issuer and settings.oidc_client_id else None
    app.include_router(oidc_router(oidc, tokens, directory, settings))
    app.include_router(
        events_router(
            system,
            settings.events_poll_seconds,
            settings.events_stream_seconds,
            archive_here=archive_here,
            base_url=settings.base_url,
            feed=feed,
            visibility=Visibility(directory),
        )
    )
    root = (dist or settings.console_dir).resolve()
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}

    @app.get("/{path:path}", include_in_schema=False, response_model=None)
    async def page(path: str) -> Response:
        if any(("/" + path).startswith(p) for p in API_PREFIXES):
            return error_response(404, "not_found", f"no route /{path}")
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=503, headers=headers)
        wanted = (root / path).resolve()
        if path and wanted.is_file() and wanted.is_relative_to(root):
            cache = "public, max-age=31536000, immutable" if path.startswith("assets/") else ""
            return FileResponse(wanted, headers={"Cache-Control": cache} if cache else None)
        if path.startswith("assets/"):
            return error_response(404, "not_found", f"no file /{path}")
        return FileResponse(index, headers={**headers, "Cache-Control": "no-cache"})

    return book
