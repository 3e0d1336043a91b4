"""Intake's pure rules: URL normalisation, near-identical text, where a report belongs, the
incident lifecycle and its watch after resolution (善后跟踪, the plan's `watch:`).

Nothing here does I/O. Commands are decided against an `Incident` folded from its
stream (`evolve`), and the decisions are returned as event payloads for the caller to save.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import struct
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, PositiveFloat, PositiveInt

from shared.errors import Conflict
from shared.events import (
    Envelope,
    EventPayload,
    IncidentDismissed,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    IncidentStatus,
    IncidentWatchStarted,
    MediaTier,
    Reach,
    ReferralMerged,
    ReferralOpened,
    ReportAttached,
    ReportClaimsConfirmed,
    ReportReceived,
    WatchOnReport,
    WatchReportReceived,
)
from shared.models import FrozenModel


class TextMatching(FrozenModel):
    """When two reports' texts say the same thing (config/intake.yaml, `similar_text`)."""

    # Dice similarity of the character n-grams at or above which the texts match.
    threshold: float = Field(default=0.85, gt=0, le=1)
    # Only reports filed this recently are compared: an old look-alike is another matter.
    window_hours: PositiveFloat = 72
    ngram: int = Field(default=2, ge=1, le=4)
    # Texts shorter than this (normalised) say too little to identify a matter.
    min_chars: PositiveInt = 12
    # The most recent reports compared per filing, so one filing stays cheap.
    max_compared: PositiveInt = 300

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_hours)


class ReachLimits(FrozenModel):
    """The largest figure a report may state for each reach field (config/intake.yaml,
    `reach_max`): beyond it the figure is a typo or a lie, refused with 422 naming it."""

    views: PositiveInt = 10_000_000_000
    reposts: PositiveInt = 1_000_000_000
    comments: PositiveInt = 1_000_000_000
    likes: PositiveInt = 10_000_000_000

    def beyond(self, reach: Reach) -> list[tuple[str, int]]:
        """The fields of `reach` above their bound, each with its bound."""
        limits = self.model_dump()
        return [(f, limits[f]) for f, v in reach.model_dump().items() if v > limits[f]]


class IntakePolicy(FrozenModel):
    """The deployment's intake policy (config/intake.yaml)."""

    # A resolved incident that gets a new report within this window is reopened;
    # after it, the report opens a new incident.
    reopen_window_hours: PositiveFloat = 72
    # Query parameters that only track who shared a link; shell-style patterns.
    tracking_params: tuple[str, ...] = Field(default=("utm_*",))
    similar_text: TextMatching = Field(default_factory=TextMatching)
    # How far in the future an observed_at may lie before it is refused as a wrong clock.
    clock_skew_minutes: PositiveFloat = 5
    reach_max: ReachLimits = Field(default_factory=ReachLimits)

    @property
    def reopen_window(self) -> timedelta:
        return timedelta(hours=self.reopen_window_hours)

    @property
    def clock_skew(self) -> timedelta:
        return timedelta(minutes=self.clock_skew_minutes)


@dataclass(frozen=True)
class WatchRule:
    """The plan's watch after resolution (plan.yaml `watch:`, 善后、动态跟踪): how long, and
    what a matching report does meanwhile; with the plan it comes from."""

    period: timedelta
    on_report: WatchOnReport
    plan_id: str | None = None
    plan_version: str | None = None

    def started(self, at: datetime) -> IncidentWatchStarted:
        return IncidentWatchStarted(
            watch_until=at + self.period,
            on_report=self.on_report,
            plan_id=self.plan_id,
            plan_version=self.plan_version,
        )


@dataclass(frozen=True)
class Watch:
    """A running watch, as the incident's IncidentWatchStarted recorded it."""

    until: datetime
    on_report: WatchOnReport

    def covers(self, now: datetime) -> bool:
        return now <= self.until


