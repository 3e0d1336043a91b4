"""Deciding a review: the two events the archive appends to its own stream
(`review-{incident}`) when the leading group reviews a resolved incident: ReviewRecorded,
caused by the resolution, then CaseArchived with the figures, caused by the record.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.archive.domain.cases import CaseFigures, case_figures
from services.archive.domain.ordering import Logged
from services.archive.domain.views import IncidentView
from shared.errors import Conflict
from shared.events import (
    CaseArchived,
    Envelope,
    IncidentResolved,
    IncidentStatus,
    ReviewRecorded,
)


class NotResolved(Conflict):
    """Only a resolved incident is reviewed (not an open, dismissed or archived one)."""

    code = "not_resolved"


class AlreadyReviewed(Conflict):
    code = "already_reviewed"


def review_stream(incident_id: str) -> str:
    return f"review-{incident_id}"


@dataclass(frozen=True)
class ReviewLog:
    """The archive's own stream for one incident: which resolutions have been reviewed."""

    version: int
    reviewed: frozenset[uuid.UUID]  # the resolutions (event ids) a ReviewRecorded answers


def evolve(current: ReviewLog | None, event: Envelope) -> ReviewLog:
    reviewed = current.reviewed if current is not None else frozenset()
    if isinstance(event.payload, ReviewRecorded) and event.causation_id is not None:
        reviewed = reviewed | {event.causation_id}
    return ReviewLog(version=event.stream_version, reviewed=reviewed)


@dataclass(frozen=True)
class ReviewDecision:
    cause: str
    handling: str
    lessons: str
    reviewed_by: str
    at: datetime


@dataclass(frozen=True)
class Review:
    """What was decided: the record answers `resolution`, the case follows the record."""

    resolution: Envelope
    recorded: ReviewRecorded
    archived: CaseArchived
    case_id: str
    figures: CaseFigures


def decide_review(
    view: IncidentView,
    ordered: Sequence[Logged],
    log: ReviewLog | None,
    decision: ReviewDecision,
) -> Review:
    """The review of the incident's latest resolution, judged on the log itself.

    A reopened and again resolved incident is reviewed again: its case is replaced.
    """
    if view.status is not IncidentStatus.RESOLVED:
        raise NotResolved(
            f"incident {view.incident_id} is {view.status.value}; only a resolved incident "
            "is reviewed",
            {"status": view.status.value},
        )
    resolution = next(
        (r.event for r in reversed(ordered) if isinstance(r.event.payload, IncidentResolved)),
        None,
    )
    if resolution is None:  # resolved by a log without its resolution: nothing to answer
        raise NotResolved(
            f"incident {view.incident_id} has no resolution to review",
            {"status": view.status.value},
        )
    if log is not None and resolution.event_id in log.reviewed:
        raise AlreadyReviewed(f"incident {view.incident_id} was reviewed after its last resolution")
    case_id = f"case-{view.incident_id}"
    figures = case_figures(view, decision.at)
    return Review(
        resolution=resolution,
        recorded=ReviewRecorded(
            cause=decision.cause,
            handling=decision.handling,
            lessons=decision.lessons,
            reviewed_by=decision.reviewed_by,
        ),
        archived=CaseArchived(case_id=case_id, figures=figures.model_dump(mode="json")),
        case_id=case_id,
        figures=figures,
    )
