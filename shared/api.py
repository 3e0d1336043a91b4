"""The FastAPI app factory every service uses: error format, request logging and tracing,
metrics (prometheus-fastapi-instrumentator)."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Collection
from http.cookies import SimpleCookie
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, Field
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import (
    API_KEY_HEADER,
    SESSION_COOKIE,
    VERIFIED_SCOPE_KEY,
    TokenService,
    authenticated,
    current_caller,
)
from shared.errors import (
    BadRequest,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    TooLarge,
    Unauthorized,
    UnsupportedType,
)
from shared.identity import Role
from shared.metrics import http_instrumentation
from shared.settings import Settings
from shared.store import ConcurrencyConflict
from shared.tracing import request_span

log = structlog.get_logger("yuqing.api")

# File uploads (POST .../attachments) are bounded by YUQING_ATTACHMENT_MAX_BYTES and this
# much more for the multipart framing, instead of YUQING_MAX_BODY_BYTES.
UPLOAD_SUFFIX = "/attachments"
UPLOAD_FRAMING_BYTES = 64 * 1024

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


# The one place where a kind of domain error becomes an HTTP status. A subclass answers with
# its base's status and its own code (SelfApproval: 403, "self_approval").
ERROR_STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (BadRequest, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (TooLarge, 413),
    (UnsupportedType, 415),
    (Invalid, 422),
)


def status_of(error: DomainError) -> int:
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        jsonable_encoder(error_body(code, message, details)), status_code=status, headers=headers
    )


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(status_of(exc), exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": _field_path(err["loc"]), "reason": err["msg"], "type": err["type"]}
            for err in exc.errors()
        ]
        names = ", ".join(f"{f['field']} ({f['reason']})" for f in fields[:5])
        return error_response(422, "validation_error", f"invalid input: {names}", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(ConcurrencyConflict)
    async def _conflict(_: Request, exc: ConcurrencyConflict) -> JSONResponse:
        return error_response(409, "conflict", str(exc), {"stream_id": exc.stream_id})

    @app.exception_handler(ConnectionFailure)
    async def _db_down(_: Request, exc: ConnectionFailure) -> JSONResponse:
        log.error("database unavailable", error=str(exc))
        return error_response(503, "unavailable", "the database is not reachable; try again")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", error=str(exc))
        return error_response(500, "internal_error", "an unexpected error occurred")


# --------------------------------------------------------------------------- bodyless writes

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _takes_body(route: APIRoute) -> bool:
    """Whether the route takes a body: a model's, or one it documents and reads itself."""
    return route.body_field is not None or "requestBody" in (route.openapi_extra or {})


def _authenticates(dependant: Any) -> bool:
    return any(d.call is authenticated or _authenticates(d) for d in dependant.dependencies)


def _unexpected_body(raw: bytes) -> list[dict[str, Any]]:
    """What a body sent to a write that takes none holds: nothing, or `{}`, is no body."""
    if not raw.strip():
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, dict):
        return [
            {
                "loc": ("body", str(key)),
                "msg": "Extra inputs are not permitted",
                "type": "extra_forbidden",
            }
            for key in value
        ]
    reason = "this operation takes no body (send none, or {})"
    return [{"loc": ("body",), "msg": reason, "type": "extra_forbidden"}]


async def refuse_unexpected_body(request: Request) -> None:
    """A write route that takes no body refuses one with fields: 422 naming each, as a
    route with a body model refuses a field the model does not have (every app's routes
    depend on this, `create_app`). A caller without valid credentials hears its 401 first,
    as from a route with a body."""
    route = request.scope.get("route")
    if request.method not in _WRITE_METHODS or not isinstance(route, APIRoute):
        return
    if _takes_body(route):
        return
    errors = _unexpected_body(await request.body())
    if not errors:
        return
    if _authenticates(route.dependant):
        current_caller(request)
    raise RequestValidationError(errors)


