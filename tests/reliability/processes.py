"""The distributed shape as an operator runs it: one `yuqing serve <name>` process per
service, on a Tansu and a SecantusDB of the test's own (so that a test may kill any of
them with -9 and start it again: the database on the same storage, the broker fresh)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.embedded import ChildServer, free_port, free_ports, secantus_server, tansu_server
from shared.settings import SERVICE_NAMES

YUQING = str(Path(sys.executable).with_name("yuqing"))
START_TIMEOUT = 90.0
PREFIXES = {
    "intake": "/intake/v1",
    "grading": "/grading/v1",
    "notification": "/notifications/v1",
    "statement": "/statements/v1",
    "archive": "/archive/v1",
}


@dataclass
class Server:
    """An embedded server of the test's own on a fixed port (and storage, for the database)."""

    server: ChildServer

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def start(self) -> None:
        self.server.start(START_TIMEOUT)

    def kill(self) -> None:
        """kill -9: no shutdown of its own; only what it had put on disk survives."""
        process = self.server.process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        self.server.stop()


@contextmanager
def database(tmp: Path) -> Iterator[Server]:
    """SecantusDB, run as `yuqing up` runs it (journaled, synced on commit)."""
    server = Server(secantus_server(free_port(), tmp / "mongo", tmp / "logs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def broker(tmp: Path) -> Iterator[Server]:
    server = Server(tansu_server(free_port(), tmp / "logs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class ServiceProcess:
    """One `yuqing serve <name>`, started, killed -9 and started again on the same port."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def port(self) -> int:
        return int(self.env["YUQING_HTTP_PORT"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1} =====\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [YUQING, "serve", self.name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """As an operator stops it: SIGTERM, then -9 if it does not end."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    async def serving(self, http: httpx.AsyncClient) -> bool:
        """Whether it answers /readyz with its service started (its consumer may be joining)."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            answer = await http.get(f"{self.base_url}{PREFIXES[self.name]}/readyz", timeout=3.0)
        except httpx.HTTPError:
            return False
        checks = answer.json().get("checks", {}) if answer.status_code in (200, 503) else {}
        return bool(checks.get("started") == "ok")

    async def wait_serving(self, http: httpx.AsyncClient, within: float = START_TIMEOUT) -> float:
        started = time.monotonic()
        while not await self.serving(http):
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            if time.monotonic() - started > within:
                raise AssertionError(f"{self.name} not serving within {within}s:\n{self.tail()}")
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = [line for line in text.splitlines() if '"http request"' not in line]
        return "\n".join(kept[-lines:])


@dataclass
class System:
    """The five service processes."""

    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @classmethod
    def of(cls, env: dict[str, str], logs: Path) -> System:
        logs.mkdir(parents=True, exist_ok=True)
        ports = free_ports(len(SERVICE_NAMES))
        return cls(
            {
                name: ServiceProcess(
                    name, {**env, "YUQING_HTTP_PORT": str(port)}, logs / f"{name}.log"
                )
                for name, port in zip(SERVICE_NAMES, ports, strict=True)
            }
        )

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def start(self) -> None:
        for service in self.services.values():
            service.start()

    def kill(self) -> None:
        """kill -9 of every process at once (each signalled before any is waited for)."""
        running = [s.process for s in self.services.values() if s.process is not None]
        for process in running:
            process.send_signal(signal.SIGKILL)
        for process in running:
            process.wait(timeout=10)

    def stop(self) -> None:
        for service in self.services.values():
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            service.stop()

    async def wait_serving(self, http: httpx.AsyncClient) -> float:
        started = time.monotonic()
        await asyncio.gather(*(s.wait_serving(http) for s in self.services.values()))
        return time.monotonic() - started


def clean_env() -> dict[str, str]:
    """The test process's environment without what would point a service elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URL") and not k.startswith("YUQING_")
    }
