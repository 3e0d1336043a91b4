"""Tokens and who sees which units."""

from __future__ import annotations

import argparse
from datetime import timedelta

import jwt
import pytest

from services.cli import parse_duration, parse_roles
from shared.auth import Directory, Principal, Role, TokenService
from shared.errors import Unauthorized
from shared.settings import CONFIG_DIR

KEY = "unit-test-key-that-is-long-enough-for-hs256"


def tokens(ttl: timedelta = timedelta(hours=1)) -> TokenService:
    return TokenService(KEY, "yuqing", ttl)


def test_a_token_carries_subject_unit_and_roles() -> None:
    token = tokens().issue("monitor-chen", "school-a", [Role.MONITOR], name="陈管理员")

    principal = tokens().verify(token)

    assert principal.sub == "monitor-chen"
    assert principal.unit == "school-a"
    assert principal.roles == frozenset({Role.MONITOR})
    assert principal.actor.type == "person"


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


def test_the_county_sees_its_units_a_school_only_itself_an_analyst_all() -> None:
    directory = Directory.load(CONFIG_DIR / "directory.yaml")
    county = Principal(sub="office-li", unit="county", roles=frozenset({Role.OFFICE}))
    school = Principal(sub="monitor-chen", unit="school-a", roles=frozenset({Role.MONITOR}))
    analyst = Principal(sub="analyst-zhao", unit="county", roles=frozenset({Role.ANALYST}))

    assert directory.visible_units(county) == {"county", "school-a", "school-b", "road-1"}
    assert directory.visible_units(school) == {"school-a"}
    assert directory.visible_units(analyst) is None
    assert directory.can_act_for(school, ["school-a"])
    assert not directory.can_act_for(school, ["school-a", "school-b"])


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
    principal = tokens().verify(capsys.readouterr().out.strip())
    assert (principal.sub, principal.unit) == ("monitor-chen", "school-a")

    assert main(["token", "--sub", "x", "--unit", "atlantis", "--roles", "monitor"]) == 2
    assert "unknown unit 'atlantis'" in capsys.readouterr().err
