"""What a test plays of the other services: a settable clock, and events about incidents
numbered per stream as their own services number them."""

from __future__ import annotations

from datetime import datetime

from shared.events import Actor, Envelope, EventPayload


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Streams:
    """Events of other services, each the next version of its stream."""

    def __init__(self, at: datetime, actor: Actor, unit_id: str | None = None) -> None:
        self.at = at
        self.actor = actor
        self.unit_id = unit_id
        self.versions: dict[str, int] = {}

    def event(
        self,
        incident_id: str,
        payload: EventPayload,
        stream: str = "incident",
        at: datetime | None = None,
    ) -> Envelope:
        key = f"{stream}-{incident_id}"
        self.versions[key] = self.versions.get(key, 0) + 1
        return Envelope.new(
            payload,
            incident_id=incident_id,
            stream_id=key,
            stream_version=self.versions[key],
            actor=self.actor,
            unit_id=self.unit_id,
            occurred_at=self.at if at is None else at,
        )
