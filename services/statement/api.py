"""HTTP routes of the statement service, under /statements/v1.

Every route with an `{id}` first asks the one visibility policy whether the caller sees
the incident concerned (fully: statements are the bureau's internal records), and answers
another unit's id exactly like an unknown one; then the roles the route needs; then the
domain decides. Which status each refusal answers with is `shared.api`'s table. The
inbox pages by a keyset cursor (`next_cursor`), at most `YUQING_MAX_PAGE_SIZE` statements
of each of its lists a page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from services.statement.domain import ApprovalRules, Statement
from services.statement.handlers import (
    PUBLISHER_ROLES,
    WRITER_ROLES,
    Decision,
    Situation,
    StatementWorkflow,
)
from services.statement.projections import (
    OfficialLineView,
    StatementProjections,
    StatementSummary,
    StatementView,
    VersionDiffView,
    official_line_view,
)
from shared.auth import CurrentCaller
from shared.events import EventPayload, Fact, StatementKind
from shared.identity import Caller, Role
from shared.paging import Key, decode_positions, encode_positions, page_size
from shared.visibility import PublishedLine, Sight, Visibility, hidden

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Outlet = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]

# What the documents show as an example of a statement's text.
_CONTENT: dict[str, JsonValue] = {
    "title": "关于实验小学食堂问题的情况说明",
    "body": "11月21日，有网民反映实验小学食堂饭菜变质。经核查……",
    "facts": [{"label": "送检样品", "value": "3份"}],
    "outlets": ["县教育局官方微博"],
}


class StatementContent(BaseModel):
    # An unknown field is a 422 naming it.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CONTENT]})

    title: Annotated[Text, StringConstraints(max_length=200)]
    body: Annotated[Text, StringConstraints(max_length=20000)]
    facts: list[Fact] = Field(default_factory=list, max_length=200)
    outlets: list[Outlet] = Field(default_factory=list, max_length=50)


class DraftRequest(StatementContent):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"kind": "online_reply", **_CONTENT}]}
    )

    kind: StatementKind


Reason = Annotated[Text, StringConstraints(max_length=2000)]


class FactChangeAcknowledgementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 422 naming it

    reason: Reason = Field(description="why the figures differ from the published line")


class ApproveRequest(BaseModel):
    # An unknown field is a 422 naming it.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"comment": "同意发布"}]}
    )

    comment: str = Field(default="", max_length=2000)
    acknowledge_fact_changes: FactChangeAcknowledgementRequest | None = Field(
        default=None,
        description="required when the version contradicts a published figure (else 409)",
    )


class RejectRequest(BaseModel):
    # An unknown field is a 422 naming it.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"comment": "检测结果尚未出具，请删去“合格”的表述"}]},
    )

    comment: Reason = Field(description="why it goes back: required")


class WithdrawRequest(BaseModel):
    # An unknown field is a 422 naming it.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "情况有变，需重新核实后再报"}]}
    )

    reason: Reason = Field(description="why it is taken back: required")


class PublishRequest(BaseModel):
    # An unknown field is a 422 naming it.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"outlet": "县教育局官方微博", "url": "https://weibo.com/county-edu/NtAbC"}
            ]
        },
    )

    outlet: Outlet
    url: Annotated[Text, StringConstraints(max_length=2000)] = Field(
        description="the published URL or reference"
    )


class InboxView(BaseModel):
    waiting: list[StatementView] = Field(description="waiting for the caller's step, oldest first")
    mine: list[StatementView] = Field(description="written by the caller, newest first")
    next_cursor: str | None = Field(
        default=None,
        description="pass as `cursor` for the next page of both lists (a list already "
        "shown to its end comes back empty); null on the last one",
    )


class PartnerOfficialLine(PublishedLine):
    """The official line as a partner sees it (`Sight.REFERRED`): what went out, not who
    wrote or cleared it."""

    incident_id: str
    facts: list[Fact]


Read = Callable[[Key | None, int], Awaitable[list[StatementView]]]
Keep = Callable[[StatementView], Awaitable[bool]]


def _key(view: StatementView) -> Key:
    return view.drafted_at, view.statement_id


async def _page(
    read: Read, keep: Keep, after: Key | None, size: int
) -> tuple[list[StatementView], Key | None]:
    """Up to `size` of the statements `read` gives after the key that `keep` keeps, read
    in batches until the page is full or none is left; and the key the next page resumes
    after (None when this one shows the last)."""
    kept: list[StatementView] = []
    position, batch = after, size + 1
    while len(kept) <= size:
        found = await read(position, batch)
        kept += [view for view in found if await keep(view)]
        if len(found) < batch:
            break
        position = _key(found[-1])
    shown = kept[:size]
    return shown, _key(shown[-1]) if len(kept) > size else None


def build_router(
    workflow: StatementWorkflow,
    views: StatementProjections,
    rules: ApprovalRules,
    visibility: Visibility,
    *,
    max_page_size: int,
) -> APIRouter:
    """`max_page_size`: the most statements of each list a page of the inbox holds, and
    its default (YUQING_MAX_PAGE_SIZE)."""
    router = APIRouter(tags=["statements"])

    async def see_incident(incident_id: str, caller: Caller) -> None:
        scope = await views.incident_scope(incident_id)
        visibility.require(caller, scope, "incident", incident_id, at_least=Sight.FULL)

    async def see_statement(statement_id: str, caller: Caller) -> None:
        scope = await views.statement_scope(statement_id)
        visibility.require(caller, scope, "statement", statement_id, at_least=Sight.FULL)

    async def decide(
        statement_id: str,
        caller: Caller,
        decision: Decision,
        roles: tuple[Role, ...] = (),
    ) -> StatementView:
        await see_statement(statement_id, caller)
        if roles:
            caller.require(*roles)
        return await workflow.decide(statement_id, caller, decision)

    @router.post("/incidents/{incident_id}/statements", status_code=status.HTTP_201_CREATED)
    async def draft(incident_id: str, body: DraftRequest, caller: CurrentCaller) -> StatementView:
        """Draft a statement of an incident (graded or not yet)."""
        await see_incident(incident_id, caller)
        caller.require(*WRITER_ROLES)
        return await workflow.draft(
            incident_id,
            caller,
            kind=body.kind,
            title=body.title,
            body=body.body,
            facts=tuple(body.facts),
            outlets=tuple(body.outlets),
        )

    @router.get("/incidents/{incident_id}/statements")
    async def incident_statements(
        incident_id: str, caller: CurrentCaller
    ) -> list[StatementSummary]:
        """The incident's statements, oldest first, each with its state."""
        await see_incident(incident_id, caller)
        return await views.of_incident(incident_id)

    @router.get(
        "/incidents/{incident_id}/official-line",
        response_model=OfficialLineView | PartnerOfficialLine,
    )
    async def official_line(
        incident_id: str, caller: CurrentCaller
    ) -> OfficialLineView | PartnerOfficialLine:
        """The incident's current official line (口径): the latest published version, its
        outlet and URL, who cleared it and when, and every figure as last published.
        404 while nothing is published. A partner, of an incident it referred, gets what
        went out (text, facts, outlet, URL, time) and not who wrote or cleared it."""
        scope = await views.incident_scope(incident_id)
        sight = visibility.require(caller, scope, "incident", incident_id)
        line = official_line_view(await workflow.official_line(incident_id), rules)
        if sight is Sight.REFERRED:
            return PartnerOfficialLine(
                incident_id=line.incident_id,
                statement_id=line.statement_id,
                kind=line.kind,
                version=line.version,
                title=line.title,
                body=line.body,
                facts=line.facts,
                outlet=line.outlet,
                url=line.url,
                published_at=line.published_at,
            )
        return line

    @router.put("/statements/{statement_id}")
    async def revise(
        statement_id: str, body: StatementContent, caller: CurrentCaller
    ) -> StatementView:
        """A new version; approvals of older versions stay on record but stop counting.
        A rejected or withdrawn statement comes back this way."""

        def revision(statement: Statement, _: Situation) -> EventPayload:
            return statement.revise(
                title=body.title,
                body=body.body,
                facts=tuple(body.facts),
                outlets=tuple(body.outlets),
                by=caller.id,
            )

        return await decide(statement_id, caller, revision, WRITER_ROLES)

    @router.post("/statements/{statement_id}/submit")
    async def submit(statement_id: str, caller: CurrentCaller) -> StatementView:
        """Send the current version into the approval chain of the incident's level. Facts
        contradicting the incident's published figures come back in `fact_conflicts`."""

        def submission(statement: Statement, now: Situation) -> EventPayload:
            incident = now.incident
            return statement.submit(incident.level, rules, incident.unit_ids, now.official)

        return await decide(statement_id, caller, submission, WRITER_ROLES)

    @router.post("/statements/{statement_id}/approve")
    async def approve(
        statement_id: str, body: ApproveRequest, caller: CurrentCaller
    ) -> StatementView:
        """Fill the next step of the chain, if it is the caller's to fill. A version that
        contradicts a published figure needs `acknowledge_fact_changes` with a reason
        (409 without); the acknowledgement is recorded with the approval."""
        acknowledged = body.acknowledge_fact_changes

        def approval(statement: Statement, now: Situation) -> EventPayload:
            return statement.approve(
                caller,
                body.comment,
                rules,
                official=now.official,
                acknowledgement=acknowledged.reason if acknowledged else None,
            )

        return await decide(statement_id, caller, approval)

    @router.post("/statements/{statement_id}/reject")
    async def reject(
        statement_id: str, body: RejectRequest, caller: CurrentCaller
    ) -> StatementView:
        """Send the current version back, with the reason."""

        def rejection(statement: Statement, _: Situation) -> EventPayload:
            return statement.reject(caller, body.comment, rules)

        return await decide(statement_id, caller, rejection)

    @router.post("/statements/{statement_id}/withdraw")
    async def withdraw(
        statement_id: str, body: WithdrawRequest, caller: CurrentCaller
    ) -> StatementView:
        """The author or the office takes the current version back: it can no longer be
        approved or published; a revision (PUT) starts it over. Published: 409."""

        def withdrawal(statement: Statement, _: Situation) -> EventPayload:
            return statement.withdraw(caller, body.reason)

        return await decide(statement_id, caller, withdrawal)

    @router.post("/statements/{statement_id}/publish")
    async def publish(
        statement_id: str, body: PublishRequest, caller: CurrentCaller
    ) -> StatementView:
        """Record the fully approved current version as published; anything else is 409.
        It becomes the incident's official line."""

        def publication(statement: Statement, now: Situation) -> EventPayload:
            return statement.publish(
                outlet=body.outlet,
                url=body.url,
                by=caller.id,
                rules=rules,
                level=now.incident.level,
                unit_ids=now.incident.unit_ids,
            )

        return await decide(statement_id, caller, publication, PUBLISHER_ROLES)

    @router.get(
        "/inbox",
        responses={
            400: {"description": "a cursor this API did not give out"},
            422: {"description": "a limit above YUQING_MAX_PAGE_SIZE"},
        },
    )
    async def inbox(
        caller: CurrentCaller,
        limit: Annotated[
            int | None,
            Query(
                ge=1,
                description="statements of each list a page holds: at most "
                "YUQING_MAX_PAGE_SIZE, which is also the default",
            ),
        ] = None,
        cursor: Annotated[
            str | None, Query(max_length=500, description="next_cursor of the page before")
        ] = None,
    ) -> InboxView:
        """The console's approval inbox: statements whose next step is the caller's to fill
        now (their role and unit; never a statement they wrote or a chain they already
        approved in), and the statements they wrote, newest first, with any rejection and
        its comment. Only statements of incidents the caller fully sees. Both lists page
        together: `next_cursor` resumes each after the last one it showed."""
        size = page_size(limit, max_page_size)
        waiting_after, mine_after = decode_positions(cursor, 2) if cursor else (None, None)
        done = cursor is not None  # a list the cursor holds no position of was shown whole
        held = sorted(role.value for role in caller.roles)

        async def seen(view: StatementView) -> bool:
            scope = await views.incident_scope(view.incident_id)
            return visibility.sight(caller, scope) is Sight.FULL

        async def waits_for_caller(view: StatementView) -> bool:
            return (
                view.missing[0].unit_id in (None, caller.unit)
                and all(v.author != caller.id for v in view.versions)
                and all(step.approved_by != caller.id for step in view.chain)
                and await seen(view)
            )

        waiting: list[StatementView] = []
        mine: list[StatementView] = []
        waiting_next: Key | None = None
        mine_next: Key | None = None
        if not (done and waiting_after is None):
            waiting, waiting_next = await _page(
                lambda at, n: views.awaiting(held, n, at), waits_for_caller, waiting_after, size
            )
        if not (done and mine_after is None):
            mine, mine_next = await _page(
                lambda at, n: views.written_by(caller.id, n, at), seen, mine_after, size
            )
        more = waiting_next is not None or mine_next is not None
        return InboxView(
            waiting=waiting,
            mine=mine,
            next_cursor=encode_positions(waiting_next, mine_next) if more else None,
        )

    @router.get("/statements/{statement_id}")
    async def get_statement(statement_id: str, caller: CurrentCaller) -> StatementView:
        """Versions, the chain with who approved what and when, what is missing, figures
        contradicting the published line, and each version's diff against the one before."""
        await see_statement(statement_id, caller)
        view = await views.get(statement_id)
        if view is None:
            raise hidden("statement", statement_id)
        return view

    @router.get("/statements/{statement_id}/diff")
    async def diff(
        statement_id: str,
        caller: CurrentCaller,
        from_version: Annotated[int, Query(alias="from", ge=1)],
        to_version: Annotated[int | None, Query(alias="to", ge=1)] = None,
    ) -> VersionDiffView:
        """Any two versions: `?from=1&to=3` (`to` defaults to the current version)."""
        await see_statement(statement_id, caller)
        statement = await workflow.statement(statement_id)
        if statement is None:
            raise hidden("statement", statement_id)
        to = statement.current.version if to_version is None else to_version
        return VersionDiffView.of(statement.diff(from_version, to))

    return router
