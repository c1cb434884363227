"""An at-least-once batch consumer loop: fetch a batch, hand it over, commit, repeat.

Offsets are committed only after the handler returned for the whole batch, so a crash
re-delivers instead of dropping. ``stop()`` lets the batch in hand finish, commits it and
leaves the group, so a SIGTERM costs no re-delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bus.options import client_options
from models.config import KafkaConfig

__all__ = ["BatchConsumer", "BatchHandler", "behind", "consumer_options"]

BatchHandler = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


def consumer_options(config: KafkaConfig, group_id: str | None, *, read_committed: bool) -> dict[str, object]:
    return {
        **client_options(config),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed" if read_committed else "read_uncommitted",
        # A slow batch must never push a member out of the group: the handler's deadline
        # (bounded by max_records) stays far below this.
        "max_poll_interval_ms": 300_000,
        "session_timeout_ms": 30_000,
        "heartbeat_interval_ms": 3_000,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }


class BatchConsumer:
    def __init__(
        self,
        config: KafkaConfig,
        topics: Sequence[str],
        group_id: str,
        handler: BatchHandler,
        *,
        max_records: int = 500,
        read_committed: bool = True,
    ) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics, **consumer_options(config, group_id, read_committed=read_committed)
        )
        self.name = f"consumer:{group_id}"
        self._handler = handler
        self._max_records = max_records
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = structlog.get_logger(__name__).bind(group=group_id, topics=list(topics))

    async def start(self) -> None:
        """Join the group and consume in the background until :meth:`stop`."""
        await self._consumer.start()
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, leave the group. Idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def run(self) -> None:
        """Consume in the foreground until :meth:`request_stop`."""
        await self._consumer.start()
        await self._loop()

    async def _loop(self) -> None:
        """Consume until :meth:`stop`; every handled batch is committed before the next fetch."""
        try:
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=200, max_records=self._max_records)
                records = [record for batch in batches.values() for record in batch]
                if not records:
                    continue
                await self._handler(records)
                await self._consumer.commit()
        finally:
            await self._consumer.stop()  # leaves the group so partitions move at once

    def request_stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit it and return."""
        self._stopping.set()


async def behind(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> bool:
    """Whether *consumer* has not yet reached *ends* on some partition."""
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return True
    return False
