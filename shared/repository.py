"""The one write path: load an aggregate from its stream, decide, save what was decided.

A `Repository` knows how a stream is named and how its events fold into the aggregate.
`save` numbers the new events after the version the aggregate was loaded at (the caller
never writes a version), appends them, and runs the service's projectors in the same
transaction, so the read models never lag the log. A writer that lost the race to that
version gets `ConcurrencyConflict`, which `CommandRunner` answers by deciding again.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import structlog

from shared.errors import StillConflicting
from shared.events import Actor, Envelope, EventPayload
from shared.store import DecideAgain, EventStore, UnitOfWork
from shared.tracing import request_correlation

log = structlog.get_logger("yuqing.repository")

T = TypeVar("T")


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


A = TypeVar("A", bound=Versioned)

Evolve = Callable[[A | None, Envelope], A]
Projector = Callable[[Envelope, UnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class Cause:
    """What new events record of where they came from: who, about which incident, and the
    event or request that led to them."""

    actor: Actor
    incident_id: str
    unit_id: str | None = None
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    occurred_at: datetime | None = None  # when it happened in the world; now by default

    @classmethod
    def of(cls, event: Envelope, actor: Actor, occurred_at: datetime | None = None) -> Cause:
        """Caused by a consumed event: the same incident and correlation, the event as cause."""
        return cls(
            actor=actor,
            incident_id=event.incident_id,
            unit_id=event.unit_id,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
            occurred_at=occurred_at,
        )


@dataclass(frozen=True)
class Saved(Generic[A]):
    aggregate: A
    events: list[Envelope]


class Repository(Generic[A]):
    def __init__(
        self,
        stream_of: Callable[[str], str],
        evolve: Evolve[A],
        projectors: Sequence[Projector] = (),
    ) -> None:
        self.stream_of = stream_of
        self.evolve = evolve
        self.projectors = list(projectors)

    def fold(self, events: Sequence[Envelope]) -> A | None:
        aggregate: A | None = None
        for event in events:
            aggregate = self.evolve(aggregate, event)
        return aggregate

    async def get(self, uow: UnitOfWork, key: str) -> A | None:
        """The aggregate as its stream tells it, at its version; None for no stream."""
        return self.fold(await uow.load(self.stream_of(key)))

    async def save(
        self,
        uow: UnitOfWork,
        key: str,
        current: A | None,
        payloads: Sequence[EventPayload],
        cause: Cause,
    ) -> Saved[A] | None:
        """Append `payloads` after `current` (None: a new stream) and project them.

        None when nothing was decided."""
        if not payloads:
            return None
        version = current.version if current is not None else 0
        # A command's events carry the correlation id (the trace) of the request behind it.
        correlation = cause.correlation_id or request_correlation() or uuid.uuid4()
        envelopes = [
            Envelope.new(
                payload,
                incident_id=cause.incident_id,
                stream_id=self.stream_of(key),
                stream_version=version + offset,
                actor=cause.actor,
                unit_id=cause.unit_id,
                correlation_id=correlation,
                causation_id=cause.causation_id,
                occurred_at=cause.occurred_at,
            )
            for offset, payload in enumerate(payloads, start=1)
        ]
        stored = await uow.append(envelopes, expected_version=version)
        after = current
        for event in stored:
            after = self.evolve(after, event)
            for project in self.projectors:
                await project(event, uow)
        assert after is not None
        return Saved(after, stored)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a command is decided again when another writer got there first."""

    attempts: int = 5
    first_backoff: float = 0.01
    max_backoff: float = 0.2


class CommandRunner:
    """Runs a unit of work in a transaction; a lost race decides again, up to the policy."""

    def __init__(self, store: EventStore, policy: RetryPolicy) -> None:
        self.store = store
        self.policy = policy

    async def __call__(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        backoff = self.policy.first_backoff
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return await self.store.transaction(work)
            except DecideAgain as exc:
                log.info("lost a race, deciding again", attempt=attempt, reason=str(exc))
                if attempt == self.policy.attempts:
                    break
                # Jittered, so writers that collided once do not collide again in step.
                await asyncio.sleep(random.uniform(0, backoff))  # noqa: S311
                backoff = min(backoff * 2, self.policy.max_backoff)
        raise StillConflicting(
            "the record kept changing while this was decided; try again",
            {"attempts": self.policy.attempts},
        )
