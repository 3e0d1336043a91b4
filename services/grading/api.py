"""Grading's HTTP API: an incident's grade and its history, the leader's override, the rules.

Who may do what: an incident's grade is seen by whoever sees the incident (its units and
those above them; a partner, only what it referred); overriding is for the leading group
(leader, or admin; never a partner) acting for all of the incident's units, always with a
reason; the rulebook in force may be read by any signed-in caller. An incident the caller
may not see answers exactly like one that does not exist, before any role or state is
checked.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.grading.domain import Rulebook
from services.grading.handlers import GradingCommands
from services.grading.projections import GradeView, GradingViews
from shared.auth import CurrentCaller
from shared.errors import Forbidden
from shared.events import Category, Level
from shared.identity import Role
from shared.models import FrozenModel
from shared.visibility import Sight, Visibility, hidden


class OverrideIn(FrozenModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    level: Level = Field(description="1 (most severe), 2 or 3; up or down")
    category: Category | None = Field(default=None, description="unchanged when omitted")
    reason: str = Field(min_length=1, max_length=2000)


class OverrideOut(BaseModel):
    incident_id: str
    from_level: Level
    level: Level
    category: Category
    reason: str


def build_router(
    commands: GradingCommands, views: GradingViews, visibility: Visibility, rulebook: Rulebook
) -> APIRouter:
    router = APIRouter(tags=["grading"])

    @router.get(
        "/incidents/{incident_id}/grade",
        response_model=GradeView,
        summary="The current level and category, the rules that fired, and the history",
    )
    async def get_grade(incident_id: str, caller: CurrentCaller) -> GradeView:
        visibility.require(caller, await views.scope(incident_id), "grade", incident_id)
        grade = await views.grade(incident_id)
        if grade is None:
            raise hidden("grade", incident_id)
        return grade

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
        scope = await views.scope(incident_id)
        # The leading group's act on the bureau's record: a partner, whatever its token
        # carries, only referred the incident and may not regrade it.
        visibility.require(caller, scope, "incident", incident_id, at_least=Sight.FULL)
        assert scope is not None
        caller.require(Role.LEADER)
        if not visibility.may_act_on(caller, scope):
            raise Forbidden(
                f"{caller.id} may not act for every unit of incident {incident_id}",
                {"unit_ids": list(scope.unit_ids)},
            )
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

    @router.get("/rulebook", response_model=Rulebook, summary="The rules in force")
    async def get_rulebook(_: CurrentCaller) -> Rulebook:
        return rulebook

    return router
