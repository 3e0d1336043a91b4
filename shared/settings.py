"""Configuration from the environment. No host, port, deadline or secret is a literal in code."""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.plan import PlanError, PolicyName, pack_paths

SERVICE_NAMES = ("intake", "grading", "notification", "statement", "archive")
# The setting that chooses each policy file a plan pack may carry.
PLAN_FIELDS: dict[PolicyName, str] = {
    "rulebook": "rulebook_path",
    "obligations": "obligations_policy_path",
    "approval": "approval_policy_path",
    "catalogue": "catalogue_path",
}


def _config_dir() -> Path:
    """The shipped policy files and templates: `shared/config/` inside an installed wheel
    (package data, mapped from the checkout's config/ by pyproject.toml), else the
    checkout's own `config/`, which stays the one copy to edit."""
    packaged = Path(str(files("shared").joinpath("config")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "config"


CONFIG_DIR = _config_dir()


def _console_dir() -> Path:
    """The built console: `shared/console_dist` inside an installed wheel (hatch_build.py),
    else the checkout's `console/dist`, where `npm run build` puts it."""
    packaged = Path(str(files("shared").joinpath("console_dist")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "console" / "dist"


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
    # How long `/readyz` waits for the broker to describe its cluster before it says the
    # broker is unavailable (a broker that holds connections open but answers nothing).
    kafka_ping_timeout_seconds: float = Field(default=2.0, gt=0)
    # Each service's database is "<db_prefix>_<service>"; a test run uses a prefix of its own.
    db_prefix: str = "yuqing"
    topic_prefix: str = ""
    topic_partitions: int = Field(default=3, ge=1)
    # Replicas of each topic created at start (a real cluster: 3; the embedded broker: 1).
    topic_replication_factor: int = Field(default=1, ge=1)
    # How long the topics keep messages, set when they are created (None: the broker's
    # default). The archive keeps the record; this covers a consumer that is down.
    topic_retention_hours: float | None = Field(default=None, gt=0)
    # How the services reach Kafka (FastStream's broker and the admin client alike):
    # PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL; SASL with PLAIN or SCRAM-SHA-256/512
    # and its username and password; TLS with a CA file (else the system's) and, for mutual
    # TLS, a client certificate and key.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    # How long the group waits for a consumer that stopped heartbeating (one killed -9)
    # before it hands the consumer's partitions to the others.
    kafka_session_timeout_seconds: float = Field(default=10.0, ge=6, le=300)

    # Ports of the embedded servers, used only when no URL is set above.
    embedded_kafka_port: int = 19092
    embedded_mongo_port: int = 27019
    embedded_start_timeout: float = 30.0

    secret: SecretStr | None = None
    # The secret each service's event signing key is derived from (shared/signing.py);
    # all services share it. Production does not start without one of 32 bytes or more;
    # development makes one once in the data directory.
    bus_secret: SecretStr | None = None
    # Earlier bus secrets, comma-separated, kept after a rotation: they sign nothing, and
    # verify what they signed (events still in flight, the archive's log).
    bus_secret_previous: SecretStr | None = None
    token_issuer: str = "yuqing"  # noqa: S105 - the JWT "iss" claim, not a secret
    token_ttl_seconds: int = 8 * 3600
    token_audience: str = "yuqing"  # noqa: S105 - the JWT "aud" claim, not a secret
    # No token lives longer: `yuqing token --ttl` beyond it is refused, and so is a token
    # whose exp - iat is longer.
    token_max_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    # Revoked token ids (jti), one a line; default <data_dir>/revoked-tokens. Re-read
    # whenever it changes.
    token_revocation_path: Path | None = None
    # Partner API keys (`yuqing key create`), stored only as their SHA-256 hashes; default
    # <data_dir>/api-keys.json. Re-read whenever it changes.
    api_keys_path: Path | None = None
    # Request limits: bodies above this many bytes answer 413 unread; requests per
    # principal (the token's subject, else the client address) per window answer 429.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    rate_limit: str = "300/minute"
    # Files attached to reports (services/intake/attachments.py): at most this many bytes
    # each (413 above; the upload's body may be this plus the multipart framing), and only
    # these types, told by the file's content: png, jpeg, gif, webp, pdf, mp4, docx, xlsx.
    attachment_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    attachment_types: str = "png,jpeg,gif,webp,pdf,mp4,docx,xlsx"
    # Docs, OpenAPI, /metrics and /asyncapi.json without a token (admin or analyst);
    # default: yes in development, no in production.
    public_docs: bool | None = None

    # The web console (shared/console.py): where its built files are, how long a sign-in
    # lasts (renewed while in use), lockout after wrong passwords, the change stream's poll.
    console_dir: Path = _console_dir()
    session_ttl_seconds: int = Field(default=3600, ge=60)
    # Sign-in through the bureau's identity provider (OpenID Connect, shared/oidc.py):
    # offered when the issuer and the client id are set; the claim names a directory id.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid profile"
    oidc_username_claim: str = "preferred_username"
    oidc_display_name: str = "统一身份认证"
    login_max_failures: int = Field(default=5, ge=1)
    password_min_length: int = Field(default=10, ge=1)
    login_lockout_seconds: float = Field(default=900.0, gt=0)
    events_poll_seconds: float = Field(default=2.0, gt=0)
    events_stream_seconds: float = Field(default=60.0, gt=0)
    # A fresh password per person of the directory at each `yuqing up` (printed), except
    # for passwords set with `yuqing passwd`; on by default only in development.
    demo_passwords: bool | None = None

    # The plan pack (shared/plan.py): every policy path below not set explicitly defaults to
    # the pack's file when the pack has one. `plans_dir` holds the packs an analyst may try.
    plan: Path = CONFIG_DIR / "plans" / "huaning"
    plans_dir: Path = CONFIG_DIR / "plans"
    directory_path: Path = CONFIG_DIR / "directory.yaml"
    catalogue_path: Path = CONFIG_DIR / "catalogue.yaml"
    intake_policy_path: Path = CONFIG_DIR / "intake.yaml"
    rulebook_path: Path = CONFIG_DIR / "rulebook.yaml"
    obligations_policy_path: Path = CONFIG_DIR / "obligations.yaml"
    approval_policy_path: Path = CONFIG_DIR / "approval.yaml"
    # The assessment's rules (考评, 瞒报's threshold): a plan pack's own assessment.yaml wins.
    assessment_policy_path: Path = CONFIG_DIR / "assessment.yaml"
    archive_report_template: Path = CONFIG_DIR / "templates" / "archive_case_report.md.j2"
    archive_replay_batch_size: int = Field(default=200, ge=1)
    # How often the archive checks the topics, up to what its consumer committed, against
    # its log, and records what a lost transaction left out (services/archive/audit.py).
    archive_audit_seconds: float = Field(default=60.0, gt=0)
    # Reports embedded in the archive's incident view and in intake's (the rest are counted
    # and listed by page at /incidents/{id}/reports), so that a view stays far below
    # MongoDB's 16 MB.
    archive_embedded_reports: int = Field(default=50, ge=1, le=1000)
    # The largest `limit` a paged list accepts (422 naming `limit` above it), and the
    # longest time window one export of the events may ask for (422 naming the bound).
    max_page_size: int = Field(default=100, ge=1, le=1000)
    export_max_window_days: int = Field(default=31, ge=1)
    # The longest period (`from`..`to`) one assessment (考评) or accountability may cover
    # (422 naming `from` beyond it): each reads every incident of the period at once.
    assessment_max_days: int = Field(default=366, ge=1)
    timezone: str = "Asia/Shanghai"

    outbox_poll_seconds: float = Field(default=0.5, gt=0)
    outbox_batch_size: int = Field(default=200, ge=1)
    # How long a service's active outbox relay may go silent before a replica takes over.
    outbox_lease_seconds: float = Field(default=15.0, gt=0)
    # How often the active relay asks the broker whether it still holds what the relay sent
    # it (a broker that lost its data gets the service's events again).
    outbox_check_seconds: float = Field(default=10.0, gt=0)
    consumer_retry_max_seconds: float = Field(default=30.0, gt=0)
    # The most records a consumer takes from the broker at once and handles in one
    # transaction (when each is new to it and none fails); 1 handles every record alone.
    consumer_batch_size: int = Field(default=100, ge=1, le=10_000)
    # A command that lost a race to another writer is decided again this often, backing off.
    conflict_retry_attempts: int = Field(default=5, ge=1)
    conflict_retry_backoff_seconds: float = Field(default=0.01, ge=0)
    conflict_retry_max_backoff_seconds: float = Field(default=0.2, ge=0)
    deadline_poll_seconds: float = Field(default=1.0, gt=0)
    # At a stop, how long the outbox relays may go on sending what is stored but unsent.
    shutdown_drain_seconds: float = Field(default=2.0, ge=0)
    # How often each service samples its gauges (outbox backlog, consumer lag, duties owed).
    metrics_interval_seconds: float = Field(default=15.0, gt=0)
    # How often notification counts the duties owed for that gauge, at most: a count reads
    # every owed duty, as many as a storm leaves open or missed.
    owed_count_seconds: float = Field(default=60.0, gt=0)
    delivery_poll_seconds: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _plan_defaults(self) -> Settings:
        """The plan pack's files for the policy paths the environment does not set. A pack
        that cannot be read changes nothing here: the start refuses it, naming the file
        (shared/service.py, Context.from_settings)."""
        try:
            provided = pack_paths(self.plan)
        except PlanError:
            return self
        for name, path in provided.items():
            field = PLAN_FIELDS[name]
            if field not in self.model_fields_set:
                setattr(self, field, path)
        return self

    @property
    def policy_paths(self) -> dict[PolicyName, Path]:
        return {name: getattr(self, field) for name, field in PLAN_FIELDS.items()}

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
    def api_keys_file(self) -> Path:
        return self.api_keys_path or self.data_dir / "api-keys.json"

    @property
    def docs_are_public(self) -> bool:
        if self.public_docs is not None:
            return self.public_docs
        return self.environment != "production"

    @property
    def bus_secrets_previous(self) -> tuple[bytes, ...]:
        given = self.bus_secret_previous.get_secret_value() if self.bus_secret_previous else ""
        return tuple(p.strip().encode() for p in given.split(",") if p.strip())

    @property
    def bus_secret_path(self) -> Path:
        """Where the bus secret made once for a deployment without YUQING_BUS_SECRET is kept."""
        return self.data_dir / "bus.key"

    @cached_property
    def bus_secret_value(self) -> bytes | None:
        """YUQING_BUS_SECRET; else, outside production, one made once in the data directory;
        else None (production refuses to start: shared.bus.bus_keys)."""
        given = self.bus_secret.get_secret_value() if self.bus_secret is not None else ""
        if given:  # empty, as a blank line of an .env file gives it, is not set
            return given.encode()
        if self.environment == "production":
            return None
        path = self.bus_secret_path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Made by whichever process of the data directory comes first; the others read it.
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()

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
