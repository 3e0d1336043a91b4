"""The event envelope and the catalogue of every event on every topic.

Events are immutable facts named in the past tense. Each payload class is declared once
here and registered under its `event_type`; a changed shape gets a new `schema_version`
and an upcaster (see `register_upcaster`), never an edit in place.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AwareDatetime,
    Field,
    GetCoreSchemaHandler,
    NonNegativeInt,
    SerializeAsAny,
    model_validator,
)
from pydantic_core import core_schema

from shared.clock import utcnow as utcnow  # the one clock, re-exported for event stamps
from shared.models import FrozenModel


class EventError(ValueError):
    """An event that cannot be understood (unknown type or version, malformed payload)."""


# --------------------------------------------------------------------------- vocabulary


# A level (级别) is a rank of the plan in force: 1 is the most severe, 2 the next, and so on,
# as far as the plan's `levels:` go (shared/plan.py). Which ranks exist, their ids, names and
# order are the plan pack's; what an event carries is the rank alone, so every stored event
# parses whatever plan is in force. Where the plan is known (grading, the plan loader, the
# APIs) a rank it does not declare is refused.
MAX_LEVELS = 9
Level = Annotated[int, Field(ge=1, le=MAX_LEVELS)]

# A category (类别) or a statement kind (稿件类型) is an id of the plan in force
# (`categories:`, `statement_kinds:` in plan.yaml), validated where the plan is known.
PLAN_ID = r"^[a-z][a-z0-9_]{0,63}$"


class PlanId(str):
    """A plan's id for a category or a statement kind: a plain string on the wire."""

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(pattern=PLAN_ID),
            serialization=core_schema.plain_serializer_function_ser_schema(
                str, return_schema=core_schema.str_schema()
            ),
        )


Category = PlanId
StatementKind = PlanId
# Today's defaults, as the Huaning pack (and any pack that does not say) has them.
DEFAULT_CATEGORIES = ("inquiry", "hype", "rumor", "suggestion")
DEFAULT_STATEMENT_KINDS = ("press_release", "online_reply", "clarification", "bulletin")


class MediaTier(str, Enum):
    CENTRAL = "central"
    NATIONAL_PORTAL = "national_portal"
    PROVINCIAL = "provincial"
    MUNICIPAL = "municipal"
    COUNTY = "county"
    SELF_MEDIA = "self_media"


class SourceType(str, Enum):
    NEWS = "news"
    PORTAL = "portal"
    FORUM = "forum"
    WEIBO = "weibo"
    WECHAT = "wechat"
    QQ_GROUP = "qq_group"
    SHORT_VIDEO = "short_video"
    LEADER_BOARD = "leader_board"
    REFERRAL = "referral"
    HOTLINE = "hotline"
    OTHER = "other"


class IncidentStatus(str, Enum):
    """Where an incident stands: intake decides the first three, the archive's review the last."""

    OPEN = "open"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"
    ARCHIVED = "archived"


class ObligationState(str, Enum):
    """What notification recorded of a duty: the archive shows it, never re-decides it."""

    OPEN = "open"
    FULFILLED = "fulfilled"
    MISSED = "missed"
    CLOSED = "closed"


class StatementState(str, Enum):
    """Where a statement's current version stands, as the statement service decides it."""

    DRAFT = "draft"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    PUBLISHED = "published"


class Actor(FrozenModel):
    """Who caused an event: a person, a partner's client, a rule or the system itself."""

    type: Literal["person", "client", "rule", "system"]
    id: str = Field(min_length=1, max_length=200)
    unit_id: str | None = None

    @classmethod
    def rule(cls, name: str) -> Actor:
        return cls(type="rule", id=name)

    @classmethod
    def system(cls, service: str) -> Actor:
        return cls(type="system", id=service)


class Reach(FrozenModel):
    views: NonNegativeInt = 0
    reposts: NonNegativeInt = 0
    comments: NonNegativeInt = 0
    likes: NonNegativeInt = 0


