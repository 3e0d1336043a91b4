"""Configuration from the environment. No host, port, deadline or secret is a literal in code."""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAMES = ("intake", "grading", "notification", "statement", "archive")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


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
    delivery_poll_seconds: float = Field(default=1.0, gt=0)

    @property
    def base_url(self) -> str:
        return self.public_base_url or f"http://{self.http_host}:{self.http_port}"

    def database_name(self, service: str) -> str:
        return f"{self.db_prefix}_{service}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @cached_property
    def signing_key(self) -> str:
        """YUQING_SECRET, or a key made once and kept in the data directory."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        path = self.data_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()
