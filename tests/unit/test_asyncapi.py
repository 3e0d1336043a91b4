"""The AsyncAPI document a process serves at /asyncapi.json: the whole bus (all five
services' operations, every event type), whichever services the process runs, on the
configured brokers with the configured Kafka security. On the fakes: no broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import composition_root
from shared.asyncapi import asyncapi_document
from shared.events import DEAD_LETTER_TOPIC, SUBSCRIPTIONS, consumers_of, event_types
from shared.gateway import Gateway
from shared.settings import SERVICE_NAMES, Settings
from shared.signing import TOPIC_OWNERS
from tests.fakes.harness import fake_service, fake_settings


async def served_by(name: str) -> dict[str, Any]:
    """/asyncapi.json of a process running `name` alone, as the distributed shape runs it."""
    settings = fake_settings(topic_prefix="prod.")
    async with fake_service(name, composition_root(name), settings=settings) as service:
        gateway = Gateway([service.runner], settings)
        transport = httpx.ASGITransport(app=gateway.root)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            answer = await api.get("/asyncapi.json")
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def named(operation: dict[str, Any]) -> set[str]:
    """The messages an operation names (`#/channels/<channel>/messages/<name>`)."""
    return {m["$ref"].rsplit("/", 1)[-1] for m in operation["messages"]}


def channel_of(operation: dict[str, Any]) -> str:
    ref: str = operation["channel"]["$ref"]
    return ref.removeprefix("#/channels/")


async def test_a_process_running_only_the_archive_serves_every_services_operations() -> None:
    document = await served_by("archive")
    operations = document["operations"]
    channels = document["channels"]

    # Each service sends on its own topic, under the deployment's topic names.
    for topic, owner in TOPIC_OWNERS.items():
        sends = operations[f"{owner}_sends"]
        assert sends["action"] == "send"
        assert channels[channel_of(sends)]["address"] == f"prod.{topic}"
    assert {k.removesuffix("_sends") for k in operations if k.endswith("_sends")} == set(
        SERVICE_NAMES
    )
    # Each consumer receives what SUBSCRIPTIONS gives it, and dead-letters; intake neither.
    receives = {
        (name.split("_receives_")[0], channels[channel_of(op)]["address"])
        for name, op in operations.items()
        if op["action"] == "receive"
    }
    assert receives == {
        (service, f"prod.{topic}") for service, topics in SUBSCRIPTIONS.items() for topic in topics
    }
    dead = {k.removesuffix("_dead_letters") for k in operations if k.endswith("_dead_letters")}
    assert dead == set(SUBSCRIPTIONS) == set(SERVICE_NAMES) - {"intake"}
    assert all(
        channels[channel_of(operations[f"{s}_dead_letters"])]["address"]
        == f"prod.{DEAD_LETTER_TOPIC}"
        for s in dead
    )

    # Every event type: a message of its topic's channel, sent by the topic's owner and
    # received by every service that reads the topic.
    kinds = event_types()
    assert len(kinds) >= 25
    for name, kind in kinds.items():
        assert name in document["components"]["messages"], name
        assert name in named(operations[f"{TOPIC_OWNERS[kind.TOPIC]}_sends"]), name
        channel = kind.TOPIC.replace(".", "_")
        readers = {
            op_name.split("_receives_")[0]
            for op_name, op in operations.items()
            if op["action"] == "receive" and channel_of(op) == channel and name in named(op)
        }
        assert readers == set(consumers_of(kind.TOPIC)), name


async def test_every_process_serves_the_same_document() -> None:
    archive = await served_by("archive")
    for name in SERVICE_NAMES:
        assert await served_by(name) == archive, f"{name} serves another document"


@pytest.mark.parametrize("name", sorted(SUBSCRIPTIONS))
async def test_what_a_service_handles_is_among_what_the_document_says_it_receives(
    name: str,
) -> None:
    """The document is written from SUBSCRIPTIONS, not from the handler maps: each map's
    types are among the messages its service's receive operations name."""
    document = asyncapi_document(fake_settings())
    received = set().union(
        *(
            named(op)
            for k, op in document["operations"].items()
            if k.startswith(f"{name}_receives_")
        )
    )
    async with fake_service(name, composition_root(name)) as service:
        handled = {kind.EVENT_TYPE for kind in service.parts.handlers.types()}
    assert handled
    assert handled <= received, sorted(handled - received)


def test_two_bootstrap_brokers_are_two_servers_in_the_clear() -> None:
    settings = Settings(kafka_bootstrap_servers="kafka-a:9092, kafka-b:9093")
    document = asyncapi_document(settings)
    servers = document["servers"]
    assert sorted(s["host"] for s in servers.values()) == ["kafka-a:9092", "kafka-b:9093"]
    assert {s["protocol"] for s in servers.values()} == {"kafka"}
    assert not any("security" in s for s in servers.values())
    assert "securitySchemes" not in document["components"]


@pytest.mark.parametrize(
    ("security", "protocol", "scheme"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "kafka-secure", "scramSha512"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256"},
            "kafka-secure",
            "scramSha256",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"},
            "kafka",
            "plain",
        ),
        ({"kafka_security_protocol": "SSL"}, "kafka-secure", None),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": Path("/run/kafka/client.pem")},
            "kafka-secure",
            "X509",
        ),
    ],
    ids=["SASL_SSL", "SASL_SSL-SCRAM-SHA-256", "SASL_PLAINTEXT-PLAIN", "SSL", "SSL-mutual"],
)
def test_the_servers_say_the_configured_kafka_security(
    security: dict[str, Any], protocol: str, scheme: str | None
) -> None:
    settings = Settings(
        kafka_bootstrap_servers="b-1.kafka:9096,b-2.kafka:9096",
        kafka_sasl_username="yuqing-svc",
        kafka_sasl_password="sasl-password-never-shown",
        **security,
    )
    document = asyncapi_document(settings)
    servers = list(document["servers"].values())
    assert len(servers) == 2
    assert {s["protocol"] for s in servers} == {protocol}
    schemes = document["components"].get("securitySchemes", {})
    if scheme is None:
        assert schemes == {}
        assert not any("security" in s for s in servers)
    else:
        # One scheme, declared among the components, asked for by every server.
        (name,) = schemes
        assert schemes[name]["type"] == scheme
        for server in servers:
            assert server["security"] == [{"$ref": f"#/components/securitySchemes/{name}"}]
    text = json.dumps(document)
    assert "sasl-password-never-shown" not in text
    assert "yuqing-svc" not in text
