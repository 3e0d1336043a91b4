"""Intake's HTTP API: file reports, read them back, move incidents through their lifecycle.

Who may do what (DOMAIN.md, "Who uses it"):
- file a report: the people who watch the net or receive referrals: monitor, office,
  leader, dept_head, spokesperson, partner (and admin), only for units they act for;
- resolve, dismiss (网络伪舆情) and reopen: the leading group and its office (leader,
  office, admin); under a plan with a `watch:` a resolution starts the watch (善后跟踪), and
  a matching report during it reopens the incident or is attached to it, as the plan says;
- merge a partner's referral into an incident, and confirm a partner's claimed media tier
  and reach: the office (office, admin), acting for every unit of both;
- a partner's report never joins an incident it does not already see, nor reopens one,
  nor adds units to one: it opens a referral of its own;
- read: whoever `shared.visibility` lets see the incident (a partner only what it
  referred). Every `{id}` route asks it first, so another unit's id answers the same 404
  as an unknown one, before any role or status is checked. An incident's view embeds its
  first YUQING_ARCHIVE_EMBEDDED_REPORTS reports and counts them all (`report_count`);
  every one is listed by page at /incidents/{id}/reports (a partner: its own), at most
  YUQING_MAX_PAGE_SIZE a page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from services.intake.domain import (
    Incident,
    IntakePolicy,
    WatchRule,
    new_report_id,
    normalize_url,
)
from services.intake.handlers import Idempotency, IntakeCommands
from services.intake.projections import (
    IncidentOut,
    IntakeViews,
    PartnerIncidentOut,
    ReportOut,
    ReportSummary,
)
from shared.auth import CurrentCaller
from shared.clock import Clock
from shared.directory import Directory
from shared.errors import BadRequest, Forbidden, Invalid
from shared.events import (
    Attachment,
    EventPayload,
    IncidentStatus,
    MediaTier,
    Reach,
    ReportReceived,
    SourceType,
)
from shared.identity import Role
from shared.paging import page_size
from shared.visibility import Sight, Visibility

FILERS = (
    Role.MONITOR,
    Role.OFFICE,
    Role.LEADER,
    Role.DEPT_HEAD,
    Role.SPOKESPERSON,
    Role.PARTNER,
)
LIFECYCLE = (Role.LEADER, Role.OFFICE)
REFERRAL_DESK = (Role.OFFICE,)

UnitId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
# Far above any real count, and within the 64-bit integers the database stores.
MAX_REACH = 10**12


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _absolute_http(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


class ReportIn(BaseModel):
    """One observed online item (舆情件), as a monitor or partner files it."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "source_type": "weibo",
                    "source_name": "新浪微博",
                    "media_tier": "self_media",
                    "url": "https://weibo.com/1234567890/NsXyZ",
                    "title": "网传实验小学食堂饭菜变质",
                    "excerpt": "有家长发帖称孩子在学校食堂吃到变质饭菜，配图三张。",
                    "author": "家长小王",
                    "published_at": "2026-11-21T08:00:00+08:00",
                    "observed_at": "2026-11-21T08:05:00+08:00",
                    "reach": {"views": 12000, "reposts": 85, "comments": 230, "likes": 410},
                    "unit_ids": ["school-a"],
                }
            ]
        },
    )

    source_type: SourceType
    source_name: str = Field(min_length=1, max_length=200, examples=["人民网"])
    media_tier: MediaTier
    url: str = Field(min_length=1, max_length=2048)
    title: str = Field(min_length=1, max_length=500)
    excerpt: str = Field(default="", max_length=5000)
    author: str | None = Field(default=None, max_length=200)
    published_at: AwareDatetime
    observed_at: AwareDatetime
    reach: Reach = Field(default_factory=Reach)
    unit_ids: list[UnitId] = Field(min_length=1, max_length=20)
    attachments: list[Attachment] = Field(
        default_factory=list,
        max_length=20,
        description="what is known of files kept with the report (screenshots, videos); "
        "sha256 in lower-case hex, size in bytes",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _absolute_http(value)

    @field_validator("attachments")
    @classmethod
    def _attachment_urls(cls, value: list[Attachment]) -> list[Attachment]:
        for attachment in value:
            if attachment.url is not None:
                _absolute_http(attachment.url)
        return value

    @field_validator("reach")
    @classmethod
    def _bounded_reach(cls, value: Reach) -> Reach:
        too_large = [k for k, v in value.model_dump().items() if v > MAX_REACH]
        if too_large:
            raise ValueError(f"{', '.join(too_large)}: each figure must be at most {MAX_REACH}")
        return value

    @field_validator("published_at", "observed_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @field_validator("unit_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _published_before_observed(self) -> ReportIn:
        # An item cannot be seen before it appears: such a pair has a wrong time zone,
        # and these times are the evidence a review checks for late reporting (迟报).
        if self.published_at > self.observed_at:
            raise ValueError("published_at is after observed_at: an item is seen once published")
        return self


class ReportAnswer(BaseModel):
    report_id: str
    incident_id: str
    new_incident: bool = Field(description="true when the report opened a new incident")
    referral: bool = Field(
        default=False,
        description="true when a partner's report opened a referral of its own for the "
        "office to merge, instead of joining an incident the partner does not see",
    )


DEFAULT_PAGE = 50  # reports a page lists when no `limit` is asked


class ReportPage(BaseModel):
    incident_id: str
    total: int = Field(description="every report the caller sees of it (a partner: its own)")
    items: list[ReportSummary] = Field(description="oldest first, by when intake received them")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last one"
    )


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        key = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, binascii.Error) as exc:
        raise BadRequest(
            "cursor is not one this API returned", {"field": "cursor", "reason": str(exc)}
        ) from None
    if not _CURSOR.fullmatch(key):
        raise BadRequest(
            "cursor is not one this API returned", {"field": "cursor", "reason": "unknown key"}
        )
    return key


