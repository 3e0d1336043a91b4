"""Causal order: the one order every view and the timeline fold an incident's log in.

One incident's events arrive on five topics, each in order, but the topics are consumed
independently, so the archive may ingest a grade before the opening it follows. Nothing
depends on ingest order across topics: an incident's log is sorted by `occurred_at`, then
by ingest sequence, and then corrected so that no event comes before the event recorded as
its cause (a guard against clocks that disagree between services).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from shared.events import Envelope


@dataclass(frozen=True)
class Logged:
    """One event as the archive stored it: `seq` is its place in the global ingest order."""

    seq: int
    event: Envelope


def causal_order(records: Iterable[Logged]) -> list[Logged]:
    """Sort by (occurred_at, seq), then move any event that precedes its cause to just after it."""
    ordered = sorted(records, key=lambda r: (r.event.occurred_at, r.seq))
    present = {r.event.event_id for r in ordered}
    emitted: set[uuid.UUID] = set()
    waiting: dict[uuid.UUID, list[Logged]] = {}
    out: list[Logged] = []

    def emit(first: Logged) -> None:
        stack = [first]
        while stack:
            record = stack.pop()
            out.append(record)
            emitted.add(record.event.event_id)
            stack.extend(reversed(waiting.pop(record.event.event_id, [])))

    for record in ordered:
        cause = record.event.causation_id
        if cause is not None and cause in present and cause not in emitted:
            waiting.setdefault(cause, []).append(record)
        else:
            emit(record)
    # Only a causation cycle (a malformed log) leaves anything waiting; keep it, in sort order.
    leftovers = (r for rs in waiting.values() for r in rs)
    return out + sorted(leftovers, key=lambda r: (r.event.occurred_at, r.seq))
