"""What the archive does: record every consumed event, and review a resolved incident.

Recording. Every event of every topic goes the same way: into the log, then its incident
refolded. The consumer has already deduplicated by event_id and opened the transaction;
the log's own `_id` check makes a replay from Kafka (a fresh consumer group) harmless too.

Reviewing. The review of a resolution is decided on the incident's log as it stands in the
same transaction, and saved to the archive's own stream through the repository; a second
review of the same resolution, concurrent or not, is a conflict. The two events reach the
log through Kafka like every other event, so the view turns `archived` from the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.archive.domain import causal_order, fold
from services.archive.domain.review import (
    Review,
    ReviewDecision,
    ReviewLog,
    decide_review,
)
from services.archive.projections import ArchiveViews
from shared.bus import current_delivery
from shared.clock import Clock
from shared.events import Envelope
from shared.handlers import Delivery
from shared.identity import Caller
from shared.repository import Cause, CommandRunner, Repository
from shared.store import UnitOfWork


class Recorder:
    def __init__(self, views: ArchiveViews) -> None:
        self.views = views

    async def record(self, event: Envelope, uow: UnitOfWork) -> None:
        # One read of the incident's log serves the duplicate check and the fold.
        records = await self.views.load_log(event.incident_id, uow)
        # With the producer and signature the consumer checked it came with.
        if await self.views.append_to_log(uow, event, records, current_delivery()):
            await self.views.refresh(uow, event.incident_id, records)

    async def record_all(
        self, batch: Sequence[tuple[Envelope, Delivery | None]], uow: UnitOfWork
    ) -> None:
        """Several events at once (the consumer's batch), each as `record` would."""
        await self.views.record_all(uow, batch)


@dataclass(frozen=True)
class ReviewText:
    cause: str
    handling: str
    lessons: str


class ReviewCommands:
    def __init__(
        self,
        views: ArchiveViews,
        reviews: Repository[ReviewLog],
        run: CommandRunner,
        clock: Clock,
    ) -> None:
        self.views = views
        self.reviews = reviews
        self.run = run
        self.clock = clock

    async def review(self, caller: Caller, incident_id: str, text: ReviewText) -> Review:
        """Record the review of the incident's latest resolution and archive it as a case."""

        async def work(uow: UnitOfWork) -> Review:
            records = await self.views.load_log(incident_id, uow)
            decision = ReviewDecision(
                cause=text.cause,
                handling=text.handling,
                lessons=text.lessons,
                reviewed_by=caller.id,
                at=self.clock(),
            )
            log = await self.reviews.get(uow, incident_id)
            view = fold(incident_id, records)
            decided = decide_review(view, causal_order(records), log, decision)
            recorded = await self.reviews.save(
                uow,
                incident_id,
                log,
                [decided.recorded],
                Cause.of(decided.resolution, caller.actor, occurred_at=decision.at),
            )
            assert recorded is not None
            await self.reviews.save(
                uow,
                incident_id,
                recorded.aggregate,
                [decided.archived],
                Cause.of(recorded.events[0], caller.actor, occurred_at=decision.at),
            )
            return decided

        return await self.run(work)
