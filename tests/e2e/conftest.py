"""The whole system as an operator runs it: `yuqing up` in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import free_port
from tests.conftest import Infra
from tests.service.notification_receivers import HttpReceiver

YUQING = str(Path(sys.executable).with_name("yuqing"))


class RunningSystem:
    """A `yuqing up` process; its output is kept for the failure report."""

    def __init__(
        self, env: dict[str, str], start_timeout: float = 90.0, *, own_session: bool = False
    ) -> None:
        self.env = env
        self.port = int(env["YUQING_HTTP_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self.token = ""
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [YUQING, "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            # A process group of its own, as a terminal starts it (a Ctrl-C reaches it whole).
            start_new_session=own_session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(start_timeout):
            self.stop()
            raise AssertionError("yuqing up did not become ready:\n" + self.log_tail())
        if not self.token:
            # A production start prints no token: minted as its operator would.
            self.token = self._minted()

    @property
    def production(self) -> bool:
        return self.env.get("YUQING_ENVIRONMENT") == "production"

    def _minted(self) -> str:
        minted = subprocess.run(
            [YUQING, "token", "--sub", "admin", "--unit", "county", "--roles", "admin"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return minted.stdout.strip()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            if line.startswith("YUQING_TOKEN="):
                self.token = line.strip().split("=", 1)[1]
                self._ready.set()
            elif line.startswith("yuqing is up at") and self.production:
                self._ready.set()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.output[-lines:])

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def system_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URL") and not k.startswith("YUQING_")
    }
    env.update(
        YUQING_HTTP_PORT=str(free_port()),
        YUQING_DATA_DIR=str(tmp),
        YUQING_LOG_FORMAT="json",
        YUQING_SECRET="e2e-secret-key-long-enough-for-hmac-sha256",
        # The tests poll as fast as a client may not: the limit is not what they test.
        YUQING_RATE_LIMIT="100000/minute",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    """All five services on the session's broker and database, with databases of their own."""
    run = uuid.uuid4().hex[:8]
    env = system_env(
        tmp_path_factory.mktemp("system"),
        KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
        MONGODB_URL=infra.mongo,
        YUQING_DB_PREFIX=f"e2e{run}",
        YUQING_TOPIC_PREFIX=f"e2e{run}.",
        YUQING_OUTBOX_POLL_SECONDS="0.2",
    )
    running = RunningSystem(env)
    yield running
    running.stop()


def wait_for(fetch, predicate, timeout: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `fetch()` until `predicate(result)` holds; return the last result."""
    deadline = time.monotonic() + timeout
    result = fetch()
    while not predicate(result):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {result}")
        time.sleep(0.1)
        result = fetch()
    return result


@pytest.fixture
def webhook_receiver() -> Iterator[HttpReceiver]:
    """An HTTP server taking webhook pages (a system told YUQING_WEBHOOK_URL pages there)."""
    with HttpReceiver().running() as running:
        yield running
