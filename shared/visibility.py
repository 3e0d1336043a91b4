"""Who may see which incident: the one rule every route of every service asks.

A principal sees the incidents of its own unit and the units below it (admin and
analyst: every unit). A partner's client sees only the incidents it referred, whatever
else its token carries, and of them only what `Sight.REFERRED` allows: the
`ReferredIncident` every service answers it with (intake, which grades nothing, its
`ReferredStanding`; `scope_filter(at_least=FULL)` leaves
it out of the bureau's records: cases, duties, the assessment, the export). An incident
outside a caller's sight answers exactly like one that does not exist, so ids cannot be
probed: `hidden()` is that one answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.directory import Directory
from shared.errors import NotFound
from shared.events import Category, IncidentStatus, Level, StatementKind
from shared.identity import Caller, Role


class Sight(Enum):
    NONE = "none"
    REFERRED = "referred"  # a partner, of an incident it referred
    FULL = "full"  # a unit concerned, or above it


@dataclass(frozen=True)
class IncidentScope:
    """What visibility is decided on: the incident's units and who filed its reports."""

    incident_id: str
    unit_ids: tuple[str, ...] = ()
    filed_by: tuple[str, ...] = ()


class PublishedLine(BaseModel):
    """One publication of a statement as it went out (the official line): what was said,
    when and where; no author, approver, comment or draft."""

    model_config = ConfigDict(extra="forbid")

    statement_id: str
    kind: StatementKind
    version: int
    title: str | None
    body: str | None
    outlet: str
    url: str
    published_at: datetime


class ReferredStanding(BaseModel):
    """Where an incident a partner referred stands (`Sight.REFERRED`): its id, status and
    the times it was closed. Intake, which grades nothing, answers a partner this (with its
    own reports) rather than a level it would always leave empty; the services that know
    the grade answer `ReferredIncident`. Never drafts, approvals, comments, obligations,
    recipients, other filers, reasons or review text; `sight` tells it from the record."""

    model_config = ConfigDict(extra="forbid")

    sight: Literal["referred"] = "referred"
    incident_id: str
    status: IncidentStatus | None = None
    resolved_at: datetime | None = None
    dismissed_at: datetime | None = None
    archived_at: datetime | None = None


class ReferredIncident(ReferredStanding):
    """All a partner sees of an incident it referred, in the services that know its grade:
    where it stands, its level and category and, where a service adds them, the partner's
    own reports and the published statements (a subclass adding only those)."""

    level: Level | None = None
    category: Category | None = None


def hidden(kind: str, key: str) -> NotFound:
    """The one answer for an id the caller may not see and for one that does not exist."""
    return NotFound(f"no {kind} {key}", {"kind": kind, "id": key})


class Visibility:
    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def units(self, caller: Caller) -> set[str] | None:
        """The units whose incidents a non-partner caller sees; None means every unit."""
        if caller.has(Role.ADMIN, Role.ANALYST) and not caller.is_partner:
            return None
        return self.directory.subtree(caller.unit)

    def sight(self, caller: Caller, incident: IncidentScope | None) -> Sight:
        if incident is None:
            return Sight.NONE
        if caller.is_partner:
            return Sight.REFERRED if caller.id in incident.filed_by else Sight.NONE
        visible = self.units(caller)
        if visible is None or visible.intersection(incident.unit_ids):
            return Sight.FULL
        return Sight.NONE

    def can_see(self, caller: Caller, incident: IncidentScope | None) -> bool:
        return self.sight(caller, incident) is not Sight.NONE

    def require(
        self,
        caller: Caller,
        incident: IncidentScope | None,
        kind: str,
        key: str,
        *,
        at_least: Sight = Sight.REFERRED,
    ) -> Sight:
        """The caller's sight of the incident, or the 404 of `kind` `key` when it is less
        than `at_least` (a partner asking for the bureau's internal records)."""
        sight = self.sight(caller, incident)
        if sight is Sight.NONE or (at_least is Sight.FULL and sight is not Sight.FULL):
            raise hidden(kind, key)
        return sight

    def acting_units(self, caller: Caller) -> set[str] | None:
        """The units in whose name the caller may file or act: its own and those below it
        (an administrator: every unit; None). Reading every unit (an analyst) lets it act
        for none beyond its own: `leader,analyst` of a school does not decide the county's."""
        if caller.has(Role.ADMIN) and not caller.is_partner:
            return None
        return self.directory.subtree(caller.unit)

    def may_file_for(self, caller: Caller, unit_ids: Iterable[str]) -> bool:
        """Whether the caller may file or act in the name of all of `unit_ids`."""
        acting = self.acting_units(caller)
        return acting is None or set(unit_ids) <= acting

    def may_act_on(self, caller: Caller, incident: IncidentScope) -> bool:
        """Whether the caller may change what the bureau does about an incident it sees:
        reading needs one unit in common, acting needs every unit the incident concerns
        (a school's leader reads an incident shared with a road section, the county decides
        it). Asked after `require`, so it only ever answers 403 for what the caller sees."""
        return not caller.is_partner and self.may_file_for(caller, incident.unit_ids)

    def scope_filter(
        self,
        caller: Caller,
        *,
        units_field: str = "unit_ids",
        filers_field: str = "filed_by",
        at_least: Sight = Sight.REFERRED,
    ) -> dict[str, Any]:
        """The same rule as a MongoDB filter, for lists, counts, searches and exports; with
        `at_least=Sight.FULL` (the bureau's records: cases, duties, the assessment, the
        event export) a partner's filter matches nothing, whatever its token carries."""
        if caller.is_partner:
            if at_least is Sight.FULL:
                return {"_id": {"$in": []}}
            return {filers_field: caller.id}
        visible = self.units(caller)
        return {} if visible is None else {units_field: {"$in": sorted(visible)}}

    def unit_in_sight(self, caller: Caller, unit_id: str) -> bool:
        visible = self.units(caller)
        return not caller.is_partner and (visible is None or unit_id in visible)

    def may_act_for_unit(self, caller: Caller, unit_id: str) -> bool:
        return not caller.is_partner and self.may_file_for(caller, [unit_id])


def scope_of(incident_id: str, unit_ids: Sequence[str], filed_by: Sequence[str]) -> IncidentScope:
    return IncidentScope(incident_id, tuple(unit_ids), tuple(filed_by))
