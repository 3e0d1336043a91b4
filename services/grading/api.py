"""Grading's HTTP API: an incident's grade and its history, the leader's override, the rules.

Who may do what: an incident's grade is seen by whoever sees the incident (its units and
those above them; a partner, only what it referred); overriding is for the leading group
(leader, or admin; never a partner) acting for all of the incident's units, always with a
reason; the rulebook in force may be read by any signed-in caller. An incident the caller
may not see answers exactly like one that does not exist, before any role or state is
checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.grading.domain import Rulebook
from services.grading.handlers import GradingCommands
from services.grading.projections import GradeView, GradingViews
from services.grading.whatif import Candidate, IncidentDifference, NotOpened, compare
from shared.auth import CurrentCaller
from shared.clock import Clock
from shared.errors import Forbidden, Invalid
from shared.events import Category, Level
from shared.identity import Caller, Role
from shared.models import FrozenModel
from shared.plan import PACK_NAME, Plan
from shared.plan_rules import (
    COUNTED_FROM_GRADE,
    COUNTED_FROM_OBSERVED,
    COUNTED_FROM_PUBLISHED,
    OPENS_ON_DECISION,
    OPENS_ON_GRADE,
    OPENS_ON_INSTRUCTION,
    OPENS_ON_PROPOSAL,
    OPENS_ON_RESOLUTION,
    ObligationRule,
    Route,
)
from shared.policy import format_duration
from shared.visibility import IncidentScope, ReferredIncident, Sight, Visibility, hidden


class OverrideIn(FrozenModel):
    model_config = ConfigDict(
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"level": 2, "category": "rumor", "reason": "经核实为谣言，且已被市级媒体转载"}
            ]
        },
    )

    level: Level = Field(description="a level of the plan in force (1, the most severe, ...)")
    category: Category | None = Field(
        default=None, description="a category of the plan in force; unchanged when omitted"
    )
    reason: str = Field(min_length=1, max_length=2000)


class ConfirmIn(FrozenModel):
    model_config = ConfigDict(
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"level": 3, "reason": "关注度有限，按一般舆情处置"}]},
    )

    level: Level | None = Field(
        default=None, description="another level of the plan; the proposed one when omitted"
    )
    category: Category | None = Field(
        default=None, description="another category of the plan; the proposed one when omitted"
    )
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="why, required when the level or category differs from the proposal",
    )


class ConfirmOut(BaseModel):
    incident_id: str
    level: Level
    category: Category
    confirmed_by: str
    reason: str | None


class InstructionIn(FrozenModel):
    model_config = ConfigDict(
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [{"text": "请教育局会同学校立即核查，今日内回应家长关切。", "signed": True}]
        },
    )

    text: str = Field(min_length=1, max_length=4000, description="the instruction (批示)")
    signed: bool = Field(description="the 《网上舆情》 was signed by the leader (签批)")


class InstructionOut(BaseModel):
    incident_id: str
    instruction_id: str
    text: str
    signed: bool
    instructed_by: str
    level: Level
    category: Category


class OverrideOut(BaseModel):
    incident_id: str
    from_level: Level
    level: Level
    category: Category
    reason: str


class Named(BaseModel):
    id: str
    name: str


class MetByOut(BaseModel):
    statement_published: Named = Field(description="a statement of this kind published")
    name: str = Field(description="as staff read it: 发布“网上答复”即完成")


class DutyOut(BaseModel):
    kind: str
    title: str
    owner_role: Named
    recipients: tuple[Named, ...]
    deadline: str = Field(description="'30m' after grading, or 'same day by 23:59 (...)'")
    every: str | None = Field(default=None, description="a recurring duty's period")
    after: str | None = Field(
        default=None, description="the duty it waits on: it opens when that one is met"
    )
    opens_on: str = Field(
        default="graded",
        description="'graded': opens with the grade (its confirmation, under a plan whose "
        "grade a body confirms); 'proposed': with the rulebook's proposal; 'instructed': with a "
        "leader's signed instruction; 'resolved': when the incident is resolved; 'decided': "
        "when the role `decided_by` decides it is owed. Its deadline is counted from that event",
    )
    opens_on_name: str = Field(default="定级时", description="when it opens, as staff read it")
    deadline_name: str = Field(default="", description="the deadline, as staff read it")
    counted_from: str = Field(
        default="graded",
        description="where its clock starts, for a duty opened with the grade or the "
        "proposal: 'graded' (the event), 'published' (the first report's publication, 舆情发生) "
        "or 'observed' (its first sighting)",
    )
    counted_from_name: str = Field(
        default="定级时", description="the instant its clock starts, as staff read it"
    )
    after_title: str | None = Field(default=None, description="the title of the duty waited on")
    every_name: str | None = Field(default=None, description="a recurring duty's period, named")
    met_by: MetByOut | None = Field(
        default=None, description="an action that meets it without anyone filing it"
    )
    decided_by: Named | None = Field(
        default=None, description="who decides whether a duty 'decided' is owed"
    )


class ChainStepOut(BaseModel):
    role: Named
    unit: str | None = Field(default=None, description="a unit id, or 'incident'")


class LevelOut(BaseModel):
    id: int = Field(description="the rank events carry: 1 is the most severe")
    key: str = Field(description="the plan's id for the level")
    name: str
    short: str
    duties: tuple[DutyOut, ...]
    chain: tuple[ChainStepOut, ...]


class CategoryOut(BaseModel):
    id: str
    name: str
    duties: tuple[DutyOut, ...]


class StatementKindOut(BaseModel):
    id: str
    name: str


class RouteRecipientOut(BaseModel):
    role: Named
    unit: Named
    name: str = Field(description="as staff read it: 县网信办·领导小组办公室")


class RouteOut(BaseModel):
    """A routing rule (obligations.yaml routing): a report from a matching source adds these
    recipients to the incident's duties."""

    id: str
    title: str
    source_type: Named
    source_name: str | None = Field(
        default=None, description="a regular expression searched in the source's name"
    )
    recipients: tuple[RouteRecipientOut, ...]
    kinds: tuple[Named, ...] = Field(
        description="the duties it adds recipients to (id: kind, name: title); empty: all"
    )


