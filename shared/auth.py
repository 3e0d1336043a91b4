"""Bearer tokens that every service verifies itself.

A token carries its subject, unit and roles, signed with the deployment's key (HS256,
PyJWT); verifying it gives the `Caller` the domains and the visibility policy decide on.

Every token names its id (`jti`), its audience (`aud`, `YUQING_TOKEN_AUDIENCE`), its
issuer, when it was issued and when it expires; verification requires all of them. No
token lives longer than `YUQING_TOKEN_MAX_TTL_SECONDS`: none is minted for longer, and one
that says it lives longer is refused. A token whose id is in the revocation list (a file,
`YUQING_TOKEN_REVOCATION_PATH`, one id a line, read at start and again whenever it
changes) is refused. The signing key's strength is checked when the services start: at
least 32 bytes, or production does not start.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict, TypeVar

import jwt
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, Unauthorized
from shared.events import utcnow
from shared.identity import Caller, Role
from shared.logging import get_logger
from shared.signing import weak_secret

if TYPE_CHECKING:
    from shared.settings import Settings

log = get_logger("yuqing.auth")
T = TypeVar("T")

# Where the request guard (shared.api) leaves the token it verified and its claims, so
# that a request's token is verified once.
VERIFIED_SCOPE_KEY = "yuqing.verified_token"
# The console's session (shared/console.py): the same token, in an httpOnly cookie, and
# the readable cookie a state-changing request must echo in CSRF_HEADER.
SESSION_COOKIE = "yuqing_session"
CSRF_COOKIE = "yuqing_csrf"
CSRF_HEADER = "x-csrf-token"
DEFAULT_AUDIENCE = "yuqing"
DEFAULT_MAX_TTL = timedelta(days=30)


class WeakSecret(SystemExit):
    """The signing key is too short for production: the process stops with this message
    (a configuration error, not a failure to report as a traceback)."""


class TokenTooLong(ValueError):
    """A token asked for a lifetime beyond the configured maximum."""


def check_secret(key: str, *, production: bool) -> str | None:
    """Why the key is too weak, or None. Production refuses a weak key; development is
    warned."""
    problem = weak_secret(key.encode(), "YUQING_SECRET", "a token signing key")
    if problem is None:
        return None
    if production:
        raise WeakSecret(f"error: {problem}; production does not start with a weak key")
    log.warning("weak_secret", problem=problem)
    return problem


class WatchedFile:
    """A file read again whenever it changes (its size, time or inode), so that every
    process reading the same file (a mounted ConfigMap or volume in the distributed shape)
    acts on the same contents without a restart."""

    def __init__(self, path: Path | None, unreadable: str) -> None:
        self.path = path
        self.unreadable = unreadable  # the log event when it cannot be read
        self._seen: tuple[int, int, int] | None = None

    def read_if_changed(self, parse: Callable[[str], T], missing: T) -> T | None:
        """The parsed contents when the file changed since the last read (`missing` when
        there is no file), None when it did not change or cannot be read or parsed: what
        was read last then stands, rather than forgetting revocations or keys."""
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen = None
            return missing
        except OSError as exc:
            log.warning(self.unreadable, path=str(self.path), error=str(exc))
            return None
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return None
        try:
            parsed = parse(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning(self.unreadable, path=str(self.path), error=str(exc))
            return None
        self._seen = seen
        return parsed


def _revoked_ids(text: str) -> frozenset[str]:
    ids = (line.split(maxsplit=1) for line in text.splitlines())
    return frozenset(w[0] for w in ids if w and not w[0].startswith("#"))


class RevocationList:
    """The ids (`jti`) of revoked tokens: a text file, one id a line (what follows the id
    on its line, and lines starting with '#', are notes). Read when made and re-read
    whenever the file changes (its size, time or inode), so every process that reads the
    same file (a mounted ConfigMap or volume in the distributed shape) refuses the same
    tokens without a restart. No file: nothing is revoked."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = WatchedFile(path, "revocation_list_unreadable")
        self._ids: frozenset[str] = frozenset()
        self._refresh()

    def _refresh(self) -> None:
        ids: frozenset[str] | None = self._file.read_if_changed(_revoked_ids, frozenset[str]())
        if ids is not None:
            self._ids = ids

    def __contains__(self, jti: object) -> bool:
        self._refresh()
        return jti in self._ids

    def revoke(self, jti: str, note: str = "") -> bool:
        """Add `jti` to the file; False when it was revoked already."""
        if self.path is None:
            raise ValueError("no revocation list is configured")
        if jti in self:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{jti}  # {note}\n" if note else f"{jti}\n"
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)
        self._refresh()
        return True


