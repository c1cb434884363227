"""KIP-447 against the real broker: offsets fenced by the group, read only when stable."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalOperation

from bus.admin import ensure_topics
from bus.fencing import (
    GroupFenced,
    GroupFencedProducer,
    OffsetsUnstable,
    fetch_stable_offsets,
    group_metadata,
    missing_group_fencing,
)
from bus.options import client_options
from bus.producer import supports_transactions
from models.config import KafkaConfig
from models.topics import TopicSpec
from tests.conftest import read_topic


async def _topics(config: KafkaConfig) -> tuple[str, str]:
    source, sink = f"{config.topic_prefix}.source", f"{config.topic_prefix}.sink"
    await ensure_topics(config, [TopicSpec(source), TopicSpec(sink)])
    return source, sink


@contextlib.asynccontextmanager
async def member(config: KafkaConfig, topic: str, group: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer in *group* that keeps polling (so it follows rebalances) until the block ends."""
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(config),
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        session_timeout_ms=6_000,
        heartbeat_interval_ms=200,
    )
    await consumer.start()

    async def poll() -> None:
        while True:
            await consumer.getmany(timeout_ms=100)

    polling = asyncio.create_task(poll())
    try:
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await asyncio.sleep(0.05)
        yield consumer
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await consumer.stop()


async def settled(config: KafkaConfig, topic: str, *members: AIOKafkaConsumer) -> None:
    """Wait until *members* share every partition of *topic* in one generation."""
    everything = {TopicPartition(topic, p) for p in range(config.partitions)}
    async with asyncio.timeout(30):
        while True:
            generations = {group_metadata(m).generation_id for m in members}
            shares = [m.assignment() for m in members]
            split = all(shares) and sum(map(len, shares)) == len(everything)
            if len(generations) == 1 and split and set().union(*shares) == everything:
                return
            await asyncio.sleep(0.05)


async def producer(config: KafkaConfig, transactional_id: str | None = None) -> GroupFencedProducer:
    started = GroupFencedProducer(
        **client_options(config),
        transactional_id=transactional_id or f"{config.topic_prefix}-{uuid.uuid4()}",
        transaction_timeout_ms=10_000,
    )
    await started.start()
    return started


async def test_the_broker_fences_through_the_group(kafka_config: KafkaConfig) -> None:
    probe = await producer(kafka_config)
    try:
        assert await missing_group_fencing(probe.client) == []
    finally:
        await probe.stop()
    assert await supports_transactions(kafka_config)


class _OldBroker:
    """Answers ApiVersions like a Kafka 2.4 broker: transactions, but no group fencing."""

    def get_random_node(self) -> int:
        return 1

    async def send(self, node_id: int, request: object) -> object:
        versions = [(0, 0, 8), (9, 0, 6), (22, 0, 2), (28, 0, 2)]
        return type("ApiVersions", (), {"api_versions": versions})()


async def test_a_broker_without_kip_447_is_told_apart() -> None:
    missing = await missing_group_fencing(_OldBroker())  # type: ignore[arg-type]
    assert missing == ["TxnOffsetCommit v3 (broker has 2)", "OffsetFetch v7 (broker has 6)"]


async def test_offsets_committed_in_a_transaction_read_back_stable(kafka_config: KafkaConfig) -> None:
    source, sink = await _topics(kafka_config)
    group = f"{kafka_config.topic_prefix}-group"
    async with member(kafka_config, source, group) as consumer:
        owned = sorted(consumer.assignment())
        assert await fetch_stable_offsets(consumer, owned, timeout=10) == dict.fromkeys(owned)
        committer = await producer(kafka_config)
        try:
            await committer.begin_transaction()
            await committer.send_and_wait(sink, b"output", partition=0)
            offsets = {tp: 10 + tp.partition for tp in owned}
            await committer.send_offsets_with_group(offsets, group_metadata(consumer))
            await committer.commit_transaction()
        finally:
            await committer.stop()
        assert await fetch_stable_offsets(consumer, owned, timeout=10) == offsets
        assert {tp: (await consumer.committed(tp)) for tp in owned} == offsets  # as any reader sees them


