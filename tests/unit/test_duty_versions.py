"""Duties opened from the plan version an incident is pinned to (services/notification/
plan_versions.py), on notification built through its composition root on the fakes: an
incident graded under one version of the four-tier pack keeps that version's duties and
deadlines when it is escalated after the service restarted on the next version, and the
duties waiting on its duties (`after`) follow the same version; a new incident gets the
new version's; a grade naming a version notification never stored opens the duties of the
plan in force, logged and counted, rather than none; duties changed under an unchanged
version stop the start."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.notification.bootstrap import NotificationParts
from services.notification.bootstrap import build as build_notification
from services.notification.plan_versions import DUTY_VERSIONS
from shared.events import (
    Actor,
    Envelope,
    FiredRule,
    GradeOverridden,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    ObligationOpened,
)
from shared.plan import PlanError, read_manifest
from shared.settings import CONFIG_DIR
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.mongo import FakeMongo
from tests.fakes.upstream import Clock, Streams

pytestmark = pytest.mark.asyncio

FOURTIER = CONFIG_DIR / "plans" / "fourtier"
A = read_manifest(FOURTIER).version  # the shipped pack's version
B = f"{A}-faster"
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
FULFIL = "/notifications/v1/obligations/{}/fulfil"


def next_version(tmp_path: Path, version: str = B) -> Path:
    """The four-tier pack at `version` with faster duties: tier 2's response within 1h (not
    4h), tier 3's office response within 12h after the request (not 24h)."""
    target = tmp_path / f"fourtier-{version}"
    shutil.copytree(FOURTIER, target)
    manifest = yaml.safe_load((target / "plan.yaml").read_text(encoding="utf-8"))
    manifest["version"] = version
    (target / "plan.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), "utf-8")
    path = target / "obligations.yaml"
    duties = yaml.safe_load(path.read_text(encoding="utf-8"))
    faster = {"info_section_response": "1h", "office_response": "12h"}
    for rules in duties["levels"].values():
        for rule in rules:
            rule["within"] = faster.get(rule["kind"], rule.get("within"))
    path.write_text(yaml.safe_dump(duties, allow_unicode=True), encoding="utf-8")
    return target


class Upstream(Streams):
    """Plays intake and grading; grading names the version it pinned the incident to."""

    def __init__(self) -> None:
        super().__init__(T0, Actor.rule("rulebook"))

    def opened(self, incident_id: str) -> Envelope:
        payload = IncidentOpened(
            title="学校食堂饭菜变质", unit_ids=("school-a",), first_report_id="r1"
        )
        return self.event(incident_id, payload, "incident")

    def graded(self, incident_id: str, level: int, version: str | None) -> Envelope:
        payload = IncidentGraded(
            level=level,
            category="inquiry",
            rules_fired=(FiredRule(rule_id="tier-municipal", reason="市级媒体"),),
            rulebook_version=A,
            plan_id="fourtier" if version else None,
            plan_version=version,
        )
        return self.event(incident_id, payload, "grade")

    def escalated(self, incident_id: str, to: int, version: str) -> Envelope:
        payload = IncidentEscalated(
            from_level=to + 1,
            to_level=to,
            category="inquiry",
            reason="浏览量达到10万",
            rules_fired=(FiredRule(rule_id="reach-views-100k", reason="浏览量达到10万"),),
            rulebook_version=A,
            plan_id="fourtier",
            plan_version=version,
        )
        return self.event(incident_id, payload, "grade")

    def overridden(self, incident_id: str, to: int) -> Envelope:
        payload = GradeOverridden(
            from_level=to + 1, to_level=to, category="inquiry", reason="领导小组研判"
        )
        return self.event(incident_id, payload, "grade")


@asynccontextmanager
async def notification(
    mongo: FakeMongo, tmp_path: Path, pack: Path, clock: Clock
) -> AsyncIterator[FakeService]:
    settings = fake_settings(tmp_path, plan=pack)
    async with fake_service(
        "notification", build_notification, settings=settings, mongo=mongo, clock=clock
    ) as service:
        yield service


async def opened(service: FakeService, incident_id: str) -> dict[str, ObligationOpened]:
    """The duties opened for the incident, by kind (the latest of each)."""
    found: dict[str, ObligationOpened] = {}
    for event in await service.published("ObligationOpened"):
        if event.incident_id == incident_id and isinstance(event.payload, ObligationOpened):
            found[event.payload.kind] = event.payload
    return found


async def test_an_escalation_after_the_plan_moved_on_opens_the_pinned_versions_duties(
    tmp_path: Path,
) -> None:
    mongo, up, clock = FakeMongo(), Upstream(), Clock(T0)
    async with notification(mongo, tmp_path, FOURTIER, clock) as before:
        await before.consume(up.opened("inc-a"), up.graded("inc-a", 3, A))
        request = (await opened(before, "inc-a"))["office_request"]
        assert request.plan_version == A
        assert request.deadline == T0 + timedelta(hours=4)

    # The pack moves to B (faster duties) and notification restarts on it.
    async with notification(mongo, tmp_path, next_version(tmp_path), clock) as after:
        parts = after.parts
        assert isinstance(parts, NotificationParts)
        assert parts.versions.current.plan_version == B

        # Grading escalates A's incident under A, as it pinned it: A's 4 hours, not B's 1.
        up.at = clock.now = T0 + timedelta(hours=2)
        await after.consume(up.escalated("inc-a", 2, A))
        response = (await opened(after, "inc-a"))["info_section_response"]
        assert (response.plan_id, response.plan_version) == ("fourtier", A)
        assert response.counted_from == up.at
        assert response.deadline == up.at + timedelta(hours=4)

        # The request filed: the response waiting on it (after:) is A's too, 24 hours.
        leader = after.token("leader-zhang", "county", "leader")
        clock.now = T0 + timedelta(hours=3)
        async with after.http() as http:
            r = await http.post(FULFIL.format(request.obligation_id), json={}, headers=leader)
        assert r.status_code == 200, r.text
        following = (await opened(after, "inc-a"))["office_response"]
        assert following.plan_version == A
        assert following.deadline == clock.now + timedelta(hours=24)

        # A new incident is graded under B: B's hour.
        await after.consume(up.opened("inc-b"), up.graded("inc-b", 2, B))
        fresh = (await opened(after, "inc-b"))["info_section_response"]
        assert fresh.plan_version == B
        assert fresh.deadline == up.at + timedelta(hours=1)

        # An override names no version: the incident's pin (B) decides its tier-1 duties.
        up.at = T0 + timedelta(hours=4)
        await after.consume(up.overridden("inc-b", 1))
        tier_one = (await opened(after, "inc-b"))["superior_request"]
        assert tier_one.plan_version == B
        assert tier_one.deadline == up.at + timedelta(minutes=30)

        stored = await after.db[DUTY_VERSIONS].find({}).to_list(None)
        assert {(d["plan_id"], d["plan_version"]) for d in stored} == {
            ("fourtier", A),
            ("fourtier", B),
        }
        assert after.dead_letters == []


async def test_a_grade_naming_a_version_never_stored_opens_the_duties_in_force_and_says_so(
    tmp_path: Path,
) -> None:
    # Grading restarted on version B before notification did: notification knows only A.
    mongo, up, clock = FakeMongo(), Upstream(), Clock(T0)
    labels = {"plan_id": "fourtier", "plan_version": B}
    counted = REGISTRY.get_sample_value("yuqing_duty_plan_version_unknown_total", labels) or 0.0
    async with notification(mongo, tmp_path, FOURTIER, clock) as service:
        with capture_logs() as logs:
            await service.consume(up.opened("inc-c"), up.graded("inc-c", 2, B))
        response = (await opened(service, "inc-c"))["info_section_response"]
        # Owed all the same, from A's table, and the duty says whose table it was.
        assert response.plan_version == A
        assert response.deadline == T0 + timedelta(hours=4)
        assert service.dead_letters == []
        warned = [e for e in logs if e.get("plan_version") == B]
        assert warned
        assert warned[0]["log_level"] == "warning"
        assert warned[0]["in_force"] == f"fourtier@{A}"
        assert warned[0]["incident_id"] == "inc-c"
    after = REGISTRY.get_sample_value("yuqing_duty_plan_version_unknown_total", labels)
    assert after == counted + 1

    # Once notification has run under B, B's duties apply to an escalation naming B.
    async with notification(mongo, tmp_path, next_version(tmp_path), clock):
        pass
    async with notification(mongo, tmp_path, FOURTIER, clock) as again:
        up.at = T0 + timedelta(hours=1)
        await again.consume(up.escalated("inc-c", 1, B), up.opened("inc-d"))
        await again.consume(up.graded("inc-d", 2, B))
        (duty,) = [d for k, d in (await opened(again, "inc-d")).items()]
        assert (duty.kind, duty.plan_version) == ("info_section_response", B)
        assert duty.deadline == up.at + timedelta(hours=1)


async def test_a_grade_from_before_versions_were_recorded_opens_the_duties_in_force(
    tmp_path: Path,
) -> None:
    mongo, up, clock = FakeMongo(), Upstream(), Clock(T0)
    async with notification(mongo, tmp_path, FOURTIER, clock) as service:
        with capture_logs() as logs:
            await service.consume(up.opened("inc-e"), up.graded("inc-e", 4, None))
        duty = (await opened(service, "inc-e"))["section_handling"]
        assert duty.plan_version == A
        assert not [e for e in logs if "plan version" in e["event"]]


async def test_duties_changed_under_an_unchanged_version_stop_the_start(tmp_path: Path) -> None:
    mongo, clock = FakeMongo(), Clock(T0)
    async with notification(mongo, tmp_path, FOURTIER, clock):
        pass
    with pytest.raises(PlanError, match=rf"plan 'fourtier' version '{A}' opened duties from"):
        async with notification(mongo, tmp_path, next_version(tmp_path, version=A), clock):
            pass
    # The version as it was still starts.
    async with notification(mongo, tmp_path, FOURTIER, clock):
        pass