# --------------------------------------------------------------------------- partner API keys

API_KEY_HEADER = "X-API-Key"
API_KEY_PREFIX = "yq"  # a key reads yq_<key id>_<secret>: the id finds its record


class ApiKeyRecord(TypedDict):
    sha256: str
    client_id: str
    unit: str
    name: str | None
    created_at: str
    revoked_at: str | None


class ApiKeys:
    """Partner API keys, stored only as hashes: a JSON file (`YUQING_API_KEYS_PATH`) of
    {key id: {sha256, client_id, unit, name, created_at, revoked_at}}. A key is
    `yq_<id>_<secret>` with 256 random bits of secret, so its SHA-256 cannot be reversed
    and is compared in constant time; the key itself is printed once and kept nowhere.
    Re-read whenever the file changes, so a key made or revoked by `yuqing key` counts in
    every running process without a restart. A key acts as a partner's client
    (`Role.PARTNER`) of its unit and nothing else."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = WatchedFile(path, "api_keys_unreadable")
        self._records: dict[str, ApiKeyRecord] = {}
        self._refresh()

    def _refresh(self) -> None:
        empty: dict[str, ApiKeyRecord] = {}
        records: dict[str, ApiKeyRecord] | None = self._file.read_if_changed(json.loads, empty)
        if records is not None:
            self._records = records

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def records(self) -> dict[str, ApiKeyRecord]:
        self._refresh()
        return dict(self._records)

    def create(self, client_id: str, unit: str, name: str | None = None) -> tuple[str, str]:
        """A new key for the partner's client `client_id` of `unit`: (key id, key). Only
        its hash is written; the key is for the caller to hand over once."""
        if self.path is None:
            raise ValueError("no API key file is configured")
        key_id = secrets.token_hex(6)
        key = f"{API_KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        records = self.records()
        records[key_id] = ApiKeyRecord(
            sha256=self._digest(key),
            client_id=client_id,
            unit=unit,
            name=name,
            created_at=utcnow().isoformat(timespec="seconds"),
            revoked_at=None,
        )
        self._write(records)
        return key_id, key

    def revoke(self, key_id: str) -> bool | None:
        """Revoke a key by its id: False when it was revoked already, None when unknown."""
        records = self.records()
        record = records.get(key_id)
        if record is None:
            return None
        if record["revoked_at"] is not None:
            return False
        record["revoked_at"] = utcnow().isoformat(timespec="seconds")
        self._write(records)
        return True

    def _write(self, records: dict[str, ApiKeyRecord]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        fresh.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
        fresh.chmod(0o600)
        fresh.replace(self.path)  # atomic: a reader sees the old file or the new one
        self._refresh()

    def verify(self, key: str) -> Caller:
        """The partner's client `key` belongs to, or `Unauthorized` saying why not."""
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        record = self.records().get(key_id) if prefix == API_KEY_PREFIX and secret else None
        if record is None or not hmac.compare_digest(record["sha256"], self._digest(key)):
            raise Unauthorized("invalid API key")
        if record["revoked_at"] is not None:
            raise Unauthorized("API key revoked")
        return Caller(
            id=record["client_id"],
            unit=record["unit"],
            roles=frozenset({Role.PARTNER}),
            name=record["name"],
        )


