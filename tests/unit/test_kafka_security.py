"""Kafka TLS and SASL from configuration: what the FastStream broker and the admin client
that creates the topics are given, and the replication factor of the topics. No broker is
dialled: the clients are built, or stood in for, and what they were given is read."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import Any

import certifi
import pytest
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

import shared.bus
from shared.bus import (
    BusMisconfigured,
    ensure_topics,
    kafka_client_options,
    kafka_security,
    make_broker,
    topic_configs,
)
from shared.settings import Settings

pytestmark = pytest.mark.asyncio


def settings(tmp_path: Path, **kafka: Any) -> Settings:
    return Settings(kafka_bootstrap_servers="kafka-1:9093", data_dir=tmp_path, **kafka)


def consumer_arguments(s: Settings) -> dict[str, Any]:
    """What the broker hands aiokafka for every consumer it makes."""
    builder = make_broker(s, "intake").config.broker_config.builder
    assert isinstance(builder, functools.partial)
    return dict(builder.keywords)


async def test_plaintext_by_default(tmp_path: Path) -> None:
    s = settings(tmp_path)

    assert kafka_security(s) is None
    assert kafka_client_options(s) == {}
    assert consumer_arguments(s).get("security_protocol", "PLAINTEXT") == "PLAINTEXT"


@pytest.mark.parametrize(
    ("mechanism", "kind"),
    [("PLAIN", SASLPlaintext), ("SCRAM-SHA-256", SASLScram256), ("SCRAM-SHA-512", SASLScram512)],
)
async def test_sasl_over_tls_reaches_the_broker_and_the_admin_client(
    tmp_path: Path, mechanism: str, kind: type[BaseSecurity]
) -> None:
    s = settings(
        tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="yuqing",
        kafka_sasl_password="s3cret-password",
        kafka_ssl_cafile=Path(certifi.where()),
    )

    security = kafka_security(s)
    admin = kafka_client_options(s)
    consumer = consumer_arguments(s)

    assert isinstance(security, kind)
    for options in (admin, consumer):
        assert options["security_protocol"] == "SASL_SSL"
        assert options["sasl_mechanism"] == mechanism
        assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
            "yuqing",
            "s3cret-password",
        )
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


async def test_sasl_without_tls(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="yuqing",
        kafka_sasl_password="pw",
    )

    options = kafka_client_options(s)

    assert (options["security_protocol"], options["sasl_mechanism"]) == (
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
    )
    assert options["ssl_context"] is None


async def test_tls_alone_with_the_systems_certificates(tmp_path: Path) -> None:
    options = kafka_client_options(settings(tmp_path, kafka_security_protocol="SSL"))

    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in options


async def test_sasl_without_credentials_stops_the_start_naming_the_variables(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path, kafka_security_protocol="SASL_SSL", kafka_sasl_username="yuqing")

    with pytest.raises(BusMisconfigured, match="YUQING_KAFKA_SASL_PASSWORD"):
        make_broker(s, "intake")


async def test_a_missing_ca_file_stops_the_start(tmp_path: Path) -> None:
    s = settings(tmp_path, kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "no-ca.pem")

    with pytest.raises(FileNotFoundError):
        kafka_security(s)


async def test_topics_are_created_with_the_configured_security_and_replication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, Any]] = []
    created: list[Any] = []

    class Admin:
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)

        async def start(self) -> None:
            pass

        async def list_topics(self) -> list[str]:
            return []

        async def create_topics(self, topics: list[Any]) -> None:
            created.extend(topics)

        async def close(self) -> None:
            pass

    monkeypatch.setattr(shared.bus, "AIOKafkaAdminClient", Admin)
    s = settings(
        tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="yuqing",
        kafka_sasl_password="pw",
        topic_replication_factor=3,
        topic_partitions=6,
        topic_retention_hours=168,
    )

    fresh = await ensure_topics(s)

    assert fresh
    (admin,) = made
    assert (admin["bootstrap_servers"], admin["security_protocol"]) == ("kafka-1:9093", "SASL_SSL")
    assert admin["sasl_plain_username"] == "yuqing"
    assert len(created) == 6  # five topics and the dead-letter topic
    assert {(t.num_partitions, t.replication_factor) for t in created} == {(6, 3)}
    # A week, as Kafka counts it; unset, the broker's own default applies.
    assert {tuple(t.topic_configs.items()) for t in created} == {(("retention.ms", "604800000"),)}
    assert topic_configs(settings(tmp_path)) == {}
