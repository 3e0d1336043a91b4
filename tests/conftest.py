"""Fixtures for the real parts: a Kafka-protocol broker and a MongoDB-protocol server.

Which ones: the URLs in KAFKA_BOOTSTRAP_SERVERS / MONGODB_URL when set (external);
testcontainers when YUQING_TEST_INFRA=containers; otherwise the embedded Tansu and
SecantusDB, started once per test session on free ports.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from shared.embedded import EmbeddedInfra
from shared.settings import Settings
from shared.store import Document


@dataclass(frozen=True)
class Infra:
    kafka: str
    mongo: str


def _containers() -> Iterator[Infra]:
    import re
    import time

    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy
    from testcontainers.kafka import KafkaContainer

    # A single-node replica set (the event store appends in multi-document transactions),
    # without root credentials: with them the image's mongod enables authorization, which
    # a replica set accepts only with a key file.
    mongo = (
        DockerContainer("mongo:7")
        .with_command("--replSet rs0 --bind_ip_all")
        .with_exposed_ports(27017)
        .waiting_for(LogMessageWaitStrategy(re.compile("waiting for connections", re.I)))
    )
    with KafkaContainer() as kafka, mongo:
        initiate = "rs.initiate({_id:'rs0',members:[{_id:0,host:'localhost:27017'}]})"
        mongo.exec(["mongosh", "--quiet", "--eval", initiate])
        deadline = time.monotonic() + 60
        while (
            b"true"
            not in mongo.exec(
                ["mongosh", "--quiet", "--eval", "db.hello().isWritablePrimary"]
            ).output
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the MongoDB container's replica set elected no primary")
            time.sleep(0.5)
        host, port = mongo.get_container_host_ip(), mongo.get_exposed_port(27017)
        url = f"mongodb://{host}:{port}/?directConnection=true"
        yield Infra(kafka=kafka.get_bootstrap_server(), mongo=url)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    mongo = os.environ.get("MONGODB_URL")
    if os.environ.get("YUQING_TEST_INFRA") == "containers" and not (kafka or mongo):
        yield from _containers()
        return
    data_dir: Path = tmp_path_factory.mktemp("embedded")
    embedded = EmbeddedInfra(
        Settings(
            kafka_bootstrap_servers=kafka,
            mongodb_url=mongo,
            data_dir=data_dir,
            embedded_kafka_port=0,
            embedded_mongo_port=0,
        )
    )
    resolved = embedded.start()
    try:
        assert resolved.kafka_bootstrap_servers
        assert resolved.mongodb_url
        yield Infra(kafka=resolved.kafka_bootstrap_servers, mongo=resolved.mongodb_url)
    finally:
        embedded.stop()


@pytest.fixture
def settings(infra: Infra, tmp_path: Path) -> Settings:
    """Settings for one test: its own databases and topics on the shared servers."""
    run = uuid.uuid4().hex[:10]
    return Settings(
        kafka_bootstrap_servers=infra.kafka,
        mongodb_url=infra.mongo,
        db_prefix=f"t{run}",
        topic_prefix=f"t{run}.",
        topic_partitions=2,
        data_dir=tmp_path,
        secret="test-secret-key-with-enough-length-for-hs256",
        outbox_poll_seconds=0.1,
    )


@pytest.fixture(scope="session")
async def mongo_client(infra: Infra) -> AsyncIterator[AsyncMongoClient[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo, tz_aware=True)
    yield client
    await client.close()