class WatchOut(BaseModel):
    """善后、动态跟踪 (plan.yaml watch): how long a resolved incident stays under watch, and
    what a matching report does meanwhile."""

    period: str = Field(description="as the plan writes it: '7d'")
    period_name: str
    on_report: Named = Field(description="'reopen' or 'attach', named")


class PlanOut(BaseModel):
    """The plan in force: what the deployment's pack (YUQING_PLAN) says."""

    id: str
    name: str
    version: str
    seed: str
    rulebook_version: str
    duties_version: str
    approval_version: str
    levels: tuple[LevelOut, ...]
    categories: tuple[CategoryOut, ...]
    statement_kinds: tuple[StatementKindOut, ...]
    articles: tuple[dict[str, str], ...]
    confirmed_by: Named | None = Field(
        default=None,
        description="the role that confirms the rulebook's proposed grade (plan.yaml grading); "
        "none: the rulebook grades",
    )
    routing: tuple[RouteOut, ...] = ()
    watch: WatchOut | None = Field(
        default=None, description="none: intake's own reopen window applies"
    )


class PlanTryIn(FrozenModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"plan": "fourtier", "since": "2026-11-01T00:00:00+08:00", "limit": 100}]
        }
    )

    plan: str = Field(pattern=PACK_NAME, description="a pack's name under config/plans/")
    since: AwareDatetime = Field(description="incidents graded at or after this time")
    limit: int = Field(default=100, ge=1, le=1000)


class DutyDifferenceOut(BaseModel):
    kind: str
    title: str
    counted_from: datetime
    deadline: datetime
    recorded_deadline: datetime | None
    met_at: datetime | None
    outcome: str = Field(description="met, late, missed or open: by the recorded fulfilment")
    change: str = Field(description="same, new (the record has no such duty) or moved")
    opens_on: str = Field(default="graded", description="the event it opened on (see the plan)")
    after: str | None = Field(default=None, description="the duty it waited on")


