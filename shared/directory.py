"""The organisation: units in a tree under the county bureau, and the people in them."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from shared.identity import Role


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

    def unit_name(self, unit_id: str) -> str:
        unit = self.unit(unit_id)
        return unit.name if unit else unit_id

    def person(self, person_id: str) -> Person | None:
        return next((p for p in self.people if p.id == person_id), None)

    def subtree(self, unit_id: str) -> set[str]:
        """The unit and every unit below it."""
        found = {unit_id}
        changed = True
        while changed:
            below = {u.id for u in self.units if u.parent in found}
            changed = not below <= found
            found |= below
        return found

    def upward(self, unit_id: str) -> list[str]:
        """The unit and the units above it, nearest first."""
        found: list[str] = []
        current: str | None = unit_id
        while current is not None and current not in found:
            found.append(current)
            unit = self.unit(current)
            current = unit.parent if unit else None
        return found

    def people_with(self, role: Role, unit_id: str | None = None) -> list[Person]:
        return [
            p for p in self.people if role in p.roles and (unit_id is None or p.unit == unit_id)
        ]
