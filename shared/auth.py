"""Bearer tokens that every service verifies itself, and the organisation they refer to.

A token carries its subject, unit and roles, signed with the deployment's key (HS256).
A principal sees its own unit and the units below it; a partner sees only what it referred.
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import jwt
import yaml
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Forbidden, Unauthorized
from shared.events import Actor, utcnow


class Role(str, Enum):
    ADMIN = "admin"
    MONITOR = "monitor"
    LEADER = "leader"
    OFFICE = "office"
    PROPAGANDA = "propaganda"
    DEPT_HEAD = "dept_head"
    SPOKESPERSON = "spokesperson"
    PARTNER = "partner"
    ANALYST = "analyst"


class Principal(BaseModel):
    model_config = ConfigDict(frozen=True)

    sub: str
    unit: str
    roles: frozenset[Role]
    name: str | None = None

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    def require(self, *roles: Role) -> None:
        if not self.has(Role.ADMIN, *roles):
            wanted = ", ".join(r.value for r in roles)
            raise Forbidden(f"this needs one of the roles: {wanted}")

    @property
    def actor(self) -> Actor:
        kind = "client" if Role.PARTNER in self.roles else "person"
        return Actor(type=kind, id=self.sub, unit_id=self.unit)


class Person(BaseModel):
    id: str
    name: str
    unit: str
    roles: list[Role]
    contacts: dict[str, str] = Field(default_factory=dict)


class Unit(BaseModel):
    id: str
    name: str
    parent: str | None = None


class Directory(BaseModel):
    """The organisation: units in a tree under the county bureau, and the people in them."""

    units: list[Unit]
    people: list[Person] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Directory:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        directory = cls.model_validate(data)
        known = {u.id for u in directory.units}
        for unit in directory.units:
            if unit.parent is not None and unit.parent not in known:
                raise ValueError(f"{path}: unit {unit.id} has unknown parent {unit.parent}")
        for person in directory.people:
            if person.unit not in known:
                raise ValueError(f"{path}: person {person.id} is in unknown unit {person.unit}")
        return directory

    def unit(self, unit_id: str) -> Unit | None:
        return next((u for u in self.units if u.id == unit_id), None)

    def subtree(self, unit_id: str) -> set[str]:
        """The unit and every unit below it."""
        found = {unit_id}
        changed = True
        while changed:
            below = {u.id for u in self.units if u.parent in found}
            changed = not below <= found
            found |= below
        return found

    def visible_units(self, principal: Principal) -> set[str] | None:
        """Units whose incidents the principal may see; None means every unit."""
        if principal.has(Role.ADMIN, Role.ANALYST):
            return None
        return self.subtree(principal.unit)

    def can_act_for(self, principal: Principal, unit_ids: list[str] | tuple[str, ...]) -> bool:
        visible = self.visible_units(principal)
        return visible is None or set(unit_ids) <= visible

    def people_with(self, role: Role, unit_id: str | None = None) -> list[Person]:
        return [
            p for p in self.people if role in p.roles and (unit_id is None or p.unit == unit_id)
        ]


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

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                issuer=self._issuer,
                options={"require": ["sub", "exp", "iat", "iss"]},
            )
            return Principal(
                sub=claims["sub"],
                unit=claims["unit"],
                roles=frozenset(Role(r) for r in claims.get("roles", [])),
                name=claims.get("name"),
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except (jwt.InvalidTokenError, KeyError, ValueError) as exc:
            raise Unauthorized(f"invalid token: {exc}") from None


def current_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    tokens: TokenService = request.app.state.tokens
    return tokens.verify(token.strip())


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
