"""Configuration from the environment. No host, port, deadline or secret is a literal in code."""

from __future__ import annotations

import secrets
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAMES = ("intake", "grading", "notification", "statement", "archive")


def _config_dir() -> Path:
    """The shipped policy files and templates: `shared/config/` inside an installed wheel
    (package data, mapped from the checkout's config/ by pyproject.toml), else the
    checkout's own `config/`, which stays the one copy to edit."""
    packaged = Path(str(files("shared").joinpath("config")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "config"


CONFIG_DIR = _config_dir()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YUQING_", extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    public_base_url: str | None = None  # used in links sent to people; defaults to host:port
    data_dir: Path = Path("./data")
    environment: Literal["development", "production"] = "development"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    mongodb_url: str | None = Field(default=None, validation_alias=AliasChoices("MONGODB_URL"))
    # How long a request waits for an unreachable database before it answers 503, and the
    # whole budget of one transaction, its driver retries included.
    mongodb_server_selection_timeout_seconds: float = Field(default=2.0, gt=0)
    mongodb_transaction_timeout_seconds: float = Field(default=5.0, gt=0)
    # Each service's database is "<db_prefix>_<service>"; a test run uses a prefix of its own.
    db_prefix: str = "yuqing"
    topic_prefix: str = ""
    topic_partitions: int = Field(default=3, ge=1)

    # Ports of the embedded servers, used only when no URL is set above.
    embedded_kafka_port: int = 19092
    embedded_mongo_port: int = 27019
    embedded_start_timeout: float = 30.0

    secret: SecretStr | None = None
    token_issuer: str = "yuqing"  # noqa: S105 - the JWT "iss" claim, not a secret
    token_ttl_seconds: int = 8 * 3600
    token_audience: str = "yuqing"  # noqa: S105 - the JWT "aud" claim, not a secret
    # No token lives longer: `yuqing token --ttl` beyond it is refused, and so is a token
    # whose exp - iat is longer.
    token_max_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    # Revoked token ids (jti), one a line; default <data_dir>/revoked-tokens. Re-read
    # whenever it changes.
    token_revocation_path: Path | None = None
    # Request limits: bodies above this many bytes answer 413 unread; requests per
    # principal (the token's subject, else the client address) per window answer 429.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    rate_limit: str = "300/minute"
    # Docs, OpenAPI, /metrics and /asyncapi.json without a token (admin or analyst);
    # default: yes in development, no in production.
    public_docs: bool | None = None

    # The web console (shared/console.py): where its built files are, how long a sign-in
    # lasts (renewed while in use), lockout after wrong passwords, the change stream's poll.
    console_dir: Path = Path(__file__).resolve().parent.parent / "console" / "dist"
    session_ttl_seconds: int = Field(default=3600, ge=60)
    login_max_failures: int = Field(default=5, ge=1)
    password_min_length: int = Field(default=10, ge=1)
    login_lockout_seconds: float = Field(default=900.0, gt=0)
    events_poll_seconds: float = Field(default=2.0, gt=0)
    events_stream_seconds: float = Field(default=60.0, gt=0)
    # A fresh password per person of the directory at each `yuqing up` (printed), except
    # for passwords set with `yuqing passwd`; on by default only in development.
    demo_passwords: bool | None = None

    directory_path: Path = CONFIG_DIR / "directory.yaml"
    catalogue_path: Path = CONFIG_DIR / "catalogue.yaml"
    intake_policy_path: Path = CONFIG_DIR / "intake.yaml"
    rulebook_path: Path = CONFIG_DIR / "rulebook.yaml"
    obligations_policy_path: Path = CONFIG_DIR / "obligations.yaml"
    approval_policy_path: Path = CONFIG_DIR / "approval.yaml"
    archive_report_template: Path = CONFIG_DIR / "templates" / "archive_case_report.md.j2"
    archive_replay_batch_size: int = Field(default=200, ge=1)
    timezone: str = "Asia/Shanghai"

    outbox_poll_seconds: float = Field(default=0.5, gt=0)
    outbox_batch_size: int = Field(default=200, ge=1)
    # How long a service's active outbox relay may go silent before a replica takes over.
    outbox_lease_seconds: float = Field(default=15.0, gt=0)
    consumer_retry_max_seconds: float = Field(default=30.0, gt=0)
    # A command that lost a race to another writer is decided again this often, backing off.
    conflict_retry_attempts: int = Field(default=5, ge=1)
    conflict_retry_backoff_seconds: float = Field(default=0.01, ge=0)
    conflict_retry_max_backoff_seconds: float = Field(default=0.2, ge=0)
    deadline_poll_seconds: float = Field(default=1.0, gt=0)
    # At a stop, how long the outbox relays may go on sending what is stored but unsent.
    shutdown_drain_seconds: float = Field(default=2.0, ge=0)
    delivery_poll_seconds: float = Field(default=1.0, gt=0)

    @property
    def base_url(self) -> str:
        return self.public_base_url or f"http://{self.http_host}:{self.http_port}"

    @property
    def demo_passwords_on(self) -> bool:
        if self.demo_passwords is not None:
            return self.demo_passwords
        return self.environment == "development"

    def database_name(self, service: str) -> str:
        return f"{self.db_prefix}_{service}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def revocation_path(self) -> Path:
        return self.token_revocation_path or self.data_dir / "revoked-tokens"

    @property
    def docs_are_public(self) -> bool:
        if self.public_docs is not None:
            return self.public_docs
        return self.environment != "production"

    @property
    def signing_key_path(self) -> Path:
        """Where the key made once for a deployment without YUQING_SECRET is kept."""
        return self.data_dir / "secret.key"

    @cached_property
    def signing_key(self) -> str:
        """YUQING_SECRET, or a key made once and kept in the data directory."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        path = self.signing_key_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()
