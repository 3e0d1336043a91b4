"""Who is acting: the roles of the directory and the plain facts of one caller.

Pure: the domains decide on a `Caller` (id, unit, roles) and know nothing of tokens,
cookies or HTTP. `shared.auth` turns a verified token into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shared.errors import Forbidden
from shared.events import Actor


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


@dataclass(frozen=True)
class Caller:
    """A person or a partner's client making a request: id, unit and roles."""

    id: str
    unit: str
    roles: frozenset[Role]
    name: str | None = None

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    def require(self, *roles: Role) -> None:
        """One of `roles`, or admin; Forbidden otherwise."""
        if not self.has(Role.ADMIN, *roles):
            wanted = ", ".join(r.value for r in roles)
            raise Forbidden(f"this needs one of the roles: {wanted}", {"roles": wanted})

    @property
    def is_partner(self) -> bool:
        """An outside agency's client: whatever else its token carries, it sees as a partner."""
        return Role.PARTNER in self.roles

    @property
    def actor(self) -> Actor:
        kind = "client" if self.is_partner else "person"
        return Actor(type=kind, id=self.id, unit_id=self.unit)
