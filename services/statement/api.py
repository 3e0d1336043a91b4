"""HTTP routes of the statement service, under /statements/v1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field, StringConstraints

from services.statement.domain import Statement
from services.statement.handlers import PUBLISHER_ROLES, WRITER_ROLES, Decision, Situation
from services.statement.projections import (
    OfficialLineView,
    StatementSummary,
    StatementView,
    VersionDiffView,
    official_line_view,
)
from shared.auth import CurrentPrincipal, Role
from shared.events import EventPayload, Fact, StatementKind

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


Reason = Annotated[Text, StringConstraints(max_length=2000)]


class FactChangeAcknowledgementRequest(BaseModel):
    reason: Reason = Field(description="why the figures differ from the published line")


class ApproveRequest(BaseModel):
    comment: str = Field(default="", max_length=2000)
    acknowledge_fact_changes: FactChangeAcknowledgementRequest | None = Field(
        default=None,
        description="required when the version contradicts a published figure (else 409)",
    )


class RejectRequest(BaseModel):
    comment: Reason = Field(description="why it goes back: required")


class WithdrawRequest(BaseModel):
    reason: Reason = Field(description="why it is taken back: required")


class PublishRequest(BaseModel):
    outlet: Outlet
    url: Annotated[Text, StringConstraints(max_length=2000)] = Field(
        description="the published URL or reference"
    )


def build_router(service: StatementService) -> APIRouter:
    router = APIRouter(tags=["statements"])
    policy = service.policy

    async def decide(
        statement_id: str,
        principal: CurrentPrincipal,
        decision: Decision,
        roles: tuple[Role, ...] = (),
    ) -> StatementView:
        doc = await service.workflow.decide(statement_id, principal, decision, roles=roles)
        return StatementView.model_validate(doc)

    @router.post("/incidents/{incident_id}/statements", status_code=status.HTTP_201_CREATED)
    async def draft(
        incident_id: str, body: DraftRequest, principal: CurrentPrincipal
    ) -> StatementView:
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
        return StatementView.model_validate(doc)

    @router.get("/incidents/{incident_id}/statements")
    async def incident_statements(
        incident_id: str, principal: CurrentPrincipal
    ) -> list[StatementSummary]:
        """The incident's statements, oldest first, each with its state."""
        docs = await service.workflow.incident_statements(incident_id, principal)
        return [StatementSummary.model_validate(d) for d in docs]

    @router.get("/incidents/{incident_id}/official-line")
    async def official_line(incident_id: str, principal: CurrentPrincipal) -> OfficialLineView:
        """The incident's current official line (口径): the latest published version, its
        outlet and URL, who cleared it and when, and every figure as last published.
        404 while nothing is published."""
        return official_line_view(
            await service.workflow.official_line(incident_id, principal), policy
        )

    @router.put("/statements/{statement_id}")
    async def revise(
        statement_id: str, body: StatementContent, principal: CurrentPrincipal
    ) -> StatementView:
        """A new version; approvals of older versions stay on record but stop counting.
        A rejected or withdrawn statement comes back this way."""

        def revision(statement: Statement, _: Situation) -> EventPayload:
            return statement.revise(
                title=body.title,
                body=body.body,
                facts=tuple(body.facts),
                outlets=tuple(body.outlets),
                by=principal.sub,
            )

        return await decide(statement_id, principal, revision, WRITER_ROLES)

    @router.post("/statements/{statement_id}/submit")
    async def submit(statement_id: str, principal: CurrentPrincipal) -> StatementView:
        """Send the current version into the approval chain of the incident's level. Facts
        contradicting the incident's published figures come back in `fact_conflicts`."""

        def submission(statement: Statement, now: Situation) -> EventPayload:
            incident = now.incident
            return statement.submit(incident.level, policy, incident.unit_ids, now.official)

        return await decide(statement_id, principal, submission, WRITER_ROLES)

    @router.post("/statements/{statement_id}/approve")
    async def approve(
        statement_id: str, body: ApproveRequest, principal: CurrentPrincipal
    ) -> StatementView:
        """Fill the next step of the chain, if it is the caller's to fill. A version that
        contradicts a published figure needs `acknowledge_fact_changes` with a reason
        (409 without); the acknowledgement is recorded with the approval."""
        acknowledged = body.acknowledge_fact_changes

        def approval(statement: Statement, now: Situation) -> EventPayload:
            return statement.approve(
                principal,
                body.comment,
                policy,
                official=now.official,
                acknowledgement=acknowledged.reason if acknowledged else None,
            )

        return await decide(statement_id, principal, approval)

    @router.post("/statements/{statement_id}/reject")
    async def reject(
        statement_id: str, body: RejectRequest, principal: CurrentPrincipal
    ) -> StatementView:
        """Send the current version back, with the reason."""

        def rejection(statement: Statement, _: Situation) -> EventPayload:
            return statement.reject(principal, body.comment, policy)

        return await decide(statement_id, principal, rejection)

    @router.post("/statements/{statement_id}/withdraw")
    async def withdraw(
        statement_id: str, body: WithdrawRequest, principal: CurrentPrincipal
    ) -> StatementView:
        """The author or the office takes the current version back: it can no longer be
        approved or published; a revision (PUT) starts it over. Published: 409."""

        def withdrawal(statement: Statement, _: Situation) -> EventPayload:
            return statement.withdraw(principal, body.reason)

        return await decide(statement_id, principal, withdrawal)

    @router.post("/statements/{statement_id}/publish")
    async def publish(
        statement_id: str, body: PublishRequest, principal: CurrentPrincipal
    ) -> StatementView:
        """Record the fully approved current version as published; anything else is 409.
        It becomes the incident's official line."""

        def publication(statement: Statement, _: Situation) -> EventPayload:
            return statement.publish(
                outlet=body.outlet, url=body.url, by=principal.sub, policy=policy
            )

        return await decide(statement_id, principal, publication, PUBLISHER_ROLES)

    @router.get("/statements/{statement_id}")
    async def get_statement(statement_id: str, principal: CurrentPrincipal) -> StatementView:
        """Versions, the chain with who approved what and when, what is missing, figures
        contradicting the published line, and each version's diff against the one before."""
        return StatementView.model_validate(await service.workflow.view(statement_id, principal))

    @router.get("/statements/{statement_id}/diff")
    async def diff(
        statement_id: str,
        principal: CurrentPrincipal,
        from_version: Annotated[int, Query(alias="from", ge=1)],
        to_version: Annotated[int | None, Query(alias="to", ge=1)] = None,
    ) -> VersionDiffView:
        """Any two versions: `?from=1&to=3` (`to` defaults to the current version)."""
        statement = await service.workflow.statement(statement_id, principal)
        to = statement.current.version if to_version is None else to_version
        return VersionDiffView.of(statement.diff(from_version, to))

    return router
