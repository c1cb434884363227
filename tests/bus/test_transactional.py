"""The exactly-once loop when a commit fails: the batch's partitions start over, nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus import transactional
from bus.admin import ensure_topics
from bus.fencing import GroupMetadata, group_metadata
from bus.options import client_options
from bus.transactional import LoopTuning, Output, Record, TransactionalLoop, let_io_progress
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
        self.batch_partitions: list[set[int]] = []  # the input partitions of each batch

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        return None

    def released(self, partitions: Collection[TopicPartition]) -> None:
        self.restarted.extend(tp.partition for tp in partitions)

    async def process(self, records: Sequence[Record]) -> Sequence[Output]:
        self.batches += 1
        self.batch_partitions.append({r.partition for r in records})
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
    """*count* records spread over every partition of *topic*, so a batch spans several."""
    producer = AIOKafkaProducer(**client_options(config), acks="all")
    await producer.start()
    try:
        for n in range(count):
            await producer.send(
                topic, f"record-{n}".encode(), key=b"one key", partition=n % config.partitions
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _copy_with_an_intervention(
    kafka_config: KafkaConfig, intervene: Callable[[TransactionalLoop], Awaitable[object]]
) -> tuple[list[bytes], Copier]:
    """Copy 300 records while *intervene* runs in the middle (a batch in flight, the next in hand)."""
    source, sink = f"{kafka_config.topic_prefix}.source", f"{kafka_config.topic_prefix}.sink"
    await ensure_topics(kafka_config, [TopicSpec(source), TopicSpec(sink)])
    await fill(kafka_config, source, 300)
    copier = Copier(sink)
    copier.pause_after = 2
    copier.gate.clear()
    loop = TransactionalLoop(
        kafka_config,
        topic=source,
        group_id=f"{kafka_config.topic_prefix}-copier",
        processor=copier,
        exactly_once=True,
        logger=structlog.get_logger("test"),
        tuning=replace(TUNING, max_records=150),  # batches of two partitions' records
    )
    await loop.start()
    try:
        await asyncio.wait_for(copier.reached.wait(), timeout=30)
        await intervene(loop)
        copier.gate.set()
        records = await read_topic(kafka_config, sink, 300, timeout=60)
    finally:
        await loop.stop()
    return [r.value for r in records], copier  # type: ignore[attr-defined]


def assert_one_whole_batch_started_over(copier: Copier) -> None:
    restarted = set(copier.restarted)
    assert len(restarted) > 1 and restarted in copier.batch_partitions


EVERY_RECORD = sorted(f"record-{n}".encode() for n in range(300))


async def test_a_fenced_producer_starts_the_batch_over_and_nothing_is_lost_or_doubled(
    kafka_config: KafkaConfig,
) -> None:
    rogues: list[AIOKafkaProducer] = []

    async def take_the_transactional_id(loop: TransactionalLoop) -> None:
        # Another producer takes the loop's transactional id: the loop's producer is fenced, so
        # the batches in flight fail and every partition in them starts again from its commit.
        transactional_id = loop._delivery.transactional_id  # type: ignore[attr-defined]
        rogue = AIOKafkaProducer(**client_options(kafka_config), transactional_id=transactional_id)
        rogues.append(rogue)
        await rogue.start()

    try:
        values, copier = await _copy_with_an_intervention(kafka_config, take_the_transactional_id)
    finally:
        for rogue in rogues:
            await rogue.stop()
    assert sorted(values) == EVERY_RECORD
    assert_one_whole_batch_started_over(copier)


async def test_a_commit_the_group_refuses_starts_the_batch_over_and_nothing_is_lost_or_doubled(
    kafka_config: KafkaConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def make_the_next_commit_stale(loop: TransactionalLoop) -> None:
        # The next commit carries an older generation, as a zombie's would: the group
        # coordinator refuses it (ILLEGAL_GENERATION) and the transaction must not commit.
        def stale_once(consumer: AIOKafkaConsumer) -> GroupMetadata:
            monkeypatch.setattr(transactional, "group_metadata", group_metadata)
            current = group_metadata(consumer)
            return replace(current, generation_id=current.generation_id - 1)

        monkeypatch.setattr(transactional, "group_metadata", stale_once)

    values, copier = await _copy_with_an_intervention(kafka_config, make_the_next_commit_stale)
    assert sorted(values) == EVERY_RECORD
    assert_one_whole_batch_started_over(copier)


class WrappedDelivery:
    """Wraps the loop's delivery and notes each batch's records; subclasses add a twist."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[list[bytes | None]] = []

    async def start(self) -> None:
        await self.inner.start()

    async def open(self, partitions: Sequence[TopicPartition]) -> None:
        await self.inner.open(partitions)

    async def stop(self) -> None:
        await self.inner.stop()

    async def deliver(
        self, consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, Any]
    ) -> dict[TopicPartition, BaseException]:
        self.batches.append([o.value for w in work.values() for o in w.outputs])
        failed: dict[TopicPartition, BaseException] = await self.inner.deliver(consumer, work)
        return failed


