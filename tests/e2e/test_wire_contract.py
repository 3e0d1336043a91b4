"""The served AsyncAPI document as a partner's engineer uses it: it validates against the
AsyncAPI 3 schema, and a consumer built from it alone (one JSON Schema validator per
message, for its payload and its headers) accepts every event the system has put on its
topics and every dead letter, accepts every event type the system's own models can
produce (with only the fields it must carry, and with every field), while it rejects what
the system would never send. It runs after the other end-to-end files (the name sorts
last), so the topics hold what all of them produced."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from shared.asyncapi import asyncapi_document
from shared.bus import signed_headers
from shared.events import ALL_TOPICS, Actor, Envelope, IncidentResolved, event_types
from shared.settings import Settings
from shared.signing import TOPIC_OWNERS, BusKeys
from tests.e2e.conftest import RunningSystem, wait_for
from tests.e2e.test_walking_skeleton import incident_view, report

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# The AsyncAPI Initiative's own schema, a dev dependency of the console's npm manifest.
ASYNCAPI_3 = ROOT / "console" / "node_modules" / "@asyncapi" / "specs" / "schemas"
ASYNCAPI_3_SCHEMA = ASYNCAPI_3 / "3.0.0-without-$id.json"


def served(system: RunningSystem) -> dict[str, Any]:
    with system.client() as api:
        r = api.get("/asyncapi.json")
        assert r.status_code == 200, r.text
        document: dict[str, Any] = r.json()
    return document


def test_the_served_document_is_valid_asyncapi_3_and_names_every_topic(
    system: RunningSystem,
) -> None:
    assert ASYNCAPI_3_SCHEMA.exists(), "npm ci in console/ installs @asyncapi/specs"
    meta = json.loads(ASYNCAPI_3_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(meta)(meta)
    document = served(system)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    # The validator is not blind: a message whose payload is not a schema is refused.
    broken = copy.deepcopy(document)
    broken["components"]["messages"]["IncidentGraded"]["payload"] = 5
    assert list(validator.iter_errors(broken))

    addresses = {c["address"] for c in document["channels"].values()}
    assert len(addresses) == 6  # five services' topics and the dead-letter topic
    assert any(a.endswith("yuqing.deadletter") for a in addresses)
    assert len(document["servers"]) == 1
    messages = document["components"]["messages"]
    assert {"ReportReceived", "IncidentGraded", "ObligationOpened", "StatementPublished"} <= set(
        messages
    )
    assert all(m["payload"] != {} for m in messages.values())
    operations = document["operations"]
    receives = {k for k, o in operations.items() if o["action"] == "receive"}
    assert {"grading_receives_intake_events", "archive_receives_grading_events"} <= receives
    # Every service sends on its topic; every one that consumes says what it receives and
    # dead-letters what it cannot act on (intake consumes nothing).
    services = ("intake", "grading", "notification", "statement", "archive")
    for service in services:
        assert operations[f"{service}_sends"]["action"] == "send"
    consumers = {k.split("_receives_")[0] for k in receives}
    assert consumers == set(services) - {"intake"}
    for service in consumers:
        assert operations[f"{service}_dead_letters"]["channel"] == {
            "$ref": "#/channels/yuqing_deadletter"
        }
    assert "intake_dead_letters" not in operations
    # Every event type the system declares is a message of its own topic's channel.
    for name, kind in event_types().items():
        channel = document["channels"][kind.TOPIC.replace(".", "_")]
        assert name in channel["messages"], f"{name} is not on {kind.TOPIC}"
    # The dead-letter record's schema, and the headers every event is signed in.
    dead = messages["DeadLetter"]
    record = components_schema(document, dead)
    assert set(record["required"]) == {"consumer", "source_topic", "reason", "failed_at", "message"}
    assert set(dead["headers"]["required"]) == {"reason", "consumer", "source_topic"}
    assert {"yuqing-producer", "yuqing-signature"} <= set(
        messages["IncidentGraded"]["headers"]["required"]
    )


@pytest.mark.parametrize(
    "security",
    [
        {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512"},
        {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"},
        {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": Path("/etc/kafka/client.pem")},
    ],
    ids=lambda s: str(s["kafka_security_protocol"]),
)
def test_the_document_of_a_secured_cluster_of_brokers_is_valid_asyncapi_3(
    security: dict[str, Any],
) -> None:
    """As a deployment on a secured three-broker cluster would serve it (no system needed):
    one server per broker, each naming the security scheme it asks of a client."""
    assert ASYNCAPI_3_SCHEMA.exists(), "npm ci in console/ installs @asyncapi/specs"
    meta = json.loads(ASYNCAPI_3_SCHEMA.read_text(encoding="utf-8"))
    settings = Settings(
        kafka_bootstrap_servers="kafka-0.kafka:9093,kafka-1.kafka:9093,kafka-2.kafka:9093",
        kafka_sasl_username="yuqing",
        kafka_sasl_password="not-in-the-document",
        **security,
    )
    document = asyncapi_document(settings)
    validator = jsonschema.validators.validator_for(meta)(meta)
    assert [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)] == []
    assert len(document["servers"]) == 3
    assert all(s["security"] for s in document["servers"].values())


def components_schema(document: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][
        message["payload"]["$ref"].rsplit("/", 1)[-1]
    ]
    return schema


class Consumer:
    """A consumer generated from the document alone: per channel address and message
    name, a validator of the payload and one of the headers (as strings)."""

    def __init__(self, document: dict[str, Any]) -> None:
        registry: Registry[Any] = Registry().with_resource(
            "urn:yuqing:asyncapi", Resource(contents=document, specification=DRAFT7)
        )
        components = document["components"]

        def payload(message: dict[str, Any]) -> jsonschema.protocols.Validator:
            schema = {"$ref": "urn:yuqing:asyncapi" + message["payload"]["$ref"]}
            return jsonschema.Draft7Validator(
                schema, registry=registry, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
            )

        self.payloads: dict[str, dict[str, jsonschema.protocols.Validator]] = {}
        self.headers: dict[str, dict[str, jsonschema.protocols.Validator]] = {}
        for channel in document["channels"].values():
            address = channel["address"]
            self.payloads[address] = {}
            self.headers[address] = {}
            for name in channel["messages"]:
                message = components["messages"][name]
                self.payloads[address][name] = payload(message)
                self.headers[address][name] = jsonschema.Draft7Validator(message["headers"])

    def refusals(
        self, address: str, name: str, body: dict[str, Any], headers: dict[str, str]
    ) -> list[str]:
        """Why the consumer would not parse this message; [] when it would."""
        payload = self.payloads.get(address, {}).get(name)
        if payload is None:
            return [f"{address}: {name} is not a message of this channel"]
        problems = [f"{name}: {e.message}" for e in payload.iter_errors(body)]
        problems += [
            f"{name} headers: {e.message}" for e in self.headers[address][name].iter_errors(headers)
        ]
        return problems


Message = tuple[str, bytes, dict[str, str]]  # the topic, the value, the headers


async def every_message(bootstrap: str, addresses: list[str]) -> list[Message]:
    """Every message on the topics from the beginning, until a poll brings nothing new."""
    consumer = AIOKafkaConsumer(
        *addresses,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: list[Message] = []
    try:
        # Wait for the assignment and the first records, then read until the topics are
        # drained: end offsets reached on every partition.
        async with asyncio.timeout(60):
            while not consumer.assignment():
                await asyncio.sleep(0.1)
            ends = await consumer.end_offsets(list(consumer.assignment()))
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    seen += [
                        (tp.topic, r.value, {k: v.decode() for k, v in r.headers})
                        for r in records
                        if r.value is not None
                    ]
    finally:
        await consumer.stop()
    return seen


async def forge(bootstrap: str, address: str) -> str:
    """Put an unsigned event on a topic, as someone on the network could: each consumer of
    it dead-letters it. Its event id, to find the dead letters by."""
    event = Envelope.new(
        IncidentResolved(reason="伪造"),
        incident_id=f"inc-forged-{uuid.uuid4().hex[:8]}",
        stream_id="incident-forged",
        stream_version=1,
        actor=Actor.system("intake"),
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(address, event.to_json(), key=event.incident_id.encode())
    finally:
        await producer.stop()
    return str(event.event_id)


def test_a_consumer_built_from_the_document_accepts_every_event_the_system_sent(
    system: RunningSystem,
) -> None:
    bootstrap = system.env["KAFKA_BOOTSTRAP_SERVERS"]
    prefix = system.env["YUQING_TOPIC_PREFIX"]
    dead_address = f"{prefix}yuqing.deadletter"
    forged = asyncio.run(forge(bootstrap, f"{prefix}intake.events"))
    with system.client() as api:
        # At least one incident of its own, graded with its duties, whatever ran before.
        answer = api.post("/intake/v1/reports", json=report(url="https://wire.example.cn/a/1"))
        # It may join an incident an earlier file opened about the same matter: either way
        # the incident is graded, with duties, before the topics are read.
        assert answer.status_code in (200, 201), answer.text
        incident_id = answer.json()["incident_id"]
        wait_for(
            lambda: incident_view(api, incident_id),
            lambda v: v.get("level") == 1 and len(v.get("obligations", [])) >= 2,
            timeout=20,
            what="graded incident with obligations in the archive",
        )
    # Every consumer of intake's topic dead-letters the forged event.
    wait_for(
        lambda: [
            m
            for m in asyncio.run(every_message(bootstrap, [dead_address]))
            if forged.encode() in m[1]
        ],
        lambda found: len(found) >= 4,
        timeout=60,
        what="the forged event dead-lettered by grading, notification, statement and archive",
    )
    document = served(system)
    consumer = Consumer(document)
    addresses = [c["address"] for c in document["channels"].values()]
    messages = asyncio.run(every_message(bootstrap, sorted(addresses)))
    assert messages, "the other end-to-end files ran first and left events on the topics"

    refused: list[str] = []
    kinds: set[str] = set()
    dead_letters = 0
    for topic, raw, headers in messages:
        body = json.loads(raw)
        if topic == dead_address:
            refused += consumer.refusals(topic, "DeadLetter", body, headers)
            dead_letters += 1
            continue
        kind = body.get("event_type")
        if body.get("event_id") == forged:
            # Not the system's: the generated consumer refuses it as the system's did.
            assert consumer.refusals(topic, kind, body, headers)
            continue
        refused += consumer.refusals(topic, kind, body, headers)
        kinds.add(kind)
    assert refused == []
    assert {"IncidentOpened", "ReportReceived", "IncidentGraded", "ObligationOpened"} <= kinds
    assert dead_letters >= 4

    # The consumer is strict: a graded event without its level, or with a field the
    # system never sends, or unsigned, is refused.
    topic, raw, headers = next(m for m in messages if b'"IncidentGraded"' in m[1])
    graded = json.loads(raw)
    del graded["payload"]["level"]
    assert consumer.refusals(topic, "IncidentGraded", graded, headers)
    graded = json.loads(raw)
    graded["injected"] = True
    assert consumer.refusals(topic, "IncidentGraded", graded, headers)
    unsigned = {k: v for k, v in headers.items() if k != "yuqing-signature"}
    assert consumer.refusals(topic, "IncidentGraded", json.loads(raw), unsigned)
    # A dead letter without its reason is refused.
    topic, raw, headers = next(m for m in messages if m[0] == dead_address)
    letter = json.loads(raw)
    del letter["reason"]
    assert consumer.refusals(topic, "DeadLetter", letter, headers)


# --------------------------------------------------------------------------- every type

# The few patterns the events' fields have, each matched by one of these.
PATTERN_CANDIDATES = ("a_1", "text/plain", "0" * 64)


def example(schema: dict[str, Any], root: dict[str, Any], *, full: bool) -> Any:
    """A value of `schema` (a pydantic model's JSON schema, `root` holding its `$defs`):
    with only what is required, or with every property (`full`), optional ones non-null."""
    if "$ref" in schema:
        return example(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root, full=full)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][-1 if full else 0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return example(options[0], root, full=full)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, dict):
            return {"k": example(extra, root, full=full)} if full else {}
        names = props if full else schema.get("required", [])
        return {n: example(props[n], root, full=full) for n in names}
    if kind == "array":
        if "prefixItems" in schema:
            return [example(i, root, full=full) for i in schema["prefixItems"]]
        count = max(schema.get("minItems", 0), 1 if full else 0)
        return [example(schema.get("items", {}), root, full=full) for _ in range(count)]
    if kind == "string":
        if schema.get("format") == "date-time":
            return "2026-11-21T08:00:00+08:00"
        if "pattern" in schema:
            return next(c for c in PATTERN_CANDIDATES if re.fullmatch(schema["pattern"], c))
        return "文" * max(schema.get("minLength", 0), 1)
    if kind == "integer":
        return max(schema.get("minimum", 1), 1) if schema.get("maximum", 1) >= 1 else 0
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return full
    return None


def test_a_consumer_built_from_the_document_parses_every_event_type_the_system_produces(
    system: RunningSystem,
) -> None:
    """Whatever ran before: one event of every declared type, as the system's own model
    of it would have it (with only its required fields, and with all of them), published
    as the relay publishes it (enveloped, serialised, signed by its topic's owner)."""
    consumer = Consumer(served(system))
    prefix = system.env["YUQING_TOPIC_PREFIX"]
    keys = BusKeys(b"wire-contract-test-bus-secret-of-32-bytes")
    kinds = event_types()
    assert {k.TOPIC for k in kinds.values()} <= set(ALL_TOPICS)
    refused: list[str] = []
    for name, kind in sorted(kinds.items()):
        schema = kind.model_json_schema()
        for full in (False, True):
            payload = kind.model_validate(example(schema, schema, full=full))
            event = Envelope.new(
                payload,
                incident_id="inc-wire",
                stream_id="incident-inc-wire",
                stream_version=1,
                actor=Actor.system(TOPIC_OWNERS[kind.TOPIC]),
            )
            body = json.loads(event.to_json())
            headers = signed_headers(event, TOPIC_OWNERS[kind.TOPIC], keys)
            found = consumer.refusals(f"{prefix}{kind.TOPIC}", name, body, headers)
            refused += [f"{'full' if full else 'minimal'} {p}" for p in found]
    assert refused == []
    assert len(kinds) >= 25
