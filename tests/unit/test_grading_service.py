"""The grading service built through its composition root on the in-memory fakes: intake
and notification events in through the consumer, grades out through the outbox and the
API, the leader's override, and who may see what."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.grading.bootstrap import GradingParts, build
from services.intake.bootstrap import build as build_intake
from shared.events import (
    Actor,
    DeadlineMissed,
    Envelope,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    IncidentResolved,
    Level,
    MediaTier,
    Reach,
    ReportReceived,
    SourceType,
)
from shared.settings import CONFIG_DIR
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.mongo import FakeMongo
from tests.fakes.upstream import Streams

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
GRADE = "/grading/v1/incidents/{}/grade"
OVERRIDE = "/grading/v1/incidents/{}/override"


class Upstream(Streams):
    """Plays intake and notification: numbered events about incidents, as they publish them."""

    def __init__(self) -> None:
        super().__init__(
            T0, Actor(type="person", id="monitor-chen", unit_id="school-a"), unit_id="school-a"
        )
        self.reports = 0

    def report(
        self,
        incident_id: str,
        tier: MediaTier = MediaTier.COUNTY,
        *,
        title: str = "某校门口道路积水",
        views: int = 0,
        units: tuple[str, ...] = ("school-a",),
        filed_by: str = "monitor-chen",
        report_id: str | None = None,
    ) -> Envelope:
        self.reports += 1
        n = self.reports
        return self.event(
            incident_id,
            ReportReceived(
                report_id=report_id or f"rep-{n}",
                source_type=SourceType.NEWS,
                source_name=f"{tier.value}-站点",
                media_tier=tier,
                url=f"https://{tier.value}.example.com/{n}",
                normalized_url=f"https://{tier.value}.example.com/{n}",
                title=title,
                excerpt="",
                author=None,
                published_at=T0,
                observed_at=T0,
                reach=Reach(views=views),
                unit_ids=units,
                filed_by=filed_by,
            ),
        )

    def missed(
        self, incident_id: str, level: Level, deadline: datetime = T0 + timedelta(minutes=30)
    ) -> Envelope:
        """As the deadline watch records a miss: at the true deadline, however late it saw it."""
        return self.event(
            incident_id,
            DeadlineMissed(
                obligation_id=f"obl-{incident_id}-{int(level)}",
                kind="first_report",
                level=level,
                deadline=deadline,
                alerted_roles=("leader",),
            ),
            stream="obligation",
            at=deadline,
        )


@pytest.fixture
async def grading() -> AsyncIterator[FakeService]:
    async with fake_service("grading", build, clock=lambda: T0) as service:
        yield service


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def dead_letters(grading: FakeService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the consumer dead-letters, with the reason (the fake broker is never started)."""
    reasons: list[str] = []

    async def record(raw: bytes, topic: str, reason: str) -> None:
        reasons.append(reason)

    assert grading.runner.consumer is not None
    monkeypatch.setattr(grading.runner.consumer, "dead_letter", record)
    return reasons


def parts(service: FakeService) -> GradingParts:
    assert isinstance(service.parts, GradingParts)
    return service.parts


def leader(service: FakeService) -> dict[str, str]:
    return service.token("leader-zhang", "county", "leader")


async def grade_of(service: FakeService, incident_id: str) -> dict[str, Any]:
    async with service.http() as api:
        resp = await api.get(GRADE.format(incident_id), headers=leader(service))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def override(
    service: FakeService, incident_id: str, headers: dict[str, str], **body: Any
) -> Any:
    async with service.http() as api:
        return await api.post(OVERRIDE.format(incident_id), json=body, headers=headers)


# --------------------------------------------------------------------------- reactions