class HeldDelivery(WrappedDelivery):
    """Holds the first batch until released."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def deliver(
        self, consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, Any]
    ) -> dict[TopicPartition, BaseException]:
        self.batches.append([o.value for w in work.values() for o in w.outputs])
        if len(self.batches) == 1:
            self.holding.set()
            await self.release.wait()
        failed: dict[TopicPartition, BaseException] = await self.inner.deliver(consumer, work)
        return failed


@contextlib.asynccontextmanager
async def copying(
    kafka_config: KafkaConfig,
    delivery: Callable[[Any], WrappedDelivery],
    *,
    exactly_once: bool = False,
    tuning: LoopTuning = TUNING,
    copier: Callable[[str], Copier] = Copier,
) -> AsyncIterator[tuple[TransactionalLoop, WrappedDelivery, AIOKafkaProducer, str, str]]:
    """A running copying loop whose delivery is wrapped by *delivery*, and a producer.

    Yields the loop, the wrapped delivery, the producer, and the source and sink topics.
    """
    source, sink = f"{kafka_config.topic_prefix}.source", f"{kafka_config.topic_prefix}.sink"
    await ensure_topics(kafka_config, [TopicSpec(source), TopicSpec(sink)])
    loop = TransactionalLoop(
        kafka_config,
        topic=source,
        group_id=f"{kafka_config.topic_prefix}-copier",
        processor=copier(sink),
        exactly_once=exactly_once,
        logger=structlog.get_logger("test"),
        tuning=tuning,
    )
    wrapped = delivery(loop._delivery)
    loop._delivery = wrapped
    producer = AIOKafkaProducer(**client_options(kafka_config), acks="all")
    await producer.start()
    await loop.start()
    try:
        yield loop, wrapped, producer, source, sink
    finally:
        await loop.stop()
        await producer.stop()


@contextlib.asynccontextmanager
async def first_batch_held(
    kafka_config: KafkaConfig, exactly_once: bool, tuning: LoopTuning = TUNING
) -> AsyncIterator[tuple[HeldDelivery, AIOKafkaProducer, str, str]]:
    """A copying loop whose first batch, the record ``first``, is held in delivery.

    Yields the delivery (``release`` it), a producer, and the source and sink topics.
    """
    async with copying(kafka_config, HeldDelivery, exactly_once=exactly_once, tuning=tuning) as running:
        loop, held, producer, source, sink = running
        assert isinstance(held, HeldDelivery)
        # Owning every partition first: a rebalance later would commit the next batch early.
        await asyncio.wait_for(_until(lambda: len(loop.owned()) == kafka_config.partitions), timeout=30)
        await producer.send_and_wait(source, b"first", partition=0)
        await asyncio.wait_for(held.holding.wait(), timeout=30)
        yield held, producer, source, sink


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
async def test_records_arriving_while_a_batch_commits_all_go_out_in_the_next_batch(
    kafka_config: KafkaConfig, exactly_once: bool
) -> None:
    # A record must wait for the commit in progress and its own, not also for a batch fetched
    # in between: that wait was most of the router's added latency at a low rate.
    async with first_batch_held(kafka_config, exactly_once) as (held, producer, source, sink):
        for n in range(3):  # one at a time: each is fetched on its own while the first commits
            await producer.send_and_wait(source, f"later-{n}".encode(), partition=n % 3)
            await asyncio.sleep(0.3)
        held.release.set()
        records = await read_topic(kafka_config, sink, 4, timeout=30)
    assert held.batches == [[b"first"], [b"later-0", b"later-1", b"later-2"]]
    assert sorted(r.value for r in records) == [b"first", b"later-0", b"later-1", b"later-2"]  # type: ignore[attr-defined]


async def test_the_next_batch_stops_growing_at_max_records(kafka_config: KafkaConfig) -> None:
    tuning = replace(TUNING, max_records=4)
    async with first_batch_held(kafka_config, False, tuning) as (held, producer, source, sink):
        for n in range(10):
            await producer.send(source, f"later-{n}".encode(), partition=0)
        await producer.flush()
        await asyncio.sleep(1.0)  # time to fetch all ten, were the batch not full at four
        held.release.set()
        records = await read_topic(kafka_config, sink, 11, timeout=30)
    assert [len(batch) for batch in held.batches] == [1, 4, 4, 2]
    assert len(records) == 11


class TimedDelivery(WrappedDelivery):
    """Notes when each batch's delivery has finished."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.finished: list[float] = []

    async def deliver(
        self, consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, Any]
    ) -> dict[TopicPartition, BaseException]:
        failed = await super().deliver(consumer, work)
        self.finished.append(time.perf_counter())
        return failed


