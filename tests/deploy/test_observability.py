"""The operator's side of /metrics: the alert rules pass `promtool check rules` and their
own `promtool test rules` cases, and the alerts and the Grafana dashboard read only
metrics the services export (theirs, the HTTP instrumentator's and FastStream's)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.api import RateLimiter, create_app
from shared.auth import TokenService
from shared.metrics import kafka_metrics
from shared.settings import Settings

# What a running service registers: its own metrics (on import) and, with its broker,
# FastStream's middleware's.
kafka_metrics("observability-test")

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "yuqing-dashboard.json"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool comes from Debian's prometheus package (.ci/run installs it)"
    return found


SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exported() -> set[str]:
    """Every sample name the services' registry can expose, plus Prometheus' own `up`."""
    names = {"up"}
    for family in REGISTRY.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:yuqing|faststream)_[a-z_]+|up)\b", expr))


def test_the_alert_rules_pass_promtools_check_and_their_own_tests() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alerts_cover_overdue_duties_lag_dead_letters_and_a_service_down() -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"][0]["rules"]
    read = {name for rule in rules for name in metric_names(rule["expr"])}
    assert {
        "yuqing_obligations_owed",
        "yuqing_consumer_lag",
        "yuqing_dead_letters_total",
        "yuqing_http_requests_total",
        "yuqing_notifications_unreachable_total",  # a person a page cannot reach
        "up",
    } <= read
    assert read <= exported(), read - exported()


def test_the_dashboard_reads_only_exported_metrics_from_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    read = {name for expr in exprs for name in metric_names(expr)}
    assert read <= exported(), read - exported()
    assert {"yuqing_consumer_lag", "yuqing_outbox_backlog", "yuqing_obligations_owed"} <= read
    # HTTP latency by route from the instrumentator; Kafka from FastStream's middleware.
    assert {
        "yuqing_http_request_duration_seconds_bucket",
        "yuqing_http_requests_total",
        "faststream_received_processed_messages_total",
        "faststream_published_messages_total",
    } <= read
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]


def http_samples(service: str) -> dict[tuple[str, str, str, str], float]:
    """(metric, route template, method, status) -> value, of `service`'s app."""
    found: dict[tuple[str, str, str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in family.samples:
            if s.labels.get("service") == service and s.name in (
                "yuqing_http_requests_total",
                "yuqing_http_request_duration_seconds_count",
            ):
                key = (s.name, s.labels["handler"], s.labels["method"], s.labels["status"])
                found[key] = s.value
    return found


async def test_http_requests_are_counted_and_timed_by_route_template_status_and_service(
    tmp_path: Path,
) -> None:
    """Two services' apps in one process, as `yuqing up` runs five: each request counts
    under its app's service, its route template (not the path), its exact status; a
    refusal of the guard (429) counts too, and a path no route matches as `none`."""
    settings = Settings(
        secret="observability-test-secret-long-enough-for-hs256",
        data_dir=tmp_path,
        rate_limit="2/minute",
    )
    tokens = TokenService.from_settings(settings)
    names = [f"obs{uuid.uuid4().hex[:6]}" for _ in range(2)]
    clients = []
    for name, limiter in zip(names, (RateLimiter("2/minute"), None), strict=True):
        app = create_app(
            name,
            f"/{name}/v1",
            title=name,
            description="",
            state={"tokens": tokens},
            settings=settings,
            limiter=limiter,
        )

        @app.get(f"/{name}/v1/items/{{item_id}}")
        async def item(item_id: str) -> dict[str, str]:
            return {"id": item_id}

        transport = httpx.ASGITransport(app=app)
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://t"))
    first, second = names
    statuses = [(await clients[0].get(f"/{first}/v1/items/{n}")).status_code for n in range(3)]
    assert statuses == [200, 200, 429]
    assert (await clients[1].get(f"/{second}/v1/items/7")).status_code == 200
    assert (await clients[1].get(f"/{second}/v1/nothing-here")).status_code == 404

    template = f"/{first}/v1/items/{{item_id}}"
    assert http_samples(first) == {
        ("yuqing_http_requests_total", template, "GET", "200"): 2.0,
        ("yuqing_http_requests_total", template, "GET", "429"): 1.0,
        ("yuqing_http_request_duration_seconds_count", template, "GET", "200"): 2.0,
        ("yuqing_http_request_duration_seconds_count", template, "GET", "429"): 1.0,
    }
    template = f"/{second}/v1/items/{{item_id}}"
    assert http_samples(second) == {
        ("yuqing_http_requests_total", template, "GET", "200"): 1.0,
        ("yuqing_http_requests_total", "none", "GET", "404"): 1.0,
        ("yuqing_http_request_duration_seconds_count", template, "GET", "200"): 1.0,
        ("yuqing_http_request_duration_seconds_count", "none", "GET", "404"): 1.0,
    }
    # The request's trace is still its correlation id, answered on every response.
    answer = await clients[1].get(f"/{second}/v1/items/8")
    assert uuid.UUID(answer.headers["x-correlation-id"])
    for client in clients:
        await client.aclose()
