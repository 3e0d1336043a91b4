"""Plan versions pinned to incidents (services/grading/plan_versions.py), on grading built
through its composition root on the fakes: an incident first graded under one version of
the plan keeps being decided under it after the service restarts on the next version; a
new incident and a reopened one are decided under the version in force; the archive shows
which version applied to each grade change."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from services.archive.bootstrap import build as build_archive
from services.grading.bootstrap import GradingParts, build
from services.grading.plan_versions import PLAN_VERSIONS
from shared.events import (
    Actor,
    DeadlineMissed,
    Envelope,
    EventPayload,
    IncidentDismissed,
    IncidentEscalated,
    IncidentGraded,
    IncidentOpened,
    IncidentReopened,
    Level,
    MediaTier,
    Reach,
    ReportClaimsConfirmed,
    ReportReceived,
    SourceType,
)
from shared.plan import PlanError, read_manifest
from shared.settings import CONFIG_DIR, Settings
from tests.fakes.harness import FakeService, fake_service, fake_settings
from tests.fakes.mongo import FakeMongo

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
HUANING = CONFIG_DIR / "plans" / "huaning"
V = read_manifest(HUANING).version  # the shipped Huaning pack's version
W = "2026.12-reach-10k"
RULEBOOK_V = yaml.safe_load((CONFIG_DIR / "rulebook.yaml").read_text(encoding="utf-8"))["version"]


def write(path: Path, data: object) -> None:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def next_version(tmp_path: Path, version: str = W) -> Path:
    """The Huaning pack with `version` and one rule changed: 10,000 views (not 100,000)
    make an incident level 2. The pack holds its own rulebook; the other files are
    config/'s, as the shipped pack points at them."""
    target = tmp_path / "huaning"
    shutil.copytree(HUANING, target)
    manifest = yaml.safe_load((target / "plan.yaml").read_text(encoding="utf-8"))
    manifest["version"] = version
    manifest["files"] = {
        name: str(CONFIG_DIR / f"{name}.yaml") for name in ("obligations", "approval", "catalogue")
    }
    write(target / "plan.yaml", manifest)
    rulebook = yaml.safe_load((CONFIG_DIR / "rulebook.yaml").read_text(encoding="utf-8"))
    rulebook["version"] = f"rulebook-{version}"
    (rule,) = [r for r in rulebook["reach"] if r["id"] == "reach-views-100k"]
    rule["at_least"] = 10000
    write(target / "rulebook.yaml", rulebook)
    return target


class Upstream:
    """Plays intake and notification, numbering each stream's events across restarts."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.reports = 0
        self.sent: list[Envelope] = []

    def event(self, incident_id: str, payload: EventPayload, stream: str = "incident") -> Envelope:
        key = f"{stream}-{incident_id}"
        self.versions[key] = self.versions.get(key, 0) + 1
        event = Envelope.new(
            payload,
            incident_id=incident_id,
            stream_id=key,
            stream_version=self.versions[key],
            actor=Actor(type="person", id="monitor-chen", unit_id="school-a"),
            unit_id="school-a",
            occurred_at=T0 + timedelta(minutes=len(self.sent)),
        )
        self.sent.append(event)
        return event

    def report(self, incident_id: str, views: int, *, claimed: bool = False) -> Envelope:
        self.reports += 1
        n = self.reports
        return self.event(
            incident_id,
            ReportReceived(
                report_id=f"rep-{n}",
                source_type=SourceType.NEWS,
                source_name="县级网站",
                media_tier=MediaTier.COUNTY,
                url=f"https://county.example.com/{n}",
                normalized_url=f"https://county.example.com/{n}",
                title="某校门口道路积水",
                excerpt="",
                author=None,
                published_at=T0,
                observed_at=T0,
                reach=Reach(views=views),
                unit_ids=("school-a",),
                filed_by="monitor-chen",
                claims_unconfirmed=claimed,
            ),
            stream="report",
        )

    def opened(self, incident_id: str) -> Envelope:
        title = "某校门口道路积水"
        first = f"rep-{self.reports}"
        return self.event(
            incident_id, IncidentOpened(title=title, unit_ids=("school-a",), first_report_id=first)
        )

    def missed(self, incident_id: str, level: Level) -> Envelope:
        return self.event(
            incident_id,
            DeadlineMissed(
                obligation_id=f"obl-{incident_id}-{len(self.sent)}",
                kind="first_report",
                level=level,
                deadline=T0 + timedelta(minutes=30),
                alerted_roles=("leader",),
            ),
            stream="obligation",
        )

    def confirmed(self, incident_id: str, report_id: str, views: int) -> Envelope:
        confirmation = ReportClaimsConfirmed(
            report_id=report_id,
            media_tier=MediaTier.COUNTY,
            reach=Reach(views=views),
            reason="已电话核实",
            confirmed_by="office-li",
        )
        return self.event(incident_id, confirmation)

    def dismissed_and_reopened(self, incident_id: str) -> list[Envelope]:
        return [
            self.event(incident_id, IncidentDismissed(reason="误报")),
            self.event(incident_id, IncidentReopened(reason="又有新的报道")),
        ]


@asynccontextmanager
async def grading(mongo: FakeMongo, settings: Settings) -> AsyncIterator[FakeService]:
    async with fake_service(
        "grading", build, settings=settings, mongo=mongo, clock=lambda: T0
    ) as s:
        yield s


async def decided(service: FakeService, incident_id: str) -> list[tuple[str, int, str | None, str]]:
    """(event type, level reached, plan version, rules fired) of the incident's grade events."""
    found = []
    for event in await service.published():
        payload = event.payload
        if event.incident_id != incident_id:
            continue
        if isinstance(payload, IncidentGraded):
            level = payload.level
        elif isinstance(payload, IncidentEscalated):
            level = payload.to_level
        else:
            continue
        rules = ",".join(r.rule_id for r in payload.rules_fired)
        found.append((event.event_type, int(level), payload.plan_version, rules))
    return found


