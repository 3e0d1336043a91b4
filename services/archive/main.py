"""The archive service: the complete history of every incident and the views read from it."""

from __future__ import annotations

from collections.abc import Mapping
from zoneinfo import ZoneInfo

from fastapi import APIRouter

from services.archive import api, projections
from services.archive.handlers import handlers as archive_handlers
from shared.bus import Handler
from shared.events import ALL_TOPICS
from shared.service import Service


class ArchiveService(Service):
    name = "archive"
    prefix = "/archive/v1"
    title = "yuqing archive"
    description = (
        "Every event of every topic, hash-chained per incident; the incident list, the "
        "incident view (also as it stood at any past time), the timeline and chain checks."
    )
    consumes = ALL_TOPICS

    def handlers(self) -> Mapping[str, Handler]:
        return archive_handlers()

    def routes(self) -> APIRouter:
        return api.routes(self.db, self.directory, ZoneInfo(self.settings.timezone))

    async def setup(self) -> None:
        await projections.ensure_indexes(self.db)
