"""`/readyz` names the dependency that is down: a broker that keeps its connections open
and answers nothing (frozen, partitioned away) is `kafka: unavailable`, though an idle
relay, which has sent nothing, saw no error."""

from __future__ import annotations

import pytest

from services.cli import composition_root
from tests.fakes.harness import fake_service

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    ("answers", "status", "kafka"), [(True, 200, "ok"), (False, 503, "unavailable")]
)
async def test_readyz_asks_the_broker_and_names_it_when_it_does_not_answer(
    answers: bool, status: int, kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fake_service("intake", composition_root("intake")) as intake:
        asked: list[float | None] = []

        async def ping(timeout: float | None) -> bool:  # noqa: ASYNC109 - its signature
            asked.append(timeout)
            return answers

        monkeypatch.setattr(intake.runner.broker, "ping", ping)
        intake.runner.started = True
        async with intake.http() as api:
            answer = await api.get("/intake/v1/readyz")

    assert answer.status_code == status, answer.text
    assert answer.json()["checks"]["kafka"] == kafka
    assert answer.json()["checks"]["mongodb"] == "ok"
    assert asked == [intake.runner.settings.kafka_ping_timeout_seconds]
