"""Shared fixtures. Tests that need Kafka talk to a real broker and fail when it is missing.

The broker is ``$SWITCHBOARD_TEST_KAFKA`` (default 127.0.0.1:9092); ``bash deploy/test.sh``
starts one. Every test gets its own topic prefix, so tests never see each other's records.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from bus.admin import ensure_topics
from bus.options import client_options
from models.config import DEFAULT_DEPARTMENTS, KafkaConfig
from models.topics import Topics


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    address = os.environ.get("SWITCHBOARD_TEST_KAFKA", "127.0.0.1:9092")
    if not _reachable(address):
        pytest.fail(
            f"no Kafka broker at {address}: run `bash deploy/test.sh`, or start one with "
            "`deploy/kafka/kafka.sh start 9092 /tmp/kafka` (or set SWITCHBOARD_TEST_KAFKA)",
            pytrace=False,
        )
    return address


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> Iterator[KafkaConfig]:
    """A config with a prefix of its own: topics created by this test are this test's alone.

    The topics are deleted afterwards: a whole suite would otherwise leave thousands of
    partitions behind, and the broker would run out of file handles.
    """
    config = KafkaConfig(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=3,
        publish_timeout_s=5.0,
    )
    yield config
    worker = threading.Thread(target=asyncio.run, args=(_delete_topics(config),), daemon=True)
    worker.start()
    worker.join(timeout=15)


async def _delete_topics(config: KafkaConfig) -> None:
    admin = AIOKafkaAdminClient(**client_options(config))
    try:
        await admin.start()
        mine = [t for t in await admin.list_topics() if t.startswith(f"{config.topic_prefix}.")]
        if mine:
            await admin.delete_topics(mine, timeout_ms=10_000)
    except Exception:  # best effort: a test that stopped the broker leaves its topics behind
        pass
    finally:
        await admin.close()


@pytest.fixture
def topics(kafka_config: KafkaConfig) -> Topics:
    return Topics(kafka_config.topic_prefix)


@pytest.fixture
async def created_topics(kafka_config: KafkaConfig, topics: Topics) -> Topics:
    await ensure_topics(kafka_config, topics.all(DEFAULT_DEPARTMENTS))
    return topics


async def read_topic(config: KafkaConfig, topic: str, expected: int, timeout: float = 30.0) -> list[object]:
    """Read *topic* from the beginning until *expected* records arrived or *timeout* passed."""
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(config),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[object] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < expected and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


@pytest.fixture
def read() -> object:
    """``await read(config, topic, expected)``: records of *topic* from the beginning."""
    return read_topic


@pytest.fixture
async def unique() -> AsyncIterator[str]:
    yield uuid.uuid4().hex[:8]


@pytest.fixture
async def connector_context(kafka_config: KafkaConfig, created_topics: Topics) -> AsyncIterator[object]:
    """A real :class:`connectors.base.ConnectorContext` whose publish goes to this test's topics.

    Build the connector under test with ``CHANNEL_TYPE.factory(config, connector_context)``.
    """
    import structlog
    from prometheus_client import CollectorRegistry

    from bus.producer import Producer
    from bus.publisher import InboundPublisher
    from bus.state import KafkaStateStore
    from connectors.base import ConnectorContext
    from connectors.metrics import ChannelMetricFamilies
    from switchboard.supervision import Readiness, Supervisor

    producer = Producer(kafka_config, idempotent=False)
    await producer.start()
    publisher = InboundPublisher(producer, created_topics, kafka_config.max_record_bytes)
    readiness = Readiness()
    logger = structlog.get_logger("test")
    supervisor = Supervisor(readiness, logger)
    context = ConnectorContext(
        publish=publisher.publish,
        quarantine=publisher.quarantine,
        state=KafkaStateStore(producer, created_topics.state, "test-instance"),
        health=readiness.component("test-instance"),
        metrics=ChannelMetricFamilies(CollectorRegistry()).bind("test", "test-instance"),
        spawn=supervisor.spawn,
        logger=logger,
    )
    try:
        yield context
    finally:
        await supervisor.stop()
        await producer.stop()