class NotOpenedOut(BaseModel):
    """A duty of the candidate the record gives no event to open on."""

    kind: str
    title: str
    opens_on: str
    why: str = Field(
        description="no_proposal, not_confirmed, no_signed_instruction, not_resolved, "
        "no_decision, decided_against or waits_on_unmet"
    )
    note: str = Field(description="why, as staff read it")

    @classmethod
    def of(cls, n: NotOpened) -> NotOpenedOut:
        return cls(kind=n.kind, title=n.title, opens_on=n.opens_on, why=n.why, note=n.note)


class IncidentDifferenceOut(BaseModel):
    incident_id: str
    recorded_plan: str | None
    differs: bool
    recorded_level: int
    level: int
    recorded_category: str
    category: str
    duties: tuple[DutyDifferenceOut, ...]
    dropped: tuple[str, ...]
    would_miss: tuple[str, ...]
    not_opened: tuple[NotOpenedOut, ...] = ()

    @classmethod
    def of(cls, d: IncidentDifference) -> IncidentDifferenceOut:
        return cls(
            incident_id=d.incident_id,
            recorded_plan=d.recorded_plan,
            differs=d.differs,
            recorded_level=int(d.recorded_level),
            level=int(d.level),
            recorded_category=str(d.recorded_category),
            category=str(d.category),
            duties=tuple(
                DutyDifferenceOut.model_validate(x, from_attributes=True) for x in d.duties
            ),
            dropped=d.dropped,
            would_miss=d.would_miss,
            not_opened=tuple(NotOpenedOut.of(n) for n in d.not_opened),
        )


class PlanTryOut(BaseModel):
    plan: str
    version: str
    since: datetime
    incidents: tuple[IncidentDifferenceOut, ...]


@dataclass(frozen=True)
class PlanParts:
    """The plan in force, and how to load a candidate by name (raises a domain error)."""

    plan: Plan
    rulebook: Rulebook
    candidate: Callable[[str], tuple[Plan, Rulebook]]
    tz: ZoneInfo
    clock: Clock
    units: Mapping[str, str] = field(default_factory=dict)  # unit id -> its Chinese name


