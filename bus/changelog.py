"""Reading chosen partitions of a compacted changelog topic, the way a state owner restores.

A stateful consumer keeps the state of input partition ``p`` in changelog partition ``p`` (see
:func:`changelog_partition`), so a process that takes over ``p`` restores only that partition
instead of the whole topic. Reads are ``read_committed``: state written inside an aborted
transaction is never seen.

A read goes to the partitions' end as it stands when the read begins, records of transactions
still open included, and so waits for those transactions to end. With group-fenced transactions
(KIP-447) a new owner may find the previous owner's offsets committed while the commit markers
of its last transaction are still on their way to the changelog's partitions; reading only to
the last stable offset would then miss that transaction's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.consumer import behind
from bus.options import client_options
from models.config import KafkaConfig

__all__ = ["changelog_partition", "read_changelog"]


def changelog_partition(input_partition: int, changelog_partitions: int) -> int:
    """The changelog partition that holds the state of *input_partition*.

    The same partition number when the changelog has at least as many partitions as the input
    (the normal case: ``topics init`` creates every topic with ``kafka.partitions``); wrapped
    around otherwise, so state is never written where nobody restores it.
    """
    return input_partition % changelog_partitions


async def read_changelog(
    config: KafkaConfig, topic: str, partitions: Sequence[int], *, timeout: float = 60.0
) -> dict[int, dict[bytes, bytes]]:
    """Each partition's newest value per key, read from its beginning to its current end.

    Tombstones (null values) remove their key; records without a key are ignored. Raises
    ``TimeoutError`` when the partitions cannot be read to their end within *timeout* seconds
    (a transaction left open by a crashed writer ends when the broker times it out).
    """
    wanted = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    values: dict[int, dict[bytes, bytes]] = {tp.partition: {} for tp in wanted}
    if not wanted:
        return values
    consumer = AIOKafkaConsumer(
        **client_options(config), enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        consumer.assign(wanted)
        await consumer.seek_to_beginning(*wanted)
        async with asyncio.timeout(timeout):
            ends = await _high_watermarks(config, wanted)
            # A read_committed consumer stops before an open transaction's first record and
            # moves past its records and marker once it ends: so this waits for it.
            while await behind(consumer, ends):
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for tp, records in batches.items():
                    table = values[tp.partition]
                    for record in records:
                        if record.key is None:
                            continue
                        if record.value is None:
                            table.pop(record.key, None)
                        else:
                            table[record.key] = record.value
        return values
    finally:
        # aiokafka starts a coordinator task on assign(); let it run once before stopping.
        await asyncio.sleep(0)
        await consumer.stop()


async def _high_watermarks(
    config: KafkaConfig, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The partitions' ends counting records of open transactions (a read_committed consumer
    would answer with the last stable offset)."""
    probe = AIOKafkaConsumer(
        **client_options(config), enable_auto_commit=False, isolation_level="read_uncommitted"
    )
    await probe.start()
    try:
        ends: dict[TopicPartition, int] = await probe.end_offsets(list(partitions))
        return ends
    finally:
        await probe.stop()
