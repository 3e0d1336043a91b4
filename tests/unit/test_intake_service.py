"""Intake built through its composition root on the in-memory fakes: filing, matching,
the lifecycle, who may see and change what, and the races the runner decides again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.intake.bootstrap import IntakeParts, build
from services.intake.domain import LSH_BANDS, LSH_SCHEME, Incident
from services.intake.projections import REPORTS, UPKEEP, IntakeViews
from shared.repository import Repository
from shared.settings import CONFIG_DIR
from shared.store import Document, UnitOfWork
from shared.visibility import hidden
from tests.fakes.harness import FakeService, fake_service, fake_settings

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)


class Clock:
    """The time the service reads, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def intake(clock: Clock) -> AsyncIterator[FakeService]:
    settings = fake_settings(conflict_retry_attempts=3, conflict_retry_backoff_seconds=0)
    async with fake_service("intake", build, settings=settings, clock=clock) as service:
        yield service


@pytest.fixture
async def api(intake: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with intake.http() as client:
        yield client


def parts(intake: FakeService) -> IntakeParts:
    found = intake.parts
    assert isinstance(found, IntakeParts)
    return found


def report(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "central",
        "url": "https://news.example.com/2026/1121/a1.html",
        "title": "某校食堂饭菜变质引发家长质疑",
        "excerpt": "有家长在网上反映……",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "unit_ids": ["school-a"],
    }
    body.update(overrides)
    return body


OTHER_MATTER = {"title": "县道养护施工路段夜间无警示灯", "excerpt": "有司机反映夜间行车险些追尾。"}
SIMILAR = {"title": "【转】某校食堂饭菜变质，引发家长质疑！", "excerpt": "有家长在网上反映……"}
REASON = {"reason": "已平息"}


def monitor(intake: FakeService) -> dict[str, str]:
    return intake.token("monitor-chen", "school-a", "monitor")


def leader(intake: FakeService) -> dict[str, str]:
    return intake.token("leader-zhang", "county", "leader")


async def file(api: httpx.AsyncClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    resp = await api.post("/intake/v1/reports", json=report(**overrides), headers=headers)
    assert resp.status_code in (200, 201), resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def types(intake: FakeService, incident_id: str | None = None) -> list[str]:
    return [
        e.event_type
        for e in await intake.published()
        if incident_id is None or e.incident_id == incident_id
    ]


def not_found(kind: str, key: str) -> dict[str, Any]:
    error = hidden(kind, key)
    return {"error": {"code": error.code, "message": error.message, "details": error.details}}


# --------------------------------------------------------------------------- filing


async def test_a_report_opens_an_incident_stored_for_the_outbox(
    intake: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    resp = await api.post("/intake/v1/reports", json=report(), headers=monitor(intake))

    assert resp.status_code == 201, resp.text
    incident_id = resp.json()["incident_id"]
    events = await intake.published()
    assert [(e.event_type, e.stream_version) for e in events] == [
        ("IncidentOpened", 1),
        ("ReportReceived", 2),
    ]
    assert {e.stream_id for e in events} == {f"incident-{incident_id}"}
    assert {e.occurred_at for e in events} == {clock.now}
    assert events[1].actor.id == "monitor-chen"


async def test_a_report_reads_back_as_filed_without_its_matching_text(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    answer = await file(api, monitor(intake))

    got = await api.get(f"/intake/v1/reports/{answer['report_id']}", headers=monitor(intake))

    assert got.status_code == 200, got.text
    body = got.json()
    assert "text" not in body
    assert body["incident_id"] == answer["incident_id"]
    assert body["filed_by"] == "monitor-chen"
    assert body["match"] is None
    assert body["published_at"].startswith("2026-11-21T00:00:00")  # kept in UTC
    assert body["actor"] == {"type": "person", "id": "monitor-chen", "unit_id": "school-a"}
    incident = await api.get(
        f"/intake/v1/incidents/{answer['incident_id']}", headers=leader(intake)
    )
    assert incident.status_code == 200, incident.text
    assert incident.json()["status"] == "open"
    assert incident.json()["version"] == 2
    assert [h["status"] for h in incident.json()["history"]] == ["opened"]
    assert [r["report_id"] for r in incident.json()["reports"]] == [answer["report_id"]]


async def test_the_same_link_and_a_look_alike_join_the_incident_saying_why(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    first = await file(api, monitor(intake))
    same_link = await file(
        api, leader(intake), url="http://NEWS.example.com/2026/1121/a1.html/?utm_source=wx"
    )
    look_alike = await file(api, monitor(intake), url="https://bbs.example.org/t/1", **SIMILAR)
    unrelated = await file(api, monitor(intake), url="https://bbs.example.org/t/2", **OTHER_MATTER)

    assert same_link["incident_id"] == look_alike["incident_id"] == first["incident_id"]
    assert same_link["new_incident"] is False
    assert look_alike["new_incident"] is False
    assert unrelated["new_incident"] is True
    assert unrelated["incident_id"] != first["incident_id"]
    view = (
        await api.get(f"/intake/v1/incidents/{first['incident_id']}", headers=leader(intake))
    ).json()
    matches = [(r["match"], r["score"]) for r in view["reports"]]
    assert matches[:2] == [(None, None), ("same_url", None)]
    match, score = matches[2]
    assert match == "similar_text"
    assert parts(intake).policy.similar_text.threshold <= score < 1


async def file_look_alike(
    api: httpx.AsyncClient, intake: FakeService, clock: Clock
) -> dict[str, Any]:
    """A monitor's report reading like the usual one, seen now at another address."""
    return await file(
        api,
        monitor(intake),
        url="https://bbs.example.org/t/8",
        observed_at=clock.now.isoformat(),
        **SIMILAR,
    )


async def test_a_look_alike_filed_days_later_within_the_window_joins_the_incident(
    intake: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    """Look-alikes are asked for by the bands of each period of the window: one filed
    three days (a minute short of the window) after the first still finds it."""
    first = await file(api, monitor(intake))
    clock.advance(hours=parts(intake).policy.similar_text.window_hours, minutes=-1)
    assert clock.now.date() != T0.date()

    later = await file_look_alike(api, intake, clock)

    assert (later["incident_id"], later["new_incident"]) == (first["incident_id"], False)


@pytest.mark.parametrize("midnight", [1, 2, 3])
async def test_a_look_alike_filed_just_after_a_midnight_joins_the_one_filed_just_before(
    intake: FakeService, api: httpx.AsyncClient, clock: Clock, midnight: int
) -> None:
    """Bands are kept by period of some days; one of three midnights in a row ends one."""
    before = datetime.combine(T0.date() + timedelta(days=midnight), datetime.min.time(), UTC)
    clock.advance(seconds=(before - clock.now).total_seconds() - 60)
    first = await file(api, monitor(intake), observed_at=clock.now.isoformat())
    clock.advance(minutes=2)

    later = await file_look_alike(api, intake, clock)

    assert (later["incident_id"], later["new_incident"]) == (first["incident_id"], False)


async def test_a_look_alike_filed_after_the_window_opens_its_own_incident(
    intake: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    first = await file(api, monitor(intake))
    clock.advance(hours=parts(intake).policy.similar_text.window_hours, minutes=1)

    late = await file(
        api,
        monitor(intake),
        url="https://bbs.example.org/t/9",
        observed_at=clock.now.isoformat(),
        **SIMILAR,
    )

    assert late["new_incident"] is True
    assert late["incident_id"] != first["incident_id"]


async def test_a_resolved_incident_reopens_within_the_window_and_not_after(
    intake: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    incident = (await file(api, monitor(intake)))["incident_id"]
    resolved = await api.post(
        f"/intake/v1/incidents/{incident}/resolve", json=REASON, headers=leader(intake)
    )
    assert resolved.status_code == 200, resolved.text
    window = parts(intake).policy.reopen_window

    clock.advance(seconds=window.total_seconds())
    inside = await file(api, monitor(intake))
    assert inside["incident_id"] == incident
    assert (await types(intake, incident))[-4:] == [
        "IncidentResolved",
        "IncidentReopened",
        "ReportReceived",
        "ReportAttached",
    ]

    await api.post(f"/intake/v1/incidents/{incident}/resolve", json=REASON, headers=leader(intake))
    clock.advance(seconds=window.total_seconds() + 1)
    outside = await file(api, monitor(intake))
    assert outside["new_incident"] is True
    assert outside["incident_id"] != incident
    # The link now leads to the new incident.
    again = await file(api, monitor(intake), **OTHER_MATTER)
    assert again["incident_id"] == outside["incident_id"]


async def test_who_may_file_for_which_units(intake: FakeService, api: httpx.AsyncClient) -> None:
    other_unit = await api.post(
        "/intake/v1/reports", json=report(unit_ids=["school-b"]), headers=monitor(intake)
    )
    assert other_unit.status_code == 403
    analyst = intake.token("analyst-zhao", "county", "analyst")
    assert (await api.post("/intake/v1/reports", json=report(), headers=analyst)).status_code == 403
    unknown = await api.post(
        "/intake/v1/reports", json=report(unit_ids=["no-such-unit"]), headers=leader(intake)
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"]["details"] == [
        {"field": "unit_ids", "reason": "unknown units: no-such-unit", "type": "unknown_unit"}
    ]
    assert await intake.published() == []
    county = await api.post(
        "/intake/v1/reports", json=report(unit_ids=["school-a", "road-1"]), headers=leader(intake)
    )
    assert county.status_code == 201, county.text


async def test_an_observation_ahead_of_the_clock_beyond_the_skew_is_refused(
    intake: FakeService, api: httpx.AsyncClient, clock: Clock
) -> None:
    skew = parts(intake).policy.clock_skew
    ahead = (clock.now + skew + timedelta(seconds=1)).isoformat()
    within = (clock.now + skew).isoformat()

    refused = await api.post(
        "/intake/v1/reports", json=report(observed_at=ahead), headers=monitor(intake)
    )
    accepted = await api.post(
        "/intake/v1/reports", json=report(observed_at=within), headers=monitor(intake)
    )

    assert refused.status_code == 422
    assert [d["field"] for d in refused.json()["error"]["details"]] == ["observed_at"]
    assert accepted.status_code == 201, accepted.text


async def test_a_retry_with_one_key_gets_the_first_answer_and_stores_nothing_twice(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    headers = {**monitor(intake), "Idempotency-Key": "retry-1"}
    first = await api.post("/intake/v1/reports", json=report(), headers=headers)
    again = await api.post("/intake/v1/reports", json=report(), headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(await intake.published()) == 2
    reused = await api.post("/intake/v1/reports", json=report(title="另一件事"), headers=headers)
    assert reused.status_code == 409
    assert reused.json()["error"]["details"] == {"idempotency_key": "retry-1"}


# --------------------------------------------------------------------------- lifecycle


async def test_the_lifecycle_and_its_illegal_steps(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    incident = (await file(api, monitor(intake)))["incident_id"]
    base = f"/intake/v1/incidents/{incident}"

    by_monitor = await api.post(f"{base}/resolve", json=REASON, headers=monitor(intake))
    assert by_monitor.status_code == 403
    resolved = await api.post(f"{base}/resolve", json=REASON, headers=leader(intake))
    assert resolved.json() == {"incident_id": incident, "status": "resolved", "version": 3}

    twice = await api.post(f"{base}/dismiss", json={"reason": "伪"}, headers=leader(intake))
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "illegal_transition"
    assert twice.json()["error"]["details"] == {"status": "resolved", "action": "dismissed"}

    office = intake.token("office-li", "county", "office")
    reopened = await api.post(f"{base}/reopen", json={"reason": "再次发酵"}, headers=office)
    assert reopened.json()["status"] == "open"
    dismissed = await api.post(f"{base}/dismiss", json={"reason": "网络伪舆情"}, headers=office)
    assert dismissed.json()["status"] == "dismissed"
    # A dismissed pseudo-incident keeps what is filed about it and stays dismissed.
    again = await file(api, monitor(intake))
    assert again["incident_id"] == incident
    view = (await api.get(base, headers=leader(intake))).json()
    assert view["status"] == "dismissed"
    assert [(h["status"], h["reason"]) for h in view["history"]] == [
        ("opened", None),
        ("resolved", "已平息"),
        ("open", "再次发酵"),
        ("dismissed", "网络伪舆情"),
    ]
    assert view["history"][-1]["actor"]["id"] == "office-li"


async def test_only_a_caller_acting_for_every_unit_changes_an_incident(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    incident = (await file(api, leader(intake), unit_ids=["school-a", "road-1"]))["incident_id"]
    school_leader = intake.token("leader-a", "school-a", "leader")

    sees = await api.get(f"/intake/v1/incidents/{incident}", headers=school_leader)
    partial = await api.post(
        f"/intake/v1/incidents/{incident}/resolve", json=REASON, headers=school_leader
    )

    assert sees.status_code == 200
    assert partial.status_code == 403
    assert "IncidentResolved" not in await types(intake, incident)


# --------------------------------------------------------------------------- visibility


ROUTES = [
    ("get", "/intake/v1/reports/{id}", "report"),
    ("get", "/intake/v1/incidents/{id}", "incident"),
    ("post", "/intake/v1/incidents/{id}/resolve", "incident"),
    ("post", "/intake/v1/incidents/{id}/dismiss", "incident"),
    ("post", "/intake/v1/incidents/{id}/reopen", "incident"),
]


@pytest.mark.parametrize(("method", "route", "kind"), ROUTES)
@pytest.mark.parametrize(
    "outsider",
    [
        ("leader-b", "school-b", "leader"),  # may change incidents, but not this unit's
        ("monitor-b", "school-b", "monitor"),  # the 404 comes before the role check
        ("partner-other", "county", "partner", "admin"),  # a partner that did not refer it
    ],
)
async def test_another_units_id_answers_exactly_like_an_unknown_one(
    intake: FakeService,
    api: httpx.AsyncClient,
    method: str,
    route: str,
    kind: str,
    outsider: tuple[str, ...],
) -> None:
    answer = await file(api, monitor(intake))
    real = answer["report_id"] if kind == "report" else answer["incident_id"]
    unknown = f"{kind[:3]}-{uuid.uuid4().hex[:12]}"
    headers = intake.token(*outsider)
    before = len(await intake.published())

    async def ask(key: str) -> httpx.Response:
        url = route.format(id=key)
        if method == "get":
            return await api.get(url, headers=headers)
        return await api.post(url, json={"reason": "x"}, headers=headers)

    theirs, nobodys = await ask(real), await ask(unknown)

    assert (theirs.status_code, nobodys.status_code) == (404, 404)
    assert theirs.json() == not_found(kind, real)
    assert nobodys.json() == not_found(kind, unknown)
    assert len(await intake.published()) == before


async def test_a_partner_sees_what_it_referred(intake: FakeService, api: httpx.AsyncClient) -> None:
    partner = intake.token("partner-wxb", "county", "partner")
    answer = await file(api, partner, source_type="referral")

    report_view = await api.get(f"/intake/v1/reports/{answer['report_id']}", headers=partner)
    incident_view = await api.get(f"/intake/v1/incidents/{answer['incident_id']}", headers=partner)

    assert report_view.status_code == 200, report_view.text
    assert report_view.json()["actor"]["type"] == "client"
    assert incident_view.status_code == 200, incident_view.text
    assert incident_view.json()["filed_by"] == ["partner-wxb"]
    # A monitor's report of the same URL does not join the referral (the partner's own):
    # it opens the school's incident, which the partner does not see.
    theirs = await file(api, monitor(intake))
    assert theirs["incident_id"] != answer["incident_id"]
    hidden_report = await api.get(f"/intake/v1/reports/{theirs['report_id']}", headers=partner)
    assert hidden_report.json() == not_found("report", theirs["report_id"])


# --------------------------------------------------------------------------- races


async def test_a_url_claimed_meanwhile_is_decided_again_and_joins_the_claimant(
    intake: FakeService, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await file(api, monitor(intake))
    views = parts(intake).views
    real_claims = views.claims
    seen: list[bool] = []

    async def read_before_the_claim(*args: Any) -> dict[str, str]:
        # The first reading misses the claim, as if the other filing had not committed yet.
        claims = await real_claims(*args)
        seen.append(bool(claims))
        return claims if len(seen) > 1 else {}

    monkeypatch.setattr(views, "claims", read_before_the_claim)

    resp = await api.post(
        "/intake/v1/reports", json=report(**OTHER_MATTER), headers=monitor(intake)
    )

    assert resp.status_code == 200, resp.text
    assert resp.json()["incident_id"] == first["incident_id"]
    assert seen == [True, True]  # decided twice
    assert (await types(intake)).count("IncidentOpened") == 1


async def test_a_claim_that_keeps_being_lost_answers_409_and_stores_nothing(
    intake: FakeService, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await file(api, monitor(intake))
    stored = len(await intake.published())

    async def never_sees_the_claim(*_: Any) -> dict[str, str]:
        return {}

    monkeypatch.setattr(parts(intake).views, "claims", never_sees_the_claim)

    resp = await api.post(
        "/intake/v1/reports", json=report(**OTHER_MATTER), headers=monitor(intake)
    )

    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "conflict_retry_exhausted"
    assert len(await intake.published()) == stored


async def test_a_change_decided_on_a_stale_incident_is_decided_again(
    intake: FakeService, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident = (await file(api, monitor(intake)))["incident_id"]
    await file(api, monitor(intake))  # attached: the stream is at version 4
    incidents: Repository[Incident] = parts(intake).commands.incidents
    loads: list[int] = []

    async def stale_once(uow: UnitOfWork, key: str) -> Incident | None:
        events = await uow.load(incidents.stream_of(key))
        loads.append(len(events))
        # The first decision is taken on the incident as it was before the attachment.
        return incidents.fold(events[:2] if len(loads) == 1 else events)

    monkeypatch.setattr(incidents, "get", stale_once)

    resp = await api.post(
        f"/intake/v1/incidents/{incident}/dismiss", json=REASON, headers=leader(intake)
    )

    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 5
    assert loads == [4, 4]
    assert (await types(intake, incident)).count("IncidentDismissed") == 1


async def test_a_retry_racing_its_own_first_attempt_gets_the_remembered_answer(
    intake: FakeService, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {**monitor(intake), "Idempotency-Key": "race-1"}
    first = await api.post("/intake/v1/reports", json=report(), headers=headers)
    views: IntakeViews = parts(intake).views
    real_remembered = views.remembered
    reads: list[bool] = []

    async def not_yet_committed(*args: Any) -> Document | None:
        # The first reading misses the answer, as if the first attempt were still running.
        found = await real_remembered(*args)
        reads.append(found is not None)
        return found if len(reads) > 1 else None

    monkeypatch.setattr(views, "remembered", not_yet_committed)

    again = await api.post("/intake/v1/reports", json=report(), headers=headers)

    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert reads == [True, True]
    assert len(await intake.published()) == 2


async def test_a_look_alike_is_found_behind_more_recent_reports_than_are_compared(
    tmp_path: Path, clock: Clock
) -> None:
    # Only reports sharing a text band with the new one are candidates, so the look-alike
    # of a report filed before `max_compared` others about the unit still joins it.
    policy = tmp_path / "intake.yaml"
    policy.write_text(
        (CONFIG_DIR / "intake.yaml")
        .read_text(encoding="utf-8")
        .replace("max_compared: 300", "max_compared: 3"),
        encoding="utf-8",
    )
    settings = fake_settings(intake_policy_path=policy)
    async with fake_service("intake", build, settings=settings, clock=clock) as intake:
        assert parts(intake).policy.similar_text.max_compared == 3
        async with intake.http() as api:
            first = await file(api, monitor(intake))
            for n in range(5):
                await file(
                    api,
                    monitor(intake),
                    url=f"https://bbs.example.org/other/{n}",
                    title=f"第{n}号路段积水严重影响通行",
                    excerpt=f"市民反映第{n}号路段排水不畅。",
                )
            look_alike = await file(
                api, monitor(intake), url="https://bbs.example.org/t/1", **SIMILAR
            )

    assert (look_alike["incident_id"], look_alike["new_incident"]) == (first["incident_id"], False)


@pytest.mark.parametrize(
    "stored_before",
    [
        pytest.param({"$unset": {"bands": "", "period_bands": "", "lsh": ""}}, id="unbanded"),
        # Banded 20 x 3 by day before the scheme was stored: bands a new filing never asks for.
        pytest.param(
            {
                "$set": {
                    "bands": [f"{i}:000000000000" for i in range(20)],
                    "day_bands": [f"{T0.date()}|{i}:000000000000" for i in range(20)],
                },
                "$unset": {"lsh": "", "period_bands": ""},
            },
            id="another-scheme",
        ),
    ],
)
async def test_a_report_stored_before_text_bands_is_banded_at_start_and_compared(
    intake: FakeService, api: httpx.AsyncClient, stored_before: dict[str, object]
) -> None:
    first = await file(api, monitor(intake))
    await intake.db[REPORTS].update_many({}, stored_before)
    await intake.db[UPKEEP].delete_many({})  # what a store of that time holds
    for step in intake.parts.setup:  # the service starting again on that database
        await step()
    stored = await intake.db[REPORTS].find_one({"_id": first["report_id"]}) or {}
    assert len(stored.get("bands", [])) == LSH_BANDS
    assert len(stored.get("period_bands", [])) == LSH_BANDS
    assert str(stored.get("lsh")).startswith(LSH_SCHEME)
    assert "day_bands" not in stored

    look_alike = await file(api, monitor(intake), url="https://bbs.example.org/t/1", **SIMILAR)
    unrelated = await file(api, monitor(intake), url="https://bbs.example.org/t/2", **OTHER_MATTER)

    assert (look_alike["incident_id"], look_alike["new_incident"]) == (first["incident_id"], False)
    assert unrelated["new_incident"] is True


# --------------------------------------------------------------------------- partners


def partner(intake: FakeService) -> dict[str, str]:
    return intake.token("partner-wxb", "county", "partner")


def office(intake: FakeService) -> dict[str, str]:
    return intake.token("office-li", "county", "office")


PARTNER_CLAIM = {"source_type": "referral", "media_tier": "central", "reach": {"views": 10}}


async def incident_doc(
    api: httpx.AsyncClient, intake: FakeService, incident_id: str
) -> dict[str, Any]:
    got = await api.get(f"/intake/v1/incidents/{incident_id}", headers=leader(intake))
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


async def refer(api: httpx.AsyncClient, intake: FakeService, **overrides: Any) -> httpx.Response:
    return await api.post(
        "/intake/v1/reports",
        json=report(**{**PARTNER_CLAIM, **overrides}),
        headers=partner(intake),
    )


async def test_a_partners_report_matching_a_schools_incident_opens_a_referral_of_its_own(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    school = await file(api, monitor(intake), media_tier="county")
    before = await incident_doc(api, intake, school["incident_id"])

    referred = await refer(api, intake)

    assert referred.status_code == 201, referred.text
    answer = referred.json()
    assert answer["referral"] is True
    assert answer["new_incident"] is True
    assert answer["incident_id"] != school["incident_id"]
    assert await incident_doc(api, intake, school["incident_id"]) == before
    assert await types(intake, school["incident_id"]) == ["IncidentOpened", "ReportReceived"]
    assert await types(intake, answer["incident_id"]) == [
        "IncidentOpened",
        "ReportReceived",
        "ReferralOpened",
    ]
    (opened_referral,) = await intake.published("ReferralOpened")
    assert opened_referral.payload.model_dump()["matched_incident_ids"] == (school["incident_id"],)
    referral = await incident_doc(api, intake, answer["incident_id"])
    assert referral["referral"]["matched_incident_ids"] == [school["incident_id"]]
    assert referral["referral"]["referred_by"] == "partner-wxb"
    assert referral["reports"][0]["claims_unconfirmed"] is True
    # The school's incident stays out of the partner's sight.
    theirs = await api.get(f"/intake/v1/incidents/{school['incident_id']}", headers=partner(intake))
    assert theirs.json() == not_found("incident", school["incident_id"])
    # The URL still leads the school's own people to the school's incident.
    again = await file(api, monitor(intake))
    assert again["incident_id"] == school["incident_id"]


async def test_a_partner_neither_reopens_nor_adds_units_to_an_incident(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    school = await file(api, monitor(intake))
    resolve = f"/intake/v1/incidents/{school['incident_id']}/resolve"
    assert (await api.post(resolve, json=REASON, headers=leader(intake))).status_code == 200
    own = (await refer(api, intake, url="https://bbs.example.org/own")).json()

    reopening = await refer(api, intake)
    widening = await refer(
        api, intake, url="https://bbs.example.org/own", unit_ids=["school-a", "road-1"]
    )

    assert reopening.status_code == widening.status_code == 201
    assert reopening.json()["referral"]
    assert widening.json()["referral"]
    assert "IncidentReopened" not in await types(intake)
    resolved = await incident_doc(api, intake, school["incident_id"])
    assert (resolved["status"], resolved["unit_ids"]) == ("resolved", ["school-a"])
    assert (await incident_doc(api, intake, own["incident_id"]))["unit_ids"] == ["school-a"]
    # Its own open referral, about the same units, it does join.
    joined = await refer(api, intake, url="https://bbs.example.org/own")
    assert (joined.status_code, joined.json()["incident_id"]) == (200, own["incident_id"])
    # Nor does it move an incident through its lifecycle, its own referral included.
    for action in ("resolve", "dismiss"):
        moved = await api.post(
            f"/intake/v1/incidents/{own['incident_id']}/{action}",
            json=REASON,
            headers=intake.token("partner-wxb", "county", "partner", "leader"),
        )
        assert moved.status_code == 403, moved.text


async def test_the_office_merges_a_referral_and_the_partner_sees_only_its_own_part(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    school = await file(api, monitor(intake), media_tier="county")
    answer = (await refer(api, intake)).json()
    merge = f"/intake/v1/incidents/{answer['incident_id']}/merge"
    body = {"into": school["incident_id"], "reason": "同一事项，并入学校事件"}

    for who, status in [
        (partner(intake), 403),  # it sees its referral, but may not merge
        (intake.token("partner-wxb", "county", "partner", "office"), 403),
        (monitor(intake), 403),
        (leader(intake), 403),
        (intake.token("office-b", "school-b", "office"), 404),  # neither is in its sight
    ]:
        refused = await api.post(merge, json=body, headers=who)
        assert refused.status_code == status, (who, refused.text)
    assert "ReferralMerged" not in await types(intake)

    merged = await api.post(merge, json=body, headers=office(intake))

    assert merged.status_code == 200, merged.text
    assert merged.json()["referral"]["status"] == "resolved"
    assert await types(intake, answer["incident_id"]) == [
        "IncidentOpened",
        "ReportReceived",
        "ReferralOpened",
        "ReferralMerged",
        "IncidentResolved",
    ]
    assert await types(intake, school["incident_id"]) == [
        "IncidentOpened",
        "ReportReceived",
        "ReportReceived",
        "ReportAttached",
    ]
    target = await incident_doc(api, intake, school["incident_id"])
    assert (target["status"], target["unit_ids"]) == ("open", ["school-a"])
    assert target["filed_by"] == ["monitor-chen", "partner-wxb"]
    assert [(r["report_id"], r["match"]) for r in target["reports"]] == [
        (school["report_id"], None),
        (answer["report_id"], "merged_referral"),
    ]
    referral = await incident_doc(api, intake, answer["incident_id"])
    assert referral["referral"]["merged_into"] == school["incident_id"]
    assert referral["referral"]["merge_reason"] == body["reason"]
    # The partner: the outcome of its referral, and of the school's incident only its own.
    seen = await api.get(f"/intake/v1/incidents/{answer['incident_id']}", headers=partner(intake))
    assert seen.status_code == 200, seen.text
    assert seen.json()["sight"] == "referred"
    assert (seen.json()["status"], seen.json()["merged_into"]) == (
        "resolved",
        school["incident_id"],
    )
    assert seen.json()["resolved_at"] is not None
    there = await api.get(f"/intake/v1/incidents/{school['incident_id']}", headers=partner(intake))
    assert there.status_code == 200, there.text
    assert there.json()["sight"] == "referred"
    assert [r["report_id"] for r in there.json()["reports"]] == [answer["report_id"]]
    assert there.json()["filed_by"] == ["partner-wxb"]
    assert "history" not in there.json()
    assert "level" not in there.json()  # intake grades nothing: the level is grading's
    assert "unit_ids" not in there.json()
    theirs = await api.get(f"/intake/v1/reports/{school['report_id']}", headers=partner(intake))
    assert theirs.json() == not_found("report", school["report_id"])
    own = await api.get(f"/intake/v1/reports/{answer['report_id']}", headers=partner(intake))
    assert own.json()["incident_id"] == school["incident_id"]
    assert own.json()["match"] is None  # why intake put it there is the bureau's reasoning
    as_office = await api.get(f"/intake/v1/reports/{answer['report_id']}", headers=office(intake))
    assert as_office.json()["match"] == "merged_referral"
    # Merged once; a merged referral is not reopened, nor merged again.
    again = await api.post(merge, json=body, headers=office(intake))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "not_mergeable")
    reopen = f"/intake/v1/incidents/{answer['incident_id']}/reopen"
    refused = await api.post(reopen, json=REASON, headers=office(intake))
    assert refused.status_code == 409, refused.text
    # Its URL, filed again by the partner, now joins the incident it sees.
    follow_up = await refer(api, intake)
    assert (follow_up.status_code, follow_up.json()["incident_id"]) == (200, school["incident_id"])


async def test_only_a_referral_is_merged_and_only_into_an_incident_in_sight(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    school = await file(api, monitor(intake))
    answer = (await refer(api, intake, url="https://bbs.example.org/x")).json()
    unknown = f"inc-{uuid.uuid4().hex[:12]}"

    not_referral = await api.post(
        f"/intake/v1/incidents/{school['incident_id']}/merge",
        json={"into": answer["incident_id"], "reason": "x"},
        headers=office(intake),
    )
    into_unknown = await api.post(
        f"/intake/v1/incidents/{answer['incident_id']}/merge",
        json={"into": unknown, "reason": "x"},
        headers=office(intake),
    )
    extra = await api.post(
        f"/intake/v1/incidents/{answer['incident_id']}/merge",
        json={"into": school["incident_id"], "reason": "x", "grant": "all"},
        headers=office(intake),
    )

    assert (not_referral.status_code, not_referral.json()["error"]["code"]) == (
        409,
        "not_mergeable",
    )
    assert into_unknown.json() == not_found("incident", unknown)
    assert extra.status_code == 422
    assert "ReferralMerged" not in await types(intake)


async def test_the_office_confirms_a_partners_claims_once_and_it_is_recorded(
    intake: FakeService, api: httpx.AsyncClient
) -> None:
    answer = (await refer(api, intake)).json()
    confirm = f"/intake/v1/reports/{answer['report_id']}/confirm-claims"
    claimed = await api.get(f"/intake/v1/reports/{answer['report_id']}", headers=office(intake))
    assert (claimed.json()["media_tier"], claimed.json()["claims_unconfirmed"]) == ("central", True)

    by_partner = await api.post(confirm, json=REASON, headers=partner(intake))
    by_leader = await api.post(confirm, json=REASON, headers=leader(intake))
    confirmed = await api.post(
        confirm, json={"reason": "已核实为人民网报道"}, headers=office(intake)
    )
    twice = await api.post(confirm, json=REASON, headers=office(intake))

    assert (by_partner.status_code, by_leader.status_code) == (403, 403)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["incident_id"] == answer["incident_id"]
    assert (twice.status_code, twice.json()["error"]["code"]) == (409, "claims_not_pending")
    (event,) = await intake.published("ReportClaimsConfirmed")
    assert event.payload.model_dump() == {
        "report_id": answer["report_id"],
        "media_tier": "central",
        "reach": {"views": 10, "reposts": 0, "comments": 0, "likes": 0},
        "reason": "已核实为人民网报道",
        "confirmed_by": "office-li",
    }
    shown = (
        await api.get(f"/intake/v1/reports/{answer['report_id']}", headers=office(intake))
    ).json()
    assert shown["claims_unconfirmed"] is False
    assert shown["claims_confirmed"]["confirmed_by"] == "office-li"
    monitors = await file(api, monitor(intake), url="https://bbs.example.org/m", **OTHER_MATTER)
    facts = await api.post(
        f"/intake/v1/reports/{monitors['report_id']}/confirm-claims",
        json=REASON,
        headers=office(intake),
    )
    assert facts.status_code == 409  # a monitor's report states no claims to confirm


@pytest.mark.parametrize(
    ("reach", "field"),
    [
        ({"views": 10**12}, "reach.views"),
        ({"reposts": 2 * 10**9}, "reach.reposts"),
        ({"comments": 2 * 10**9}, "reach.comments"),
        ({"likes": -1}, "reach.likes"),
    ],
)
async def test_reach_beyond_its_plausible_bound_is_refused_naming_the_field(
    intake: FakeService, api: httpx.AsyncClient, reach: dict[str, int], field: str
) -> None:
    refused = await refer(api, intake, media_tier="self_media", reach=reach)

    assert refused.status_code == 422, refused.text
    assert field in [d["field"] for d in refused.json()["error"]["details"]]
    assert await intake.published() == []