class TokenService:
    """Issues and verifies the bearer tokens."""

    algorithm = "HS256"

    def __init__(
        self,
        key: str,
        issuer: str,
        default_ttl: timedelta,
        *,
        audience: str = DEFAULT_AUDIENCE,
        max_ttl: timedelta = DEFAULT_MAX_TTL,
        revoked: RevocationList | None = None,
        api_keys: ApiKeys | None = None,
    ) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self.max_ttl = max_ttl
        self._default_ttl = min(default_ttl, max_ttl)
        self.revoked = revoked or RevocationList(None)
        self.api_keys = api_keys or ApiKeys(None)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenService:
        """The tokens of a deployment; a weak key stops production here (`WeakSecret`)."""
        key = settings.signing_key
        check_secret(key, production=settings.environment == "production")
        return cls(
            key,
            settings.token_issuer,
            timedelta(seconds=settings.token_ttl_seconds),
            audience=settings.token_audience,
            max_ttl=timedelta(seconds=settings.token_max_ttl_seconds),
            revoked=RevocationList(settings.revocation_path),
            api_keys=ApiKeys(settings.api_keys_file),
        )

    def issue(
        self,
        sub: str,
        unit: str,
        roles: list[Role] | list[str],
        ttl: timedelta | None = None,
        name: str | None = None,
    ) -> str:
        lifetime = self._default_ttl if ttl is None else ttl
        if lifetime > self.max_ttl:
            raise TokenTooLong(
                f"a token lives at most {_human(self.max_ttl)} "
                f"(YUQING_TOKEN_MAX_TTL_SECONDS={int(self.max_ttl.total_seconds())}); "
                f"{_human(lifetime)} was asked"
            )
        now = utcnow()
        claims: dict[str, Any] = {
            "sub": sub,
            "unit": unit,
            "roles": sorted(Role(r).value for r in roles),
            "iss": self._issuer,
            "aud": self._audience,
            "jti": uuid.uuid4().hex,
            "iat": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
        }
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._key, algorithm=self.algorithm)

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of `token`, or `Unauthorized` saying why not."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["sub", "exp", "iat", "iss", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        if claims["exp"] - claims["iat"] > self.max_ttl.total_seconds():
            raise Unauthorized(
                f"invalid token: it lives longer than the maximum of {_human(self.max_ttl)}"
            )
        if claims["jti"] in self.revoked:
            raise Unauthorized("token revoked")
        return claims

    def verify(self, token: str) -> Caller:
        return self.caller(self.claims(token))

    @staticmethod
    def caller(claims: dict[str, Any]) -> Caller:
        """The caller verified `claims` name."""
        try:
            return Caller(
                id=claims["sub"],
                unit=claims["unit"],
                roles=frozenset(Role(r) for r in claims.get("roles", [])),
                name=claims.get("name"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise Unauthorized(f"invalid token: {exc}") from None


def _human(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_caller(request: Request) -> Caller:
    """Who is calling: a partner's API key (`X-API-Key`), else the bearer token, else the
    console's session cookie (a write with its CSRF header)."""
    key = request.headers.get(API_KEY_HEADER)
    if key is not None:
        keys: ApiKeys = request.app.state.tokens.api_keys
        return keys.verify(key.strip())
    token = bearer_token(request)
    if token is None and not request.headers.get("authorization"):
        token = request.cookies.get(SESSION_COOKIE) or None
        if token and request.method not in ("GET", "HEAD", "OPTIONS"):
            csrf = request.cookies.get(CSRF_COOKIE, "")
            sent = request.headers.get(CSRF_HEADER, "")
            if not csrf or not hmac.compare_digest(csrf.encode(), sent.encode()):
                raise Forbidden(
                    "a signed-in request that changes something needs the X-CSRF-Token "
                    "header (the yuqing_csrf cookie's value)",
                    {"csrf": "missing or wrong"},
                )
    if token is None:
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    verified = request.scope.get(VERIFIED_SCOPE_KEY)
    if verified is not None and verified[0] == token:  # the request guard verified it
        return TokenService.caller(verified[1])
    tokens: TokenService = request.app.state.tokens
    return tokens.verify(token)


# The schemes as OpenAPI names them, so Swagger's "Try it out" sends a token or a key; the
# answer is `current_caller`'s (these never refuse by themselves).
_BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    auto_error=False,
    description="A token from `yuqing token` (or the console's sign-in)",
)
_API_KEY = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="partnerKey",
    auto_error=False,
    description="A partner's API key from `yuqing key create` (acts as a partner)",
)


def authenticated(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
    _key: Annotated[str | None, Security(_API_KEY)],
) -> Caller:
    return current_caller(request)


CurrentCaller = Annotated[Caller, Depends(authenticated)]
