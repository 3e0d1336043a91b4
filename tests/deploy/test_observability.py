"""The operator's side of /metrics: the alert rules pass `promtool check rules` and their
own `promtool test rules` cases, and the alerts and the Grafana dashboard read only
metrics the services export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import shared.metrics  # noqa: F401 - registers the services' metrics

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
    return set(re.findall(r"\b(yuqing_[a-z_]+|up)\b", expr))


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
        "up",
    } <= read
    assert read <= exported(), read - exported()


def test_the_dashboard_reads_only_exported_metrics_from_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    read = {name for expr in exprs for name in metric_names(expr)}
    assert read <= exported(), read - exported()
    assert {"yuqing_consumer_lag", "yuqing_outbox_backlog", "yuqing_obligations_owed"} <= read
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