class RequestTracing:
    """Serves each request in its trace (the correlation id of what it causes, answered as
    `X-Correlation-ID`), names the span by route template, and logs it with an id. Counts
    and latency are the instrumentator's (`instrument_app`)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex

        method = scope["method"]
        with request_span(method, scope["path"], _header(scope, b"traceparent")) as (
            correlation,
            span,
        ):

            async def send_wrapper(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = message.setdefault("headers", [])
                    headers.append((b"x-request-id", request_id.encode()))
                    # The trace id: the correlation id of every event this request causes.
                    headers.append((b"x-correlation-id", str(correlation).encode()))
                await send(message)

            bound = structlog.contextvars.bound_contextvars(
                request_id=request_id, service=self.service, correlation_id=str(correlation)
            )
            with bound:
                try:
                    await self.app(scope, receive, send_wrapper)
                finally:
                    route = scope.get("route")
                    template = getattr(route, "path", "unmatched")
                    elapsed = time.perf_counter() - started
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                    span.set_attribute("http.response.status_code", status)
                    log.info(
                        "http request",
                        method=method,
                        path=scope["path"],
                        status=status,
                        ms=round(elapsed * 1000, 1),
                    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


# --------------------------------------------------------------------------- limits


# Every answer carries these unless the route set its own (the console sets a CSP of its
# own). Nothing the API serves loads anything from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
# The interactive docs (Swagger UI) load their script and style from FastAPI's CDN.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# Probes are never rate limited.
EXEMPT_PATHS = ("/healthz", "/readyz")
DOCS_ROLES = (Role.ADMIN, Role.ANALYST)


class RateLimiter:
    """Requests per principal in a moving window (the `limits` library), kept in this
    process's memory: every app of one process shares one (`Context.limiter`)."""

    def __init__(self, rate: str) -> None:
        try:
            self.item = parse(rate)
        except ValueError as exc:
            raise ValueError(f"YUQING_RATE_LIMIT {rate!r} is not a rate: {exc}") from None
        self.rate = rate
        self._window = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key: str) -> int | None:
        """Count a request of `key`: None when it may go on, else the seconds to wait."""
        if self._window.hit(self.item, key):
            return None
        reset = self._window.get_window_stats(self.item, key).reset_time
        return max(1, math.ceil(reset - time.time()))


