"""The archive service: the complete history of every incident and the views read from it."""

from __future__ import annotations

from collections.abc import Mapping
from zoneinfo import ZoneInfo

from fastapi import APIRouter

from services.archive import api, projections
from services.archive.handlers import handlers as archive_handlers
from services.archive.report import CaseReport
from shared.bus import Handler
from shared.events import ALL_TOPICS
from shared.service import Service


class ArchiveService(Service):
    name = "archive"
    prefix = "/archive/v1"
    title = "yuqing archive"
    description = (
        "Every event of every topic, hash-chained per incident; the incident list, the "
        "incident view (also as it stood at any past time), the timeline and chain checks; "
        "the review of resolved incidents, the case library, the assessment (考评) and replay."
    )
    consumes = ALL_TOPICS

    def handlers(self) -> Mapping[str, Handler]:
        return archive_handlers()

    def routes(self) -> APIRouter:
        tz = ZoneInfo(self.settings.timezone)
        report = CaseReport(self.settings.archive_report_template, self.directory, tz)
        return api.routes(
            self.store, self.directory, tz, report, self.settings.archive_replay_batch_size
        )

    async def setup(self) -> None:
        await projections.ensure_indexes(self.db)
        await projections.abandon_interrupted_replays(self.db)
