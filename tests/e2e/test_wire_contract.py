"""The served AsyncAPI document as a partner's engineer uses it: it validates against the
AsyncAPI 3 schema, and a consumer built from it alone (one JSON Schema validator per
message) accepts every event the system has put on its topics, while it rejects what the
system would never send. It runs after the other end-to-end files (the name sorts last),
so the topics hold what all of them produced."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

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


async def every_message(bootstrap: str, addresses: list[str]) -> list[tuple[str, bytes]]:
    """Every message on the topics from the beginning, until a poll brings nothing new."""
    consumer = AIOKafkaConsumer(
        *addresses,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: list[tuple[str, bytes]] = []
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
                    seen += [(tp.topic, r.value) for r in records if r.value is not None]
    finally:
        await consumer.stop()
    return seen


def test_a_consumer_built_from_the_document_accepts_every_event_the_system_sent(
    system: RunningSystem,
) -> None:
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
    document = served(system)
    components = document["components"]
    registry: Registry[Any] = Registry().with_resource(
        "urn:yuqing:asyncapi", Resource(contents=document, specification=DRAFT7)
    )

    def validator_for(message: dict[str, Any]) -> jsonschema.protocols.Validator:
        schema = {"$ref": "urn:yuqing:asyncapi" + message["payload"]["$ref"]}
        return jsonschema.Draft7Validator(schema, registry=registry)

    by_address = {
        channel["address"]: {
            name: validator_for(components["messages"][name]) for name in channel["messages"]
        }
        for channel in document["channels"].values()
        if not channel["address"].endswith("yuqing.deadletter")
    }
    bootstrap = system.env["KAFKA_BOOTSTRAP_SERVERS"]
    messages = asyncio.run(every_message(bootstrap, sorted(by_address)))
    assert messages, "the other end-to-end files ran first and left events on the topics"

    refused: list[str] = []
    kinds: set[str] = set()
    for topic, raw in messages:
        event = json.loads(raw)
        kind = event.get("event_type")
        validator = by_address[topic].get(kind)
        if validator is None:
            refused.append(f"{topic}: {kind} is not a message of this channel")
            continue
        errors = [e.message for e in validator.iter_errors(event)]
        if errors:
            refused.append(f"{topic}: {kind}: {errors[:3]}")
        kinds.add(kind)
    assert refused == []
    assert {"IncidentOpened", "ReportReceived", "IncidentGraded", "ObligationOpened"} <= kinds

    # The consumer is strict: a graded event without its level, or with a field the
    # system never sends, is refused.
    graded = next(json.loads(raw) for _, raw in messages if b'"IncidentGraded"' in raw)
    check = by_address[next(t for t, raw in messages if b'"IncidentGraded"' in raw)]
    del graded["payload"]["level"]
    assert list(check["IncidentGraded"].iter_errors(graded))
    graded = next(json.loads(raw) for _, raw in messages if b'"IncidentGraded"' in raw)
    graded["injected"] = True
    assert list(check["IncidentGraded"].iter_errors(graded))