class RequestGuard:
    """Before a request reaches the routes: its rate (429 with `Retry-After`, per token
    subject, else per client address; probes exempt), the private docs (a token of an
    admin or analyst when `YUQING_PUBLIC_DOCS` is off), its body size (413; a body is not
    read past the limit); and on every answer the security headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenService,
        max_body_bytes: int,
        limiter: RateLimiter | None,
        private_paths: Collection[str] = (),
        docs_paths: Collection[str] = (),
        attachment_max_bytes: int = 0,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes
        # A file upload (POST .../attachments) may be larger: its own bound, checked again
        # on the file itself by the route.
        self.attachment_max_bytes = attachment_max_bytes
        self.upload_max_bytes = max(attachment_max_bytes + UPLOAD_FRAMING_BYTES, max_body_bytes)
        self.limiter = limiter
        self.private_paths = frozenset(private_paths)
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        send = self._with_headers(send, docs=path in self.docs_paths)
        refusal = self._refusal(scope, path)
        if refusal is None:
            refusal, receive = await self._bounded(scope, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, path: str) -> JSONResponse | None:
        claims = self._claims(scope)
        if self.limiter is not None and not path.endswith(EXEMPT_PATHS):
            key = f"sub:{claims['sub']}" if claims else f"addr:{_client(scope)}"
            wait = self.limiter.hit(key)
            if wait is not None:
                response = error_response(
                    429,
                    "too_many_requests",
                    f"too many requests: at most {self.limiter.rate} (YUQING_RATE_LIMIT); "
                    f"try again in {wait} s",
                    {"retry_after_seconds": wait},
                )
                response.headers["Retry-After"] = str(wait)
                return response
        if path in self.private_paths:
            if claims is None:
                return error_response(
                    401, "unauthorized", "a bearer token is required (Authorization: Bearer)"
                )
            roles = set(claims.get("roles") or ())
            if not roles & {r.value for r in DOCS_ROLES}:
                return error_response(403, "forbidden", "the docs need the admin or analyst role")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit(scope):
            return self._too_large(scope)
        return None

    def _upload(self, scope: Scope) -> bool:
        """A file upload, bounded by the file's own limit rather than the body limit."""
        upload = scope["method"] == "POST" and scope["path"].endswith(UPLOAD_SUFFIX)
        return upload and self.upload_max_bytes > self.max_body_bytes

    def _limit(self, scope: Scope) -> int:
        return self.upload_max_bytes if self._upload(scope) else self.max_body_bytes

    def _claims(self, scope: Scope) -> dict[str, Any] | None:
        """The verified claims of the request's token: the bearer header's, or else the
        console's session cookie's, so a person signed in to the console is limited as a
        person and not as the office's shared address. A partner's API key counts as its
        client."""
        key = _header(scope, API_KEY_HEADER.lower().encode())
        if key is not None:
            try:
                caller = self.tokens.api_keys.verify(key.strip())
            except Unauthorized:
                return None
            return {"sub": caller.id, "roles": [r.value for r in caller.roles]}
        header = _header(scope, b"authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else ""
        else:
            cookies = SimpleCookie(_header(scope, b"cookie") or "")
            session = cookies.get(SESSION_COOKIE)
            token = session.value if session is not None else ""
        if not token:
            return None
        try:
            claims = self.tokens.claims(token)
        except Unauthorized:
            return None
        scope[VERIFIED_SCOPE_KEY] = (token, claims)
        return claims

    async def _bounded(self, scope: Scope, receive: Receive) -> tuple[JSONResponse | None, Receive]:
        """A body of unknown length (chunked) is read up to the limit, and no further."""
        if _header(scope, b"content-length") is not None or scope["method"] in ("GET", "HEAD"):
            return None, receive
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self._limit(scope):
                return self._too_large(scope), receive
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return None, replay

    def _too_large(self, scope: Scope) -> JSONResponse:
        limit = self._limit(scope)
        if self._upload(scope):
            # Named as the route names a file too large: its setting, and the file's bound.
            file_max = self.attachment_max_bytes
            return error_response(
                413,
                "payload_too_large",
                f"the file is larger than {file_max} bytes (YUQING_ATTACHMENT_MAX_BYTES): the "
                f"upload is over {limit} bytes with its multipart framing",
                [{"field": "file", "reason": f"at most {file_max} bytes", "type": "too_large"}],
            )
        return error_response(
            413,
            "payload_too_large",
            f"the request body is larger than {limit} bytes (YUQING_MAX_BODY_BYTES)",
            {"max_body_bytes": limit},
        )

    @staticmethod
    def _with_headers(send: Send, *, docs: bool) -> Send:
        policy = (DOCS_CONTENT_SECURITY_POLICY if docs else CONTENT_SECURITY_POLICY).encode()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for key, value in ((b"content-security-policy", policy), *SECURITY_HEADERS):
                    if key not in present:
                        headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        return sending


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def guard_app(
    app: FastAPI,
    settings: Settings,
    tokens: TokenService,
    limiter: RateLimiter | None,
    *,
    private: Collection[str] = (),
    docs: Collection[str] = (),
) -> None:
    """Put the request guard in front of `app`; `private` paths need an admin or analyst
    token unless the docs are public (YUQING_PUBLIC_DOCS)."""
    app.add_middleware(
        RequestGuard,
        tokens=tokens,
        max_body_bytes=settings.max_body_bytes,
        attachment_max_bytes=settings.attachment_max_bytes,
        limiter=limiter,
        private_paths=() if settings.docs_are_public else private,
        docs_paths=docs,
    )


# --------------------------------------------------------------------------- OpenAPI


class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, for programs", examples=["not_found"])
    message: str = Field(description="what went wrong, for people")
    details: Any = Field(
        default=None, description="more, per code: for a 422 the fields and why each failed"
    )


class ErrorBody(BaseModel):
    """Every refusal the API answers: `{"error": {"code", "message", "details"}}`."""

    error: ErrorDetail


# What each refusal means, as documented on the operations it can answer, with an example.
ERROR_DOCS: dict[int, tuple[str, str, str, Any]] = {
    400: (
        "a body that is not JSON, or a parameter the API could not use",
        "bad_request",
        "cursor is not one this API returned",
        {"field": "cursor"},
    ),
    401: (
        "no credentials, or a token or key that is expired, revoked or invalid",
        "unauthorized",
        "token expired",
        None,
    ),
    403: (
        "the caller's roles or units do not allow this (or a console write lacks its CSRF header)",
        "forbidden",
        "this needs one of the roles: leader",
        {"roles": "leader"},
    ),
    404: (
        "no such record, or one the caller may not see (the same answer)",
        "not_found",
        "no incident inc-0",
        {"kind": "incident", "id": "inc-0"},
    ),
    409: (
        "not allowed in the record's current state, or a concurrent change",
        "conflict",
        "not allowed from the current status",
        None,
    ),
    413: (
        "the body is larger than YUQING_MAX_BODY_BYTES",
        "payload_too_large",
        "the request body is larger than 1048576 bytes (YUQING_MAX_BODY_BYTES)",
        {"max_body_bytes": 1048576},
    ),
    415: (
        "content of a type the route does not take, told by its bytes",
        "unsupported_media_type",
        "file: an executable is not one of png, jpeg, pdf (YUQING_ATTACHMENT_TYPES)",
        {"field": "file"},
    ),
    422: (
        "a missing, malformed or unknown field, naming each and why",
        "validation_error",
        "invalid input: title (Field required)",
        [{"field": "title", "reason": "Field required", "type": "missing"}],
    ),
    429: (
        "too many requests from this principal (YUQING_RATE_LIMIT); see Retry-After",
        "too_many_requests",
        "too many requests: at most 300/minute (YUQING_RATE_LIMIT); try again in 12 s",
        {"retry_after_seconds": 12},
    ),
    503: (
        "the database is not reachable; try again",
        "unavailable",
        "the database is not reachable; try again",
        None,
    ),
}
_WRITES = frozenset({"post", "put", "patch", "delete"})


def operation_id(service: str) -> Callable[[APIRoute], str]:
    """Operation ids as people read them: `<service>_<route function>`, e.g.
    `intake_submit_report` (unique across the services, since each route's name is unique
    in its service)."""

    def named(route: APIRoute) -> str:
        return f"{service}_{route.name}"

    return named


def _refusals(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The refusals an operation can answer, from what it takes and who it is for."""
    statuses: set[int] = set()
    if operation.get("security"):
        statuses |= {401, 403, 429, 503}
        if "{" in path:
            statuses.add(404)
        if method in _WRITES:
            statuses |= {409, 422}  # a body to a write that takes none is refused too
    parameters = operation.get("parameters", [])
    if any(p.get("in") == "query" for p in parameters):
        statuses.add(400)
    if "requestBody" in operation:
        statuses |= {400, 413, 422}
    if parameters:
        statuses.add(422)
    return statuses


def document_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Every operation's refusals in the shape the error handlers answer (`ErrorBody`),
    with an example each, in place of FastAPI's `{"detail"}` for 422."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    shape = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(shape.pop("$defs", {}))
    schemas["ErrorBody"] = shape
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            # A refusal a route declares itself (a 404 of something not in its path) gets
            # the same shape; the probes' own 503 bodies are not errors of this shape.
            declared = {
                int(s)
                for s in responses
                if s.isdigit() and int(s) in ERROR_DOCS and operation.get("security")
            }
            for status in sorted(_refusals(path, method, operation) | declared):
                description, code, message, details = ERROR_DOCS[status]
                entry = responses.setdefault(str(status), {})
                if str(status) == "422" or not entry.get("description"):
                    entry["description"] = description
                entry["content"] = {
                    "application/json": {
                        "schema": ref,
                        "example": error_body(code, message, details),
                    }
                }
                if status == 429:
                    entry["headers"] = {
                        "Retry-After": {
                            "description": "seconds to wait",
                            "schema": {"type": "integer"},
                        }
                    }
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in json.dumps(doc):
            schemas.pop(unused, None)
    return doc


def _documented(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    return openapi


def create_app(
    service: str,
    prefix: str,
    *,
    title: str,
    description: str,
    state: dict[str, Any],
    settings: Settings | None = None,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """A service's app: its routes go under `prefix`, its docs at `prefix`/docs. With
    `settings`: behind the request guard (limits, private docs, security headers)."""
    app = FastAPI(
        title=title,
        description=description,
        version="1",
        openapi_url=f"{prefix}/openapi.json",
        docs_url=f"{prefix}/docs",
        redoc_url=None,
        generate_unique_id_function=operation_id(service),
        dependencies=[Depends(refuse_unexpected_body)],
    )
    app.openapi = _documented(app)  # type: ignore[method-assign]
    for key, value in state.items():
        setattr(app.state, key, value)
    install_error_handlers(app)
    if settings is not None:
        docs = (f"{prefix}/docs", "/docs/oauth2-redirect")  # FastAPI's redirect page
        guard_app(
            app,
            settings,
            state["tokens"],
            limiter,
            private=(f"{prefix}/docs", f"{prefix}/openapi.json"),
            docs=docs,
        )
    instrument_app(app, service)
    app.add_middleware(RequestTracing, service=service)
    return app


def instrument_app(app: FastAPI, service: str) -> None:
    """Count and time every request `app` answers (refusals of the guard too) with
    prometheus-fastapi-instrumentator: `yuqing_http_requests_total` and
    `yuqing_http_request_duration_seconds`, by route template, method, exact status and
    service (shared/metrics.py)."""
    Instrumentator(should_group_status_codes=False).add(http_instrumentation(service)).instrument(
        app
    )