def _deadline_text(rule: ObligationRule) -> str:
    if rule.same_day is not None:
        day = rule.same_day
        return (
            f"same day by {day.due:%H:%M} (graded at or after {day.cutoff:%H:%M}: "
            f"next day by {day.rollover_to:%H:%M})"
        )
    assert rule.within is not None
    minutes = int(rule.within.total_seconds() // 60)
    return f"{minutes}m" if minutes % 60 else f"{minutes // 60}h"


# What staff read for the ids of a duty's rules and a route's source (the console's report
# form names source types the same way).
OPENS_ON_NAMES = {
    OPENS_ON_GRADE: "定级时",
    OPENS_ON_PROPOSAL: "提出定级建议时",
    OPENS_ON_INSTRUCTION: "领导签批时",
    OPENS_ON_RESOLUTION: "办结时",
    OPENS_ON_DECISION: "经决定开启时",
}
COUNTED_FROM_NAMES = {
    COUNTED_FROM_GRADE: "定级时",
    COUNTED_FROM_PUBLISHED: "舆情发生（首条信息发布）时",
    COUNTED_FROM_OBSERVED: "首次发现时",
}
SOURCE_TYPE_NAMES = {
    "news": "新闻网站",
    "portal": "门户网站",
    "forum": "论坛",
    "weibo": "微博",
    "wechat": "微信",
    "qq_group": "QQ群",
    "short_video": "短视频",
    "leader_board": "地方领导留言板",
    "referral": "网信办等转办",
    "hotline": "热线电话",
    "other": "其他",
}
ON_REPORT_NAMES = {
    "reopen": "新的相关信息重新打开事件",
    "attach": "新的相关信息附于已办结事件，供办公室查看",
}


def duration_name(value: timedelta) -> str:
    """A duration in its largest whole unit, in Chinese: 30分钟, 24小时, 7天."""
    seconds = int(value.total_seconds())
    for unit, size in (("天", 86400), ("小时", 3600), ("分钟", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}秒"


def _deadline_name(rule: ObligationRule, start: str) -> str:
    if rule.same_day is not None:
        day = rule.same_day
        return (
            f"当日{day.due:%H:%M}前（{day.cutoff:%H:%M}及以后开始的，"
            f"次日{day.rollover_to:%H:%M}前）"
        )
    assert rule.within is not None
    return f"{start}起{duration_name(rule.within)}内"


def _counted_from_name(rule: ObligationRule, titles: Mapping[str, str]) -> str:
    """The instant the duty's clock starts, named: its own event's unless it counts from the
    first report."""
    if rule.after is not None:
        return f"“{titles.get(rule.after, rule.after)}”完成时"
    if rule.opens_on in (OPENS_ON_GRADE, OPENS_ON_PROPOSAL) and rule.counted_from in (
        COUNTED_FROM_PUBLISHED,
        COUNTED_FROM_OBSERVED,
    ):
        return COUNTED_FROM_NAMES[rule.counted_from]
    return OPENS_ON_NAMES.get(rule.opens_on, rule.opens_on)


def plan_view(plan: Plan, rulebook: Rulebook, units: Mapping[str, str] | None = None) -> PlanOut:
    names = plan.catalogue
    unit_names = units or {}
    titles = {rule.kind: rule.title for _, rule in plan.obligations.entries()}

    def role(r: Role) -> Named:
        return Named(id=r.value, name=names.role(r.value))

    def duty(rule: ObligationRule) -> DutyOut:
        every = int(rule.every.total_seconds() // 3600) if rule.every is not None else None
        start = _counted_from_name(rule, titles)
        met_by = None
        if rule.met_by is not None:
            kind = str(rule.met_by.statement_published)
            named = Named(id=kind, name=names.statement_kind(kind))
            met_by = MetByOut(statement_published=named, name=f"发布“{named.name}”即完成")
        return DutyOut(
            kind=rule.kind,
            title=rule.title,
            owner_role=role(rule.owner_role),
            recipients=tuple(role(r) for r in rule.recipients),
            deadline=_deadline_text(rule),
            deadline_name=_deadline_name(rule, start),
            every=f"{every}h" if every is not None else None,
            every_name=(
                f"每{duration_name(rule.every)}一次（上一轮期限后）"
                if rule.every is not None
                else None
            ),
            after=rule.after,
            after_title=titles.get(rule.after) if rule.after is not None else None,
            opens_on=rule.opens_on,
            opens_on_name=OPENS_ON_NAMES.get(rule.opens_on, rule.opens_on),
            counted_from=rule.counted_from,
            counted_from_name=start,
            met_by=met_by,
            decided_by=role(rule.decided_by) if rule.decided_by is not None else None,
        )

    def route(r: Route) -> RouteOut:
        source = r.source_type.value
        recipients = []
        for to in r.recipients:
            unit = Named(id=to.unit, name=unit_names.get(to.unit, to.unit))
            who = role(to.role)
            recipients.append(
                RouteRecipientOut(role=who, unit=unit, name=f"{unit.name}·{who.name}")
            )
        return RouteOut(
            id=r.id,
            title=r.title,
            source_type=Named(id=source, name=SOURCE_TYPE_NAMES.get(source, source)),
            source_name=r.source_name,
            recipients=tuple(recipients),
            kinds=tuple(Named(id=k, name=titles.get(k, k)) for k in r.kinds),
        )

    manifest = plan.manifest
    watch = manifest.watch
    return PlanOut(
        id=manifest.id,
        name=manifest.name,
        version=manifest.version,
        seed=manifest.seed,
        rulebook_version=rulebook.version,
        duties_version=plan.obligations.version,
        approval_version=plan.approval.version,
        levels=tuple(
            LevelOut(
                id=level.rank,
                key=level.id,
                name=names.level(level.rank),
                short=names.level_name(level.rank),
                duties=tuple(duty(r) for r in plan.obligations.levels.get(level.rank, ())),
                chain=tuple(
                    ChainStepOut(role=role(step.role), unit=step.unit)
                    for step in plan.approval.levels.get(level.rank, ())
                ),
            )
            for level in manifest.levels
        ),
        categories=tuple(
            CategoryOut(
                id=str(category),
                name=names.category(category),
                duties=tuple(duty(r) for r in plan.obligations.categories.get(category, ())),
            )
            for category in manifest.categories
        ),
        statement_kinds=tuple(
            StatementKindOut(id=str(kind), name=names.statement_kind(kind))
            for kind in manifest.statement_kinds
        ),
        articles=tuple(a.model_dump() for a in manifest.articles),
        confirmed_by=(
            role(manifest.grading.confirmed_by) if manifest.grading.confirmed_by else None
        ),
        routing=tuple(route(r) for r in plan.obligations.routing),
        watch=(
            WatchOut(
                period=format_duration(watch.period),
                period_name=f"办结后{duration_name(watch.period)}",
                on_report=Named(
                    id=watch.on_report, name=ON_REPORT_NAMES.get(watch.on_report, watch.on_report)
                ),
            )
            if watch is not None
            else None
        ),
    )


def check_grade_input(plan: Plan, body: OverrideIn) -> None:
    """A level and category of the plan in force, or a 422 naming the field."""
    levels: set[int] = set(plan.manifest.ranks)
    categories: set[str] = set(plan.manifest.categories)
    if body.level not in levels:
        raise Invalid(
            "level",
            f"level {body.level} is not one of the plan's levels {sorted(levels)}",
            "plan_level",
        )
    if body.category is not None and body.category not in categories:
        raise Invalid(
            "category",
            f"category {body.category!r} is not one of the plan's categories {sorted(categories)}",
            "plan_category",
        )


def check_confirm_input(plan: Plan, body: ConfirmIn) -> None:
    """An optional level and category of the plan in force, or a 422 naming the field."""
    if body.level is not None:
        check_grade_input(plan, OverrideIn(level=body.level, category=body.category, reason="-"))
    elif body.category is not None:
        check_grade_input(
            plan, OverrideIn(level=plan.manifest.ranks[0], category=body.category, reason="-")
        )


def _bureau_only(caller: Caller) -> None:
    """The plan is the bureau's internal rules (seed 003 marks them 保密): no partner."""
    if caller.is_partner:
        raise Forbidden("the plan in force is for the bureau's staff", {"roles": "not partner"})


def build_router(
    commands: GradingCommands,
    views: GradingViews,
    visibility: Visibility,
    rulebook: Rulebook,
    plans: PlanParts | None = None,
) -> APIRouter:
    router = APIRouter(tags=["grading"])

    @router.get(
        "/incidents/{incident_id}/grade",
        response_model=GradeView | ReferredIncident,
        summary="The current level and category, the rules that fired, and the history "
        "(a partner, of an incident it referred: the level and category only)",
    )
    async def get_grade(incident_id: str, caller: CurrentCaller) -> GradeView | ReferredIncident:
        sight = visibility.require(caller, await views.scope(incident_id), "grade", incident_id)
        grade = await views.grade(incident_id)
        if grade is None:
            raise hidden("grade", incident_id)
        if sight is Sight.REFERRED:  # no rules, reasons, history or units
            return ReferredIncident(
                incident_id=incident_id, level=grade.level, category=grade.category
            )
        return grade

    async def acting_scope(caller: Caller, incident_id: str, role: Role) -> IncidentScope:
        """As for the override: seen in full, the role, and acting for every unit."""
        scope = await views.scope(incident_id)
        visibility.require(caller, scope, "incident", incident_id, at_least=Sight.FULL)
        assert scope is not None
        caller.require(role)
        if not visibility.may_act_on(caller, scope):
            raise Forbidden(
                f"{caller.id} may not act for every unit of incident {incident_id}",
                {"unit_ids": list(scope.unit_ids)},
            )
        return scope

    @router.post(
        "/incidents/{incident_id}/override",
        response_model=OverrideOut,
        summary="Set the level by hand (leading group), up or down, with the reason",
        responses={409: {"description": "not graded yet, dismissed, or nothing would change"}},
    )
    async def override_grade(
        incident_id: str, body: OverrideIn, caller: CurrentCaller
    ) -> OverrideOut:
        # An incident grading knows of but has not graded is judged on its facts: the
        # domain refuses it with 409, where an unknown or unseen one answers 404.
        # The leading group's act on the bureau's record: a partner, whatever its token
        # carries, only referred the incident and may not regrade it.
        scope = await acting_scope(caller, incident_id, Role.LEADER)
        if plans is not None:  # the plan in force decides which levels and categories exist
            check_grade_input(plans.plan, body)
        units = scope.unit_ids or (None,)
        decided = await commands.override(
            incident_id, body.level, body.category, body.reason, caller.actor, units[0]
        )
        return OverrideOut(
            incident_id=incident_id,
            from_level=decided.from_level,
            level=decided.to_level,
            category=decided.category,
            reason=decided.reason,
        )

    @router.post(
        "/incidents/{incident_id}/confirm",
        response_model=ConfirmOut,
        summary="Confirm the proposed grade (the body the plan names, plan.yaml grading), "
        "or change it with a reason: the incident is graded",
        responses={409: {"description": "nothing is proposed, or dismissed"}},
    )
    async def confirm_grade(incident_id: str, body: ConfirmIn, caller: CurrentCaller) -> ConfirmOut:
        current = await views.grade(incident_id) if await views.scope(incident_id) else None
        named = current.confirm_role if current is not None and current.proposed else None
        in_force = plans.plan.manifest.grading.confirmed_by if plans is not None else None
        role = Role(named) if named is not None else (in_force or Role.LEADER)
        scope = await acting_scope(caller, incident_id, role)
        if plans is not None:
            check_confirm_input(plans.plan, body)
        units = scope.unit_ids or (None,)
        decided = await commands.confirm(
            incident_id, body.level, body.category, body.reason, caller.actor, units[0]
        )
        return ConfirmOut(
            incident_id=incident_id,
            level=decided.level,
            category=decided.category,
            confirmed_by=caller.id,
            reason=decided.confirmation_reason,
        )

    @router.post(
        "/incidents/{incident_id}/instructions",
        response_model=InstructionOut,
        status_code=201,
        summary="Record a leader's instruction (批示; signed: 签批) on the incident",
        responses={409: {"description": "neither graded nor proposed yet"}},
    )
    async def record_instruction(
        incident_id: str, body: InstructionIn, caller: CurrentCaller
    ) -> InstructionOut:
        scope = await acting_scope(caller, incident_id, Role.LEADER)
        units = scope.unit_ids or (None,)
        given = await commands.instruct(incident_id, body.text, body.signed, caller.actor, units[0])
        return InstructionOut(
            incident_id=incident_id,
            instruction_id=given.instruction_id,
            text=given.text,
            signed=given.signed,
            instructed_by=given.instructed_by,
            level=given.level,
            category=given.category,
        )

    @router.get(
        "/rulebook",
        response_model=Rulebook,
        summary="The rules in force (the bureau's staff)",
        responses={403: {"description": "a partner"}},
    )
    async def get_rulebook(caller: CurrentCaller) -> Rulebook:
        _bureau_only(caller)  # its thresholds and keywords would teach a partner the level
        return rulebook

    if plans is None:
        return router

    @router.get(
        "/plan",
        response_model=PlanOut,
        summary="The plan in force: levels, categories, duties and clearance chains, named",
        responses={403: {"description": "a partner"}},
    )
    async def get_plan(caller: CurrentCaller) -> PlanOut:
        _bureau_only(caller)
        return plan_view(plans.plan, plans.rulebook, plans.units)

    @router.post(
        "/plan/try",
        response_model=PlanTryOut,
        summary="What-if (analysts): past incidents replayed through a candidate plan of "
        "config/plans/, per incident what would differ; nothing is written",
        responses={
            403: {"description": "not an analyst"},
            404: {"description": "no such plan pack"},
            422: {"description": "the pack is malformed (the message names file and entry)"},
        },
    )
    async def try_plan(body: PlanTryIn, caller: CurrentCaller) -> PlanTryOut:
        _bureau_only(caller)
        caller.require(Role.ANALYST)  # (or admin, as everywhere)
        plan, candidate_rulebook = plans.candidate(body.plan)
        candidate = Candidate(
            plan.id,
            plan.version,
            candidate_rulebook,
            plan.obligations,
            plan.manifest.grading.confirmed_by,
        )
        now = plans.clock()
        differences = [
            IncidentDifferenceOut.of(compare(recorded, candidate, plans.tz, now))
            for scope, recorded in await views.recorded_since(body.since, body.limit)
            if recorded.reports and visibility.sight(caller, scope) is Sight.FULL
        ]
        return PlanTryOut(
            plan=plan.id, version=plan.version, since=body.since, incidents=tuple(differences)
        )

    return router
