"""The one write path (repository, command runner), the error table and the handler map,
on the in-memory store."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.api import status_of
from shared.errors import Conflict, Forbidden, Invalid, NotFound, StillConflicting
from shared.events import (
    GRADING_TOPIC,
    INTAKE_TOPIC,
    Actor,
    Envelope,
    IncidentReopened,
    IncidentResolved,
)
from shared.handlers import HandlerMap
from shared.repository import Cause, CommandRunner, Repository, RetryPolicy
from shared.store import ConcurrencyConflict, UnitOfWork
from tests.fakes.mongo import FakeMongo

LEADER = Actor(type="person", id="leader-zhang")


@dataclass(frozen=True)
class Closings:
    """A toy aggregate: how often an incident was resolved and reopened."""

    version: int
    resolved: int


def evolve(current: Closings | None, event: Envelope) -> Closings:
    done = (current.resolved if current else 0) + isinstance(event.payload, IncidentResolved)
    return Closings(event.stream_version, done)


def repository(seen: list[str]) -> Repository[Closings]:
    async def project(event: Envelope, uow: UnitOfWork) -> None:
        seen.append(event.event_type)
        await uow.db["views"].update_one(
            {"_id": event.incident_id}, {"$inc": {"events": 1}}, upsert=True, session=uow.session
        )

    return Repository(lambda key: f"closings-{key}", evolve, [project])


async def test_save_numbers_the_events_after_the_loaded_version_and_projects_them() -> None:
    store = FakeMongo().store("probe")
    await store.ensure_indexes()
    seen: list[str] = []
    repo = repository(seen)
    cause = Cause(LEADER, "inc-1", "school-a")

    async def resolve_twice(uow: UnitOfWork) -> Closings:
        current = await repo.get(uow, "inc-1")
        saved = await repo.save(
            uow,
            "inc-1",
            current,
            [IncidentResolved(reason="a"), IncidentReopened(reason="b")],
            cause,
        )
        assert saved is not None
        return saved.aggregate

    first = await store.transaction(resolve_twice)
    second = await store.transaction(resolve_twice)

    assert (first.version, second.version, second.resolved) == (2, 4, 2)
    stream = await store.load("closings-inc-1")
    assert [e.stream_version for e in stream] == [1, 2, 3, 4]
    assert {e.correlation_id for e in stream[:2]} != {e.correlation_id for e in stream[2:]}
    assert seen == ["IncidentResolved", "IncidentReopened"] * 2
    view = await store.db["views"].find_one({"_id": "inc-1"})
    assert view is not None
    assert view["events"] == 4


async def test_a_failed_command_leaves_neither_events_nor_projections() -> None:
    store = FakeMongo().store("probe")
    await store.ensure_indexes()
    repo = repository([])

    async def resolve_then_refuse(uow: UnitOfWork) -> None:
        await repo.save(uow, "inc-2", None, [IncidentResolved(reason="a")], Cause(LEADER, "inc-2"))
        raise Forbidden("not yours")

    with pytest.raises(Forbidden):
        await store.transaction(resolve_then_refuse)
    assert await store.load("closings-inc-2") == []
    assert await store.db["views"].find_one({"_id": "inc-2"}) is None


async def test_a_lost_race_is_decided_again_and_a_storm_ends_in_a_clear_conflict() -> None:
    store = FakeMongo().store("probe")
    await store.ensure_indexes()
    repo = repository([])
    run = CommandRunner(store, RetryPolicy(attempts=3, first_backoff=0, max_backoff=0))
    tries: list[int] = []

    async def racing(uow: UnitOfWork) -> Closings:
        current = await repo.get(uow, "inc-3")
        tries.append(current.version if current else 0)
        if len(tries) == 1:  # another writer gets there between this read and this write
            await uow.append(
                [
                    Envelope.new(
                        IncidentResolved(reason="other"),
                        incident_id="inc-3",
                        stream_id="closings-inc-3",
                        stream_version=1,
                        actor=LEADER,
                    )
                ],
                expected_version=0,
            )
            raise ConcurrencyConflict("closings-inc-3", 0)
        saved = await repo.save(
            uow, "inc-3", current, [IncidentResolved(reason="mine")], Cause(LEADER, "inc-3")
        )
        assert saved is not None
        return saved.aggregate

    # The first attempt's own write is rolled back with it; the second decides afresh.
    decided = await run(racing)
    assert tries == [0, 0]
    assert decided.version == 1

    async def always_losing(uow: UnitOfWork) -> None:
        raise ConcurrencyConflict("closings-inc-4", 0)

    with pytest.raises(StillConflicting) as exhausted:
        await run(always_losing)
    assert exhausted.value.details == {"attempts": 3}


def test_one_table_decides_the_status_of_every_kind_of_domain_error() -> None:
    class SelfApproval(Forbidden):
        code = "self_approval"

    assert status_of(SelfApproval("own draft")) == 403
    assert status_of(NotFound("x")) == 404
    assert status_of(StillConflicting("busy")) == 409
    assert status_of(Conflict("state")) == 409
    assert status_of(Invalid("fulfilled_at", "before counted_from", "early")) == 422


def test_the_handler_map_is_checked_against_the_topics_subscribed() -> None:
    async def handle(event: Envelope, payload: IncidentResolved, uow: UnitOfWork) -> None:
        return None

    handlers = HandlerMap().on(IncidentResolved, handle)
    handlers.check("probe", (INTAKE_TOPIC,))
    with pytest.raises(ValueError, match="does not subscribe"):
        handlers.check("probe", ())
    with pytest.raises(ValueError, match="handles none of it"):
        handlers.check("probe", (INTAKE_TOPIC, GRADING_TOPIC))
    with pytest.raises(ValueError, match="two handlers"):
        handlers.on(IncidentResolved, handle)
