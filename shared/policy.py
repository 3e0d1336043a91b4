"""Loading a deployment's policy files (YAML) into typed models, failing at start-up with a
message that names the file and the entry at fault rather than a bare validation dump.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, PlainSerializer, ValidationError

M = TypeVar("M", bound=BaseModel)

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_CLOCK_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class PolicyError(ValueError):
    """A policy file that cannot be used as written."""


def parse_duration(value: Any) -> timedelta:
    """'30m', '4h', '1d', '10s': the way a policy states a deadline."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{value!r} is not a positive duration like '30m', '4h', '1d' or '10s'")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def parse_clock_time(value: Any) -> time:
    """'HH:MM' in quotes: YAML reads an unquoted 23:59 as the number 1439."""
    match = _CLOCK_TIME.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a time of day written in quotes, like '23:59'")
    return time(int(match.group(1)), int(match.group(2)))


def format_duration(value: timedelta) -> str:
    """A duration the way a policy file writes it, in its largest whole unit: what
    `parse_duration` reads back (a stored snapshot of a policy is read like the file)."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_clock_time(value: time) -> str:
    return value.strftime("%H:%M")


# How a policy file writes a duration ('30m') and a local time of day ('23:59'); dumped as
# JSON they are written the same way, so a snapshot reads back as the file did.
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
ClockTime = Annotated[
    time,
    BeforeValidator(parse_clock_time),
    PlainSerializer(format_clock_time, return_type=str, when_used="json"),
]


def load_policy(path: Path, model: type[M]) -> M:
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise PolicyError(f"policy file {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {path} is not valid YAML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise PolicyError(f"policy file {path}: {problems}") from exc
