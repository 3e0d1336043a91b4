"""Deciding a review: the two events the archive appends to its own store when the leading
group reviews a resolved incident (ReviewRecorded, then CaseArchived with the figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.archive.cases import CaseFigures, case_figures
from services.archive.domain import IncidentView, Logged
from shared.events import Actor, CaseArchived, Envelope, IncidentResolved, ReviewRecorded


@dataclass(frozen=True)
class ReviewDecision:
    cause: str
    handling: str
    lessons: str
    actor: Actor
    at: datetime


@dataclass(frozen=True)
class Review:
    events: list[Envelope]
    case_id: str
    figures: CaseFigures


def review_stream(incident_id: str) -> str:
    return f"review-{incident_id}"


def review_events(
    view: IncidentView,
    ordered: Sequence[Logged],
    stream: Sequence[Envelope],
    decision: ReviewDecision,
) -> Review | None:
    """The review of the incident's latest resolution; None if that one is reviewed already.

    A reopened and again resolved incident is reviewed again: its case is replaced.
    """
    resolution = next(
        (r.event for r in reversed(ordered) if isinstance(r.event.payload, IncidentResolved)),
        None,
    )
    if resolution is None:
        raise ValueError(f"incident {view.incident_id} has no resolution to review")
    if any(
        isinstance(e.payload, ReviewRecorded) and e.causation_id == resolution.event_id
        for e in stream
    ):
        return None
    case_id = f"case-{view.incident_id}"
    figures = case_figures(view, decision.at)
    recorded = resolution.caused(
        ReviewRecorded(
            cause=decision.cause,
            handling=decision.handling,
            lessons=decision.lessons,
            reviewed_by=decision.actor.id,
        ),
        stream_id=review_stream(view.incident_id),
        stream_version=len(stream) + 1,
        actor=decision.actor,
        occurred_at=decision.at,
    )
    archived = recorded.caused(
        CaseArchived(case_id=case_id, figures=figures.model_dump(mode="json")),
        stream_id=recorded.stream_id,
        stream_version=recorded.stream_version + 1,
        actor=decision.actor,
        occurred_at=decision.at,
    )
    return Review(events=[recorded, archived], case_id=case_id, figures=figures)
