"""A stop while the database is away: the consumer holding a message on a transient
failure lets it go unacknowledged at once (its offset is not committed, Kafka delivers it
again after the restart), instead of keeping the stop waiting or losing the message.
Fast: grading on the in-memory fakes, its store made unreachable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faststream.exceptions import NackMessage
from pymongo.errors import ServerSelectionTimeoutError

from services.grading.bootstrap import build
from shared.events import Envelope, MediaTier
from tests.fakes.harness import fake_service
from tests.unit.test_grading_service import T0, Upstream

pytestmark = pytest.mark.asyncio


async def test_a_stop_during_an_outage_leaves_the_message_for_redelivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report: Envelope = Upstream().report("inc-stop", MediaTier.CENTRAL)
    async with fake_service("grading", build, clock=lambda: T0) as grading:
        consumer = grading.runner.consumer
        assert consumer is not None
        store_transaction = grading.store.transaction
        failures = asyncio.Event()

        async def database_away(work: Any) -> Any:
            failures.set()
            raise ServerSelectionTimeoutError("127.0.0.1:27019: connection refused")

        monkeypatch.setattr(grading.store, "transaction", database_away)
        handling = asyncio.create_task(grading.consume(report))
        await failures.wait()  # held: retrying while the database is away
        assert not handling.done()

        consumer.stopping.set()  # what ServiceRunner.stop does first
        with pytest.raises(NackMessage):
            await handling
        print("injected: the database away, then a stop while grading held a report")
        assert grading.dead_letters == []
        assert await grading.published() == []

        # After the restart the broker delivers it again, and it is handled once.
        monkeypatch.setattr(grading.store, "transaction", store_transaction)
        consumer.stopping.clear()
        await grading.consume(report)
        (graded,) = await grading.published()
    print(f"checked: let go unacknowledged, then handled on redelivery: {graded.event_type}")
    assert graded.event_type == "IncidentGraded"
    assert graded.causation_id == report.event_id