# What `_order` in projections.py makes: the UTC time received, then the report id.
_CURSOR = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z \S{1,80}")


class MergeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"into": "inc-2026-0001", "reason": "网信办转来的同一事件，并入本单位已立的事件"}
            ]
        },
    )

    into: str = Field(min_length=1, max_length=64, description="the incident to merge into")
    reason: str = Field(min_length=1, max_length=2000)


class MergeOut(BaseModel):
    referral: IncidentStatusOut
    into: IncidentStatusOut


class ConfirmClaimsIn(BaseModel):
    """The office confirms a partner's claims as filed, or as it found them."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"reason": "已核实原帖：转发量属实，媒体层级为市级", "media_tier": "municipal"}
            ]
        },
    )

    reason: str = Field(min_length=1, max_length=2000, description="what was checked")
    media_tier: MediaTier | None = Field(
        default=None, description="the tier found, if not as claimed"
    )
    reach: Reach | None = Field(default=None, description="the reach found, if not as claimed")


class ConfirmClaimsOut(BaseModel):
    report_id: str
    incident_id: str
    version: int


class IncidentStatusOut(BaseModel):
    incident_id: str
    status: IncidentStatus
    version: int


class ReasonIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"reason": "学校已回应并整改，相关帖子热度回落"}]},
    )

    reason: str = Field(min_length=1, max_length=2000)


def _plausible(reach: Reach, policy: IntakePolicy) -> None:
    """422 naming the first reach figure beyond the policy's bound for it (`reach_max`)."""
    for field, limit in policy.reach_max.beyond(reach):
        raise Invalid(
            f"reach.{field}", f"must be at most {limit} (intake policy reach_max)", "too_large"
        )


