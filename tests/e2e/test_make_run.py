"""`yuqing up` with nothing configured: its own embedded servers, data kept on disk."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shared.embedded import free_port
from tests.e2e.conftest import RunningSystem, system_env, wait_for
from tests.e2e.test_walking_skeleton import incident_view, report

pytestmark = pytest.mark.e2e


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_an_incident_survives_stopping_and_starting_the_system(tmp_path: Path) -> None:
    kafka_port, mongo_port = free_port(), free_port()
    env = system_env(
        tmp_path,
        YUQING_EMBEDDED_KAFKA_PORT=str(kafka_port),
        YUQING_EMBEDDED_MONGO_PORT=str(mongo_port),
    )

    first = RunningSystem(env)
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
    finally:
        first.stop()
    assert first.process.returncode == 0, first.log_tail()
    assert port_is_free(kafka_port), "the embedded broker was left behind"
    assert port_is_free(mongo_port), "the embedded database was left behind"
    assert (tmp_path / "mongo").is_dir()

    second = RunningSystem(env)
    try:
        with second.client() as api:
            after = incident_view(api, incident_id)
    finally:
        second.stop()
    assert after["level"] == 1
    assert after["obligations"] == before["obligations"]
    assert [r["report_id"] for r in after["reports"]] == [r["report_id"] for r in before["reports"]]
