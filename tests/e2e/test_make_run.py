"""`yuqing up` with nothing configured: its own embedded servers, data kept on disk.

Stopped as an operator stops it: Ctrl-C in a terminal (SIGINT to the whole foreground
process group) or Kubernetes' SIGTERM, and started again at once on the same ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shared.embedded import free_ports
from tests.e2e.conftest import RunningSystem, system_env, wait_for
from tests.e2e.test_walking_skeleton import incident_view, report

pytestmark = pytest.mark.e2e

# What an operator may wait for a stop, from the signal to the process gone.
STOP_WITHIN = 5.0


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class ProcessGroup(RunningSystem):
    """`yuqing up` as a terminal runs it: the leader of a process group of its own, which
    a Ctrl-C reaches whole (yuqing and whatever it started in the group)."""

    def __init__(self, env: dict[str, str], start_timeout: float = 90.0) -> None:
        super().__init__(env, start_timeout, own_session=True)

    def signal_group(self, sig: signal.Signals) -> tuple[float, list[str]]:
        """Send `sig` to the whole group; the seconds until yuqing exited, and what it
        printed from the signal on."""
        printed = len(self.output)
        sent = time.monotonic()
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            took = time.monotonic() - sent
            self.stop()
            raise AssertionError(
                f"yuqing did not exit within {STOP_WITHIN}s of {sig.name} "
                f"(still running after {took:.1f}s):\n{self.log_tail()}"
            ) from None
        took = time.monotonic() - sent
        self._reader.join(timeout=10)  # to the end of what it printed
        return took, self.output[printed:]


# The system's own news, which may fall in the stop's window on a loaded machine: the
# delivery loop reaching a page's recipient (no channel is configured here, so it reaches
# nobody), and a relay's first check after the restart (the embedded broker keeps nothing,
# so each restart is a new broker life whose epoch the relay marks).
NOT_THE_STOP = {
    "no channel reaches this person",
    "marked the new epoch past where consumers of the lost broker stood",
}


def complaints(lines: list[str]) -> list[str]:
    """The lines at level warning or above, and any broker connection noise."""
    found = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        level = record.get("level") if isinstance(record, dict) else None
        told = record.get("event") if isinstance(record, dict) else None
        if told in NOT_THE_STOP:
            continue
        if level in ("warning", "error", "critical") or "Unable connect to node" in line:
            found.append(line)
    return found


def duties(view: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(o["obligation_id"], o["kind"], o["deadline"], o["state"]) for o in view["obligations"]]


def stop_cleanly(system: ProcessGroup, sig: signal.Signals) -> None:
    took, printed = system.signal_group(sig)
    print(f"{sig.name} to the process group: yuqing exited in {took:.2f}s")
    assert system.process.returncode == 0, system.log_tail()
    assert complaints(printed) == [], "\n".join(printed)


def test_an_incident_survives_stopping_and_starting_the_system(tmp_path: Path) -> None:
    kafka_port, mongo_port = free_ports(2)
    env = system_env(
        tmp_path,
        YUQING_EMBEDDED_KAFKA_PORT=str(kafka_port),
        YUQING_EMBEDDED_MONGO_PORT=str(mongo_port),
    )

    first = ProcessGroup(env)
    try:
        with first.client() as api:
            incident_id = api.post("/intake/v1/reports", json=report()).json()["incident_id"]
            owed = wait_for(
                lambda: api.get(
                    "/notifications/v1/obligations", params={"incident_id": incident_id}
                ).json()["count"],
                lambda count: count >= 2,
                what="the level-1 duties opened",
            )
            # Every duty in the archive too, so the view is complete before the stop.
            before = wait_for(
                lambda: incident_view(api, incident_id),
                lambda v: v.get("level") == 1 and len(v.get("obligations", [])) == owed,
                what="graded incident with all its duties",
            )
        # Ctrl-C in the terminal that runs `make run`.
        stop_cleanly(first, signal.SIGINT)
    finally:
        first.stop()
    assert port_is_free(kafka_port), "the embedded broker was left behind"
    assert port_is_free(mongo_port), "the embedded database was left behind"
    assert (tmp_path / "mongo").is_dir()

    # At once, on the same ports: a clean stop leaves nothing that blocks them.
    second = ProcessGroup(env)
    try:
        with second.client() as api:
            after = incident_view(api, incident_id)
        # Kubernetes' stop, within its grace period.
        stop_cleanly(second, signal.SIGTERM)
    finally:
        second.stop()
    assert after["level"] == 1
    # The duties as they were (their pages' outcomes may still be coming in: left out).
    assert duties(after) == duties(before)
    assert [r["report_id"] for r in after["reports"]] == [r["report_id"] for r in before["reports"]]
    assert port_is_free(kafka_port), "the embedded broker was left behind"
    assert port_is_free(mongo_port), "the embedded database was left behind"
