"""A renderer of the kustomize subset that k8s/ uses, for the tests: PyPI has no kustomize
(the packages named so are other things), and kubectl is not here. `kubectl kustomize`
renders the same directories; this one refuses any kustomization key it does not know, so
k8s/ cannot drift into features it would render differently.

The subset: `resources` (files, or directories with a kustomization.yaml, rendered first),
`configMapGenerator` (`files`, `behavior` create/replace/merge) with
`generatorOptions.disableNameSuffixHash: true` (no hash suffixes to compute), `patches`
(strategic-merge patch files naming their target by kind and name: maps merge, lists of
named items merge by name, other lists are replaced), `namespace` and `images`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KNOWN = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "images",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}


class KustomizeError(ValueError):
    pass


def render(directory: Path) -> list[Manifest]:
    spec: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise KustomizeError(f"{directory}: keys this renderer does not know: {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            manifests.extend(render(path))
        else:
            manifests.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    options = spec.get("generatorOptions", {})
    if spec.get("configMapGenerator") and options != {"disableNameSuffixHash": True}:
        raise KustomizeError(f"{directory}: only generatorOptions.disableNameSuffixHash: true")
    for generator in spec.get("configMapGenerator", []):
        _generate(directory, generator, manifests)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only patches by path: {patch}")
        for doc in yaml.safe_load_all((directory / patch["path"]).read_text()):
            if doc:
                target = _find(manifests, doc["kind"], doc["metadata"]["name"])
                if target is None:
                    raise KustomizeError(f"{patch['path']}: no {doc['kind']} {doc['metadata']}")
                merged = _merge(target, doc)
                target.clear()
                target.update(merged)
    if "namespace" in spec:
        for manifest in manifests:
            if manifest["kind"] not in CLUSTER_SCOPED:
                manifest["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in _containers(manifests):
            name = container["image"].rsplit(":", 1)[0]
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return manifests


def _generate(directory: Path, generator: dict[str, Any], manifests: list[Manifest]) -> None:
    if set(generator) - {"name", "files", "behavior"}:
        raise KustomizeError(f"configMapGenerator: only name, files, behavior: {generator}")
    data = {}
    for entry in generator.get("files", []):
        key, _, source = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = directory / source
        data[key or path.name] = path.read_text(encoding="utf-8")
    behavior = generator.get("behavior", "create")
    existing = _find(manifests, "ConfigMap", generator["name"])
    if behavior == "create":
        if existing is not None:
            raise KustomizeError(f"ConfigMap {generator['name']} exists: use behavior")
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    elif existing is None:
        raise KustomizeError(f"ConfigMap {generator['name']}: nothing to {behavior}")
    elif behavior == "replace":
        existing["data"] = data
    elif behavior == "merge":
        existing["data"] = {**existing.get("data", {}), **data}
    else:
        raise KustomizeError(f"unknown behavior {behavior}")


def _find(manifests: list[Manifest], kind: str, name: str) -> Manifest | None:
    return next((m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name), None)


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in [*base, *patch]):
        merged_list = [copy.deepcopy(i) for i in base]
        for item in patch:
            at = next((n for n, i in enumerate(merged_list) if i["name"] == item["name"]), None)
            if at is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[at] = _merge(merged_list[at], item)
        return merged_list
    return copy.deepcopy(patch)


def _containers(manifests: list[Manifest]) -> list[dict[str, Any]]:
    found = []
    for manifest in manifests:
        pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
        found.extend(pod.get("containers", []))
        found.extend(pod.get("initContainers", []))
    return found
