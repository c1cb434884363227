"""A Kafka broker a test may stop and start, for tests of what a channel does in a broker outage.

* :class:`OwnBroker` runs ``deploy/kafka/kafka.sh`` on a free loopback port pair; :func:`running_broker`
  starts one and always stops it again.
* :func:`outage_rig` builds, on such a broker, the :class:`ConnectorContext` the host would: short
  publish and request timeouts (so an outage is noticed within a client's patience), the topics
  created, a real producer; it stops the supervisor and the producer on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from bus.admin import ensure_topics
from bus.producer import Producer
from bus.publisher import InboundPublisher
from bus.state import KafkaStateStore
from connectors.base import ConnectorContext
from connectors.metrics import ChannelMetricFamilies
from models.config import KafkaConfig
from models.topics import Topics
from switchboard.supervision import Readiness, Supervisor

__all__ = ["KAFKA_SH", "OutageRig", "OwnBroker", "free_port_pair", "outage_rig", "running_broker"]

KAFKA_SH = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "kafka.sh"


def free_port_pair() -> int:
    """A port whose successor is free too (the broker's controller listens on PORT+1)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65535:
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no free port pair")


class OwnBroker:
    """A broker this test may stop and start (``deploy/kafka/kafka.sh``), its data in *directory*."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port_pair()
        self.directory = directory

    async def _run(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            "bash", str(KAFKA_SH), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output = (await asyncio.wait_for(process.communicate(), 180))[0].decode()
        assert process.returncode == 0, output

    async def start(self) -> None:
        await self._run("start", str(self.port), str(self.directory))

    async def stop(self) -> None:
        await self._run("stop", str(self.directory))


@contextlib.asynccontextmanager
async def running_broker(directory: Path) -> AsyncIterator[OwnBroker]:
    """A started :class:`OwnBroker`, stopped on the way out whatever the test did to it."""
    broker = OwnBroker(directory)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@dataclasses.dataclass(frozen=True)
class OutageRig:
    config: KafkaConfig
    topics: Topics
    context: ConnectorContext


@contextlib.asynccontextmanager
async def outage_rig(
    broker: OwnBroker, *, topic_prefix: str, channel: str, instance: str, idempotent: bool
) -> AsyncIterator[OutageRig]:
    """A connector context publishing to *broker*; its supervisor and producer stop on the way out."""
    config = KafkaConfig(
        bootstrap=f"127.0.0.1:{broker.port}",
        topic_prefix=topic_prefix,
        partitions=2,
        publish_timeout_s=2.0,
        request_timeout_ms=3000,
    )
    topics = Topics(config.topic_prefix)
    await ensure_topics(config, topics.all(["general"]))
    producer = Producer(config, idempotent=idempotent)
    await producer.start()
    readiness = Readiness()
    logger = structlog.get_logger("test")
    supervisor = Supervisor(readiness, logger)
    publisher = InboundPublisher(producer, topics, config.max_record_bytes)
    context = ConnectorContext(
        publish=publisher.publish,
        quarantine=publisher.quarantine,
        state=KafkaStateStore(producer, topics.state, instance),
        health=readiness.component(instance),
        metrics=ChannelMetricFamilies(CollectorRegistry()).bind(channel, instance),
        spawn=supervisor.spawn,
        logger=logger,
    )
    try:
        yield OutageRig(config, topics, context)
    finally:
        await supervisor.stop()
        await producer.stop()
