"""Bearer tokens that every service verifies itself.

A token carries its subject, unit and roles, signed with the deployment's key (HS256);
verifying it gives the `Caller` the domains and the visibility policy decide on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from shared.errors import Unauthorized
from shared.events import utcnow
from shared.identity import Caller, Role


class TokenService:
    """Issues and verifies the bearer tokens."""

    algorithm = "HS256"

    def __init__(self, key: str, issuer: str, default_ttl: timedelta) -> None:
        self._key = key
        self._issuer = issuer
        self._default_ttl = default_ttl

    def issue(
        self,
        sub: str,
        unit: str,
        roles: list[Role] | list[str],
        ttl: timedelta | None = None,
        name: str | None = None,
    ) -> str:
        now = utcnow()
        claims: dict[str, Any] = {
            "sub": sub,
            "unit": unit,
            "roles": sorted(Role(r).value for r in roles),
            "iss": self._issuer,
            "iat": int(now.timestamp()),
            "exp": int((now + (ttl or self._default_ttl)).timestamp()),
        }
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._key, algorithm=self.algorithm)

    def verify(self, token: str) -> Caller:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                issuer=self._issuer,
                options={"require": ["sub", "exp", "iat", "iss"]},
            )
            return Caller(
                id=claims["sub"],
                unit=claims["unit"],
                roles=frozenset(Role(r) for r in claims.get("roles", [])),
                name=claims.get("name"),
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except (jwt.InvalidTokenError, KeyError, ValueError) as exc:
            raise Unauthorized(f"invalid token: {exc}") from None


def current_caller(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    tokens: TokenService = request.app.state.tokens
    return tokens.verify(token.strip())


CurrentCaller = Annotated[Caller, Depends(current_caller)]
