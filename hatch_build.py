"""The wheel carries the built console (console/dist, made by `npm run build`) as
shared/console_dist when it has been built, so an installed wheel and the image serve it
at `/`. A checkout without Node still builds a wheel: it serves the API alone and `/`
says how to build the console."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        dist = Path(self.root) / "console" / "dist"
        if (dist / "index.html").is_file():
            build_data["force_include"][str(dist)] = "shared/console_dist"
