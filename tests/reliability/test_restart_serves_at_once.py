"""A service killed with -9 and started again answers HTTP before its consumer group lets
it back in: the group waits out the dead member's session, the API does not wait with it.

`yuqing serve grading` runs as a process of its own on the session's broker and database;
it is killed while it is a member of its group, started again at once, and asked for
`/readyz` from the moment its port opens: it answers 200 with the consumer still joining,
and later with the consumer in (and a report filed meanwhile graded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.embedded import free_port
from tests.conftest import Infra

YUQING = str(Path(sys.executable).with_name("yuqing"))
START_TIMEOUT = 90.0


def grading_env(infra: Infra, tmp: Path, port: int) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URL") and not k.startswith("YUQING_")
    }
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_DB_PREFIX=f"rs{run}",
        YUQING_TOPIC_PREFIX=f"rs{run}.",
        YUQING_HTTP_PORT=str(port),
        YUQING_DATA_DIR=str(tmp),
        YUQING_LOG_FORMAT="json",
        YUQING_SECRET="restart-secret-key-long-enough-for-hmac-sha256",
        # The group waits this long for the killed member: the restarted process answers
        # well within it, however loaded the machine.
        YUQING_KAFKA_SESSION_TIMEOUT_SECONDS="20",
    )
    return env


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [YUQING, "serve", "grading"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def readiness(port: int) -> dict[str, Any] | None:
    """/readyz as a load balancer reads it: None while the port does not answer."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/grading/v1/readyz", timeout=2.0)
    except httpx.TransportError:
        return None
    body: dict[str, Any] = r.json()
    body["status_code"] = r.status_code
    return body


def first_answer(port: int, check: str, state: str, pause: float) -> dict[str, Any]:
    """The first /readyz answer whose `check` reads `state`."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        answer = readiness(port)
        if answer is not None and answer["checks"].get(check) == state:
            return answer
        time.sleep(pause)
    raise AssertionError(f"grading's /readyz never said {check}: {state}")


def serving(port: int) -> dict[str, Any]:
    return first_answer(port, "started", "ok", pause=0.05)


def wait_joined(port: int) -> dict[str, Any]:
    return first_answer(port, "consumer", "ok", pause=0.2)


@pytest.fixture
def grading(infra: Infra, tmp_path: Path) -> tuple[dict[str, str], Path, int]:
    port = free_port()
    return grading_env(infra, tmp_path, port), tmp_path / "grading.log", port


def test_a_killed_service_restarted_at_once_answers_before_its_group_lets_it_back_in(
    grading: tuple[dict[str, str], Path, int],
) -> None:
    env, log, port = grading
    first = start(env, log)
    try:
        joined = wait_joined(port)
        assert joined["status_code"] == 200
        first.send_signal(signal.SIGKILL)  # no LeaveGroup: the group waits out its session
        first.wait(timeout=10)

        killed_at = time.monotonic()
        second = start(env, log)
        try:
            answer = serving(port)
            answered = time.monotonic() - killed_at
            print(f"restarted: first /readyz answer after {answered:.1f} s: {answer}")
            # Served with the database and the broker checked, the consumer still outside.
            assert answer["status_code"] == 200, answer
            assert answer["checks"]["mongodb"] == "ok"
            assert answer["checks"]["consumer"] == "joining", answer
            rejoined = wait_joined(port)
            assert rejoined["status_code"] == 200
            print(f"restarted: consumer joined after {time.monotonic() - killed_at:.1f} s")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
