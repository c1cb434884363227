"""Connector state (checkpoints, processed-id memory) in the compacted ``sb.state`` topic.

Each connector instance sees only its own keys. The whole topic is read once at start-up;
afterwards reads are served from memory and every write is produced (and confirmed) before
``put`` returns, so state is durable exactly when the caller is told it is.
"""

from __future__ import annotations

from bus.admin import partition_counts
from bus.changelog import read_changelog
from bus.producer import Producer
from models.config import KafkaConfig

__all__ = ["KafkaStateStore", "read_compacted"]

_SEPARATOR = "\x1f"


async def read_compacted(config: KafkaConfig, topic: str, timeout: float = 60.0) -> dict[bytes, bytes]:
    """Every key's newest value in *topic*, read from the beginning to the current end.

    *topic* must exist (:class:`~models.errors.TopicMissing` otherwise): a topic the broker
    could not describe for a moment must not read as an empty state.
    """
    count = (await partition_counts(config, [topic]))[topic]
    partitions = list(range(count))
    snapshot = await read_changelog(config, topic, partitions, timeout=timeout)
    # Keys are partitioned by hash, so one key lives in one partition: the merge loses nothing.
    return {key: value for table in snapshot.values() for key, value in table.items()}


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