def _fingerprint(body: ReportIn) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def build_router(
    commands: IntakeCommands,
    views: IntakeViews,
    visibility: Visibility,
    directory: Directory,
    policy: IntakePolicy,
    clock: Clock,
    watch: WatchRule | None = None,
    max_page_size: int = 100,
) -> APIRouter:
    """`max_page_size`: the largest `limit` of a paged list (YUQING_MAX_PAGE_SIZE)."""
    router = APIRouter(tags=["intake"])

    @router.post(
        "/reports",
        response_model=ReportAnswer,
        status_code=status.HTTP_201_CREATED,
        summary="File a report (舆情件)",
        responses={
            200: {"model": ReportAnswer, "description": "attached to an incident already open"},
            201: {"description": "a new incident was opened for it"},
            403: {"description": "a unit the caller does not act for, or a role that may not file"},
            409: {"description": "the Idempotency-Key was used for a different report"},
            422: {"description": "a missing or malformed field, or an unknown unit"},
        },
    )
    async def submit_report(
        body: ReportIn,
        caller: CurrentCaller,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,
                max_length=200,
                description="A retry with this key gets the first answer; nothing stored twice.",
            ),
        ] = None,
    ) -> ReportAnswer:
        caller.require(*FILERS)
        unknown = [u for u in body.unit_ids if directory.unit(u) is None]
        if unknown:
            raise Invalid("unit_ids", f"unknown units: {', '.join(unknown)}", "unknown_unit")
        if body.observed_at > clock() + policy.clock_skew:
            raise Invalid(
                "observed_at", "is in the future: check the clock and time zone", "future"
            )
        if not visibility.may_file_for(caller, body.unit_ids):
            raise Forbidden(f"{caller.id} may not file reports for {', '.join(body.unit_ids)}")
        _plausible(body.reach, policy)
        report = ReportReceived(
            report_id=new_report_id(),
            source_type=body.source_type,
            source_name=body.source_name,
            media_tier=body.media_tier,
            url=body.url,
            normalized_url=normalize_url(body.url, policy.tracking_params),
            title=body.title,
            excerpt=body.excerpt,
            author=body.author,
            published_at=body.published_at,
            observed_at=body.observed_at,
            reach=body.reach,
            unit_ids=tuple(body.unit_ids),
            filed_by=caller.id,
            attachments=tuple(body.attachments),
            claims_unconfirmed=caller.is_partner,
        )
        idempotency = (
            Idempotency(f"{caller.id}:{idempotency_key}", _fingerprint(body))
            if idempotency_key
            else None
        )
        answer = await commands.submit(report, caller, idempotency)
        response.status_code = (
            status.HTTP_201_CREATED if answer.new_incident else status.HTTP_200_OK
        )
        if answer.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return ReportAnswer(**answer.body())

    @router.get(
        "/reports/{report_id}",
        response_model=ReportOut,
        summary="A report as filed, and its incident",
        responses={404: {"description": "no such report, or one the caller may not see"}},
    )
    async def get_report(report_id: str, caller: CurrentCaller) -> ReportOut:
        found = await views.report(report_id)
        sight = visibility.require(caller, found.scope if found else None, "report", report_id)
        assert found is not None
        if sight is Sight.FULL:
            return found
        # A partner reads its own report as filed; why intake put it where it is and the
        # office's notes on its claims are the bureau's.
        return found.model_copy(update={"match": None, "score": None, "claims_confirmed": None})

    @router.get(
        "/incidents/{incident_id}",
        response_model=Annotated[IncidentOut | PartnerIncidentOut, Field(discriminator="sight")],
        summary="Intake's view of an incident (a partner: only its own part of it)",
        responses={404: {"description": "no such incident, or one the caller may not see"}},
    )
    async def get_incident(
        incident_id: str, caller: CurrentCaller
    ) -> IncidentOut | PartnerIncidentOut:
        found = await views.incident(incident_id)
        sight = visibility.require(caller, found.scope if found else None, "incident", incident_id)
        assert found is not None
        if sight is Sight.FULL:
            return found
        own, _ = await views.report_page(incident_id, views.embedded_reports, filed_by=caller.id)
        return found.for_partner(caller.id, own, await views.report_total(incident_id, caller.id))

    @router.get(
        "/incidents/{incident_id}/reports",
        response_model=ReportPage,
        summary="Every report of an incident by page, oldest first (a partner: its own)",
        responses={
            400: {"description": "a cursor this API did not give out"},
            404: {"description": "no such incident, or one the caller may not see"},
            422: {"description": "a limit above YUQING_MAX_PAGE_SIZE"},
        },
    )
    async def list_reports(
        incident_id: str,
        caller: CurrentCaller,
        limit: Annotated[
            int | None,
            Query(ge=1, description="at most YUQING_MAX_PAGE_SIZE; 50 (or that) by default"),
        ] = None,
        cursor: Annotated[
            str | None, Query(max_length=200, description="next_cursor of the page before")
        ] = None,
    ) -> ReportPage:
        limit = page_size(
            min(DEFAULT_PAGE, max_page_size) if limit is None else limit, max_page_size
        )
        scope = await views.incident_scope(incident_id)
        sight = visibility.require(caller, scope, "incident", incident_id)
        after = _decode_cursor(cursor) if cursor else None
        filer = None if sight is Sight.FULL else caller.id
        items, last = await views.report_page(incident_id, limit, after, filer)
        if filer is not None:
            # Why intake attached it is the bureau's reasoning, not what was filed.
            items = [r.model_copy(update={"match": None, "score": None}) for r in items]
        return ReportPage(
            incident_id=incident_id,
            total=await views.report_total(incident_id, filer),
            items=items,
            next_cursor=_encode_cursor(last) if last else None,
        )

    @router.post(
        "/incidents/{incident_id}/merge",
        response_model=MergeOut,
        summary="Merge a partner's referral into an incident (the office)",
        responses={
            403: {"description": "not the office, or not acting for every unit of both"},
            404: {"description": "no such incident (either), or one the caller may not see"},
            409: {"description": "not an open referral, already merged, or a closed target"},
        },
    )
    async def merge_referral(incident_id: str, body: MergeIn, caller: CurrentCaller) -> MergeOut:
        scope = await views.incident_scope(incident_id)
        visibility.require(caller, scope, "incident", incident_id)
        caller.require(*REFERRAL_DESK)
        referral, into = await commands.merge(incident_id, body.into, body.reason, caller)
        return MergeOut(
            referral=IncidentStatusOut(
                incident_id=referral.incident_id, status=referral.status, version=referral.version
            ),
            into=IncidentStatusOut(
                incident_id=into.incident_id, status=into.status, version=into.version
            ),
        )

    @router.post(
        "/reports/{report_id}/confirm-claims",
        response_model=ConfirmClaimsOut,
        summary="Confirm a partner's claimed media tier and reach (the office)",
        responses={
            403: {"description": "not the office, or not acting for every unit of the incident"},
            404: {"description": "no such report, or one the caller may not see"},
            409: {"description": "the report has no unconfirmed claims"},
        },
    )
    async def confirm_claims(
        report_id: str, body: ConfirmClaimsIn, caller: CurrentCaller
    ) -> ConfirmClaimsOut:
        found = await views.report(report_id)
        visibility.require(caller, found.scope if found else None, "report", report_id)
        caller.require(*REFERRAL_DESK)
        if body.reach is not None:
            _plausible(body.reach, policy)
        after = await commands.confirm_claims(
            report_id, body.reason, caller, body.media_tier, body.reach
        )
        return ConfirmClaimsOut(
            report_id=report_id, incident_id=after.incident_id, version=after.version
        )

    def lifecycle(
        action: str,
        decide: Callable[[Incident, str, datetime], list[EventPayload]],
        summary: str,
    ) -> None:
        @router.post(
            f"/incidents/{{incident_id}}/{action}",
            response_model=IncidentStatusOut,
            summary=summary,
            name=f"{action}_incident",
            responses={
                403: {"description": "not a leader or office, or not acting for all its units"},
                404: {"description": "no such incident, or one the caller may not see"},
                409: {"description": "not allowed from the current status (in details)"},
            },
        )
        async def transition(
            incident_id: str, body: ReasonIn, caller: CurrentCaller
        ) -> IncidentStatusOut:
            scope = await views.incident_scope(incident_id)
            visibility.require(caller, scope, "incident", incident_id)
            caller.require(*LIFECYCLE)

            def decided(incident: Incident, at: datetime) -> list[EventPayload]:
                return decide(incident, body.reason, at)

            after = await commands.transition(incident_id, decided, caller)
            return IncidentStatusOut(
                incident_id=after.incident_id, status=after.status, version=after.version
            )

    def resolve(incident: Incident, reason: str, at: datetime) -> list[EventPayload]:
        # Under the plan's watch (plan.yaml `watch:`), from the resolution's instant on.
        return incident.resolve(reason, watch, at)

    def dismiss(incident: Incident, reason: str, _: datetime) -> list[EventPayload]:
        return incident.dismiss(reason)

    def reopen(incident: Incident, reason: str, _: datetime) -> list[EventPayload]:
        return incident.reopen(reason)

    lifecycle(
        "resolve",
        resolve,
        "Resolve an incident once the opinion has calmed down; under the plan's watch "
        "(善后跟踪) a matching report until the watch ends reopens it or is attached to it",
    )
    lifecycle("dismiss", dismiss, "Dismiss a pseudo-incident (网络伪舆情), with the reason")
    lifecycle("reopen", reopen, "Reopen a resolved or dismissed incident, with the reason")
    return router
