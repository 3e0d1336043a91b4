"""The model bases every module shares: immutable and strict about unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """An immutable value that refuses fields it does not declare (events, policies)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