class Fact(FrozenModel):
    """A labelled figure a statement states, so later statements can be checked against it."""

    label: str = Field(min_length=1, max_length=200)
    value: str = Field(max_length=2000)


class FiredRule(FrozenModel):
    """One rule of the rulebook that fired, and why, so a reviewer can see how a grade came."""

    rule_id: str
    reason: str


class ApprovalStep(FrozenModel):
    role: str
    unit_id: str | None = None


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[EventPayload]] = {}
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def _register(cls: type[EventPayload]) -> None:  # called as each payload class is declared
    if cls.EVENT_TYPE in _REGISTRY:
        raise EventError(f"event type {cls.EVENT_TYPE} declared twice")
    _REGISTRY[cls.EVENT_TYPE] = cls


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Declare how a payload of `from_version` becomes one of `from_version + 1`."""

    def decorate(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return decorate


# --------------------------------------------------------------------------- payloads


class EventPayload(FrozenModel):
    """The typed body of one event. Subclasses set EVENT_TYPE, TOPIC and SCHEMA_VERSION."""

    EVENT_TYPE: ClassVar[str]
    TOPIC: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "EVENT_TYPE" in cls.__dict__:
            _register(cls)


INTAKE_TOPIC = "intake.events"
GRADING_TOPIC = "grading.events"
NOTIFICATION_TOPIC = "notification.events"
STATEMENT_TOPIC = "statement.events"
ARCHIVE_TOPIC = "archive.events"
ALL_TOPICS = (INTAKE_TOPIC, GRADING_TOPIC, NOTIFICATION_TOPIC, STATEMENT_TOPIC, ARCHIVE_TOPIC)
DEAD_LETTER_TOPIC = "yuqing.deadletter"
# What each service consumes, declared once: its consumer subscribes to these, and a
# relay that finds the broker wiped asks these services' groups what they had processed.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "grading": (INTAKE_TOPIC, NOTIFICATION_TOPIC),
    "notification": (INTAKE_TOPIC, GRADING_TOPIC, STATEMENT_TOPIC),
    "statement": (INTAKE_TOPIC, GRADING_TOPIC),
    "archive": ALL_TOPICS,
}


def consumers_of(topic: str) -> tuple[str, ...]:
    """The services whose consumers read `topic` (a topic's base name)."""
    return tuple(service for service, topics in SUBSCRIPTIONS.items() if topic in topics)


# intake ---------------------------------------------------------------------


class IncidentOpened(EventPayload):
    EVENT_TYPE = "IncidentOpened"
    TOPIC = INTAKE_TOPIC
    title: str
    unit_ids: tuple[str, ...]
    first_report_id: str


class Attachment(FrozenModel):
    """What a filer says about a file kept with a report (screenshot, video): not the file."""

    name: str = Field(min_length=1, max_length=255)
    content_type: str = Field(max_length=255, pattern=r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+$")
    size: int = Field(ge=0, le=10 * 1024**3)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    url: str | None = Field(default=None, max_length=2048)


class ReportReceived(EventPayload):
    EVENT_TYPE = "ReportReceived"
    TOPIC = INTAKE_TOPIC
    SCHEMA_VERSION = 2
    report_id: str
    source_type: SourceType
    source_name: str
    media_tier: MediaTier
    url: str
    normalized_url: str
    title: str
    excerpt: str
    author: str | None
    published_at: AwareDatetime
    observed_at: AwareDatetime
    reach: Reach
    unit_ids: tuple[str, ...]
    filed_by: str
    attachments: tuple[Attachment, ...] = ()
    # True for a partner agency's report: its media_tier and reach are recorded as its
    # claims and count for nothing until the office confirms them (ReportClaimsConfirmed).
    claims_unconfirmed: bool = False


@register_upcaster("ReportReceived", 1)
def _received_v1(payload: dict[str, Any]) -> dict[str, Any]:
    # Version 1 took every filer's media tier and reach as facts.
    return {**payload, "claims_unconfirmed": False}


class ReportAttached(EventPayload):
    EVENT_TYPE = "ReportAttached"
    TOPIC = INTAKE_TOPIC
    report_id: str
    match: str  # why it belongs here: "same_url", "similar_text", ...
    score: float | None = None  # how alike the texts were (0..1), for "similar_text"


class IncidentResolved(EventPayload):
    EVENT_TYPE = "IncidentResolved"
    TOPIC = INTAKE_TOPIC
    reason: str


class IncidentDismissed(EventPayload):
    EVENT_TYPE = "IncidentDismissed"
    TOPIC = INTAKE_TOPIC
    reason: str


class IncidentReopened(EventPayload):
    EVENT_TYPE = "IncidentReopened"
    TOPIC = INTAKE_TOPIC
    reason: str


# What a plan's watch (plan.yaml `watch:`) does with a matching report while it lasts.
WatchOnReport = Literal["reopen", "attach"]


class IncidentWatchStarted(EventPayload):
    """The plan keeps the incident just resolved under watch (善后、动态跟踪) until
    `watch_until`: a matching report before then reopens it (`on_report: reopen`) or is
    attached to it, the incident staying resolved (`attach`). Recorded with the resolution,
    under the plan in force then; a later plan does not change a running watch."""

    EVENT_TYPE = "IncidentWatchStarted"
    TOPIC = INTAKE_TOPIC
    watch_until: AwareDatetime
    on_report: WatchOnReport
    plan_id: str | None = None
    plan_version: str | None = None


class WatchReportReceived(EventPayload):
    """A report matching the incident came during its watch: `reopened` when it reopened
    the incident (the IncidentReopened before it), else it was attached to the resolved
    incident for the office to see."""

    EVENT_TYPE = "WatchReportReceived"
    TOPIC = INTAKE_TOPIC
    report_id: str
    watch_until: AwareDatetime
    reopened: bool


class ReferralOpened(EventPayload):
    """A partner's report opened an incident of its own (a referral, 转办线索) instead of
    joining one it cannot see; `matched_incident_ids` are the incidents its URL or text
    matched, for the office to merge it into."""

    EVENT_TYPE = "ReferralOpened"
    TOPIC = INTAKE_TOPIC
    SCHEMA_VERSION = 1
    report_id: str
    referred_by: str
    matched_incident_ids: tuple[str, ...] = ()


class ReferralMerged(EventPayload):
    """The office merged a referral into an incident: the referral's reports were recorded
    there (their filer a filer of it) and the referral was closed."""

    EVENT_TYPE = "ReferralMerged"
    TOPIC = INTAKE_TOPIC
    SCHEMA_VERSION = 1
    into_incident_id: str
    report_ids: tuple[str, ...]
    reason: str
    merged_by: str


class ReportClaimsConfirmed(EventPayload):
    """The office confirmed a partner's claimed media tier and reach (as given here, which
    may correct the claim): from now on they count like any other report's."""

    EVENT_TYPE = "ReportClaimsConfirmed"
    TOPIC = INTAKE_TOPIC
    SCHEMA_VERSION = 1
    report_id: str
    media_tier: MediaTier
    reach: Reach
    reason: str
    confirmed_by: str


class AttachmentAdded(EventPayload):
    """A file (screenshot, video, scanned reply, media coverage) was attached to a report
    and stored by intake (`GET /intake/v1/attachments/{attachment_id}`); `sha256` is of
    its bytes as stored, so the log's hash chain vouches for the file."""

    EVENT_TYPE = "AttachmentAdded"
    TOPIC = INTAKE_TOPIC
    SCHEMA_VERSION = 1
    attachment_id: str
    report_id: str
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(max_length=255, pattern=r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+$")
    size: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    added_by: str


# grading --------------------------------------------------------------------


class ReportOrigin(FrozenModel):
    """Where and when an incident's first report came from, as the grade events carry it:
    a duty counted from its publication (舆情发生) or observation (obligations.yaml
    `counted_from`) and a route by its source (`routing`) decide on it whatever order the
    intake and grading topics arrive in."""

    report_id: str
    source_type: SourceType
    source_name: str
    published_at: AwareDatetime
    observed_at: AwareDatetime


class IncidentGraded(EventPayload):
    EVENT_TYPE = "IncidentGraded"
    TOPIC = GRADING_TOPIC
    SCHEMA_VERSION = 3
    level: Level
    category: Category
    rules_fired: tuple[FiredRule, ...]
    rulebook_version: str
    sensitive_topics: tuple[str, ...] = ()
    # The plan in force (shared/plan.py): its id and version, as YUQING_PLAN's pack says.
    plan_id: str | None = None
    plan_version: str | None = None
    # Under a plan whose grade a body decides (plan.yaml `grading.confirmed_by`): who
    # confirmed the rulebook's proposal, and why when they changed it. None otherwise.
    confirmed_by: str | None = None
    confirmation_reason: str | None = None
    # The incident's first report (ReportOrigin). None when grading did not say (a
    # confirmation: its proposal did; an event of version 2).
    first_report: ReportOrigin | None = None
    # The units the incident concerns as grading knew them: a consumer that sees the grade
    # before intake's IncidentOpened (another topic) still knows whose people to page.
    unit_ids: tuple[str, ...] = ()


@register_upcaster("IncidentGraded", 1)
def _graded_v1(payload: dict[str, Any]) -> dict[str, Any]:
    # Version 1 was graded before plans were recorded: which plan applied is not known.
    return {**payload, "plan_id": None, "plan_version": None}


@register_upcaster("IncidentGraded", 2)
def _graded_v2(payload: dict[str, Any]) -> dict[str, Any]:
    # Version 2 did not carry the first report: not known from the event.
    return {**payload, "first_report": None}


class IncidentEscalated(EventPayload):
    EVENT_TYPE = "IncidentEscalated"
    TOPIC = GRADING_TOPIC
    SCHEMA_VERSION = 2
    from_level: Level
    to_level: Level
    category: Category
    reason: str
    rules_fired: tuple[FiredRule, ...]
    rulebook_version: str
    plan_id: str | None = None
    plan_version: str | None = None


@register_upcaster("IncidentEscalated", 1)
def _escalated_v1(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "plan_id": None, "plan_version": None}


class GradeOverridden(EventPayload):
    EVENT_TYPE = "GradeOverridden"
    TOPIC = GRADING_TOPIC
    from_level: Level
    to_level: Level
    category: Category
    reason: str


class IncidentGradeProposed(EventPayload):
    """The rulebook's grade, proposed to the body the plan names (`grading.confirmed_by`,
    seed 003 第四条): the incident is graded (IncidentGraded) when that body confirms or
    changes it. A later report that raises the assessment proposes again."""

    EVENT_TYPE = "IncidentGradeProposed"
    TOPIC = GRADING_TOPIC
    SCHEMA_VERSION = 2
    level: Level
    category: Category
    rules_fired: tuple[FiredRule, ...]
    rulebook_version: str
    sensitive_topics: tuple[str, ...] = ()
    confirm_role: str
    plan_id: str | None = None
    plan_version: str | None = None
    # The incident's first report and units, as on IncidentGraded.
    first_report: ReportOrigin | None = None
    unit_ids: tuple[str, ...] = ()


@register_upcaster("IncidentGradeProposed", 1)
def _proposed_v1(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "first_report": None}


class LeaderInstructionRecorded(EventPayload):
    """A leader's instruction on the incident (批示; `signed`: the 《网上舆情》 was signed,
    签批, seed 003 第十七条), with the grade it was given at (proposed or confirmed)."""

    EVENT_TYPE = "LeaderInstructionRecorded"
    TOPIC = GRADING_TOPIC
    instruction_id: str
    text: str
    signed: bool
    instructed_by: str
    level: Level
    category: Category


# notification ---------------------------------------------------------------


class ObligationOpened(EventPayload):
    EVENT_TYPE = "ObligationOpened"
    TOPIC = NOTIFICATION_TOPIC
    obligation_id: str
    kind: str
    title: str  # what bureau staff read, in Chinese
    level: Level
    owner_role: str
    recipients: tuple[str, ...]
    counted_from: AwareDatetime
    deadline: AwareDatetime
    alert_roles: tuple[str, ...] = ()  # told when the deadline passes unmet, fixed at opening
    # The plan version whose duty table opened it (the incident's pinned version, named by
    # its grade events): absent in duties opened before versions were recorded.
    plan_id: str | None = None
    plan_version: str | None = None


class NotificationSent(EventPayload):
    EVENT_TYPE = "NotificationSent"
    TOPIC = NOTIFICATION_TOPIC
    notification_id: str
    obligation_id: str
    channel: str
    recipient: str
    attempt: int


class NotificationFailed(EventPayload):
    """A notification that did not reach its recipient: every attempt on `channel` failed,
    or (`channel` "none", `attempts` 0) the person had no contact on a channel that could
    reach them, so nothing was sent. `reason` says which, in what staff read."""

    EVENT_TYPE = "NotificationFailed"
    TOPIC = NOTIFICATION_TOPIC
    notification_id: str
    obligation_id: str
    channel: str
    recipient: str
    attempts: int
    reason: str


# NotificationFailed.channel when no channel could reach the person (never a channel's name).
NO_CHANNEL = "none"


class NotificationAcknowledged(EventPayload):
    EVENT_TYPE = "NotificationAcknowledged"
    TOPIC = NOTIFICATION_TOPIC
    notification_id: str
    obligation_id: str
    acknowledged_by: str


class ObligationFulfilled(EventPayload):
    EVENT_TYPE = "ObligationFulfilled"
    TOPIC = NOTIFICATION_TOPIC
    SCHEMA_VERSION = 2
    obligation_id: str
    fulfilled_by: str
    fulfilled_at: AwareDatetime
    reference: str | None = None
    late: bool = False
    # Met by an action rather than filed by a person (obligations.yaml `met_by`):
    # "statement_published" and the statement's id. None for a duty filed by hand.
    met_by: str | None = None
    statement_id: str | None = None


@register_upcaster("ObligationFulfilled", 1)
def _fulfilled_v1(payload: dict[str, Any]) -> dict[str, Any]:
    # Version 1 was always filed by a person.
    return {**payload, "met_by": None, "statement_id": None}


class ObligationClosed(EventPayload):
    EVENT_TYPE = "ObligationClosed"
    TOPIC = NOTIFICATION_TOPIC
    obligation_id: str
    reason: str


class DeadlineMissed(EventPayload):
    EVENT_TYPE = "DeadlineMissed"
    TOPIC = NOTIFICATION_TOPIC
    obligation_id: str
    kind: str
    level: Level
    deadline: AwareDatetime
    alerted_roles: tuple[str, ...]


class DutyDecided(EventPayload):
    """The role a duty names (`decided_by`) decided whether a duty `opens_on: decided` is
    owed ("as the group decides", seed 003 篇一 二（二）): yes opens it, counted from the
    decision (ObligationOpened caused by this); no is recorded and opens nothing."""

    EVENT_TYPE = "DutyDecided"
    TOPIC = NOTIFICATION_TOPIC
    SCHEMA_VERSION = 1
    kind: str
    title: str  # the duty's, what staff read
    decision: bool
    reason: str
    decided_by: str
    level: Level


# statement ------------------------------------------------------------------


class FactConflict(FrozenModel):
    """A figure a version states differently from the incident's published line."""

    label: str
    published_value: str
    new_value: str
    published_in: str  # the statement that published the figure
    published_version: int


class FactChangeAcknowledgement(FrozenModel):
    """An approver clearing figures that differ from the published line, and why."""

    reason: str
    changes: tuple[FactConflict, ...]


class StatementDrafted(EventPayload):
    EVENT_TYPE = "StatementDrafted"
    TOPIC = STATEMENT_TOPIC
    statement_id: str
    kind: StatementKind
    version: int
    title: str
    body: str
    facts: tuple[Fact, ...] = ()
    outlets: tuple[str, ...] = ()
    author: str


class StatementRevised(EventPayload):
    EVENT_TYPE = "StatementRevised"
    TOPIC = STATEMENT_TOPIC
    statement_id: str
    version: int
    title: str
    body: str
    facts: tuple[Fact, ...] = ()
    outlets: tuple[str, ...] = ()
    author: str


class StatementSubmitted(EventPayload):
    EVENT_TYPE = "StatementSubmitted"
    TOPIC = STATEMENT_TOPIC
    SCHEMA_VERSION = 2
    statement_id: str
    version: int
    level: Level
    chain: tuple[ApprovalStep, ...]
    # The steps of `chain` no approval of this version fills yet. Empty when a new chain
    # (the level changed in review) is already covered by the approvals given: cleared.
    missing: tuple[ApprovalStep, ...]
    reason: str = ""  # why the chain was set again, e.g. the incident's level changed in review
    fact_conflicts: tuple[FactConflict, ...] = ()  # figures contradicting the published line


@register_upcaster("StatementSubmitted", 1)
def _submitted_v1(payload: dict[str, Any]) -> dict[str, Any]:
    # Version 1 did not say what was missing; a first submission misses its whole chain.
    return {**payload, "missing": payload.get("chain", [])}


class StatementApproved(EventPayload):
    EVENT_TYPE = "StatementApproved"
    TOPIC = STATEMENT_TOPIC
    SCHEMA_VERSION = 2
    statement_id: str
    version: int
    step: ApprovalStep
    approver: str
    comment: str = ""
    fully_approved: bool
    missing: tuple[ApprovalStep, ...]  # the steps still to fill after this one
    fact_changes_acknowledged: FactChangeAcknowledgement | None = None


@register_upcaster("StatementApproved", 1)
def _approved_v1(payload: dict[str, Any]) -> dict[str, Any]:
    # Version 1 said only whether the chain was complete; an incomplete one misses at least
    # a step, which is all that can be told of it now.
    missing = [] if payload.get("fully_approved") else [payload["step"]]
    return {**payload, "missing": missing}


class StatementRejected(EventPayload):
    EVENT_TYPE = "StatementRejected"
    TOPIC = STATEMENT_TOPIC
    statement_id: str
    version: int
    step: ApprovalStep
    approver: str
    comment: str


class StatementPublished(EventPayload):
    EVENT_TYPE = "StatementPublished"
    TOPIC = STATEMENT_TOPIC
    statement_id: str
    version: int
    outlet: str
    url: str
    published_by: str


class StatementWithdrawn(EventPayload):
    EVENT_TYPE = "StatementWithdrawn"
    TOPIC = STATEMENT_TOPIC
    statement_id: str
    version: int
    withdrawn_by: str
    reason: str


# archive --------------------------------------------------------------------


class ReviewRecorded(EventPayload):
    EVENT_TYPE = "ReviewRecorded"
    TOPIC = ARCHIVE_TOPIC
    cause: str
    handling: str
    lessons: str
    reviewed_by: str


class CaseArchived(EventPayload):
    EVENT_TYPE = "CaseArchived"
    TOPIC = ARCHIVE_TOPIC
    case_id: str
    figures: dict[str, Any] = Field(default_factory=dict)


class FulfilmentMarkedUntrue(EventPayload):
    """The office found a duty's recorded fulfilment untrue (谎报, seed 003 第二十八条): it
    counts against the person who fulfilled it (`fulfilled_by`) in the assessment."""

    EVENT_TYPE = "FulfilmentMarkedUntrue"
    TOPIC = ARCHIVE_TOPIC
    obligation_id: str
    fulfilled_by: str
    reason: str
    marked_by: str


class UnclearedReleaseRecorded(EventPayload):
    """The office recorded that a statement or information went out without its clearance
    chain (未经批准擅自对外发布, seed 003 第二十八条): who released it, through which channel,
    when and what; it counts against that person and `unit_id`."""

    EVENT_TYPE = "UnclearedReleaseRecorded"
    TOPIC = ARCHIVE_TOPIC
    release_id: str
    released_by: str
    unit_id: str
    channel: str
    released_at: AwareDatetime
    content: str
    recorded_by: str


class CommendationRecorded(EventPayload):
    """A commendation (表扬) of a person (`person_id`, of `unit_id`) or of a unit alone for
    their work on the incident, with the reason."""

    EVENT_TYPE = "CommendationRecorded"
    TOPIC = ARCHIVE_TOPIC
    commendation_id: str
    person_id: str | None = None
    unit_id: str
    reason: str
    recorded_by: str


def payload_class(event_type: str) -> type[EventPayload]:
    try:
        return _REGISTRY[event_type]
    except KeyError:
        raise EventError(f"unknown event_type {event_type!r}") from None


def event_types() -> dict[str, type[EventPayload]]:
    return dict(_REGISTRY)


def upcast(event_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    current = payload_class(event_type).SCHEMA_VERSION
    if version > current:
        raise EventError(
            f"{event_type} schema_version {version} is newer than this code knows ({current})"
        )
    while version < current:
        step = _UPCASTERS.get((event_type, version))
        if step is None:
            raise EventError(f"no upcaster for {event_type} from schema_version {version}")
        payload = step(payload)
        version += 1
    return payload


# --------------------------------------------------------------------------- envelope


class Envelope(FrozenModel):
    """What travels on every topic and is stored in every event store."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str
    schema_version: int
    incident_id: str
    stream_id: str
    stream_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime | None = None
    actor: Actor
    unit_id: str | None = None
    causation_id: uuid.UUID | None = None
    correlation_id: uuid.UUID
    payload: SerializeAsAny[EventPayload]

    @model_validator(mode="before")
    @classmethod
    def _typed_payload(cls, data: Any) -> Any:
        """Turn a stored or received payload into its declared class, upcast to today."""
        if not isinstance(data, dict) or isinstance(data.get("payload"), EventPayload):
            return data
        event_type = data.get("event_type")
        if not isinstance(event_type, str):
            return data  # the field validator reports the missing type
        version = data.get("schema_version", 1)
        raw = data.get("payload")
        if not isinstance(raw, dict):
            raise EventError(f"{event_type}: payload must be an object")
        target = payload_class(event_type)
        body = upcast(event_type, int(version), dict(raw))
        return {
            **data,
            "schema_version": target.SCHEMA_VERSION,
            "payload": target.model_validate(body),
        }

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Self:
        if self.event_type != self.payload.EVENT_TYPE:
            raise EventError(
                f"event_type {self.event_type!r} does not match payload {self.payload.EVENT_TYPE!r}"
            )
        return self

    @property
    def topic(self) -> str:
        return self.payload.TOPIC

    @classmethod
    def new(
        cls,
        payload: EventPayload,
        *,
        incident_id: str,
        stream_id: str,
        stream_version: int,
        actor: Actor,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        unit_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Envelope:
        return cls(
            event_type=payload.EVENT_TYPE,
            schema_version=payload.SCHEMA_VERSION,
            incident_id=incident_id,
            stream_id=stream_id,
            stream_version=stream_version,
            occurred_at=occurred_at or utcnow(),
            actor=actor,
            unit_id=unit_id,
            causation_id=causation_id,
            correlation_id=correlation_id or uuid.uuid4(),
            payload=payload,
        )

    def caused(self, payload: EventPayload, **fields: Any) -> Envelope:
        """A new event that this one caused: same incident and correlation, this as cause."""
        fields.setdefault("incident_id", self.incident_id)
        fields.setdefault("unit_id", self.unit_id)
        return Envelope.new(
            payload,
            correlation_id=self.correlation_id,
            causation_id=self.event_id,
            **fields,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        return cls.model_validate_json(data)