async def test_the_first_report_grades_the_incident_caused_by_it(
    grading: FakeService, upstream: Upstream
) -> None:
    opened = upstream.event(
        "inc-1", IncidentOpened(title="t", unit_ids=("school-a",), first_report_id="rep-1")
    )
    report = upstream.report("inc-1", MediaTier.PROVINCIAL)
    await grading.consume(opened, report)

    (graded,) = await grading.published()
    assert graded.event_type == "IncidentGraded"
    assert graded.stream_id == "grade-inc-1"
    assert isinstance(graded.payload, IncidentGraded)
    assert graded.payload.level == 2
    assert graded.payload.unit_ids == ("school-a",)  # for a consumer that sees it first
    assert graded.causation_id == report.event_id
    assert graded.correlation_id == report.correlation_id
    assert graded.actor == Actor.rule("rulebook")
    assert graded.occurred_at == T0

    view = await grade_of(grading, "inc-1")
    assert (view["level"], view["category"], view["version"]) == (2, "inquiry", 1)
    assert view["rulebook_version"] == parts(grading).rulebook.version
    assert "tier-provincial" in {r["rule_id"] for r in view["rules_fired"]}
    assert view["unit_ids"] == ["school-a"]
    assert view["dismissed"] is False
    assert "filed_by" not in view
    assert [(h["event_type"], h["level"]) for h in view["history"]] == [("IncidentGraded", 2)]


