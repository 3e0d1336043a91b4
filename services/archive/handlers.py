"""Every event of every topic goes the same way: into the log, then its incident refolded.

The consumer has already deduplicated by event_id and opened the transaction; the log's
own `_id` check makes a replay from Kafka (a fresh consumer group) harmless as well.
"""

from __future__ import annotations

from services.archive import projections
from shared.bus import Handler
from shared.events import Envelope, event_types
from shared.store import UnitOfWork


async def record(event: Envelope, uow: UnitOfWork) -> None:
    if await projections.append_to_log(uow.db, event, uow.session):
        await projections.refresh_view(uow.db, event.incident_id, uow.session)


def handlers() -> dict[str, Handler]:
    return dict.fromkeys(event_types(), record)
