"""The Kubernetes manifests: the base and the production overlay, rendered (see
kustomize.py), every manifest validated against the Kubernetes schemas that
kubernetes-validate ships (strict: an unknown field is an error), and what an operator
relies on: secrets referenced and never embedded, the policy files mounted as config/ lays
them out, scaling bounded by the partitions, every service covered by a disruption budget
and by network policies, TLS and unbuffered streams on the Ingress."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.settings import SERVICE_NAMES
from tests.deploy.kustomize import KustomizeError, render

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s" / "base"
PRODUCTION = ROOT / "k8s" / "overlays" / "production"


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_every_rendered_manifest_is_valid_kubernetes(directory: Path) -> None:
    manifests = render(directory)
    assert len(manifests) > 10
    for manifest in manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{directory.name}: {name}: {exc.message} at {list(exc.path)}")
        assert manifest["metadata"].get("namespace", "yuqing") == "yuqing", name


def test_the_secret_example_is_valid_and_no_secret_is_rendered() -> None:
    for directory in (BASE, PRODUCTION):
        assert not by_kind(render(directory), "Secret"), "Secrets are referenced, not shipped"
    examples = list(yaml.safe_load_all((BASE / "secret.example.yaml").read_text()))
    for example in examples:
        kubernetes_validate.validate(example, kubernetes_validate.latest_version(), True)
    # Every channel variable of the shipped policy has its place in the channels example.
    policy = yaml.safe_load((ROOT / "config" / "obligations.yaml").read_text(encoding="utf-8"))
    wanted = {
        str(value)
        for channel in policy["delivery"]["channels"].values()
        for key, value in channel.items()
        if key.endswith("_env")
    }
    assert set(by_kind(examples, "Secret")["yuqing-channels"]["stringData"]) == wanted


def test_each_service_reads_its_settings_and_secrets_and_mounts_the_policy_files() -> None:
    manifests = render(PRODUCTION)
    deployments = by_kind(manifests, "Deployment")
    assert set(deployments) == set(SERVICE_NAMES)
    config = by_kind(manifests, "ConfigMap")
    settings = config["yuqing-config"]["data"]
    mounted: dict[str, str] = {}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["command"] == ["yuqing", "serve", name]
        assert container["image"] == "registry.example.org/yuqing/yuqing:0.1.0"
        refs = {
            (kind, source[kind]["name"])
            for source in container["envFrom"]
            for kind in ("configMapRef", "secretRef")
            if kind in source
        }
        assert ("secretRef", "yuqing-secret") in refs
        assert ("configMapRef", "yuqing-config") in refs
        assert (("secretRef", "yuqing-channels") in refs) == (name == "notification")
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["terminationGracePeriodSeconds"] >= 30
        [policies] = [v for v in pod["volumes"] if v["name"] == "policies"]
        mounted = {}
        for source in policies["projected"]["sources"]:
            data = config[source["configMap"]["name"]]["data"]
            items = source["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                mounted[item["path"]] = data[item["key"]]
    # The mount is config/ file for file, and every path variable points into it.
    shipped = {
        str(p.relative_to(ROOT / "config")): p.read_text(encoding="utf-8")
        for p in (ROOT / "config").rglob("*")
        if p.is_file()
    }
    assert mounted == shipped
    paths = {k: v for k, v in settings.items() if k.endswith(("_PATH", "_TEMPLATE"))}
    assert len(paths) == 8
    for variable, path in paths.items():
        assert Path(path).relative_to("/etc/yuqing").as_posix() in shipped, variable


def test_scaling_is_bounded_by_partitions_and_every_service_has_a_budget() -> None:
    manifests = render(PRODUCTION)
    settings = by_kind(manifests, "ConfigMap")["yuqing-config"]["data"]
    partitions = int(settings["YUQING_TOPIC_PARTITIONS"])
    hpas = by_kind(manifests, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == set(SERVICE_NAMES)
    for hpa in hpas.values():
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    budgets = by_kind(manifests, "PodDisruptionBudget")
    covered = {
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for b in budgets.values()
    }
    assert covered == set(SERVICE_NAMES)


def test_network_policies_deny_by_default_and_only_notification_reaches_out() -> None:
    policies = by_kind(render(PRODUCTION), "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    outside = [
        p
        for p in policies.values()
        for rule in p["spec"].get("egress", [])
        for peer in rule["to"]
        if "ipBlock" in peer
    ]
    assert [p["spec"]["podSelector"]["matchLabels"] for p in outside] == [
        {"app.kubernetes.io/name": "yuqing", "app.kubernetes.io/component": "notification"}
    ]
    egress_ports = {
        port["port"]
        for p in policies.values()
        if "ipBlock" not in str(p)
        for rule in p["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }
    assert egress_ports == {53, 9092, 9093, 27017}


def test_the_ingress_has_tls_routes_everything_and_streams_unbuffered() -> None:
    ingresses = by_kind(render(PRODUCTION), "Ingress")
    routes: dict[str, str] = {}
    for ingress in ingresses.values():
        assert ingress["spec"]["tls"][0]["secretName"] == "yuqing-tls"
        for rule in ingress["spec"]["rules"]:
            assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
            for path in rule["http"]["paths"]:
                routes[path["path"]] = path["backend"]["service"]["name"]
    assert routes["/"] == "intake"
    assert routes["/asyncapi.json"] == routes["/metrics"] == "archive"
    for prefix, service in (
        ("/intake/v1", "intake"),
        ("/grading/v1", "grading"),
        ("/notifications/v1", "notification"),
        ("/statements/v1", "statement"),
        ("/archive/v1", "archive"),
    ):
        assert routes[prefix] == service
    streams = ingresses["yuqing-streams"]
    paths = [p["path"] for r in streams["spec"]["rules"] for p in r["http"]["paths"]]
    assert "/archive/v1/events" in paths
    annotations = streams["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert "nginx.ingress.kubernetes.io/proxy-buffering" not in ingresses["yuqing"]["metadata"].get(
        "annotations", {}
    )
    # An attachment may be up to 20 MiB: its route alone takes more than the 2m of the rest.
    uploads = ingresses["yuqing-uploads"]
    (upload,) = [p for r in uploads["spec"]["rules"] for p in r["http"]["paths"]]
    assert re.fullmatch(upload["path"], "/intake/v1/reports/r-1/attachments")
    assert upload["backend"]["service"]["name"] == "intake"
    limit = uploads["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(limit.rstrip("m")) * 2**20 > 20 * 2**20
    assert (
        ingresses["yuqing"]["metadata"]["annotations"][
            "nginx.ingress.kubernetes.io/proxy-body-size"
        ]
        == "2m"
    )


def test_the_renderer_refuses_what_it_does_not_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="commonLabels"):
        render(tmp_path)