async def test_a_stronger_report_escalates_and_a_weaker_one_changes_nothing(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(
        upstream.report("inc-1", MediaTier.PROVINCIAL),
        upstream.report("inc-1", MediaTier.CENTRAL),
        upstream.report("inc-1", MediaTier.COUNTY),
    )
    graded, escalated = await grading.published()
    assert graded.event_type == "IncidentGraded"
    assert escalated.event_type == "IncidentEscalated"
    assert escalated.stream_version == 2
    view = await grade_of(grading, "inc-1")
    assert (view["level"], view["version"]) == (1, 2)
    last = view["history"][-1]
    assert (last["from_level"], last["level"]) == (2, 1)
    assert "中央级媒体" in last["reason"]
    assert [r["rule_id"] for r in last["rules_fired"]] == ["tier-central"]


async def test_each_report_is_a_document_of_its_own_so_no_incident_outgrows_one(
    upstream: Upstream,
) -> None:
    mongo = FakeMongo()
    async with fake_service("grading", build, clock=lambda: T0, mongo=mongo) as grading:
        await grading.consume(*(upstream.report("inc-1", views=40_000) for _ in range(3)))
        facts = await grading.db["facts"].find_one({"_id": "inc-1"})
        assert facts is not None
        assert "reports" not in facts
        assert facts["report_count"] == 3
        # The third report's reach (120,000 in all) is what escalated it: all three count.
        assert [e.event_type for e in await grading.published()] == [
            "IncidentGraded",
            "IncidentEscalated",
        ]
        # As grading kept them before: embedded in the incident's facts, in arrival order.
        kept = grading.db["report_facts"].find({"incident_id": "inc-1"}, sort=[("order", 1)])
        embedded = [
            {k: v for k, v in doc.items() if k not in ("_id", "incident_id", "order")}
            async for doc in kept
        ]
        await grading.db["report_facts"].delete_many({})
        await grading.db["facts"].update_one(
            {"_id": "inc-1"}, {"$set": {"reports": embedded}, "$unset": {"report_count": ""}}
        )
    async with fake_service("grading", build, clock=lambda: T0, mongo=mongo) as restarted:
        facts = await restarted.db["facts"].find_one({"_id": "inc-1"})
        assert facts is not None
        assert "reports" not in facts
        assert facts["report_count"] == 3
        # 900,000 views alone stay under the 1,000,000 bound; with the moved three over it.
        await restarted.consume(upstream.report("inc-1", views=900_000))
        moved = restarted.db["report_facts"].find({"incident_id": "inc-1"}, sort=[("order", 1)])
        assert [doc["report_id"] async for doc in moved] == ["rep-1", "rep-2", "rep-3", "rep-4"]
        escalations = await restarted.published("IncidentEscalated")
        assert [
            int(e.payload.to_level) for e in escalations if isinstance(e.payload, IncidentEscalated)
        ] == [2, 1]


async def test_a_report_counted_once_even_under_another_event_id(
    grading: FakeService, upstream: Upstream
) -> None:
    first = upstream.report("inc-1", MediaTier.COUNTY, views=60_000, report_id="rep-x")
    again = upstream.report("inc-1", MediaTier.COUNTY, views=60_000, report_id="rep-x")
    await grading.consume(first, first, again)  # redelivered, then re-sent by intake
    assert [e.event_type for e in await grading.published()] == ["IncidentGraded"]
    facts = await grading.db["facts"].find_one({"_id": "inc-1"})
    assert facts is not None
    assert facts.get("report_count") == 1


async def test_a_dismissed_incident_is_neither_graded_nor_escalated_until_reopened(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(
        upstream.report("inc-d", MediaTier.COUNTY, title="网传某校收费，系造谣"),
        upstream.event("inc-d", IncidentDismissed(reason="网络伪舆情")),
        upstream.report("inc-d", MediaTier.CENTRAL),
        upstream.missed("inc-d", 3),
    )
    assert [e.event_type for e in await grading.published()] == ["IncidentGraded"]
    view = await grade_of(grading, "inc-d")
    assert (view["level"], view["category"], view["dismissed"]) == (3, "rumor", True)

    await grading.consume(upstream.event("inc-d", IncidentReopened(reason="再次发酵")))
    view = await grade_of(grading, "inc-d")
    assert view["dismissed"] is False
    # The central report filed while it was dismissed counts once it is reopened.
    escalated = view["history"][-1]
    assert (view["level"], escalated["event_type"]) == (1, "IncidentEscalated")
    assert [r["rule_id"] for r in escalated["rules_fired"]] == ["tier-central"]
    await grading.consume(upstream.missed("inc-d", 3))  # a miss below the level raises nothing
    assert (await grade_of(grading, "inc-d"))["level"] == 1

    await grading.consume(
        upstream.event("inc-u", IncidentDismissed(reason="网络伪舆情")),
        upstream.report("inc-u", MediaTier.CENTRAL),
    )
    assert not [e for e in await grading.published() if e.incident_id == "inc-u"]


async def test_a_report_attached_to_a_resolved_incident_changes_its_grade_only_once_reopened(
    grading: FakeService, upstream: Upstream
) -> None:
    """A plan's watch (善后跟踪, `attach`) files a report on a resolved incident without
    reopening it: counted, but the closed matter is not escalated; reopened, it is."""
    await grading.consume(
        upstream.report("inc-w"),
        upstream.event("inc-w", IncidentResolved(reason="已答复")),
        upstream.report("inc-w", MediaTier.CENTRAL),
    )
    assert [e.event_type for e in await grading.published()] == ["IncidentGraded"]
    assert (await grade_of(grading, "inc-w"))["level"] == 3

    await grading.consume(
        upstream.event("inc-w", IncidentReopened(reason="善后跟踪期内再次发酵")),
        upstream.report("inc-w", MediaTier.CENTRAL),
    )
    view = await grade_of(grading, "inc-w")
    assert (view["level"], view["history"][-1]["event_type"]) == (1, "IncidentEscalated")


async def test_a_missed_deadline_at_the_current_level_raises_it_one_step(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(upstream.report("inc-1", MediaTier.COUNTY))
    await grading.consume(upstream.missed("inc-1", 3))
    *_, escalated = await grading.published()
    assert escalated.event_type == "IncidentEscalated"
    view = await grade_of(grading, "inc-1")
    assert view["level"] == 2
    assert view["history"][-1]["rules_fired"][0]["rule_id"] == "mishandling-deadline-missed"

    # A deadline of the level it has left says nothing about the handling now.
    await grading.consume(upstream.missed("inc-1", 3))
    assert (await grade_of(grading, "inc-1"))["level"] == 2


async def test_a_deadline_missed_during_downtime_escalates_as_of_the_true_deadline(
    upstream: Upstream,
) -> None:
    restarted_at = T0 + timedelta(hours=6)  # the system was down; the miss is found now
    deadline = restarted_at - timedelta(hours=1)
    async with fake_service("grading", build, clock=lambda: restarted_at) as grading:
        await grading.consume(upstream.report("inc-down", MediaTier.COUNTY))
        missed = upstream.missed("inc-down", 3, deadline=deadline)
        await grading.consume(missed)
        *_, escalated = await grading.published()

    assert escalated.event_type == "IncidentEscalated"
    assert escalated.causation_id == missed.event_id
    # The new level's deadlines count from here: the miss, not the restart.
    assert escalated.occurred_at == deadline


async def test_a_missed_deadline_on_a_never_graded_incident_is_dead_lettered(
    grading: FakeService, upstream: Upstream, dead_letters: list[str]
) -> None:
    await grading.consume(upstream.missed("inc-never", 3))
    assert dead_letters == ["a deadline was missed on inc-never, which was never graded"]
    assert await grading.published() == []


# --------------------------------------------------------------------------- override


async def test_the_leader_overrides_down_with_a_reason_and_it_holds(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(upstream.report("inc-o", MediaTier.CENTRAL))

    down = await override(grading, "inc-o", leader(grading), level=3, reason="经核实系转载旧闻")
    assert down.status_code == 200, down.text
    assert down.json() == {
        "incident_id": "inc-o",
        "from_level": 1,
        "level": 3,
        "category": "inquiry",
        "reason": "经核实系转载旧闻",
    }
    (_, overridden) = await grading.published()
    assert overridden.event_type == "GradeOverridden"
    assert overridden.actor == Actor(type="person", id="leader-zhang", unit_id="county")
    assert overridden.unit_id == "school-a"
    assert overridden.stream_version == 2

    # Another central report is no new fact: the override holds.
    await grading.consume(upstream.report("inc-o", MediaTier.CENTRAL))
    assert len(await grading.published()) == 2
    view = await grade_of(grading, "inc-o")
    assert (view["level"], view["version"]) == (3, 2)
    assert view["history"][-1]["reason"] == "经核实系转载旧闻"


async def test_an_override_that_changes_nothing_is_a_conflict_naming_the_grade(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(upstream.report("inc-o", MediaTier.PROVINCIAL))
    same = await override(grading, "inc-o", leader(grading), level=2, reason="again")
    assert same.status_code == 409
    error = same.json()["error"]
    assert error["code"] == "override_refused"
    assert error["details"] == {"level": 2, "category": "inquiry"}
    assert "already level 2" in error["message"]
    recategorised = await override(
        grading, "inc-o", leader(grading), level=2, category="rumor", reason="系谣言"
    )
    assert recategorised.status_code == 200, recategorised.text
    assert (await grade_of(grading, "inc-o"))["category"] == "rumor"


async def test_only_the_leading_group_overrides_and_always_with_a_reason(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(upstream.report("inc-o", MediaTier.CENTRAL))
    office = grading.token("office-li", "county", "office")
    refused = await override(grading, "inc-o", office, level=3, reason="x")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    no_reason = await override(grading, "inc-o", leader(grading), level=3)
    assert no_reason.status_code == 422
    assert no_reason.json()["error"]["details"][0]["field"] == "reason"
    blank = await override(grading, "inc-o", leader(grading), level=3, reason="   ")
    assert blank.status_code == 422
    admin = grading.token("admin", "county", "admin")
    assert (await override(grading, "inc-o", admin, level=2, reason="管理员")).status_code == 200
    assert len(await grading.published()) == 2


async def test_a_dismissed_incident_is_not_regraded_by_hand_until_reopened(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(
        upstream.report("inc-q", MediaTier.COUNTY),
        upstream.event("inc-q", IncidentDismissed(reason="网络伪舆情")),
    )
    refused = await override(grading, "inc-q", leader(grading), level=1, reason="上级关注")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "override_refused"
    assert "dismissed" in refused.json()["error"]["message"]

    await grading.consume(upstream.event("inc-q", IncidentReopened(reason="再次发酵")))
    raised = await override(grading, "inc-q", leader(grading), level=1, reason="上级关注")
    assert raised.status_code == 200, raised.text
    assert (await grade_of(grading, "inc-q"))["level"] == 1


async def test_an_incident_known_but_not_graded_answers_409_to_override_and_404_to_read(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(
        upstream.event("inc-u", IncidentDismissed(reason="网络伪舆情")),
        upstream.report("inc-u", MediaTier.COUNTY),
    )
    ungraded = await override(grading, "inc-u", leader(grading), level=1, reason="上级关注")
    assert ungraded.status_code == 409, ungraded.text
    assert "not been graded" in ungraded.json()["error"]["message"]
    assert ungraded.json()["error"]["details"] == {"level": None, "category": None}
    async with grading.http() as api:
        read = await api.get(GRADE.format("inc-u"), headers=leader(grading))
    assert read.status_code == 404


async def test_an_override_acts_for_every_unit_of_the_incident(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(
        upstream.report("inc-2", MediaTier.COUNTY, units=("school-a", "school-b"))
    )
    school_a_leader = grading.token("leader-a", "school-a", "leader")
    async with grading.http() as api:
        seen = await api.get(GRADE.format("inc-2"), headers=school_a_leader)
    assert seen.status_code == 200
    partial = await override(grading, "inc-2", school_a_leader, level=1, reason="上级关注")
    assert partial.status_code == 403
    assert len(await grading.published()) == 1


# --------------------------------------------------------------------------- visibility


def _same_body(hidden: Any, unknown: Any, hidden_id: str, unknown_id: str) -> None:
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == json.loads(unknown.text.replace(unknown_id, hidden_id))
    assert hidden.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("sub", "unit", "roles"),
    [
        ("leader-b", "school-b", ("leader",)),
        ("monitor-b", "school-b", ("monitor",)),
        ("partner-wxb", "county", ("partner",)),  # a partner that did not refer it
        ("partner-wxb", "county", ("partner", "leader", "admin")),  # whatever it carries
    ],
)
async def test_another_units_incident_answers_like_an_unknown_one_on_every_route(
    grading: FakeService, upstream: Upstream, sub: str, unit: str, roles: tuple[str, ...]
) -> None:
    await grading.consume(upstream.report("inc-a", MediaTier.CENTRAL))
    caller = grading.token(sub, unit, *roles)
    body = {"level": 3, "reason": "x"}
    async with grading.http() as api:
        for url in (GRADE, OVERRIDE):
            send = api.get if url is GRADE else api.post
            kwargs: dict[str, Any] = {} if url is GRADE else {"json": body}
            hidden = await send(url.format("inc-a"), headers=caller, **kwargs)
            unknown = await send(url.format("inc-random-9f3"), headers=caller, **kwargs)
            _same_body(hidden, unknown, "inc-a", "inc-random-9f3")
    assert len(await grading.published()) == 1


async def test_a_partner_sees_the_grade_of_what_it_referred_but_may_not_override_it(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(upstream.report("inc-p", MediaTier.CENTRAL, filed_by="partner-wxb"))
    partner = grading.token("partner-wxb", "county", "partner", "leader")
    async with grading.http() as api:
        seen = await api.get(GRADE.format("inc-p"), headers=partner)
    assert seen.status_code == 200
    assert seen.json()["level"] == 1
    hidden = await override(grading, "inc-p", partner, level=3, reason="x")
    unknown = await override(grading, "inc-none", partner, level=3, reason="x")
    _same_body(hidden, unknown, "inc-p", "inc-none")


async def test_the_unit_above_sees_the_grade_and_a_sibling_unit_does_not(
    grading: FakeService, upstream: Upstream
) -> None:
    await grading.consume(upstream.report("inc-a", MediaTier.COUNTY))
    async with grading.http() as api:
        county = await api.get(GRADE.format("inc-a"), headers=leader(grading))
        own = await api.get(
            GRADE.format("inc-a"), headers=grading.token("monitor-chen", "school-a", "monitor")
        )
        sibling = await api.get(
            GRADE.format("inc-a"), headers=grading.token("monitor-b", "school-b", "monitor")
        )
    assert (county.status_code, own.status_code, sibling.status_code) == (200, 200, 404)


# --------------------------------------------------------------------------- rulebook


async def test_the_rulebook_in_force_is_served_to_the_bureaus_staff_and_not_to_a_partner(
    grading: FakeService,
) -> None:
    async with grading.http() as api:
        assert (await api.get("/grading/v1/rulebook")).status_code == 401
        partner = grading.token("partner-wxb", "county", "partner")
        assert (await api.get("/grading/v1/rulebook", headers=partner)).status_code == 403
        resp = await api.get(
            "/grading/v1/rulebook", headers=grading.token("monitor-chen", "school-a", "monitor")
        )
    assert resp.status_code == 200
    body = resp.json()
    assert body["version"] == parts(grading).rulebook.version
    tiers = {t["id"]: t for t in body["tiers"]}
    assert tiers["tier-central"]["level"] == 1
    assert set(tiers["tier-central"]["media_tiers"]) == {"central", "national_portal"}
    assert body["mishandling"]["id"] == "mishandling-deadline-missed"


async def test_a_malformed_rulebook_stops_the_build_naming_the_entry(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "rulebook.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "rulebook.yaml"
    bad.write_text(text.replace("at_least: 5000\n", "at_least: lots\n"), encoding="utf-8")
    settings = fake_settings(tmp_path, rulebook_path=bad)
    with pytest.raises(ValueError, match=r"reach\[1\] \(reach-reposts-5k\)\.at_least"):
        async with fake_service("grading", build, settings=settings):
            pass  # pragma: no cover - never reached


# --------------------------------------------------------------------------- partner claims


async def test_a_partners_central_claim_raises_no_level_until_the_office_confirms_it(
    grading: FakeService,
) -> None:
    """Intake and grading on fakes, intake's events handed to grading as Kafka would."""
    claim = {
        "source_type": "referral",
        "source_name": "网信办转办",
        "media_tier": "central",
        "url": "https://people.example.cn/n1/claimed.html",
        "title": "网传某校门口道路积水",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 10},
        "unit_ids": ["school-a"],
    }
    async with (
        fake_service("intake", build_intake, clock=lambda: T0 + timedelta(hours=1)) as intake,
        intake.http() as api,
    ):
        partner = intake.token("partner-wxb", "county", "partner")
        filed = await api.post("/intake/v1/reports", json=claim, headers=partner)
        assert filed.status_code == 201, filed.text
        incident_id, report_id = filed.json()["incident_id"], filed.json()["report_id"]
        await grading.consume(*await intake.published())

        graded = await grade_of(grading, incident_id)
        assert graded["level"] == 3
        assert not any(r["rule_id"].startswith("tier-") for r in graded["rules_fired"])

        office = intake.token("office-li", "county", "office")
        confirm = f"/intake/v1/reports/{report_id}/confirm-claims"
        confirmed = await api.post(confirm, json={"reason": "已核实"}, headers=office)
        assert confirmed.status_code == 200, confirmed.text
        (confirmation,) = await intake.published("ReportClaimsConfirmed")
        await grading.consume(confirmation)
        await grading.consume(confirmation.model_copy(update={"event_id": uuid.uuid4()}))

    regraded = await grade_of(grading, incident_id)
    assert regraded["level"] == 1
    assert [(h["event_type"], h["level"]) for h in regraded["history"]] == [
        ("IncidentGraded", 3),
        ("IncidentEscalated", 1),
    ]
    (escalated,) = await grading.published("IncidentEscalated")
    assert escalated.causation_id == confirmation.event_id
