"""The assessment (考评) routes of the archive, under /archive/v1, and the office's findings
that feed it (seed 003 篇三 第二十八条).

Findings (office or leader; the incident must be in the caller's sight, 404 like an unknown
id otherwise, and every unit it concerns theirs to act on, 403 otherwise):
- `POST /obligations/{obligation_id}/untrue`: a fulfilment found untrue (谎报), with the
  reason; 409 when the duty is not fulfilled or was marked already;
- `POST /incidents/{incident_id}/uncleared-releases`: a statement or information that went
  out without its clearance chain (who, channel, when, what);
- `POST /incidents/{incident_id}/commendations`: a commendation (表扬) of a person or unit.
Each is an event of the archive's own stream `assessment-{incident}` (as the review is):
it comes back through Kafka into the log, the view and the timeline, and only from there
into the assessment.

Reads (leader, office, analyst; only the units the caller sees, as /accountability; a
partner's assessment is empty): `GET /assessment?from&to[&unit]` (every count per unit and
per person with the records behind it) and `GET /assessment/report` (the same as a Chinese
document, Markdown or HTML), for a period of at most `YUQING_ASSESSMENT_MAX_DAYS` (422
naming `from` beyond it). What counts as concealed (瞒报) is the plan's
`assessment.yaml` (`concealed_after_minutes`), else config/assessment.yaml.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.archive.assessment_report import AssessmentReport
from services.archive.domain import fold
from services.archive.domain.assessment import (
    Assessment,
    AssessmentLog,
    AssessmentRules,
    assess,
    decide_untrue,
)
from services.archive.domain.views import IncidentView
from services.archive.projections import ArchiveViews
from shared.auth import CurrentCaller
from shared.catalogue import Catalogue
from shared.clock import Clock
from shared.errors import BadRequest, Forbidden, Invalid
from shared.events import (
    CommendationRecorded,
    EventPayload,
    ObligationFulfilled,
    UnclearedReleaseRecorded,
)
from shared.identity import Caller, Role
from shared.policy import PolicyError, load_policy
from shared.repository import Cause, CommandRunner, Repository
from shared.settings import CONFIG_DIR
from shared.store import Document, UnitOfWork
from shared.visibility import Sight, Visibility, hidden

RULES_FILE = "assessment.yaml"


def load_rules(pack_dir: Path, default: Path = CONFIG_DIR / RULES_FILE) -> AssessmentRules:
    """The plan pack's assessment.yaml, else the deployment's default file, else the
    defaults; a file that does not fit stops the start naming the file and field."""
    for path in (pack_dir / RULES_FILE, default):
        if path.is_file():
            try:
                return load_policy(path, AssessmentRules)
            except PolicyError as exc:
                raise ValueError(str(exc)) from None
    return AssessmentRules()


# --------------------------------------------------------------------------- bodies


class UntrueRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "首报称已处置完毕，实际当时尚未联系发帖人"}]},
    )

    reason: str = Field(min_length=1, max_length=2000, description="为何认定报送不实")


class UnclearedReleaseRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "released_by": "spokesperson-sun",
                    "channel": "学校家长群",
                    "released_at": "2026-11-21T09:00:00+08:00",
                    "content": "食堂饭菜检测合格，请家长放心。",
                }
            ]
        },
    )

    released_by: str = Field(min_length=1, max_length=200, description="发布人（人员 id）")
    unit_id: str | None = Field(
        default=None, max_length=200, description="发布单位；默认为发布人在通讯录中的单位"
    )
    channel: str = Field(min_length=1, max_length=200, description="发布渠道")
    released_at: AwareDatetime = Field(description="发布时间")
    content: str = Field(min_length=1, max_length=5000, description="发布的内容")


class CommendationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"person_id": "monitor-chen", "reason": "首先发现并在10分钟内报送"}]
        },
    )

    person_id: str | None = Field(default=None, max_length=200, description="受表扬的人员")
    unit_id: str | None = Field(
        default=None, max_length=200, description="受表扬的单位；表扬人员时默认为其单位"
    )
    reason: str = Field(min_length=1, max_length=2000, description="表扬事由")


class FindingAccepted(BaseModel):
    """Recorded in the archive's stream; it shows in the incident and the assessment once
    it has come back through the log."""

    incident_id: str
    event_id: uuid.UUID
    record_id: str  # the obligation's, the release's or the commendation's id


# --------------------------------------------------------------------------- commands


class AssessmentCommands:
    def __init__(
        self,
        views: ArchiveViews,
        findings: Repository[AssessmentLog],
        run: CommandRunner,
        clock: Clock,
    ) -> None:
        self.views = views
        self.findings = findings
        self.run = run
        self.clock = clock

    async def incident_of_obligation(self, obligation_id: str) -> str | None:
        models = await self.views.current_models()
        found = await self.views.db[models.incidents].find_one(
            {"view.obligations.obligation_id": obligation_id}, {"_id": 1}
        )
        return str(found["_id"]) if found is not None else None

    async def _save(
        self,
        caller: Caller,
        incident_id: str,
        payload: EventPayload | None = None,
        obligation_id: str | None = None,
        reason: str = "",
        unit_id: str | None = None,
    ) -> FindingAccepted:
        async def work(uow: UnitOfWork) -> FindingAccepted:
            records = await self.views.load_log(incident_id, uow)
            view = fold(incident_id, records)
            log = await self.findings.get(uow, incident_id)
            cause_id = None
            event = payload
            if obligation_id is not None:
                duty = next((o for o in view.obligations if o.obligation_id == obligation_id), None)
                if duty is None:
                    raise hidden("obligation", obligation_id)
                event = decide_untrue(duty, log, reason, caller.id)
                cause_id = next(
                    (
                        r.event.event_id
                        for r in reversed(records)
                        if isinstance(r.event.payload, ObligationFulfilled)
                        and r.event.payload.obligation_id == obligation_id
                    ),
                    None,
                )
            assert event is not None
            unit = unit_id if unit_id in view.unit_ids else next(iter(view.unit_ids), None)
            saved = await self.findings.save(
                uow,
                incident_id,
                log,
                [event],
                Cause(
                    actor=caller.actor,
                    incident_id=incident_id,
                    unit_id=unit,
                    causation_id=cause_id,
                    occurred_at=self.clock(),
                ),
            )
            assert saved is not None
            return FindingAccepted(
                incident_id=incident_id,
                event_id=saved.events[0].event_id,
                record_id=obligation_id or _record_id(event),
            )

        return await self.run(work)

    async def mark_untrue(
        self, caller: Caller, incident_id: str, obligation_id: str, reason: str, unit: str | None
    ) -> FindingAccepted:
        return await self._save(
            caller, incident_id, obligation_id=obligation_id, reason=reason, unit_id=unit
        )

    async def record(
        self, caller: Caller, incident_id: str, payload: EventPayload, unit: str
    ) -> FindingAccepted:
        return await self._save(caller, incident_id, payload=payload, unit_id=unit)


def _record_id(event: EventPayload) -> str:
    if isinstance(event, UnclearedReleaseRecorded):
        return event.release_id
    if isinstance(event, CommendationRecorded):
        return event.commendation_id
    return ""


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class PeriodViews:
    units: set[str] | None  # the units assessed; None: every unit
    views: list[IncidentView]


async def period_views(
    views: ArchiveViews,
    visibility: Visibility,
    caller: Caller,
    start: datetime,
    end: datetime,
    unit: str | None,
    longest: timedelta,
) -> PeriodViews:
    """The incidents an assessment of [start, end) reads, for the leading group, its office
    or an analyst: those of `unit` (403 outside the caller's sight) or of every unit in
    sight, never a partner's; 400 when the period ends before it starts, 422 naming `from`
    when it is longer than `longest` (YUQING_ASSESSMENT_MAX_DAYS)."""
    caller.require(Role.LEADER, Role.OFFICE, Role.ANALYST)
    if end <= start:
        raise BadRequest("`to` must be after `from`", {"field": "to"})
    if end - start > longest:
        days = longest / timedelta(days=1)
        raise Invalid(
            "from",
            f"the period from `from` to `to` is longer than {days:g} days "
            "(YUQING_ASSESSMENT_MAX_DAYS): assess it in shorter periods",
            "assessment_period",
        )
    visible = visibility.units(caller)
    if unit is not None and visible is not None and unit not in visible:
        raise Forbidden(f"unit {unit} is outside the units you may assess", {"unit": unit})
    units = {unit} if unit is not None else visible
    conditions: list[Document] = [{"sort_at": {"$lt": end}}]
    if scope := visibility.scope_filter(caller, at_least=Sight.FULL):
        conditions.append(scope)
    if units is not None:
        conditions.append({"unit_ids": {"$in": sorted(units)}})
    return PeriodViews(units, [view async for view in views.scan_views(conditions)])


def register_assessment(
    router: APIRouter,
    views: ArchiveViews,
    commands: AssessmentCommands,
    visibility: Visibility,
    catalogue: Catalogue,
    rules: AssessmentRules,
    tz: tzinfo,
    clock: Clock,
    longest_period: timedelta,
) -> None:
    """`longest_period`: the longest `from`..`to` of an assessment (YUQING_ASSESSMENT_MAX_DAYS)."""
    directory = visibility.directory
    report = AssessmentReport(directory, catalogue, tz)

    def aware(moment: datetime) -> datetime:
        """A time given without an offset is the bureau's local time."""
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)

    async def acted_on(caller: Caller, incident_id: str, kind: str, key: str) -> IncidentView:
        """The incident, in full sight (404 of `kind` `key` otherwise), that the caller may
        act on (403), with the role checked after sight as the review does."""
        found = await views.incident(incident_id)
        visibility.require(caller, found.scope if found else None, kind, key, at_least=Sight.FULL)
        assert found is not None
        caller.require(Role.LEADER, Role.OFFICE)
        if not visibility.may_act_on(caller, found.scope):
            raise Forbidden(
                f"incident {incident_id} concerns units outside yours",
                {"incident_id": incident_id},
            )
        return found.view

    def attributed_unit(
        caller: Caller, field: str, person_id: str | None, unit_id: str | None
    ) -> str:
        """The unit a finding counts for: the one given, else the person's own; one the
        caller may assess (403 otherwise, as the assessment's `unit`)."""
        if unit_id is not None:
            if directory.unit(unit_id) is None:
                raise Invalid("unit_id", f"{unit_id} is not a unit of the directory", "unit")
            unit = unit_id
        else:
            person = directory.person(person_id) if person_id else None
            if person is None:
                raise Invalid(
                    "unit_id" if person_id else field,
                    "give the unit: the person is not in the directory"
                    if person_id
                    else "name a person or a unit",
                    "missing",
                )
            unit = person.unit
        if not visibility.may_act_for_unit(caller, unit):
            raise Forbidden(f"unit {unit} is outside the units you may assess", {"unit": unit})
        return unit

    @router.post(
        "/obligations/{obligation_id}/untrue",
        response_model=FindingAccepted,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Find a duty's fulfilment untrue (谎报) with the reason (office, leader)",
    )
    async def mark_untrue(
        obligation_id: str, body: UntrueRequest, caller: CurrentCaller
    ) -> FindingAccepted:
        incident_id = await commands.incident_of_obligation(obligation_id)
        if incident_id is None:
            raise hidden("obligation", obligation_id)
        view = await acted_on(caller, incident_id, "obligation", obligation_id)
        duty = next((o for o in view.obligations if o.obligation_id == obligation_id), None)
        done_by = duty.fulfilled_by if duty is not None else None
        fulfiller = directory.person(done_by) if done_by else None
        return await commands.mark_untrue(
            caller,
            incident_id,
            obligation_id,
            body.reason,
            fulfiller.unit if fulfiller is not None else None,
        )

    @router.post(
        "/incidents/{incident_id}/uncleared-releases",
        response_model=FindingAccepted,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Record a release without clearance (未经审核发布) (office, leader)",
    )
    async def record_release(
        incident_id: str, body: UnclearedReleaseRequest, caller: CurrentCaller
    ) -> FindingAccepted:
        await acted_on(caller, incident_id, "incident", incident_id)
        unit = attributed_unit(caller, "released_by", body.released_by, body.unit_id)
        if body.released_at > clock():
            raise Invalid("released_at", "is in the future", "future")
        payload = UnclearedReleaseRecorded(
            release_id=uuid.uuid4().hex,
            released_by=body.released_by,
            unit_id=unit,
            channel=body.channel,
            released_at=body.released_at,
            content=body.content,
            recorded_by=caller.id,
        )
        return await commands.record(caller, incident_id, payload, unit)

    @router.post(
        "/incidents/{incident_id}/commendations",
        response_model=FindingAccepted,
        status_code=status.HTTP_202_ACCEPTED,
        summary="Record a commendation (表扬) of a person or unit (office, leader)",
    )
    async def commend(
        incident_id: str, body: CommendationRequest, caller: CurrentCaller
    ) -> FindingAccepted:
        await acted_on(caller, incident_id, "incident", incident_id)
        unit = attributed_unit(caller, "person_id", body.person_id, body.unit_id)
        payload = CommendationRecorded(
            commendation_id=uuid.uuid4().hex,
            person_id=body.person_id,
            unit_id=unit,
            reason=body.reason,
            recorded_by=caller.id,
        )
        return await commands.record(caller, incident_id, payload, unit)

    async def assessed(
        caller: Caller, period_from: datetime, period_to: datetime, unit: str | None
    ) -> Assessment:
        start, end = aware(period_from), aware(period_to)
        read = await period_views(views, visibility, caller, start, end, unit, longest_period)
        return assess(read.views, start, end, read.units, clock(), rules, directory)

    @router.get(
        "/assessment",
        response_model=Assessment,
        summary="考评 of a period per unit and person: 按时、迟报、漏报、瞒报、谎报、"
        "未经审核发布、表扬, with the records behind each count",
    )
    async def get_assessment(
        caller: CurrentCaller,
        period_from: Annotated[datetime, Query(alias="from")],
        period_to: Annotated[datetime, Query(alias="to")],
        unit: str | None = None,
    ) -> Assessment:
        return await assessed(caller, period_from, period_to, unit)

    @router.get(
        "/assessment/report",
        response_class=PlainTextResponse,
        response_model=None,
        summary="The period's 考评 as a document in Chinese: Markdown, or HTML (?format=html)",
        responses={200: {"content": {"text/markdown": {}, "text/html": {}}}},
    )
    async def assessment_report(
        caller: CurrentCaller,
        period_from: Annotated[datetime, Query(alias="from")],
        period_to: Annotated[datetime, Query(alias="to")],
        unit: str | None = None,
        format: Annotated[Literal["markdown", "html"] | None, Query()] = None,
        accept: Annotated[str, Header()] = "",
    ) -> Response:
        assessment = await assessed(caller, period_from, period_to, unit)
        if format == "html" or (format is None and "text/html" in accept):
            return HTMLResponse(report.html(assessment))
        return PlainTextResponse(
            report.markdown(assessment), media_type="text/markdown; charset=utf-8"
        )