class ComputingCopier(Copier):
    """From its second batch on, computes in 50-ms stages and lets I/O progress between them,
    until the batch before has been delivered (at most 5 s)."""

    def __init__(self, sink: str) -> None:
        super().__init__(sink)
        self.delivery: TimedDelivery | None = None
        self.stages = 0
        self.computed_until = 0.0

    async def process(self, records: Sequence[Record]) -> Sequence[Output]:
        outputs = await super().process(records)
        if self.batches > 1:
            assert self.delivery is not None
            while not self.delivery.finished and self.stages < 100:
                time.sleep(0.05)  # computing: the event loop is held
                self.stages += 1
                await let_io_progress()
            self.computed_until = time.perf_counter()
        return outputs


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
async def test_a_batch_commits_while_the_next_one_is_computed(
    kafka_config: KafkaConfig, exactly_once: bool
) -> None:
    # Processing and committing share one event loop: the commit's round trips go on only when
    # the processor lets the loop run. Batches of one record: the second is computed while the
    # first commits, and must not have to be finished before the first can land.
    source = f"{kafka_config.topic_prefix}.source"
    await ensure_topics(kafka_config, [TopicSpec(source)])
    producer = AIOKafkaProducer(**client_options(kafka_config), acks="all")
    await producer.start()
    try:
        await producer.send(source, b"first", partition=0)
        await producer.send(source, b"second", partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    tuning = replace(TUNING, max_records=1)
    async with copying(
        kafka_config, TimedDelivery, exactly_once=exactly_once, tuning=tuning, copier=ComputingCopier
    ) as running:
        loop, timed, _, _, sink = running
        assert isinstance(timed, TimedDelivery)
        copier = loop._processor
        assert isinstance(copier, ComputingCopier)
        copier.delivery = timed
        records = await read_topic(kafka_config, sink, 2, timeout=30)
    assert sorted(r.value for r in records) == [b"first", b"second"]  # type: ignore[attr-defined]
    assert timed.batches[:2] == [[b"first"], [b"second"]]
    assert timed.finished[0] < copier.computed_until
    assert copier.stages < 100


class AssignmentFails(Copier):
    """A copier whose state restore fails while ``failing`` is set (a changelog read timing out)."""

    def __init__(self, sink: str) -> None:
        super().__init__(sink)
        self.failing = False
        self.failed = 0

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        if self.failing:
            self.failed += 1
            raise TimeoutError("restoring state took too long")


class FirstDeliveryFails(WrappedDelivery):
    async def deliver(
        self, consumer: AIOKafkaConsumer, work: Mapping[TopicPartition, Any]
    ) -> dict[TopicPartition, BaseException]:
        self.batches.append([o.value for w in work.values() for o in w.outputs])
        if len(self.batches) == 1:
            return dict.fromkeys(work, RuntimeError("the commit failed"))
        failed: dict[TopicPartition, BaseException] = await self.inner.deliver(consumer, work)
        return failed


async def test_records_of_ready_partitions_go_on_while_another_partition_cannot_start_again(
    kafka_config: KafkaConfig,
) -> None:
    async with copying(kafka_config, FirstDeliveryFails, copier=AssignmentFails) as running:
        loop, _, producer, source, sink = running
        copier = loop._processor
        assert isinstance(copier, AssignmentFails)
        await asyncio.wait_for(_until(lambda: len(loop.owned()) == kafka_config.partitions), timeout=30)
        copier.failing = True  # partition 0 will not start again for now
        await producer.send_and_wait(source, b"on partition 0", partition=0)  # its commit fails
        await asyncio.wait_for(_until(lambda: copier.failed > 0), timeout=30)
        for n in range(3):  # fetched while partition 0 keeps failing to start
            await producer.send_and_wait(source, f"on partition {1 + n % 2}".encode(), partition=1 + n % 2)
            await asyncio.sleep(0.3)
        copier.failing = False
        records = await read_topic(kafka_config, sink, 4, timeout=30)
    assert sorted(r.value for r in records) == sorted(  # type: ignore[attr-defined]
        [b"on partition 0", b"on partition 1", b"on partition 2", b"on partition 1"]
    )


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)
