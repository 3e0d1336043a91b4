"""Grading's HTTP API: an incident's grade and its history, the leader's override, the rules.

Who may do what: reading a grade follows the incident's units (a partner sees only what
it referred); overriding is for the leading group (leader, or admin), always with a
reason; the rulebook in force may be read by any signed-in principal.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.grading.domain import OverrideRefused, Rulebook
from services.grading.handlers import GradingCommands
from services.grading.projections import FACTS, GradingViews
from shared.auth import CurrentPrincipal, Directory, Principal, Role
from shared.errors import Conflict, Forbidden, NotFound
from shared.events import Category, GradeOverridden, Level
from shared.store import Document


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    level: Level = Field(description="1 (most severe), 2 or 3; up or down")
    category: Category | None = Field(default=None, description="unchanged when omitted")
    reason: str = Field(min_length=1, max_length=2000)


class OverrideOut(BaseModel):
    incident_id: str
    from_level: Level
    level: Level
    category: Category
    reason: str


def _may_see(directory: Directory, principal: Principal, doc: Document) -> bool:
    if principal.has(Role.PARTNER) and not principal.has(Role.ADMIN):
        return principal.sub in doc.get("filed_by", [])
    visible = directory.visible_units(principal)
    return visible is None or bool(visible.intersection(doc.get("unit_ids", [])))


def build_router(
    commands: GradingCommands, views: GradingViews, rulebook: Rulebook, directory: Directory
) -> APIRouter:
    router = APIRouter(tags=["grading"])

    async def visible_grade(incident_id: str, principal: Principal) -> Document:
        doc = await views.grade(incident_id)
        if doc is None or not _may_see(directory, principal, doc):
            raise NotFound(f"no grade for incident {incident_id}")
        return doc

    @router.get(
        "/incidents/{incident_id}/grade",
        summary="The current level and category, the rules that fired, and the history",
    )
    async def get_grade(incident_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
        doc = await visible_grade(incident_id, principal)
        return {k: v for k, v in doc.items() if k not in ("_id", "filed_by")}

    @router.post(
        "/incidents/{incident_id}/override",
        response_model=OverrideOut,
        summary="Set the level by hand (leading group), up or down, with the reason",
        responses={409: {"description": "not graded yet, dismissed, or nothing would change"}},
    )
    async def override_grade(
        incident_id: str, body: OverrideIn, principal: CurrentPrincipal
    ) -> OverrideOut:
        principal.require(Role.LEADER)
        # An incident grading knows of but has not graded has facts and no grade yet: it
        # is judged on its facts, so the domain refuses it with 409 rather than a 404.
        doc = await views.grade(incident_id) or await views.db[FACTS].find_one({"_id": incident_id})
        if doc is None or not _may_see(directory, principal, doc):
            raise NotFound(f"no incident {incident_id} that you may see")
        if not directory.can_act_for(principal, doc.get("unit_ids", [])):
            raise Forbidden(f"{principal.sub} may not act for incident {incident_id}")
        units = doc.get("unit_ids") or [None]
        try:
            event = await commands.override(
                incident_id, body.level, body.category, body.reason, principal.actor, units[0]
            )
        except OverrideRefused as exc:
            raise Conflict(
                str(exc), {"level": doc.get("level"), "category": doc.get("category")}
            ) from None
        payload = event.payload
        assert isinstance(payload, GradeOverridden)
        return OverrideOut(
            incident_id=incident_id,
            from_level=payload.from_level,
            level=payload.to_level,
            category=payload.category,
            reason=payload.reason,
        )

    @router.get("/rulebook", summary="The rules in force")
    async def get_rulebook(_: CurrentPrincipal) -> dict[str, Any]:
        return rulebook.model_dump(mode="json")

    return router
