"""Schemathesis against every service's OpenAPI, on the app its composition root builds
over the fakes (in process, no servers): with an admin's token, no operation answers 5xx,
every answer is one the document describes (status, content type, body schema: the
`{"error"}` shape for refusals), and data that does not fit the schema is refused with a
4xx. Then the same operations replayed with another unit's token never show the first
unit's incident: not its ids, not its title."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import Case, GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection

from services.cli import composition_root
from shared.events import Envelope
from shared.settings import SERVICE_NAMES
from tests.fakes.harness import FakeService, fake_service, fake_settings

MAX_EXAMPLES = 5  # per operation and mode: a contract check in the unit suite, not a soak
# Data that fits the schema may still be refused on its merits: an unknown unit, a time in
# the future, a cursor this API did not hand out (422, 400), beside what schemathesis
# already expects of valid data (2xx, 401, 403, 404, 409, 429).
POSITIVE_ALSO = ["2xx", "400", "401", "403", "404", "409", "422", "429"]
# Bad data is refused with a 4xx: a body over YUQING_MAX_BODY_BYTES with 413, unread.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": POSITIVE_ALSO},
            "negative_data_rejection": {"expected-statuses": REFUSALS},
        },
        # Stateful link-following and the coverage phase are for a long run, not the suite.
        "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": False}},
    }
)
# Routes that start background work or stream without end are still fuzzed; the replay
# runs beside the request and is left to finish.
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def built(name: str, tmp: Path) -> FakeService:
    """The service on the fakes, set up (indexes, setup steps) and left open: the fake
    holds nothing to close."""
    settings = fake_settings(tmp, rate_limit="1000000/minute", max_body_bytes=64 * 1024)

    async def start() -> FakeService:
        context = fake_service(name, composition_root(name), settings=settings)
        return await context.__aenter__()

    return asyncio.run(start())


def schema_of(service: FakeService) -> Any:
    return schemathesis.openapi.from_asgi(
        f"{service.parts.prefix}/openapi.json", service.runner.app, config=CONFIG
    )


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def each_case(operation: Any, mode: GenerationMode, check: Callable[[Case], None]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @HYPOTHESIS
    def run(case: Case) -> None:
        check(case)

    run()


def not_judged(case: Case) -> list[Any]:
    """Whether bad data was refused is judged where the bad data is sent as generated: a
    body or a path. A bad Authorization header is replaced by the test's token, and a
    query parameter given twice is read as its last value (FastAPI's rule), so a case bad
    only there may well be served; everything else is still checked of it."""
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.NEGATIVE:
        return []
    bad = {where for where, info in meta.components.items() if info.mode is GenerationMode.NEGATIVE}
    if bad & {ParameterLocation.BODY, ParameterLocation.PATH}:
        return []
    return [negative_data_rejection]


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_every_operation_answers_as_its_openapi_says(name: str, tmp_path: Path) -> None:
    service = built(name, tmp_path)
    admin = service.token("admin", "county", "admin")
    schema = schema_of(service)
    found = operations(schema)
    assert len(found) >= 3, f"{name} documents its operations"
    seen: dict[str, set[int]] = {}

    with asgi.get_client(service.runner.app) as client:

        def check(case: Case) -> None:
            response = case.call_and_validate(
                session=client, headers=admin, excluded_checks=not_judged(case)
            )
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}
                assert set(response.json()["error"]) == {"code", "message", "details"}

        for operation in found:
            if operation.path.endswith("/readyz"):
                continue  # 503 until started, which a service on the fakes never is
            raw = operation.definition.raw
            takes = bool(raw.get("parameters")) or "requestBody" in raw
            # Nothing to get wrong in an operation that takes nothing (a probe).
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes else [])
            for mode in modes:
                each_case(operation, mode, check)
    assert set(seen) == {op.label for op in found if not op.path.endswith("/readyz")}


def test_every_document_names_its_schemes_its_errors_and_short_operation_ids(
    tmp_path: Path,
) -> None:
    """What a reader of the docs (or Swagger's "Try it out") needs: the bearer and partner
    key schemes on every operation that needs a caller, each refusal in the `{"error"}`
    shape the API answers with, and operation ids a person can say, unique across all."""
    operation_ids: list[str] = []
    for name in SERVICE_NAMES:
        doc = built(name, tmp_path / name).runner.app.openapi()
        assert set(doc["components"]["securitySchemes"]) == {"bearer", "partnerKey"}
        assert "HTTPValidationError" not in doc["components"]["schemas"]
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                operation_ids.append(operation["operationId"])
                assert operation["operationId"].startswith(f"{name}_")
                responses = operation["responses"]
                if path.endswith(("/healthz", "/readyz")):
                    assert "security" not in operation  # probes are open
                    continue
                assert operation["security"] == [{"bearer": []}, {"partnerKey": []}]
                assert {"401", "403", "429"} <= set(responses), (method, path)
                if "{" in path:
                    assert "404" in responses, (method, path)
                if "requestBody" in operation:
                    assert {"400", "413", "422"} <= set(responses), (method, path)
                for status, answer in responses.items():
                    if int(status) >= 400:
                        content = answer["content"]["application/json"]
                        assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
                        assert set(content["example"]["error"]) == {"code", "message", "details"}
    assert len(operation_ids) == len(set(operation_ids))
    assert max(map(len, operation_ids)) <= 40, operation_ids
    assert "intake_submit_report" in operation_ids


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_every_request_body_has_an_example_the_api_accepts(name: str, tmp_path: Path) -> None:
    """What "Try it out" fills in: each JSON body an operation takes has an example, which
    fits the documented schema and which the API takes as valid (it may still refuse it on
    its merits, an unknown incident say, but never as malformed: 400 or 422)."""
    service = built(name, tmp_path)
    admin = service.token("admin", "county", "admin")
    doc = service.runner.app.openapi()
    registry = Registry().with_resource(
        "openapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    sent = 0
    with asgi.get_client(service.runner.app) as client:
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                content = operation.get("requestBody", {}).get("content", {})
                if "application/json" not in content:
                    continue  # a file upload
                ref = content["application/json"]["schema"]["$ref"]
                examples = doc["components"]["schemas"][ref.rsplit("/", 1)[1]].get("examples")
                assert examples, f"{method} {path}: no example of {ref}"
                validator = Draft202012Validator({"$ref": f"openapi{ref}"}, registry=registry)
                for example in examples:
                    assert list(validator.iter_errors(example)) == [], (path, example)
                    url = re.sub(r"\{[^}]+\}", "unknown-id", path)
                    answer = client.request(method.upper(), url, json=example, headers=admin)
                    assert answer.status_code not in (400, 422), (path, answer.text)
                    sent += 1
    assert sent >= 1


# ---------------------------------------------------------------- another unit's token


REPORT: dict[str, Any] = {
    "source_type": "forum",
    "source_name": "本地论坛",
    "media_tier": "county",
    "url": "https://bbs.example/thread/secret-a",
    "title": "甲校食堂机密标题ZX9",
    "excerpt": "只有甲校可见的摘要",
    "published_at": "2026-11-21T08:00:00+08:00",
    "observed_at": "2026-11-21T08:05:00+08:00",
    "unit_ids": ["school-a"],
}
TITLE = str(REPORT["title"])


def replay(
    strategy: Any,
    label: str,
    client: Any,
    mine: dict[str, str],
    others: dict[str, dict[str, str]],
    secrets: set[str],
    shown: set[str],
    leaked: list[str],
) -> None:
    """Each case sent with A's token and then each other's: what A sees of its own is
    noted (so the probe is known to reach A's data), what another sees of A's is a leak
    (an id it asked for is echoed in the 404 it gets, as for any unknown id: no leak)."""

    @given(case=strategy)
    @settings(parent=HYPOTHESIS, max_examples=3)  # the ids are fixed: a few cases each
    def run(case: Case) -> None:
        if any(s in case.call(session=client, headers=mine).text for s in secrets):
            shown.add(label)
        for who, headers in others.items():
            answer = case.call(session=client, headers=headers)
            text = answer.text
            for asked in (s for s in secrets if s in str(answer.request.url)):
                text = text.replace(asked, "<the id asked for>")  # echoed back in its 404
            if any(s in text for s in secrets):
                leaked.append(f"{who} {label}: {answer.status_code} {answer.text[:300]}")

    run()


ID_FIELDS = ("obligation_id", "notification_id", "statement_id", "case_id")


async def draft(service: FakeService, incident_id: str) -> None:
    async with service.http() as api:
        r = await api.post(
            f"/statements/v1/incidents/{incident_id}/statements",
            json={"kind": "press_release", "title": TITLE, "body": "甲校草稿正文"},
            headers=service.token("office-a", "school-a", "office"),
        )
        assert r.status_code == 201, r.text


def test_another_units_token_finds_none_of_the_first_units_data(tmp_path: Path) -> None:
    """School A files a report in intake; its events feed every other service. Every
    operation of every service, fed A's ids wherever it takes an id, answers school B's
    leader (and a partner that referred none of it) without A's ids or title anywhere in
    the body, where A's own leader gets them (so the check can see a leak)."""
    intake = built("intake", tmp_path / "intake")
    a_leader = intake.token("leader-a", "school-a", "leader", "office", "monitor")

    async def file() -> dict[str, Any]:
        async with intake.http() as api:
            r = await api.post("/intake/v1/reports", json=REPORT, headers=a_leader)
            assert r.status_code == 201, r.text
            answer: dict[str, Any] = r.json()
            return answer

    filed = asyncio.run(file())
    secrets = {filed["incident_id"], filed["report_id"], TITLE}
    events: list[Envelope] = []
    ids: dict[str, str] = {
        "incident_id": filed["incident_id"],
        "report_id": filed["report_id"],
    }
    leaked: list[str] = []
    shown: set[str] = set()
    for name in SERVICE_NAMES:
        service = intake if name == "intake" else built(name, tmp_path / name)
        if service.runner.consumer is not None:
            wanted = [e for e in events if e.topic in service.parts.consumes]
            asyncio.run(service.consume(*wanted))
        if name == "statement":  # a draft of A's, so the statement routes have an id of A's
            asyncio.run(draft(service, filed["incident_id"]))
        published = asyncio.run(service.published())
        events += published  # what the next services consume
        for event in published:
            for key in ID_FIELDS:
                if value := getattr(event.payload, key, None):
                    ids.setdefault(key, str(value))
                    secrets.add(str(value))
        a = service.token("leader-a", "school-a", "leader", "office", "monitor")
        others = {  # another school's staff, and a partner that referred none of it
            "school B": service.token("leader-b", "school-b", "leader", "office", "monitor"),
            "a partner": service.token("partner-x", "county", "partner"),
        }
        with asgi.get_client(service.runner.app) as client:
            for operation in operations(schema_of(service)):
                if operation.method.upper() != "GET":
                    continue
                params = {p: ids[p] for p in ids if "{" + p + "}" in operation.path}
                strategy = operation.as_strategy(path_parameters=params or None)
                replay(strategy, operation.label, client, a, others, secrets, shown, leaked)
    assert not leaked, leaked
    # The probe sees A's incident where A looks: intake, grading and the archive show it.
    assert {"obligation_id", "statement_id"} <= set(ids)
    assert {
        "GET /intake/v1/incidents/{incident_id}",
        "GET /notifications/v1/obligations",
        "GET /statements/v1/statements/{statement_id}",
        "GET /archive/v1/incidents",
    } <= shown, shown
