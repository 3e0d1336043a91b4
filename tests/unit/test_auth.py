"""Tokens, and the one rule of who sees which incident."""

from __future__ import annotations

import argparse
from datetime import timedelta

import jwt
import pytest

from services.cli import parse_duration, parse_roles
from shared.auth import TokenService
from shared.directory import Directory
from shared.errors import NotFound, Unauthorized
from shared.identity import Caller, Role
from shared.settings import CONFIG_DIR
from shared.visibility import IncidentScope, Sight, Visibility

KEY = "unit-test-key-that-is-long-enough-for-hs256"


def tokens(ttl: timedelta = timedelta(hours=1)) -> TokenService:
    return TokenService(KEY, "yuqing", ttl)


def test_a_token_carries_subject_unit_and_roles() -> None:
    token = tokens().issue("monitor-chen", "school-a", [Role.MONITOR], name="陈管理员")

    caller = tokens().verify(token)

    assert caller.id == "monitor-chen"
    assert caller.unit == "school-a"
    assert caller.roles == frozenset({Role.MONITOR})
    assert caller.name == "陈管理员"
    assert caller.actor.type == "person"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (tokens(timedelta(seconds=-5)).issue("a", "county", [Role.ADMIN]), "expired"),
        (
            TokenService(
                "another-key-long-enough-for-hs256-xx", "yuqing", timedelta(hours=1)
            ).issue("a", "county", [Role.ADMIN]),
            "invalid token",
        ),
        (
            TokenService(KEY, "elsewhere", timedelta(hours=1)).issue("a", "county", [Role.ADMIN]),
            "invalid token",
        ),
        (jwt.encode({"sub": "a", "unit": "county"}, KEY, algorithm="HS256"), "invalid token"),
        ("not-a-token", "invalid token"),
    ],
)
def test_a_bad_token_is_refused_with_the_reason(token: str, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        tokens().verify(token)


def _caller(sub: str, unit: str, *roles: Role) -> Caller:
    return Caller(id=sub, unit=unit, roles=frozenset(roles))


def test_the_county_sees_its_units_a_school_only_itself_an_analyst_all() -> None:
    visibility = Visibility(Directory.load(CONFIG_DIR / "directory.yaml"))
    county = _caller("office-li", "county", Role.OFFICE)
    school = _caller("monitor-chen", "school-a", Role.MONITOR)
    analyst = _caller("analyst-zhao", "county", Role.ANALYST)

    assert visibility.units(county) == {"county", "school-a", "school-b", "road-1"}
    assert visibility.units(school) == {"school-a"}
    assert visibility.units(analyst) is None
    assert visibility.may_file_for(school, ["school-a"])
    assert not visibility.may_file_for(school, ["school-a", "school-b"])


def test_an_incident_is_seen_by_its_units_and_above_and_by_the_partner_that_referred_it() -> None:
    visibility = Visibility(Directory.load(CONFIG_DIR / "directory.yaml"))
    both = IncidentScope("inc-1", ("school-a", "school-b"), ("monitor-chen", "partner-wxb"))
    school_a = _caller("monitor-chen", "school-a", Role.MONITOR)
    road = _caller("monitor-lu", "road-1", Role.MONITOR)
    partner = _caller("partner-wxb", "county", Role.PARTNER)
    other_partner = _caller("partner-pcs", "county", Role.PARTNER)
    # A partner stays a partner whatever else its token carries.
    partner_admin = _caller("partner-pcs", "county", Role.PARTNER, Role.ADMIN)

    assert visibility.sight(school_a, both) is Sight.FULL  # one unit in common is enough
    assert visibility.sight(road, both) is Sight.NONE
    assert visibility.sight(partner, both) is Sight.REFERRED
    assert visibility.sight(other_partner, both) is Sight.NONE
    assert visibility.sight(partner_admin, both) is Sight.NONE
    assert visibility.sight(school_a, None) is Sight.NONE

    assert visibility.scope_filter(school_a) == {"unit_ids": {"$in": ["school-a"]}}
    assert visibility.scope_filter(partner_admin) == {"filed_by": "partner-pcs"}
    assert visibility.scope_filter(_caller("a", "county", Role.ANALYST)) == {}


def test_an_unseen_incident_and_an_unknown_one_answer_the_same() -> None:
    visibility = Visibility(Directory.load(CONFIG_DIR / "directory.yaml"))
    road = _caller("monitor-lu", "road-1", Role.MONITOR)
    partner = _caller("partner-wxb", "county", Role.PARTNER)
    school_incident = IncidentScope("inc-9", ("school-a",), ("partner-wxb",))

    with pytest.raises(NotFound) as other_unit:
        visibility.require(road, school_incident, "incident", "inc-9")
    with pytest.raises(NotFound) as unknown:
        visibility.require(road, None, "incident", "inc-9")
    assert (other_unit.value.message, other_unit.value.details) == (
        unknown.value.message,
        unknown.value.details,
    )
    # The bureau's internal records of a referred incident stay hidden from the partner.
    assert visibility.require(partner, school_incident, "incident", "inc-9") is Sight.REFERRED
    with pytest.raises(NotFound):
        visibility.require(partner, school_incident, "statement", "s-1", at_least=Sight.FULL)


def test_the_demo_organisation_has_one_person_per_role() -> None:
    directory = Directory.load(CONFIG_DIR / "directory.yaml")
    for role in Role:
        assert directory.people_with(role), role


def test_token_command_parses_durations_and_roles() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("8h") == timedelta(hours=8)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_roles("monitor, office") == [Role.MONITOR, Role.OFFICE]
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown role"):
        parse_roles("monitor,king")


def test_the_token_command_prints_a_token_the_services_accept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    monkeypatch.setenv("YUQING_SECRET", KEY)
    assert main(["token", "--sub", "monitor-chen", "--unit", "school-a", "--roles", "monitor"]) == 0
    caller = tokens().verify(capsys.readouterr().out.strip())
    assert (caller.id, caller.unit) == ("monitor-chen", "school-a")

    assert main(["token", "--sub", "x", "--unit", "atlantis", "--roles", "monitor"]) == 2
    assert "unknown unit 'atlantis'" in capsys.readouterr().err