# --------------------------------------------------------------------------- URLs

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str, tracking_params: Iterable[str]) -> str:
    """The form under which two links to one item compare equal.

    Scheme and host are case-insensitive, and http/https serve the same article, so
    both fold to https. Default ports, fragments, trailing slashes and tracking
    parameters do not change what is shown; the remaining parameters are sorted
    because their order does not either.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    if scheme == "http":
        scheme = "https"
    patterns = tuple(p.lower() for p in tracking_params)
    query = sorted(
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if not any(fnmatch.fnmatchcase(key.lower(), p) for p in patterns)
    )
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, host, path, urlencode(query), ""))


# --------------------------------------------------------------------------- text


def normalize_text(text: str) -> str:
    """The letters and digits of `text`, so that reposts differing only in punctuation,
    spacing, full/half width or letter case read alike. NFKC folds full-width forms
    (ＡＢＣ１２３，) to their ASCII counterparts before the rest is dropped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN")


def report_text(report: ReportReceived) -> str:
    """What a report says, normalised: the title and excerpt it was filed with."""
    return normalize_text(f"{report.title}{report.excerpt}")


def _ngrams(text: str, n: int) -> frozenset[str]:
    return frozenset(text[i : i + n] for i in range(max(len(text) - n + 1, 1)))


# Locality-sensitive hashing of a text's character bigrams (MinHash, banded), so that a
# filing fetches only the recent reports that share a band with it instead of comparing
# every recent one. Bigrams whatever the policy's n-gram: texts alike in longer n-grams are
# at least as alike in bigrams. A pair at the default threshold (Dice 0.85, Jaccard 0.74)
# shares a band with probability 1 - (1 - 0.74**5)**25 = 0.998 (0.9999 at Dice 0.9); the
# exact Dice check decides on those few. Five rows a band, not three: reports written from
# one template (the same phrase and a varying id, Jaccard about 0.17 between any two)
# shared a band in 11% of pairs with 20 x 3 and 0.5% with 25 x 5, and every one shared is
# decoded and compared. 25 bands, not more: each is one more value the look-alike query
# asks the index for and one more guard a filing bumps. A deployment that lowers the
# threshold lowers the recall too (Dice 0.7: 0.69).
LSH_BANDS = 25
LSH_ROWS = 5
# Names the banding; a report stores it with its bands, and the period they are kept by.
LSH_SCHEME = f"minhash-bigram-{LSH_BANDS}x{LSH_ROWS}"
_HASHES = LSH_BANDS * LSH_ROWS
# Each bigram's 125 MinHash values: 4-byte words of keyed BLAKE2b digests (64 bytes each).
# BLAKE2b's personalisation holds 16 bytes: "yuqing-minhash07".
_DIGESTS = [f"yuqing-minhash{i:02d}".encode() for i in range(-(-_HASHES * 4 // 64))]
_WORDS = struct.Struct(f">{_HASHES}I")


@functools.lru_cache(maxsize=1024)
def text_bands(text: str) -> tuple[str, ...]:
    """The LSH bands of a normalised text: two texts sharing any are worth comparing.

    Remembered for the last texts: one filing asks for its bands three or four times."""
    rows = []
    for gram in _ngrams(text, 2):
        data = gram.encode()
        digest = b"".join(
            hashlib.blake2b(data, digest_size=64, person=p).digest() for p in _DIGESTS
        )
        rows.append(_WORDS.unpack_from(digest))
    minimum = [min(column) for column in zip(*rows, strict=True)]
    return tuple(
        f"{band}:"
        + hashlib.blake2b(
            repr(minimum[band * LSH_ROWS : (band + 1) * LSH_ROWS]).encode(), digest_size=6
        ).hexdigest()
        for band in range(LSH_BANDS)
    )


def text_similarity(a: str, b: str, n: int) -> float:
    """Dice coefficient of the character n-grams of two normalised texts (0..1).

    Character n-grams need no word segmentation, which Chinese text lacks."""
    grams_a, grams_b = _ngrams(a, n), _ngrams(b, n)
    return 2 * len(grams_a & grams_b) / (len(grams_a) + len(grams_b))


@dataclass(frozen=True)
class TextCandidate:
    """A recent report of a unit concerned, and the incident it went to."""

    incident_id: str
    text: str  # normalised


@dataclass(frozen=True)
class TextMatch:
    incident_id: str
    score: float


def best_text_match(
    text: str, candidates: Iterable[TextCandidate], matching: TextMatching
) -> TextMatch | None:
    """The incident whose report reads most like `text`, if any reads alike enough.

    Candidates come most recent first, so of two equally close the newer one wins."""
    if len(text) < matching.min_chars:
        return None
    best: tuple[float, str] | None = None
    for candidate in candidates:
        score = text_similarity(text, candidate.text, matching.ngram)
        if score >= matching.threshold and (best is None or score > best[0]):
            best = (score, candidate.incident_id)
    return None if best is None else TextMatch(best[1], round(best[0], 3))


# --------------------------------------------------------------------------- ids


def new_incident_id() -> str:
    return f"inc-{uuid.uuid4().hex[:12]}"


def new_report_id() -> str:
    return f"rep-{uuid.uuid4().hex[:12]}"


def incident_stream(incident_id: str) -> str:
    return f"incident-{incident_id}"


# --------------------------------------------------------------------------- incident


class IllegalTransition(Conflict):
    """The incident is not in a state that allows the command; the details name both."""

    code = "illegal_transition"

    def __init__(self, incident_id: str, action: str, status: IncidentStatus) -> None:
        super().__init__(
            f"incident {incident_id} is {status.value}: it cannot be {action}",
            {"status": status.value, "action": action},
        )
        self.incident_id = incident_id
        self.action = action
        self.status = status


class NotAReferral(Conflict):
    """Only a partner's referral is merged, once, into another open incident."""

    code = "not_mergeable"


class ClaimsNotPending(Conflict):
    """The report states no unconfirmed partner claims (none made, or already confirmed)."""

    code = "claims_not_pending"


@dataclass(frozen=True)
class Referral:
    """What makes an incident a partner's referral: who referred it, what it matched, and
    where the office merged it."""

    referred_by: str
    matched_incident_ids: tuple[str, ...]
    merged_into: str | None = None


MERGED_REFERRAL = "merged_referral"


@dataclass(frozen=True)
class Incident:
    """The incident aggregate as its stream tells it."""

    incident_id: str
    version: int
    status: IncidentStatus
    title: str
    unit_ids: tuple[str, ...]
    report_ids: tuple[str, ...]
    status_changed_at: datetime
    filed_by: tuple[str, ...] = ()
    reports: tuple[ReportReceived, ...] = ()
    unconfirmed: frozenset[str] = frozenset()  # reports whose partner claims await the office
    referral: Referral | None = None
    watch: Watch | None = None  # while resolved under a plan's watch

    @property
    def merged(self) -> bool:
        return self.referral is not None and self.referral.merged_into is not None

    @classmethod
    def replay(cls, events: Sequence[Envelope]) -> Incident | None:
        incident: Incident | None = None
        for event in events:
            incident = evolve(incident, event)
        return incident

    def resolve(
        self, reason: str, watch: WatchRule | None = None, at: datetime | None = None
    ) -> list[EventPayload]:
        """Resolved; under the plan's `watch` (from `at`, the resolution) the incident is
        watched for its period. (A merged referral is closed by `merge`, never watched.)"""
        self._require(IncidentStatus.OPEN, action="resolved")
        resolved: list[EventPayload] = [IncidentResolved(reason=reason)]
        if watch is not None and at is not None:
            resolved.append(watch.started(at))
        return resolved

    def dismiss(self, reason: str) -> list[EventPayload]:
        self._require(IncidentStatus.OPEN, action="dismissed")
        return [IncidentDismissed(reason=reason)]

    def reopen(self, reason: str) -> list[EventPayload]:
        self._require(IncidentStatus.RESOLVED, IncidentStatus.DISMISSED, action="reopened")
        if self.merged:
            # Its reports live on in the incident it was merged into.
            raise IllegalTransition(self.incident_id, "reopened", self.status)
        return [IncidentReopened(reason=reason)]

    def merge(
        self, into: Incident, reason: str, merged_by: str
    ) -> tuple[list[EventPayload], list[EventPayload]]:
        """The office merges this referral into `into`: (what this referral records, what
        `into` records). The referrer's reports are recorded on `into` as filed, their
        claims still as unconfirmed as they were, about `into`'s own units only (a merge
        adds no unit), and the referral is closed."""
        if self.referral is None:
            raise NotAReferral(
                f"incident {self.incident_id} is not a partner's referral",
                {"incident_id": self.incident_id},
            )
        if self.merged:
            raise NotAReferral(
                f"referral {self.incident_id} was already merged into {self.referral.merged_into}",
                {"incident_id": self.incident_id, "merged_into": self.referral.merged_into},
            )
        if into.incident_id == self.incident_id:
            raise NotAReferral(
                "a referral cannot be merged into itself", {"incident_id": self.incident_id}
            )
        self._require(IncidentStatus.OPEN, action="merged")
        into._require(IncidentStatus.OPEN, action="merged into")
        moved = [
            r
            for r in self.reports
            if r.filed_by == self.referral.referred_by and r.report_id not in into.report_ids
        ]
        recorded: list[EventPayload] = []
        for report in moved:
            units = tuple(u for u in report.unit_ids if u in into.unit_ids) or into.unit_ids
            recorded.append(
                report.model_copy(
                    update={
                        "unit_ids": units,
                        "claims_unconfirmed": report.report_id in self.unconfirmed,
                    }
                )
            )
            recorded.append(ReportAttached(report_id=report.report_id, match=MERGED_REFERRAL))
        closed: list[EventPayload] = [
            ReferralMerged(
                into_incident_id=into.incident_id,
                report_ids=tuple(r.report_id for r in moved),
                reason=reason,
                merged_by=merged_by,
            ),
            IncidentResolved(reason=f"已并入事件 {into.incident_id}：{reason}"),
        ]
        return closed, recorded

    def confirm_claims(
        self,
        report_id: str,
        reason: str,
        confirmed_by: str,
        media_tier: MediaTier | None = None,
        reach: Reach | None = None,
    ) -> list[EventPayload]:
        """The office confirms a partner's claimed media tier and reach (or corrects them);
        only then do they count in grading."""
        if report_id not in self.unconfirmed:
            raise ClaimsNotPending(
                f"report {report_id} has no unconfirmed claims", {"report_id": report_id}
            )
        claimed = next(r for r in self.reports if r.report_id == report_id)
        return [
            ReportClaimsConfirmed(
                report_id=report_id,
                media_tier=media_tier or claimed.media_tier,
                reach=reach or claimed.reach,
                reason=reason,
                confirmed_by=confirmed_by,
            )
        ]

    def _require(self, *allowed: IncidentStatus, action: str) -> None:
        if self.status not in allowed:
            raise IllegalTransition(self.incident_id, action, self.status)


def evolve(incident: Incident | None, event: Envelope) -> Incident:
    """The incident after one of its events."""
    payload = event.payload
    if incident is None:
        if not isinstance(payload, IncidentOpened):
            raise ValueError(f"stream {event.stream_id} does not start with IncidentOpened")
        return Incident(
            incident_id=event.incident_id,
            version=event.stream_version,
            status=IncidentStatus.OPEN,
            title=payload.title,
            unit_ids=payload.unit_ids,
            report_ids=(),
            status_changed_at=event.occurred_at,
        )
    incident = replace(incident, version=event.stream_version)
    if isinstance(payload, ReportReceived):
        units = incident.unit_ids + tuple(u for u in payload.unit_ids if u not in incident.unit_ids)
        filers = incident.filed_by + (
            () if payload.filed_by in incident.filed_by else (payload.filed_by,)
        )
        unconfirmed = incident.unconfirmed | (
            {payload.report_id} if payload.claims_unconfirmed else set()
        )
        return replace(
            incident,
            unit_ids=units,
            report_ids=(*incident.report_ids, payload.report_id),
            filed_by=filers,
            reports=(*incident.reports, payload),
            unconfirmed=frozenset(unconfirmed),
        )
    if isinstance(payload, ReferralOpened):
        return replace(
            incident, referral=Referral(payload.referred_by, payload.matched_incident_ids)
        )
    if isinstance(payload, ReferralMerged) and incident.referral is not None:
        return replace(
            incident, referral=replace(incident.referral, merged_into=payload.into_incident_id)
        )
    if isinstance(payload, ReportClaimsConfirmed):
        return replace(incident, unconfirmed=incident.unconfirmed - {payload.report_id})
    if isinstance(payload, IncidentWatchStarted):
        return replace(incident, watch=Watch(payload.watch_until, payload.on_report))
    status = {
        IncidentResolved: IncidentStatus.RESOLVED,
        IncidentDismissed: IncidentStatus.DISMISSED,
        IncidentReopened: IncidentStatus.OPEN,
    }.get(type(payload))
    if status is not None:
        # Any change of status ends a watch; a resolution under watch records a new one.
        return replace(incident, status=status, status_changed_at=event.occurred_at, watch=None)
    return incident


# --------------------------------------------------------------------------- routing


class Routing(str, Enum):
    """What a new report does to the incident it matched (same URL or similar text), if any."""

    OPEN_NEW = "open_new"
    ATTACH = "attach"
    REOPEN_AND_ATTACH = "reopen_and_attach"
    # During a plan's watch after resolution (善后跟踪期): as the watch's `on_report` says.
    REOPEN_DURING_WATCH = "reopen_during_watch"
    ATTACH_DURING_WATCH = "attach_during_watch"


def route_report(existing: Incident | None, now: datetime, policy: IntakePolicy) -> Routing:
    """A dismissed pseudo-incident stays dismissed and keeps what is filed about it; a
    resolved one comes back to life only while the matter is recent: during the watch its
    plan set when it was resolved (reopened or attached to, as the watch says), or, with
    no watch recorded, within intake's reopen window."""
    if existing is None or existing.merged:
        return Routing.OPEN_NEW
    if existing.status is IncidentStatus.RESOLVED:
        watch = existing.watch
        if watch is not None:
            if not watch.covers(now):
                return Routing.OPEN_NEW
            if watch.on_report == "reopen":
                return Routing.REOPEN_DURING_WATCH
            return Routing.ATTACH_DURING_WATCH
        if now - existing.status_changed_at <= policy.reopen_window:
            return Routing.REOPEN_AND_ATTACH
        return Routing.OPEN_NEW
    return Routing.ATTACH


REOPEN_REASON = "已办结事件在复开期限内收到新的舆情件，自动重新打开"
WATCH_REOPEN_REASON = "已办结事件在善后跟踪期内收到新的舆情件，按预案自动重新打开"


def partner_may_join(existing: Incident | None, partner_id: str, unit_ids: Sequence[str]) -> bool:
    """A partner's report joins only an open incident it already sees (one it filed for)
    and names no unit the incident does not concern: a partner neither reopens an
    incident nor adds units to it. Otherwise it opens a referral of its own."""
    return (
        existing is not None
        and existing.status is IncidentStatus.OPEN
        and partner_id in existing.filed_by
        and set(unit_ids) <= set(existing.unit_ids)
    )


def place_referral(report: ReportReceived, matched: Sequence[str]) -> list[EventPayload]:
    """The events of a partner's referral: an incident of its own, linked to what it matched."""
    return [
        *place_report(Routing.OPEN_NEW, report, ""),
        ReferralOpened(
            report_id=report.report_id,
            referred_by=report.filed_by,
            matched_incident_ids=tuple(dict.fromkeys(matched)),
        ),
    ]


MATCH_SAME_URL = "same_url"
MATCH_SIMILAR_TEXT = "similar_text"


def place_report(
    routing: Routing,
    report: ReportReceived,
    match: str,
    score: float | None = None,
    watch: Watch | None = None,
) -> list[EventPayload]:
    """The events that put `report` where `routing` says; `match` says why it belongs,
    `score` how alike the texts were when that is why, `watch` the incident's running
    watch when the report came during it."""
    if routing is Routing.OPEN_NEW:
        opened = IncidentOpened(
            title=report.title, unit_ids=report.unit_ids, first_report_id=report.report_id
        )
        return [opened, report]
    attached: list[EventPayload] = [
        report,
        ReportAttached(report_id=report.report_id, match=match, score=score),
    ]
    if routing is Routing.REOPEN_AND_ATTACH:
        return [IncidentReopened(reason=REOPEN_REASON), *attached]
    if routing in (Routing.REOPEN_DURING_WATCH, Routing.ATTACH_DURING_WATCH):
        if watch is None:
            raise ValueError(f"{routing.value} needs the incident's watch")
        reopens = routing is Routing.REOPEN_DURING_WATCH
        noted = WatchReportReceived(
            report_id=report.report_id, watch_until=watch.until, reopened=reopens
        )
        reopened: list[EventPayload] = (
            [IncidentReopened(reason=WATCH_REOPEN_REASON)] if reopens else []
        )
        return [*reopened, *attached, noted]
    return attached