async def test_an_open_incident_stays_on_the_version_it_was_graded_under(tmp_path: Path) -> None:
    mongo, up = FakeMongo(), Upstream()
    async with grading(mongo, fake_settings(tmp_path)) as before:
        assert isinstance(before.parts, GradingParts)
        assert before.parts.plans.plan.version == V
        await before.consume(up.report("inc-a", views=0), up.report("inc-c", views=0))
        assert await decided(before, "inc-a") == [
            ("IncidentGraded", 3, V, "level-default,category-default")
        ]

    # The pack moves to W (10,000 views make level 2) and the service restarts on it.
    async with grading(mongo, fake_settings(tmp_path, plan=next_version(tmp_path))) as after:
        assert isinstance(after.parts, GradingParts)
        assert after.parts.plans.plan.version == W
        # A stays on V: 50,000 more views raise nothing (under W they would) ...
        await after.consume(up.report("inc-a", views=50000))
        assert len(await decided(after, "inc-a")) == 1
        # ... until V's own bound, 100,000, is reached: the escalation says V.
        await after.consume(up.report("inc-a", views=60000))
        escalated = [
            e for e in await after.published("IncidentEscalated") if e.incident_id == "inc-a"
        ]
        assert len(escalated) == 1
        payload = escalated[0].payload
        assert isinstance(payload, IncidentEscalated)
        assert (payload.from_level, payload.to_level) == (3, 2)
        assert (payload.plan_id, payload.plan_version) == ("huaning", V)
        assert payload.rulebook_version == RULEBOOK_V
        assert "views=110000" in payload.reason

        # A new incident is graded under W, by W's rule.
        await after.consume(up.report("inc-b", views=50000))
        assert await decided(after, "inc-b") == [
            ("IncidentGraded", 2, W, "reach-views-100k,category-default")
        ]

        # C, graded under V, is dismissed and reopened: from then on it is decided under W.
        await after.consume(*up.dismissed_and_reopened("inc-c"), up.report("inc-c", views=50000))
        assert (await decided(after, "inc-c"))[1:] == [
            ("IncidentEscalated", 2, W, "reach-views-100k")
        ]

        # A reopened: its next escalation (a missed deadline) is under W too.
        await after.consume(*up.dismissed_and_reopened("inc-a"), up.missed("inc-a", 2))
        assert (await decided(after, "inc-a"))[2:] == [
            ("IncidentEscalated", 1, W, "mishandling-deadline-missed")
        ]
        grade = await after.parts.views.grade("inc-a")
        assert grade is not None
        assert (grade.level, grade.plan_version) == (1, W)

        stored = await after.db[PLAN_VERSIONS].find({}, sort=[("_id", 1)]).to_list(None)
        assert [(d["plan_id"], d["plan_version"]) for d in stored] == [
            ("huaning", V),
            ("huaning", W),
        ]
        assert {d["rulebook_version"] for d in stored} == {RULEBOOK_V, f"rulebook-{W}"}
        # Both runs' grade events, from grading's outbox (one database).
        graded = [e for e in await after.published() if e.incident_id == "inc-a"]

    # What the archive shows of A: each grade change with the version that applied.
    async with fake_service(
        "archive", build_archive, clock=lambda: T0 + timedelta(hours=1)
    ) as archive:
        upstream_a = [e for e in up.sent if e.incident_id == "inc-a"]
        opened = up.opened("inc-a")
        await archive.consume(upstream_a[0], opened, *upstream_a[1:], *graded)
        async with archive.http() as http:
            admin = archive.token("admin", "county", "admin")
            answer = await http.get("/archive/v1/incidents/inc-a", headers=admin)
        assert answer.status_code == 200, answer.text
        view = answer.json()
        assert [(g["change"], g["level"], g["plan_version"]) for g in view["grade_history"]] == [
            ("graded", 3, V),
            ("escalated", 2, V),
            ("escalated", 1, W),
        ]
        assert (view["plan_id"], view["plan_version"]) == ("huaning", V)


