"""What `yuqing up` prints for the person at the terminal: in development the demo
passwords and an administrator's token that works; in production no token at all (its
logs are collected, and tokens are minted with `yuqing token` by whoever holds the key)."""

from __future__ import annotations

import secrets
from pathlib import Path

from services.cli import credentials_announced
from shared.auth import TokenService
from shared.directory import Directory
from shared.identity import Role
from shared.settings import Settings


def settings(tmp_path: Path, environment: str) -> Settings:
    return Settings(
        environment=environment,
        secret=secrets.token_urlsafe(48),
        bus_secret=secrets.token_urlsafe(48),
        data_dir=tmp_path,
    )


def test_development_prints_the_demo_passwords_and_a_working_admin_token(tmp_path: Path) -> None:
    given = settings(tmp_path, "development")
    tokens = TokenService.from_settings(given)
    person = Directory.load(given.directory_path).people[0]

    lines = credentials_announced(given, tokens, [(person, "pw-1"), (person, None)])

    assert lines[0] == f"YUQING_PASSWORD={person.id}:pw-1"
    assert len(lines) == 2
    token = lines[1].removeprefix("YUQING_TOKEN=")
    assert Role.ADMIN in tokens.verify(token).roles


def test_production_prints_no_token(tmp_path: Path) -> None:
    given = settings(tmp_path, "production")

    lines = credentials_announced(given, TokenService.from_settings(given), [])

    assert lines == []
