"""The statement service, assembled: drafts, versions, approval chains by level, publication.

Where its parts come from: the approval policy (config/approval.yaml, checked here so a
bad file stops the start) with the role names of the catalogue; the statement streams
behind one repository whose projector rewrites each statement's view; the workflow that
decides commands and reactions through the domain; the routes; and the handler map of
the intake and grading events it keeps its picture of incidents from.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.statement.api import build_router
from services.statement.domain import (
    ApprovalRules,
    Statement,
    evolve,
    stream_id,
)
from services.statement.handlers import GRADE_TYPES, StatementWorkflow
from services.statement.projections import StatementProjections
from shared.events import SUBSCRIPTIONS
from shared.handlers import HandlerMap
from shared.incident_context import UPSTREAM_TYPES
from shared.plan import load_plan
from shared.plan_rules import ApprovalPolicy
from shared.policy import load_policy
from shared.repository import Repository
from shared.service import Dependencies, ServiceParts


@dataclass(kw_only=True)
class StatementParts(ServiceParts):
    rules: ApprovalRules
    projections: StatementProjections
    repository: Repository[Statement]
    workflow: StatementWorkflow


def build(deps: Dependencies) -> StatementParts:
    policy = load_policy(deps.settings.approval_policy_path, ApprovalPolicy)
    # The plan pack (YUQING_PLAN): every chain at one of its levels, each step's role held.
    settings = deps.settings
    plan = load_plan(
        settings.plan, settings.policy_paths, deps.directory, pack_wins=False, checks={"chains"}
    )
    rules = ApprovalRules(policy, deps.catalogue.roles, frozenset(plan.manifest.statement_kinds))

    projections = StatementProjections(deps.store.db, rules)
    repository = Repository(stream_id, evolve, projectors=[projections.write])
    workflow = StatementWorkflow(
        deps.store, repository, projections, rules, deps.command_runner(), deps.clock
    )

    handlers = HandlerMap()
    for kind in UPSTREAM_TYPES:
        handlers.on(kind, workflow.on_grade if kind in GRADE_TYPES else workflow.on_incident)

    return StatementParts(
        name="statement",
        prefix="/statements/v1",
        title="yuqing statement",
        description=(
            "Statements (通稿/回复稿) with versions and approval chains that follow the "
            "incident's level; nothing is published before the current version is cleared."
        ),
        store=deps.store,
        router=build_router(
            workflow, projections, rules, deps.visibility, max_page_size=settings.max_page_size
        ),
        handlers=handlers,
        consumes=SUBSCRIPTIONS["statement"],
        setup=[projections.ensure_indexes],
        rules=rules,
        projections=projections,
        repository=repository,
        workflow=workflow,
    )