async def test_an_escalation_on_a_missed_deadline_stays_on_the_version_graded_under(
    tmp_path: Path,
) -> None:
    mongo, up = FakeMongo(), Upstream()
    async with grading(mongo, fake_settings(tmp_path)) as before:
        await before.consume(up.report("inc-a", views=0))
    async with grading(mongo, fake_settings(tmp_path, plan=next_version(tmp_path))) as after:
        await after.consume(up.missed("inc-a", 3))
        assert (await decided(after, "inc-a"))[1:] == [
            ("IncidentEscalated", 2, V, "mishandling-deadline-missed")
        ]
    # Restarted again on W: still V, from grading's own database.
    async with grading(mongo, fake_settings(tmp_path, plan=tmp_path / "huaning")) as again:
        await again.consume(up.missed("inc-a", 2))
        assert [d[:3] for d in await decided(again, "inc-a")] == [
            ("IncidentGraded", 3, V),
            ("IncidentEscalated", 2, V),
            ("IncidentEscalated", 1, V),
        ]


async def test_a_plan_changed_without_a_new_version_stops_the_start(tmp_path: Path) -> None:
    mongo, up = FakeMongo(), Upstream()
    async with grading(mongo, fake_settings(tmp_path)) as before:
        await before.consume(up.report("inc-a", views=0))
    same_version = next_version(tmp_path, version=V)
    with pytest.raises(PlanError, match=rf"plan 'huaning' version '{V}' was graded under"):
        async with grading(mongo, fake_settings(tmp_path, plan=same_version)):
            pass
    # The version as it was still starts.
    async with grading(mongo, fake_settings(tmp_path)) as again:
        await again.consume(up.report("inc-b", views=0))
        assert [d[:3] for d in await decided(again, "inc-b")] == [("IncidentGraded", 3, V)]


def confirmed_by_a_body(tmp_path: Path) -> Path:
    """The shipped Huaning pack, same version and rulebook, whose grade the office confirms."""
    target = tmp_path / "huaning-body"
    shutil.copytree(HUANING, target)
    manifest = yaml.safe_load((target / "plan.yaml").read_text(encoding="utf-8"))
    manifest["files"] = {
        name: str(CONFIG_DIR / f"{name}.yaml")
        for name in ("rulebook", "obligations", "approval", "catalogue")
    }
    manifest["grading"] = {"confirmed_by": "office"}
    write(target / "plan.yaml", manifest)
    return target


async def test_a_confirming_body_added_without_a_new_version_stops_the_start(
    tmp_path: Path,
) -> None:
    mongo, up = FakeMongo(), Upstream()
    async with grading(mongo, fake_settings(tmp_path)) as before:
        await before.consume(up.report("inc-a", views=0))
    with pytest.raises(PlanError, match="confirming body"):
        async with grading(mongo, fake_settings(tmp_path, plan=confirmed_by_a_body(tmp_path))):
            pass


async def test_an_incident_graded_before_pins_were_kept_stays_on_the_version_its_events_record(
    tmp_path: Path,
) -> None:
    mongo, up = FakeMongo(), Upstream()
    async with grading(mongo, fake_settings(tmp_path)) as before:
        await before.consume(up.report("inc-a", views=0))
        # As grading kept its facts before it pinned versions: no pin on the incident.
        await before.db["facts"].update_one(
            {"_id": "inc-a"}, {"$unset": {"plan_id": "", "plan_version": ""}}
        )
    async with grading(mongo, fake_settings(tmp_path, plan=next_version(tmp_path))) as after:
        await after.consume(up.report("inc-a", views=50000))
        assert len(await decided(after, "inc-a")) == 1  # V's bound is 100,000
        await after.consume(up.report("inc-a", views=60000))
        assert (await decided(after, "inc-a"))[1][:3] == ("IncidentEscalated", 2, V)


async def test_claims_confirmed_after_the_change_are_weighed_by_the_version_graded_under(
    tmp_path: Path,
) -> None:
    mongo, up = FakeMongo(), Upstream()
    async with grading(mongo, fake_settings(tmp_path)) as before:
        # A partner's report claiming 50,000 views, not yet confirmed: level 3 under V.
        await before.consume(up.report("inc-a", views=50000, claimed=True))
        assert [d[:3] for d in await decided(before, "inc-a")] == [("IncidentGraded", 3, V)]
    async with grading(mongo, fake_settings(tmp_path, plan=next_version(tmp_path))) as after:
        # Confirmed at 50,000: under W it would be level 2; under V it raises nothing ...
        await after.consume(up.confirmed("inc-a", f"rep-{up.reports}", 50000))
        assert len(await decided(after, "inc-a")) == 1
        # ... and a second partner report confirmed at 120,000 reaches V's bound.
        await after.consume(up.report("inc-a", views=70000, claimed=True))
        await after.consume(up.confirmed("inc-a", f"rep-{up.reports}", 70000))
        assert [d[:3] for d in await decided(after, "inc-a")][1:] == [("IncidentEscalated", 2, V)]
