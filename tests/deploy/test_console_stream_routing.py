"""The console's change stream in the distributed shape (one service per process behind a
gateway) is served by the archive's process, whose change feed tells each page at once,
never by a process that could only poll: deploy/nginx.conf run by a real nginx in front of
five stand-in services (which answer who they are), and the Kubernetes ingress rendered.
The stream goes out as it is written (unbuffered), not when the upstream closes it."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import free_port
from shared.settings import SERVICE_NAMES
from tests.deploy.kustomize import render
from tests.deploy.test_files import NGINX, nginx_binary
from tests.deploy.test_k8s import PRODUCTION, by_kind

# How long a stand-in holds a stream open if the test never says it was read (a hang guard,
# not a measure: the test says so as soon as it has the event).
HOLD_SECONDS = 60.0


class StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.read = threading.Event()  # the test has the stream's first event
        super().__init__(("127.0.0.1", free_port()), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def do_GET(self) -> None:
        if self.path.startswith("/events/v1/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            data = json.dumps({"served_by": self.server.name})
            self.wfile.write(f"retry: 2000\n\nevent: change\ndata: {data}\n\n".encode())
            self.wfile.flush()
            self.server.read.wait(HOLD_SECONDS)  # the stream stays open, as a real one does
            return
        body = json.dumps({"served_by": self.server.name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, dict[str, StandIn]]]:
    """deploy/nginx.conf as shipped, its upstreams pointed at stand-ins on this host."""
    binary = nginx_binary()
    services = {name: StandIn(name) for name in SERVICE_NAMES}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in services.values()]
    for thread in threads:
        thread.start()
    port = free_port()
    text = NGINX.read_text()
    text = re.sub(r"^\s*resolver .*;$", "", text, flags=re.MULTILINE)
    text = text.replace("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    text = text.replace("set $upstream $1:8000;", "set $upstream 127.0.0.1:9;")  # not used
    for name, server in services.items():
        text = text.replace(f"{name}:8000", f"127.0.0.1:{server.server_address[1]}")
    assert "set $upstream" not in re.sub(r"set \$upstream 127\.0\.0\.1:\d+;", "", text), (
        "an upstream of nginx.conf the test does not stand in for"
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    process = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5.0) as http_client:
            for _ in range(200):
                try:
                    if http_client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if process.poll() is not None:
                        _, err = process.communicate()
                        raise AssertionError(err.decode()) from None
                    threading.Event().wait(0.05)
            else:
                raise AssertionError("nginx did not answer /healthz")
        yield base, services
    finally:
        for server in services.values():
            server.read.set()
        process.terminate()
        process.wait(timeout=30)
        for server in services.values():
            server.shutdown()
            server.server_close()


def test_nginx_sends_the_console_stream_to_the_archive_unbuffered(
    gateway: tuple[str, dict[str, StandIn]],
) -> None:
    base, services = gateway
    with httpx.Client(base_url=base, timeout=httpx.Timeout(10.0, read=30.0)) as client:
        page = client.get("/dashboard")
        with client.stream("GET", "/events/v1/stream") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            told = ""
            for line in stream.iter_lines():  # while the archive still holds it open
                if line.startswith("data: "):
                    told = json.loads(line.removeprefix("data: "))["served_by"]
                    break
            services["archive"].read.set()

    assert page.json()["served_by"] == "intake"  # the console's pages: any service
    assert told == "archive"  # the change stream: the archive's, fed by its change feed


def test_the_ingress_sends_the_console_stream_to_the_archive_unbuffered() -> None:
    ingresses = by_kind(render(PRODUCTION), "Ingress")
    streams = ingresses["yuqing-streams"]
    routes = {
        p["path"]: p["backend"]["service"]["name"]
        for rule in streams["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert routes["/events/v1"] == "archive"
    assert streams["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == (
        "off"
    )
