"""HTTP routes of the statement service, under /statements/v1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field, StringConstraints

from services.statement.domain import Statement
from services.statement.handlers import PUBLISHER_ROLES, WRITER_ROLES
from shared.auth import CurrentPrincipal
from shared.events import EventPayload, Fact, StatementKind
from shared.incident_context import IncidentSnapshot
from shared.store import Document

if TYPE_CHECKING:
    from services.statement.main import StatementService

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Outlet = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class StatementContent(BaseModel):
    title: Annotated[Text, StringConstraints(max_length=200)]
    body: Annotated[Text, StringConstraints(max_length=20000)]
    facts: list[Fact] = Field(default_factory=list, max_length=200)
    outlets: list[Outlet] = Field(default_factory=list, max_length=50)


class DraftRequest(StatementContent):
    kind: StatementKind


class ApproveRequest(BaseModel):
    comment: str = Field(default="", max_length=2000)


class RejectRequest(BaseModel):
    comment: Annotated[Text, StringConstraints(max_length=2000)] = Field(
        description="why it goes back: required"
    )


class PublishRequest(BaseModel):
    outlet: Outlet
    url: Annotated[Text, StringConstraints(max_length=2000)] = Field(
        description="the published URL or reference"
    )


def _public(doc: Document) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}


def build_router(service: StatementService) -> APIRouter:
    router = APIRouter(tags=["statements"])
    policy = service.policy

    @router.post("/incidents/{incident_id}/statements", status_code=status.HTTP_201_CREATED)
    async def draft(
        incident_id: str, body: DraftRequest, principal: CurrentPrincipal
    ) -> dict[str, Any]:
        """Draft a statement of an incident (graded or not yet)."""
        doc = await service.workflow.draft(
            incident_id,
            principal,
            kind=body.kind,
            title=body.title,
            body=body.body,
            facts=tuple(body.facts),
            outlets=tuple(body.outlets),
        )
        return _public(doc)

    @router.put("/statements/{statement_id}")
    async def revise(
        statement_id: str, body: StatementContent, principal: CurrentPrincipal
    ) -> dict[str, Any]:
        """A new version; approvals of older versions stay on record but stop counting."""

        def decide(statement: Statement, _: IncidentSnapshot) -> EventPayload:
            return statement.revise(
                title=body.title,
                body=body.body,
                facts=tuple(body.facts),
                outlets=tuple(body.outlets),
                by=principal.sub,
            )

        return _public(
            await service.workflow.decide(statement_id, principal, decide, roles=WRITER_ROLES)
        )

    @router.post("/statements/{statement_id}/submit")
    async def submit(statement_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
        """Send the current version into the approval chain of the incident's level."""

        def decide(statement: Statement, incident: IncidentSnapshot) -> EventPayload:
            return statement.submit(incident.level, policy, incident.unit_ids)

        return _public(
            await service.workflow.decide(statement_id, principal, decide, roles=WRITER_ROLES)
        )

    @router.post("/statements/{statement_id}/approve")
    async def approve(
        statement_id: str, body: ApproveRequest, principal: CurrentPrincipal
    ) -> dict[str, Any]:
        """Fill the next step of the chain, if it is the caller's to fill."""

        def decide(statement: Statement, _: IncidentSnapshot) -> EventPayload:
            return statement.approve(principal, body.comment, policy)

        return _public(await service.workflow.decide(statement_id, principal, decide))

    @router.post("/statements/{statement_id}/reject")
    async def reject(
        statement_id: str, body: RejectRequest, principal: CurrentPrincipal
    ) -> dict[str, Any]:
        """Send the current version back, with the reason."""

        def decide(statement: Statement, _: IncidentSnapshot) -> EventPayload:
            return statement.reject(principal, body.comment, policy)

        return _public(await service.workflow.decide(statement_id, principal, decide))

    @router.post("/statements/{statement_id}/publish")
    async def publish(
        statement_id: str, body: PublishRequest, principal: CurrentPrincipal
    ) -> dict[str, Any]:
        """Record the fully approved current version as published; anything else is 409."""

        def decide(statement: Statement, _: IncidentSnapshot) -> EventPayload:
            return statement.publish(
                outlet=body.outlet, url=body.url, by=principal.sub, policy=policy
            )

        return _public(
            await service.workflow.decide(statement_id, principal, decide, roles=PUBLISHER_ROLES)
        )

    @router.get("/statements/{statement_id}")
    async def get_statement(statement_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
        """Versions, the chain with who approved what and when, and what is missing."""
        return _public(await service.workflow.view(statement_id, principal))

    return router
