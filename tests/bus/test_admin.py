"""Topic administration: a topic is counted only as the broker describes it, never as zero."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bus.admin import ensure_topics, partition_counts, partitions_of
from bus.options import client_options
from models.config import KafkaConfig
from models.errors import TopicMissing
from models.topics import TopicSpec

# A broker's metadata lags its controller now and then, more often after creating many topics
# at once (as `topics init` does): without waiting, a dozen topics were counted zero in most rounds.
ROUNDS = 5
TOPICS = 12


async def create_raw(config: KafkaConfig, names: list[str], partitions: int) -> None:
    """Create topics the plain way: the call returns before the broker may describe them."""
    admin = AIOKafkaAdminClient(**client_options(config))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


async def test_topics_created_a_moment_ago_are_counted_with_all_their_partitions(
    kafka_config: KafkaConfig,
) -> None:
    for n in range(ROUNDS):
        names = [f"{kafka_config.topic_prefix}.fresh-{n}.{i}" for i in range(TOPICS)]
        await create_raw(kafka_config, names, partitions=4)
        assert await partition_counts(kafka_config, names) == dict.fromkeys(names, 4)


async def test_ensure_topics_returns_once_the_broker_describes_what_it_created(
    kafka_config: KafkaConfig,
) -> None:
    for n in range(ROUNDS):
        specs = [TopicSpec(f"{kafka_config.topic_prefix}.round-{n}.{i}") for i in range(TOPICS)]
        assert sorted(await ensure_topics(kafka_config, specs)) == sorted(s.name for s in specs)
        described = await partitions_of(kafka_config, [s.name for s in specs])  # asks once
        assert len(described) == TOPICS * kafka_config.partitions


async def test_a_missing_topic_is_named_not_counted_as_empty(kafka_config: KafkaConfig) -> None:
    present = f"{kafka_config.topic_prefix}.present"
    absent = f"{kafka_config.topic_prefix}.absent"
    await ensure_topics(kafka_config, [TopicSpec(present)])
    with pytest.raises(TopicMissing, match=absent) as raised:
        await partition_counts(kafka_config, [present, absent], timeout=0.5)
    assert present not in str(raised.value)
    assert raised.value.retriable, "it may be created any moment: a caller may try again"
