"""Intake's read models, written in the transaction that appends the events they show.

- `reports`: one document per report, as filed, with the incident it went to and its
  normalised text (`text`), which later reports about its units are compared with.
- `incidents`: intake's view of an incident: status, units, its first reports (at most
  `embedded_reports`, YUQING_ARCHIVE_EMBEDDED_REPORTS) and `report_count`, status history,
  and its watch after resolution (善后跟踪) with the first reports that came during it, so
  that the document stays far below MongoDB's 16 MiB however many reports an incident gets.
- `incident_reports`: one summary per report and incident it was recorded on (a merged
  referral's report is on both), which every report of an incident is listed from by page
  (`report_page`), keyed by `order` (when received, then the report id).
- `url_claims`: which incident a normalised URL currently belongs to, for one unit. Its
  `_id` is the unit and the URL, so two requests racing to open an incident for one URL
  about one unit cannot both win, while the same URL filed about another unit opens or
  finds that unit's own incident instead of joining (and exposing) this one.
- `idempotency`: the first answer given to an Idempotency-Key, stored with the events.
- `text_guards`: one small document per unit and LSH band slot, which every filing bumps
  for its units and its text's bands in its transaction (`guard_text`): two filings at
  once that could match each other (a unit and a band in common) collide there, and the
  loser decides again against the winner's report; filings that could not, never meet.
- `upkeep`: what start-up has brought up to date once and for all (reports counted, the
  reports' LSH banding), so that a restart does not scan every incident and report again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, model_validator
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.intake.domain import LSH_SCHEME, TextCandidate, report_text, text_bands
from shared.events import (
    Actor,
    Attachment,
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
    SourceType,
    WatchOnReport,
    WatchReportReceived,
)
from shared.models import FrozenModel
from shared.store import DecideAgain, Document, UnitOfWork, ensure_collection
from shared.visibility import IncidentScope, ReferredStanding, scope_of

REPORTS = "reports"
INCIDENTS = "incidents"
INCIDENT_REPORTS = "incident_reports"
URL_CLAIMS = "url_claims"
IDEMPOTENCY = "idempotency"
TEXT_GUARDS = "text_guards"
UPKEEP = "upkeep"
# Slots per unit and band: bounds the guards kept (at most 25 x 4096 per unit); two
# unrelated filings about one unit at once share one (and one is decided again) about
# once in two hundred.
_GUARD_SLOTS = 4096
# How long the periods are whose bands a look-alike is asked by (`period_bands`), and how
# far ahead another replica's clock may be.
_PERIOD = timedelta(days=3)
_CLOCK_AHEAD = timedelta(hours=1)
# Stored with a report's bands (`lsh`): reports banded otherwise are banded again at start.
_BANDING = f"{LSH_SCHEME}/{_PERIOD.days}d"


class UrlClaimLost(DecideAgain):
    """Another request claimed the URL since it was read: decide again."""


# --------------------------------------------------------------------------- read models


class ClaimsConfirmation(FrozenModel):
    """The office's confirmation of a partner's claimed media tier and reach."""

    media_tier: MediaTier
    reach: Reach
    reason: str
    confirmed_by: str
    at: datetime


class ReportOut(FrozenModel):
    """A report as filed, where it went and why. A partner's media tier and reach are its
    claims: `claims_unconfirmed` until the office confirms them (`claims_confirmed`)."""

    report_id: str
    incident_id: str
    source_type: SourceType
    source_name: str
    media_tier: MediaTier
    url: str
    normalized_url: str
    title: str
    excerpt: str
    author: str | None
    published_at: datetime
    observed_at: datetime
    reach: Reach
    unit_ids: list[str]
    filed_by: str
    attachments: list[Attachment]
    match: str | None = None  # why it joined its incident ("same_url", ...); None: it opened it
    score: float | None = None  # how alike the texts were, for "similar_text"
    received_at: datetime
    actor: Actor
    claims_unconfirmed: bool = False
    claims_confirmed: ClaimsConfirmation | None = None

    @property
    def scope(self) -> IncidentScope:
        """Who may read this report: its own units and its filer."""
        return scope_of(self.incident_id, self.unit_ids, [self.filed_by])


class ReportSummary(FrozenModel):
    report_id: str
    title: str
    source_name: str
    media_tier: MediaTier
    url: str
    filed_by: str
    received_at: datetime
    match: str | None = None
    score: float | None = None
    claims_unconfirmed: bool = False  # a partner's media tier and reach, not yet confirmed


class HistoryEntry(FrozenModel):
    status: str  # "opened", then the status each change led to
    reason: str | None
    at: datetime
    actor: Actor
    event_id: str


class ReferralOut(FrozenModel):
    """The incident is a partner's referral: who referred it, the incidents it matched, and
    whether the office merged it (then it is resolved, its reports recorded there)."""

    referred_by: str
    matched_incident_ids: list[str]
    merged_into: str | None = None
    merged_at: datetime | None = None
    merge_reason: str | None = None


class WatchReportOut(FrozenModel):
    report_id: str
    at: datetime
    reopened: bool  # it reopened the incident (on_report: reopen); else attached only


class WatchOut(FrozenModel):
    """The incident's latest watch after resolution (善后跟踪, plan.yaml `watch:`): from when,
    until when, what a matching report does, and the reports that came during it."""

    started_at: datetime
    until: datetime
    on_report: WatchOnReport
    plan_id: str | None = None
    plan_version: str | None = None
    reports: list[WatchReportOut] = Field(default_factory=list)  # the first ones, bounded
    report_count: int = 0  # every report during it

    @model_validator(mode="before")
    @classmethod
    def _counted(cls, data: Any) -> Any:
        # A watch stored before its reports were counted kept all of them.
        if isinstance(data, dict) and data.get("report_count") is None:
            return {**data, "report_count": len(data.get("reports") or ())}
        return data


class IncidentOut(FrozenModel):
    """Intake's view of an incident: where it stands, its units, reports and history."""

    sight: Literal["full"] = "full"  # the whole record; a partner gets `PartnerIncidentOut`
    incident_id: str
    status: IncidentStatus
    title: str
    unit_ids: list[str]
    # The first reports (at most YUQING_ARCHIVE_EMBEDDED_REPORTS); every one is listed by
    # page at /incidents/{id}/reports, and `report_count` counts them all.
    reports: list[ReportSummary]
    report_count: int
    filed_by: list[str]
    history: list[HistoryEntry]
    opened_at: datetime
    updated_at: datetime
    version: int
    referral: ReferralOut | None = None
    watch: WatchOut | None = None

    @model_validator(mode="before")
    @classmethod
    def _counted(cls, data: Any) -> Any:
        # Stored before reports were counted (until the start counts them): all embedded.
        if isinstance(data, dict) and data.get("report_count") is None:
            return {**data, "report_count": len(data.get("reports") or ())}
        return data

    @property
    def scope(self) -> IncidentScope:
        return scope_of(self.incident_id, self.unit_ids, self.filed_by)

    def for_partner(
        self, partner_id: str, own: Sequence[ReportSummary], own_count: int
    ) -> PartnerIncidentOut:
        """What a partner sees of an incident it filed for (`Sight.REFERRED`): where it
        stands, when it closed, its own reports (`own`: its first ones, of `own_count`)
        and, of its own referral, where the office merged it; nothing of the bureau's
        handling."""

        def last(status: str) -> datetime | None:
            times = [h.at for h in self.history if h.status == status]
            return times[-1] if times and self.status.value == status else None

        referral = self.referral
        return PartnerIncidentOut(
            incident_id=self.incident_id,
            status=self.status,
            resolved_at=last(IncidentStatus.RESOLVED.value),
            dismissed_at=last(IncidentStatus.DISMISSED.value),
            reports=[
                r.model_copy(update={"match": None, "score": None})
                for r in own
                if r.filed_by == partner_id
            ],
            report_count=own_count,
            filed_by=[f for f in self.filed_by if f == partner_id],
            merged_into=referral.merged_into
            if referral is not None and referral.referred_by == partner_id
            else None,
        )


