"""The names staff read for the system's ids (config/catalogue.yaml): levels, categories,
media tiers, roles, channels, statement kinds and states, obligation states, matches.

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
            ("levels", Level),
            ("level_short", Level),
            ("categories", Category),
            ("media_tiers", MediaTier),
            ("roles", Role),
            ("statement_kinds", StatementKind),
            ("statement_states", StatementState),
            ("obligation_states", ObligationState),
        ):
            names: dict[Enum, str] = getattr(self, field)
            missing = [str(getattr(v, "value", v)) for v in vocabulary if v not in names]
            if missing:
                raise ValueError(f"{field}: no name for {', '.join(missing)}")
        return self

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        return load_policy(path, cls)

    def level(self, level: Level | int | None) -> str:
        return self.levels[Level(level)] if level is not None else "未定级"

    def level_name(self, level: Level | int | None) -> str:
        """The short form, as in 一级舆情."""
        return self.level_short[Level(level)] if level is not None else "未定级"

    def category(self, category: Category | str | None) -> str:
        return self.categories[Category(category)] if category is not None else "未分类"

    def role(self, role: str) -> str:
        try:
            return self.roles[Role(role)]
        except ValueError:
            return role

    def channel(self, channel: str) -> str:
        return self.channels.get(channel, channel)

    def match(self, match: str) -> str:
        return self.matches.get(match, match)
