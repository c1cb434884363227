"""Connector state (checkpoints, processed-id memory) in the compacted ``sb.state`` topic.

Each connector instance sees only its own keys. The whole topic is read once at start-up;
afterwards reads are served from memory and every write is produced (and confirmed) before
``put`` returns, so state is durable exactly when the caller is told it is.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer

from bus.admin import partitions_of
from bus.consumer import behind
from bus.options import client_options
from bus.producer import Producer
from models.config import KafkaConfig

__all__ = ["KafkaStateStore", "read_compacted"]

_SEPARATOR = "\x1f"


async def read_compacted(config: KafkaConfig, topic: str, timeout: float = 60.0) -> dict[bytes, bytes]:
    """Every key's newest value in *topic*, read from the beginning to the current end."""
    consumer = AIOKafkaConsumer(
        **client_options(config), enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partitions = await partitions_of(config, [topic])
        if not partitions:
            return {}
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        values: dict[bytes, bytes] = {}
        async with asyncio.timeout(timeout):
            while await behind(consumer, ends):
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in batches.values():
                    for record in records:
                        if record.key is None:
                            continue
                        if record.value is None:
                            values.pop(record.key, None)
                        else:
                            values[record.key] = record.value
        return values
    finally:
        # aiokafka starts a coordinator task on assign(); stopping before it first ran
        # surfaces as CancelledError, so let it run once.
        await asyncio.sleep(0)
        await consumer.stop()


class KafkaStateStore:
    """A :class:`connectors.base.StateStore` for one connector instance."""

    def __init__(self, producer: Producer, topic: str, instance: str) -> None:
        self._producer = producer
        self._topic = topic
        self._prefix = f"{instance}{_SEPARATOR}"
        self._values: dict[str, bytes] = {}

    def restore(self, snapshot: dict[bytes, bytes]) -> None:
        """Load this instance's keys from a :func:`read_compacted` snapshot."""
        for raw_key, value in snapshot.items():
            key = raw_key.decode("utf-8", errors="replace")
            if key.startswith(self._prefix):
                self._values[key.removeprefix(self._prefix)] = value

    async def get(self, key: str) -> bytes | None:
        return self._values.get(key)

    async def put(self, key: str, value: bytes | None) -> None:
        await self._producer.send(self._topic, value, key=(self._prefix + key).encode())
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value

    def keys(self) -> list[str]:
        return list(self._values)