class PartnerIncidentOut(ReferredStanding):
    """A partner's sight of an incident it referred (DESIGN.md, "Who may do what"): where
    it stands (`ReferredStanding`: intake grades nothing, so no level; the archive's and
    grading's answers carry it), its own reports and, of its referral, the incident the
    office merged it into (the outcome, which it may then follow)."""

    reports: list[ReportSummary] = Field(
        default_factory=list, description="its own first reports; all by page"
    )
    report_count: int = Field(default=0, description="its own reports, all of them")
    filed_by: list[str] = Field(default_factory=list, description="itself: no other filer")
    merged_into: str | None = None


# --------------------------------------------------------------------------- projection

_Apply = Callable[[Envelope, Any, AsyncClientSession | None], Awaitable[None]]


class IntakeViews:
    def __init__(self, db: AsyncDatabase[Document], embedded_reports: int = 50) -> None:
        self.db = db
        # Reports kept in an incident's document (and in its watch's): the rest are counted
        # and listed by page from `incident_reports`.
        self.embedded_reports = embedded_reports
        self._appliers: dict[type[EventPayload], _Apply] = {
            IncidentOpened: self._opened,
            ReportReceived: self._received,
            ReportAttached: self._attached,
            IncidentResolved: self._status_changed,
            IncidentDismissed: self._status_changed,
            IncidentReopened: self._status_changed,
            ReferralOpened: self._referred,
            ReferralMerged: self._merged,
            ReportClaimsConfirmed: self._claims_confirmed,
            IncidentWatchStarted: self._watch_started,
            WatchReportReceived: self._watch_report,
        }

    async def ensure_indexes(self) -> None:
        await self.db[REPORTS].create_index([("incident_id", ASCENDING)])
        await self.db[REPORTS].create_index([("unit_ids", ASCENDING), ("received_at", DESCENDING)])
        # A new report's look-alikes are the reports of the window sharing one of its LSH
        # bands (the bands of each period: a band alone would hand over every look-alike
        # ever filed). The bands' own index, then the bands of each day, served that before.
        await self.db[REPORTS].create_index([("period_bands", ASCENDING)])
        indexes = await self.db[REPORTS].index_information()
        for earlier in ("bands_1", "day_bands_1"):
            if earlier in indexes:
                await self.db[REPORTS].drop_index(earlier)
        await self.db[INCIDENTS].create_index([("watch.until", ASCENDING)])
        # What served the watch before, scanning the unit's every incident: kept, it would
        # only cost each incident's write.
        if "unit_ids_1" in await self.db[INCIDENTS].index_information():
            await self.db[INCIDENTS].drop_index("unit_ids_1")
        await self.db[INCIDENT_REPORTS].create_index(
            [("incident_id", ASCENDING), ("order", ASCENDING)]
        )
        await self.db[INCIDENT_REPORTS].create_index(
            [("incident_id", ASCENDING), ("filed_by", ASCENDING), ("order", ASCENDING)]
        )
        await ensure_collection(self.db, TEXT_GUARDS)
        await self._once("report_counts", "1", self._count_reports)
        await self._once("report_bands", _BANDING, self._band_reports)

    async def _once(self, task: str, version: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` unless start-up has run this `version` of it before (`upkeep`): what
        it brings up to date stays so, as every event projected since is projected so."""
        done = await self.db[UPKEEP].find_one({"_id": task})
        if done is not None and done.get("version") == version:
            return
        await work()
        await self.db[UPKEEP].replace_one({"_id": task}, {"version": version}, upsert=True)

    async def _band_reports(self) -> None:
        """Reports stored before texts were banded by period, or banded by another scheme
        (`_BANDING`), get this one's bands, so that every report a new one could match is
        found through the period bands' index."""
        cursor = self.db[REPORTS].find(
            {"text": {"$exists": True}, "lsh": {"$ne": _BANDING}},
            {"text": 1, "received_at": 1},
        )
        async for doc in cursor:
            await self.db[REPORTS].update_one(
                {"_id": doc["_id"]},
                {
                    "$set": _banded(str(doc["text"]), doc["received_at"]),
                    "$unset": {"day_bands": ""},
                },
            )

    async def _count_reports(self) -> None:
        """Incidents stored before reports were counted embed every one: list them in
        `incident_reports`, count them, and keep the first ones only."""
        cursor = self.db[INCIDENTS].find({"report_count": {"$exists": False}}, {"_id": 1})
        for incident_id in [doc["_id"] async for doc in cursor]:
            doc = await self.db[INCIDENTS].find_one(
                {"_id": incident_id}, {"reports": 1, "watch": 1}
            )
            if doc is None:
                continue
            summaries: list[Document] = doc.get("reports") or []
            for summary in summaries:
                entry = _listed(incident_id, summary)
                await self.db[INCIDENT_REPORTS].replace_one(
                    {"_id": entry["_id"]}, entry, upsert=True
                )
            # Counted from the list, which holds any report filed meanwhile as well.
            listed = await self.db[INCIDENT_REPORTS].count_documents({"incident_id": incident_id})
            counted: Document = {
                "report_count": max(listed, len(summaries)),
                "reports": summaries[: self.embedded_reports],
            }
            watch = doc.get("watch")
            if isinstance(watch, dict) and "report_count" not in watch:
                noted = watch.get("reports") or []
                counted["watch.report_count"] = len(noted)
                counted["watch.reports"] = noted[: self.embedded_reports]
            await self.db[INCIDENTS].update_one({"_id": incident_id}, {"$set": counted})

    async def apply(self, event: Envelope, uow: UnitOfWork) -> None:
        """Project one saved event, in the transaction that saved it."""
        applier = self._appliers.get(type(event.payload))
        if applier is not None:
            await applier(event, event.payload, uow.session)

    async def _opened(
        self, event: Envelope, payload: IncidentOpened, session: AsyncClientSession | None
    ) -> None:
        at = event.occurred_at
        await self.db[INCIDENTS].insert_one(
            {
                "_id": event.incident_id,
                "incident_id": event.incident_id,
                "status": IncidentStatus.OPEN.value,
                "title": payload.title,
                "unit_ids": list(payload.unit_ids),
                "reports": [],
                "report_count": 0,
                "filed_by": [],
                "history": [_history("opened", event, None)],
                "opened_at": at,
                "updated_at": at,
                "version": event.stream_version,
            },
            session=session,
        )

    async def _received(
        self, event: Envelope, payload: ReportReceived, session: AsyncClientSession | None
    ) -> None:
        at = event.occurred_at
        report = payload.model_dump(mode="python")
        report.update(
            _id=payload.report_id,
            incident_id=event.incident_id,
            unit_ids=list(payload.unit_ids),
            match=None,
            score=None,
            text=report_text(payload),
            **_banded(report_text(payload), at),
            received_at=at,
            actor=event.actor.model_dump(),
        )
        del report["_id"]
        # A referral's report merged into another incident moves there, keeping what the
        # office confirmed of it.
        await self.db[REPORTS].update_one(
            {"_id": payload.report_id}, {"$set": report}, upsert=True, session=session
        )
        summary = {
            "report_id": payload.report_id,
            "title": payload.title,
            "source_name": payload.source_name,
            "media_tier": payload.media_tier.value,
            "url": payload.url,
            "filed_by": payload.filed_by,
            "received_at": at,
            "match": None,
            "score": None,
            "claims_unconfirmed": payload.claims_unconfirmed,
        }
        await self.db[INCIDENT_REPORTS].insert_one(
            _listed(event.incident_id, summary), session=session
        )
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id},
            {
                "$inc": {"report_count": 1},
                "$addToSet": {
                    "unit_ids": {"$each": list(payload.unit_ids)},
                    "filed_by": payload.filed_by,
                },
                "$set": {"updated_at": at, "version": event.stream_version},
            },
            session=session,
        )
        await self._embed(event.incident_id, "reports", summary, session)

    async def _embed(
        self,
        incident_id: str,
        array: str,
        item: Document,
        session: AsyncClientSession | None,
        **where: Any,
    ) -> None:
        """Push `item` onto the incident's `array` while it holds fewer than
        `embedded_reports` (a filter on one element's absence: no read of the array), and
        the incident matches `where`."""
        await self.db[INCIDENTS].update_one(
            {
                "_id": incident_id,
                f"{array}.{self.embedded_reports - 1}": {"$exists": False},
                **where,
            },
            {"$push": {array: item}},
            session=session,
        )

    async def _attached(
        self, event: Envelope, payload: ReportAttached, session: AsyncClientSession | None
    ) -> None:
        await self.db[REPORTS].update_one(
            {"_id": payload.report_id},
            {"$set": {"match": payload.match, "score": payload.score}},
            session=session,
        )
        why = {"match": payload.match, "score": payload.score}
        await self.db[INCIDENT_REPORTS].update_one(
            {"_id": _listed_key(event.incident_id, payload.report_id)},
            {"$set": why},
            session=session,
        )
        await self._set_embedded(event, payload.report_id, why, session)

    async def _set_embedded(
        self,
        event: Envelope,
        report_id: str,
        fields: Document,
        session: AsyncClientSession | None,
    ) -> None:
        """The incident's updated time and version, and `fields` of the report's embedded
        summary if it is one of the first (the listed one is set by the caller)."""
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id}, {"$set": _at(event)}, session=session
        )
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id, "reports.report_id": report_id},
            {"$set": {f"reports.$.{name}": value for name, value in fields.items()}},
            session=session,
        )

    async def _status_changed(
        self,
        event: Envelope,
        payload: IncidentResolved | IncidentDismissed | IncidentReopened,
        session: AsyncClientSession | None,
    ) -> None:
        status = _STATUS_AFTER[type(payload)].value
        # A resolution starts afresh: its own watch, if the plan sets one, comes next.
        fresh: Document = {"watch": None} if isinstance(payload, IncidentResolved) else {}
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id},
            {
                "$set": {
                    "status": status,
                    "updated_at": event.occurred_at,
                    "version": event.stream_version,
                    **fresh,
                },
                "$push": {"history": _history(status, event, payload.reason)},
            },
            session=session,
        )

    async def _watch_started(
        self, event: Envelope, payload: IncidentWatchStarted, session: AsyncClientSession | None
    ) -> None:
        watch: Document = {
            "started_at": event.occurred_at,
            "until": payload.watch_until,
            "on_report": payload.on_report,
            "plan_id": payload.plan_id,
            "plan_version": payload.plan_version,
            "reports": [],
            "report_count": 0,
        }
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id}, {"$set": _at(event, watch=watch)}, session=session
        )

    async def _watch_report(
        self, event: Envelope, payload: WatchReportReceived, session: AsyncClientSession | None
    ) -> None:
        noted = {
            "report_id": payload.report_id,
            "at": event.occurred_at,
            "reopened": payload.reopened,
        }
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id, "watch.started_at": {"$exists": True}},
            {"$set": _at(event), "$inc": {"watch.report_count": 1}},
            session=session,
        )
        await self._embed(
            event.incident_id,
            "watch.reports",
            noted,
            session,
            **{"watch.started_at": {"$exists": True}},
        )

    async def _referred(
        self, event: Envelope, payload: ReferralOpened, session: AsyncClientSession | None
    ) -> None:
        referral = {
            "referred_by": payload.referred_by,
            "matched_incident_ids": list(payload.matched_incident_ids),
            "merged_into": None,
            "merged_at": None,
            "merge_reason": None,
        }
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id},
            {"$set": _at(event, referral=referral)},
            session=session,
        )

    async def _merged(
        self, event: Envelope, payload: ReferralMerged, session: AsyncClientSession | None
    ) -> None:
        merged = {
            "referral.merged_into": payload.into_incident_id,
            "referral.merged_at": event.occurred_at,
            "referral.merge_reason": payload.reason,
        }
        await self.db[INCIDENTS].update_one(
            {"_id": event.incident_id}, {"$set": _at(event, **merged)}, session=session
        )

    async def _claims_confirmed(
        self, event: Envelope, payload: ReportClaimsConfirmed, session: AsyncClientSession | None
    ) -> None:
        confirmation = {
            "media_tier": payload.media_tier.value,
            "reach": payload.reach.model_dump(),
            "reason": payload.reason,
            "confirmed_by": payload.confirmed_by,
            "at": event.occurred_at,
        }
        await self.db[REPORTS].update_one(
            {"_id": payload.report_id},
            {"$set": {"claims_unconfirmed": False, "claims_confirmed": confirmation}},
            session=session,
        )
        await self.db[INCIDENT_REPORTS].update_one(
            {"_id": _listed_key(event.incident_id, payload.report_id)},
            {"$set": {"claims_unconfirmed": False}},
            session=session,
        )
        await self._set_embedded(event, payload.report_id, {"claims_unconfirmed": False}, session)

    # ------------------------------------------------------------------ text matching

    async def recent_look_alikes(
        self,
        unit_ids: Sequence[str],
        text: str,
        since: datetime,
        now: datetime,
        limit: int,
        session: AsyncClientSession | None,
    ) -> list[TextCandidate]:
        """The reports about any of `unit_ids` filed since `since` that share an LSH band
        with `text`, most recent first, at most `limit` of them: the only ones a new
        report's text is compared with.

        Asked by the bands of each period since `since` (`period_bands`), first: a server
        that serves one condition from an index takes the first one it can (the embedded
        SecantusDB) and decodes all it hands over, so the candidates are those of at most
        a period more than the window, however long the history and however many
        look-alikes it holds. Periods of three days, not days: each value of the `$in`
        costs the embedded server a lookup (0.1 ms), found or not, and a 72-hour window
        asked by day asks five days' bands, by period two (three at most). Reports
        projected before texts were kept have none and are not compared."""
        bands = text_bands(text)
        query: Document = {
            "period_bands": {
                "$in": [f"{period}|{band}" for period in _periods(since, now) for band in bands]
            },
            "unit_ids": {"$in": list(unit_ids)},
            "received_at": {"$gte": since},
        }
        return await self._candidates(query, limit, session)

    async def look_alikes_of(
        self,
        incident_ids: Sequence[str],
        unit_ids: Sequence[str],
        text: str,
        limit: int,
        session: AsyncClientSession | None,
    ) -> list[TextCandidate]:
        """The reports of `incident_ids` (under watch: whenever they were filed) about any
        of `unit_ids` that share an LSH band with `text`, most recent first, at most
        `limit`: asked by incident first, so only those incidents' reports are read."""
        query: Document = {
            "incident_id": {"$in": list(incident_ids)},
            "bands": {"$in": list(text_bands(text))},
            "unit_ids": {"$in": list(unit_ids)},
        }
        return await self._candidates(query, limit, session)

    async def _candidates(
        self, query: Document, limit: int, session: AsyncClientSession | None
    ) -> list[TextCandidate]:
        cursor = (
            self.db[REPORTS]
            .find(
                {**query, "text": {"$exists": True}}, {"incident_id": 1, "text": 1}, session=session
            )
            .sort("received_at", DESCENDING)
            .limit(limit)
        )
        return [TextCandidate(doc["incident_id"], doc["text"]) async for doc in cursor]

    async def watched(
        self, unit_ids: Sequence[str], now: datetime, session: AsyncClientSession | None
    ) -> list[str]:
        """The resolved incidents about any of `unit_ids` whose watch (善后跟踪) still runs at
        `now`: a report reading like one of theirs belongs to them however long ago their
        reports were filed."""
        cursor = self.db[INCIDENTS].find(
            {
                # The watch first: served from its index, it holds only the incidents under
                # watch now, where the unit's index would hand over every incident it ever had.
                "watch.until": {"$gte": now},
                "unit_ids": {"$in": list(unit_ids)},
                "status": IncidentStatus.RESOLVED.value,
            },
            {"_id": 1},
            session=session,
        )
        return [doc["_id"] async for doc in cursor]

    async def guard_text(
        self, unit_ids: Sequence[str], text: str, session: AsyncClientSession | None
    ) -> None:
        """Bump the guard of each of the units and each LSH band of `text`, in one command:
        a concurrent filing that could be compared with this one (it shares a unit and a
        band, see `text_candidates`) writes one of the same documents, so only one of the
        two commits and the other is run again, seeing it."""
        # A band is "<index>:<hash>": band i of one text only ever meets band i of another.
        slots = {
            f"{index}:{int(digest, 16) % _GUARD_SLOTS}"
            for index, digest in (band.split(":", 1) for band in text_bands(text))
        }
        keys = sorted(f"{unit_id} {slot}" for unit_id in set(unit_ids) for slot in slots)
        await self.db[TEXT_GUARDS].bulk_write(
            [UpdateOne({"_id": key}, {"$inc": {"filings": 1}}, upsert=True) for key in keys],
            session=session,
        )

    # ------------------------------------------------------------------ URL claims

    async def claims(
        self, normalized_url: str, unit_ids: Sequence[str], session: AsyncClientSession | None
    ) -> dict[str, str]:
        """The incident the URL belongs to for each of `unit_ids` that has one, by unit."""
        keys = [_claim_key(unit_id, normalized_url) for unit_id in unit_ids]
        cursor = self.db[URL_CLAIMS].find({"_id": {"$in": keys}}, session=session)
        return {doc["unit_id"]: str(doc["incident_id"]) async for doc in cursor}

    async def claim(
        self,
        normalized_url: str,
        unit_id: str,
        incident_id: str,
        previous: str | None,
        session: AsyncClientSession | None,
    ) -> None:
        """Point the URL at `incident_id` for `unit_id`, provided it still points at
        `previous`."""
        claims = self.db[URL_CLAIMS]
        key = _claim_key(unit_id, normalized_url)
        if previous is None:
            try:
                await claims.insert_one(
                    {"_id": key, "unit_id": unit_id, "incident_id": incident_id},
                    session=session,
                )
            except DuplicateKeyError:
                raise UrlClaimLost(key) from None
            return
        result = await claims.update_one(
            {"_id": key, "incident_id": previous},
            {"$set": {"incident_id": incident_id}},
            session=session,
        )
        if result.matched_count != 1:
            raise UrlClaimLost(key)

    # ------------------------------------------------------------------ idempotency

    async def remembered(
        self, scope_key: str, session: AsyncClientSession | None = None
    ) -> Document | None:
        return await self.db[IDEMPOTENCY].find_one({"_id": scope_key}, session=session)

    async def remember(
        self,
        scope_key: str,
        fingerprint: str,
        answer: dict[str, Any],
        session: AsyncClientSession | None,
    ) -> None:
        """Raises DuplicateKeyError when a racing request with the key committed first."""
        await self.db[IDEMPOTENCY].insert_one(
            {"_id": scope_key, "fingerprint": fingerprint, "answer": answer}, session=session
        )

    # ------------------------------------------------------------------ queries

    async def report(
        self, report_id: str, session: AsyncClientSession | None = None
    ) -> ReportOut | None:
        doc = await self.db[REPORTS].find_one(
            {"_id": report_id},
            {"_id": 0, "text": 0, "bands": 0, "period_bands": 0, "lsh": 0},
            session=session,
        )
        return None if doc is None else ReportOut.model_validate(doc)

    async def incident(self, incident_id: str) -> IncidentOut | None:
        doc = await self.db[INCIDENTS].find_one({"_id": incident_id}, {"_id": 0})
        return None if doc is None else IncidentOut.model_validate(doc)

    async def report_page(
        self,
        incident_id: str,
        limit: int,
        after: str | None = None,
        filed_by: str | None = None,
    ) -> tuple[list[ReportSummary], str | None]:
        """The incident's reports oldest first (by when received, then id), from after the
        key `after`, at most `limit`, only those `filed_by` filed if given; and the key
        to pass as `after` for the next page, None on the last one."""
        query: Document = {"incident_id": incident_id}
        if filed_by is not None:
            query["filed_by"] = filed_by
        if after is not None:
            query["order"] = {"$gt": after}
        cursor = (
            self.db[INCIDENT_REPORTS]
            .find(query, {"_id": 0, "incident_id": 0})
            .sort("order", ASCENDING)
            .limit(limit + 1)
        )
        docs = [doc async for doc in cursor]
        more = len(docs) > limit
        docs = docs[:limit]
        items = [
            ReportSummary.model_validate({k: v for k, v in doc.items() if k != "order"})
            for doc in docs
        ]
        return items, (str(docs[-1]["order"]) if more else None)

    async def report_total(self, incident_id: str, filed_by: str | None = None) -> int:
        """How many reports the incident has (only those `filed_by` filed, if given)."""
        if filed_by is None:
            doc = await self.db[INCIDENTS].find_one({"_id": incident_id}, {"report_count": 1})
            return int(doc.get("report_count", 0)) if doc is not None else 0
        return int(
            await self.db[INCIDENT_REPORTS].count_documents(
                {"incident_id": incident_id, "filed_by": filed_by}
            )
        )

    async def referrals(
        self, incident_ids: Iterable[str], session: AsyncClientSession | None
    ) -> set[str]:
        """Which of the incidents are partners' referrals (their partner's own)."""
        wanted = list(dict.fromkeys(incident_ids))
        if not wanted:
            return set()
        cursor = self.db[INCIDENTS].find({"_id": {"$in": wanted}}, {"referral": 1}, session=session)
        return {doc["_id"] async for doc in cursor if doc.get("referral")}

    async def incident_scope(self, incident_id: str) -> IncidentScope | None:
        """What deciding who may see or change the incident needs, None if there is none."""
        doc = await self.db[INCIDENTS].find_one(
            {"_id": incident_id}, {"unit_ids": 1, "filed_by": 1}
        )
        if doc is None:
            return None
        return scope_of(incident_id, doc.get("unit_ids", []), doc.get("filed_by", []))


def _listed_key(incident_id: str, report_id: str) -> str:
    return f"{incident_id} {report_id}"


def _banded(text: str, received_at: datetime) -> Document:
    """A report's LSH bands, the same of the period it was received in, and their scheme."""
    bands = text_bands(text)
    period = _period(received_at)
    return {
        "bands": list(bands),
        "period_bands": [f"{period}|{band}" for band in bands],
        "lsh": _BANDING,
    }


def _period(moment: datetime) -> int:
    """The three-day period of the epoch that `moment` falls in."""
    return int(_utc(moment).timestamp() // _PERIOD.total_seconds())


def _periods(since: datetime, now: datetime) -> range:
    """The periods from `since` to a little after `now` (a replica's clock a little ahead
    may have stamped a report received there)."""
    return range(_period(since), _period(now + _CLOCK_AHEAD) + 1)


def _order(received_at: datetime, report_id: str) -> str:
    """The key the reports of an incident are listed by: when received, then the id (one
    field, so a page is one flat range on an index)."""
    return f"{_utc(received_at):%Y-%m-%dT%H:%M:%S.%fZ} {report_id}"


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one (a store that drops the zone) is UTC already."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _listed(incident_id: str, summary: Document) -> Document:
    """A report's summary as `incident_reports` lists it on `incident_id`."""
    return {
        **summary,
        "_id": _listed_key(incident_id, summary["report_id"]),
        "incident_id": incident_id,
        "order": _order(summary["received_at"], summary["report_id"]),
    }


def _claim_key(unit_id: str, normalized_url: str) -> str:
    # Unit ids hold no space (the API's UnitId pattern), so no two (unit, URL) pairs
    # share a key.
    return f"{unit_id} {normalized_url}"


_STATUS_AFTER: dict[type[EventPayload], IncidentStatus] = {
    IncidentResolved: IncidentStatus.RESOLVED,
    IncidentDismissed: IncidentStatus.DISMISSED,
    IncidentReopened: IncidentStatus.OPEN,
}


def _at(event: Envelope, **fields: Any) -> Document:
    """`fields` and the incident's updated time and version, for a `$set`."""
    return {**fields, "updated_at": event.occurred_at, "version": event.stream_version}


def _history(status: str, event: Envelope, reason: str | None) -> Document:
    return {
        "status": status,
        "reason": reason,
        "at": event.occurred_at,
        "actor": event.actor.model_dump(),
        "event_id": str(event.event_id),
    }
