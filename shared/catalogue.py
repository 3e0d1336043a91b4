"""The names staff read for the system's ids (config/catalogue.yaml): levels, categories,
media tiers, roles, channels, statement kinds and states, obligation states, matches.

Levels, categories and statement kinds are the plan's (a pack's catalogue.yaml names its
own); an id the catalogue does not name (an event recorded under another plan) is shown by
its rank or id rather than failing.

Every text a person reads (timeline, case report, statement messages, notifications) takes
its names from here, so one file decides them and no two places can disagree.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import model_validator

from shared.events import (
    Category,
    Level,
    MediaTier,
    ObligationState,
    StatementKind,
    StatementState,
)
from shared.identity import Role
from shared.models import FrozenModel
from shared.policy import load_policy


class Catalogue(FrozenModel):
    levels: dict[Level, str]
    level_short: dict[Level, str]
    categories: dict[Category, str]
    media_tiers: dict[MediaTier, str]
    roles: dict[Role, str]
    channels: dict[str, str]
    statement_kinds: dict[StatementKind, str]
    statement_states: dict[StatementState, str]
    obligation_states: dict[ObligationState, str]
    matches: dict[str, str]

    @model_validator(mode="after")
    def _complete(self) -> Catalogue:
        for field, vocabulary in (
            ("media_tiers", MediaTier),
            ("roles", Role),
            ("statement_states", StatementState),
            ("obligation_states", ObligationState),
        ):
            names: dict[Enum, str] = getattr(self, field)
            missing = [str(getattr(v, "value", v)) for v in vocabulary if v not in names]
            if missing:
                raise ValueError(f"{field}: no name for {', '.join(missing)}")
        # Levels, categories and statement kinds are the plan's: the plan loader checks that
        # each one the plan declares has a name here (shared/plan.py); both level forms agree.
        if set(self.level_short) != set(self.levels):
            raise ValueError("level_short: name the same levels as levels")
        return self

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        return load_policy(path, cls)

    def level(self, level: Level | None) -> str:
        if level is None:
            return "未定级"
        return self.levels.get(int(level), f"第{int(level)}级")

    def level_name(self, level: Level | None) -> str:
        """The short form, as in 一级舆情."""
        if level is None:
            return "未定级"
        return self.level_short.get(int(level), f"第{int(level)}级")

    def category(self, category: str | None) -> str:
        if category is None:
            return "未分类"
        return self.categories.get(Category(category), str(category))

    def statement_kind(self, kind: str) -> str:
        return self.statement_kinds.get(StatementKind(kind), str(kind))

    def role(self, role: str) -> str:
        try:
            return self.roles[Role(role)]
        except ValueError:
            return role

    def channel(self, channel: str) -> str:
        return self.channels.get(channel, channel)

    def match(self, match: str) -> str:
        return self.matches.get(match, match)
