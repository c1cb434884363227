"""The exactly-once loop when a commit fails: the partition starts over, nothing is lost or doubled."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from bus.admin import ensure_topics
from bus.options import client_options
from bus.transactional import LoopTuning, Output, Record, TransactionalLoop
from models.config import KafkaConfig
from models.topics import TopicSpec
from tests.conftest import read_topic

TUNING = LoopTuning(max_records=20, session_timeout_ms=6_000, heartbeat_interval_ms=500, retry_backoff_s=0.2)


class Copier:
    """Copies each record to *sink*; can pause after a number of batches so a test can intervene."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.batches = 0
        self.restarted: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.reached = asyncio.Event()
        self.pause_after: int | None = None

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        return None

    def released(self, partitions: Collection[TopicPartition]) -> None:
        self.restarted.extend(tp.partition for tp in partitions)

    async def process(self, records: Sequence[Record]) -> Sequence[Output]:
        self.batches += 1
        if self.pause_after is not None and self.batches == self.pause_after:
            self.reached.set()
            await self.gate.wait()
        return [
            Output(TopicPartition(r.topic, r.partition), self.sink, r.key, r.value, [], partition=0)
            for r in records
        ]

    def committed(self, outputs: Sequence[Output], seconds: float) -> None:
        return None


async def fill(config: KafkaConfig, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(**client_options(config), acks="all")
    await producer.start()
    try:
        for n in range(count):
            await producer.send(topic, f"record-{n}".encode(), key=b"one key", partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_fenced_commit_starts_the_partition_over_and_nothing_is_lost_or_doubled(
    kafka_config: KafkaConfig,
) -> None:
    kafka_config = kafka_config.model_copy(update={"partitions": 1})
    source, sink = f"{kafka_config.topic_prefix}.source", f"{kafka_config.topic_prefix}.sink"
    await ensure_topics(kafka_config, [TopicSpec(source), TopicSpec(sink)])
    await fill(kafka_config, source, 200)
    copier = Copier(sink)
    copier.pause_after = 3
    copier.gate.clear()
    group = f"{kafka_config.topic_prefix}-copier"
    loop = TransactionalLoop(
        kafka_config,
        topic=source,
        group_id=group,
        processor=copier,
        exactly_once=True,
        logger=structlog.get_logger("test"),
        tuning=TUNING,
    )
    await loop.start()
    rogue = None
    try:
        await asyncio.wait_for(copier.reached.wait(), timeout=30)
        # Another producer takes the partition's transactional id: the loop's producer is fenced,
        # so the batches in flight fail and the partition must start again from its commit.
        rogue = AIOKafkaProducer(**client_options(kafka_config), transactional_id=f"{group}.{source}.0")
        await rogue.start()
        copier.gate.set()
        records = await read_topic(kafka_config, sink, 200, timeout=60)
    finally:
        await loop.stop()
        if rogue is not None:
            await rogue.stop()
    values = sorted(r.value for r in records)  # type: ignore[attr-defined]
    assert values == sorted(f"record-{n}".encode() for n in range(200))
    assert 0 in copier.restarted  # the fenced partition was re-initialized
