"""A malformed plan pack stops `yuqing up` as an operator sees it: exit status 2 and one
line naming the file and the entry, no traceback, nothing left listening."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Infra
from tests.e2e.conftest import YUQING, system_env
from tests.e2e.storm import PLANS

pytestmark = pytest.mark.e2e

Edit = Callable[[dict[str, Any]], None]


def cycle(duties: dict[str, Any]) -> None:
    # 三3: the office's request and its response made to wait on each other.
    request, response = duties["levels"][3]
    request["after"], response["after"] = response["kind"], request["kind"]


def nobody(chains: dict[str, Any]) -> None:
    chains["levels"][2] = [{"role": "propaganda", "unit": "school-a"}]


def unknown_level(duties: dict[str, Any]) -> None:
    duties["levels"][5] = duties["levels"].pop(4)


@pytest.mark.parametrize(
    ("file", "edit", "named"),
    [
        (
            "obligations.yaml",
            cycle,
            r"levels\.3 \(office_request, office_response\)\.after: these duties wait on",
        ),
        ("approval.yaml", nobody, r"levels\.2\[0\] \(propaganda\): nobody in the directory holds"),
        ("obligations.yaml", unknown_level, r"levels\.5\b"),
    ],
    ids=["cycle", "role-nobody-holds", "unknown-level"],
)
def test_a_malformed_pack_stops_the_start_naming_file_and_entry(
    infra: Infra, tmp_path: Path, file: str, edit: Edit, named: str
) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(PLANS / "fourtier", pack)
    content = yaml.safe_load((pack / file).read_text(encoding="utf-8"))
    edit(content)
    (pack / file).write_text(yaml.safe_dump(content, allow_unicode=True), encoding="utf-8")
    env = system_env(
        tmp_path / "data",
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_PLAN=str(pack),
    )

    done = subprocess.run(
        [YUQING, "up"], env=env, capture_output=True, text=True, timeout=120, check=False
    )

    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(errors) == 1, done.stderr[-2000:]
    assert f"{pack / file}" in errors[0], errors
    assert re.search(named, errors[0]), errors
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
