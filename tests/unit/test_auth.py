"""Tokens, and the one rule of who sees which incident."""

from __future__ import annotations

import argparse
import secrets
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest

from services.cli import parse_duration, parse_roles
from shared.auth import RevocationList, TokenService, TokenTooLong, WeakSecret, check_secret
from shared.directory import Directory
from shared.errors import NotFound, Unauthorized
from shared.identity import Caller, Role
from shared.service import Context
from shared.settings import CONFIG_DIR, Settings
from shared.visibility import IncidentScope, Sight, Visibility

KEY = "unit-test-key-that-is-long-enough-for-hs256"


def tokens(ttl: timedelta = timedelta(hours=1)) -> TokenService:
    return TokenService(KEY, "yuqing", ttl)


def _claims_token(drop: str, key: str = KEY) -> str:
    """A well-signed token of this deployment without the claim `drop`."""
    now = int(time.time())
    claims = {
        "sub": "a",
        "unit": "county",
        "roles": ["admin"],
        "iss": "yuqing",
        "aud": "yuqing",
        "jti": "j1",
        "iat": now,
        "exp": now + 600,
    }
    del claims[drop]
    return jwt.encode(claims, key, algorithm="HS256")


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
        (
            TokenService(KEY, "yuqing", timedelta(hours=1), audience="elsewhere").issue(
                "a", "county", [Role.ADMIN]
            ),
            "invalid token: Audience doesn't match",
        ),
        (_claims_token(drop="jti"), 'invalid token: Token is missing the "jti" claim'),
        (_claims_token(drop="aud"), 'invalid token: Token is missing the "aud" claim'),
        (
            # Signed with the right key, but it says it lives 100 years.
            TokenService(KEY, "yuqing", timedelta(hours=1), max_ttl=timedelta(days=36500)).issue(
                "a", "county", [Role.ADMIN], ttl=timedelta(days=36500)
            ),
            "lives longer than the maximum of 30 days",
        ),
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


def test_every_token_names_its_id_audience_and_issuer() -> None:
    token = tokens().issue("monitor-chen", "school-a", [Role.MONITOR])
    other = tokens().issue("monitor-chen", "school-a", [Role.MONITOR])

    claims = jwt.decode(token, KEY, algorithms=["HS256"], audience="yuqing")
    assert (claims["aud"], claims["iss"]) == ("yuqing", "yuqing")
    assert claims["jti"] != jwt.decode(other, KEY, algorithms=["HS256"], audience="yuqing")["jti"]


def test_no_token_is_minted_for_longer_than_the_maximum() -> None:
    service = TokenService(KEY, "yuqing", timedelta(hours=8), max_ttl=timedelta(days=30))

    with pytest.raises(TokenTooLong, match=r"at most 30 days .*36500 days was asked"):
        service.issue("a", "county", [Role.ADMIN], ttl=timedelta(days=36500))
    service.verify(service.issue("a", "county", [Role.ADMIN], ttl=timedelta(days=30)))


def test_a_revoked_token_is_refused_once_its_id_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "revoked-tokens"
    service = TokenService(KEY, "yuqing", timedelta(hours=1), revoked=RevocationList(path))
    kept = service.issue("a", "county", [Role.ADMIN])
    dropped = service.issue("b", "county", [Role.ADMIN])
    jti = service.claims(dropped)["jti"]
    service.verify(dropped)  # no file yet: nothing is revoked

    # Another process (or an operator) writes the file: this one re-reads it.
    path.write_text(f"# revoked tokens\n{jti}  # lost laptop\n")
    with pytest.raises(Unauthorized, match="token revoked"):
        service.verify(dropped)
    assert service.verify(kept).id == "a"

    # Taken out of the file again: the change is seen without a restart.
    path.write_text("# nothing revoked\n")
    assert service.verify(dropped).id == "b"


def test_the_signing_key_must_be_at_least_32_bytes() -> None:
    with pytest.raises(WeakSecret, match=r"YUQING_SECRET is 1 bytes long.*production") as stop:
        check_secret("x", production=True)
    assert isinstance(stop.value, SystemExit)  # the process stops with the message alone
    assert "YUQING_SECRET" in (check_secret("x", production=False) or "")  # warned
    assert check_secret(secrets.token_urlsafe(24), production=True) is None  # 32 random
    assert check_secret(secrets.token_hex(16), production=True) is None  # 32 hex digits


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("a" * 32, "repeats itself"),
        ("ab" * 32, "repeats itself"),
        ("REPLACE-ME-with-a-long-random-value", "placeholder"),  # k8s/base/secret.example.yaml
    ],
)
def test_a_long_key_that_is_not_random_stops_production_too(key: str, reason: str) -> None:
    with pytest.raises(WeakSecret, match=reason):
        check_secret(key, production=True)


def test_production_does_not_start_with_a_weak_secret(tmp_path: Path) -> None:
    weak = Settings(secret="x", environment="production", data_dir=tmp_path)
    with pytest.raises(WeakSecret, match="YUQING_SECRET"):
        Context.from_settings(weak)
    # Development starts, warned.
    Context.from_settings(Settings(secret="x", environment="development", data_dir=tmp_path))


def _cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret: str | None = KEY) -> None:
    monkeypatch.setenv("YUQING_DATA_DIR", str(tmp_path))
    if secret is None:
        monkeypatch.delenv("YUQING_SECRET", raising=False)
    else:
        monkeypatch.setenv("YUQING_SECRET", secret)


def test_the_token_command_refuses_a_lifetime_beyond_the_maximum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    _cli_env(monkeypatch, tmp_path)
    args = ["token", "--sub", "a", "--unit", "county", "--roles", "admin", "--ttl", "36500d"]
    assert main(args) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "error: a token lives at most 30 days (YUQING_TOKEN_MAX_TTL_SECONDS=2592000)" in out.err


def test_the_token_command_refuses_to_invent_a_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    _cli_env(monkeypatch, tmp_path, secret=None)
    assert main(["token", "--sub", "a", "--unit", "county", "--roles", "admin"]) == 2
    out = capsys.readouterr()
    assert (out.out, "error: no signing key: set YUQING_SECRET" in out.err) == ("", True)
    assert not (tmp_path / "secret.key").exists()

    # Where the services run (their key file is there), it mints with their key.
    (tmp_path / "secret.key").write_text(KEY)
    assert main(["token", "--sub", "a", "--unit", "county", "--roles", "admin"]) == 0
    assert tokens().verify(capsys.readouterr().out.strip()).id == "a"


def test_a_token_revoked_with_the_command_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    _cli_env(monkeypatch, tmp_path)
    assert main(["token", "--sub", "a", "--unit", "county", "--roles", "admin"]) == 0
    printed = capsys.readouterr()
    token = printed.out.strip()
    jti = jwt.decode(token, KEY, algorithms=["HS256"], audience="yuqing")["jti"]
    assert f"jti={jti}" in printed.err
    service = Context.from_settings(Settings()).tokens
    assert service.verify(token).id == "a"

    assert main(["token", "revoke", jti, "--reason", "离职"]) == 0
    assert f"revoked {jti}" in capsys.readouterr().out
    with pytest.raises(Unauthorized, match="token revoked"):
        service.verify(token)
    assert main(["token", "revoke", jti]) == 0
    assert "already revoked" in capsys.readouterr().out