async def test_a_stable_fetch_waits_for_the_open_transaction_holding_the_offsets(
    kafka_config: KafkaConfig,
) -> None:
    source, sink = await _topics(kafka_config)
    group = f"{kafka_config.topic_prefix}-group"
    async with member(kafka_config, source, group) as consumer:
        tp = TopicPartition(source, 0)
        committer = await producer(kafka_config)
        try:
            await committer.begin_transaction()
            await committer.send_and_wait(sink, b"output", partition=0)
            await committer.send_offsets_with_group({tp: 7}, group_metadata(consumer))
            with pytest.raises(OffsetsUnstable) as unstable:
                await fetch_stable_offsets(consumer, [tp, TopicPartition(source, 1)], timeout=0.5)
            assert unstable.value.unstable == {tp}
            assert unstable.value.stable == {TopicPartition(source, 1): None}
            waiting = asyncio.create_task(fetch_stable_offsets(consumer, [tp], timeout=20))
            await asyncio.sleep(1.0)
            assert not waiting.done()  # still held by the open transaction
            await committer.commit_transaction()
            assert await asyncio.wait_for(waiting, timeout=10) == {tp: 7}
        finally:
            await committer.stop()


async def test_a_commit_from_a_stale_generation_is_fenced_and_its_outputs_never_visible(
    kafka_config: KafkaConfig,
) -> None:
    source, sink = await _topics(kafka_config)
    group = f"{kafka_config.topic_prefix}-group"
    transactional_id = f"{kafka_config.topic_prefix}-zombie"
    async with member(kafka_config, source, group) as first:
        stale = group_metadata(first)
        async with member(kafka_config, source, group) as second:
            await settled(kafka_config, source, first, second)
            assert group_metadata(first).generation_id > stale.generation_id
            owned = sorted(first.assignment())
            zombie = await producer(kafka_config, transactional_id)
            try:
                await zombie.begin_transaction()
                await zombie.send_and_wait(sink, b"zombie output", partition=0)
                with pytest.raises(GroupFenced):
                    await zombie.send_offsets_with_group({tp: 5 for tp in owned}, stale)
            finally:
                await zombie.stop()
            # Its successor under the same id aborts what is left open, and commits for real.
            successor = await producer(kafka_config, transactional_id)
            try:
                await successor.begin_transaction()
                await successor.send_and_wait(sink, b"successor output", partition=0)
                offsets = {tp: 3 for tp in owned}
                await successor.send_offsets_with_group(offsets, group_metadata(first))
                await successor.commit_transaction()
            finally:
                await successor.stop()
            assert await fetch_stable_offsets(first, owned, timeout=10) == offsets
            assert await fetch_stable_offsets(
                second, sorted(second.assignment()), timeout=10
            ) == dict.fromkeys(sorted(second.assignment()))
    # Both went to partition 0, the zombie's first: a reader that got the successor's record
    # has passed the zombie's, so it would have seen it were it visible.
    records = await read_topic(kafka_config, sink, 1, timeout=10)
    assert [r.value for r in records] == [b"successor output"]  # type: ignore[attr-defined]


async def test_a_commit_without_a_generation_is_refused_before_it_reaches_the_broker(
    kafka_config: KafkaConfig,
) -> None:
    source, _sink = await _topics(kafka_config)
    group = f"{kafka_config.topic_prefix}-group"
    async with member(kafka_config, source, group) as consumer:
        outsider = group_metadata(consumer)
        outsider = type(outsider)(outsider.group_id, -1, "", None)
        committer = await producer(kafka_config)
        try:
            await committer.begin_transaction()
            with pytest.raises(GroupFenced):
                await committer.send_offsets_with_group({TopicPartition(source, 0): 1}, outsider)
            await committer.abort_transaction()
            # Plain send_offsets_to_transaction would be unfenced: the producer refuses it.
            await committer.begin_transaction()
            with pytest.raises(IllegalOperation):
                await committer.send_offsets_to_transaction({TopicPartition(source, 0): 1}, group)
        finally:
            await committer.stop()
